/**
 * A blackholed database at shutdown: a dist/worker.js talks to the test database through a TCP proxy of
 * ours; once it runs a job, the proxy swallows everything (sockets stay open, nothing is forwarded, new
 * connections are accepted and ignored), as when a network path dies without a reset. SIGTERM must still end
 * the worker within a bound its settings promise, instead of hanging on statements that never answer.
 */
import { expect, layer } from "@effect/vitest"
import { Clock, Duration, Effect, Option } from "effect"
import { SqlClient } from "effect/sql"
import { connect, createServer, type Socket } from "node:net"
import { Queue } from "../src/Queue.ts"
import { eventually, freePort, httpGet, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const GRACE_SECONDS = 1
const STATEMENT_TIMEOUT_SECONDS = 1

/**
 * Interrupting a statement that never answers costs the driver up to 5 s more (@effect/sql-pg PgConnection:
 * a CancelRequest on a side connection, given up after 5 s, and the aborted statement's drain, which kills
 * the connection after 5 s; the two run together).
 */
const DRAIN_SECONDS = 5

/** ProcessRegistry's deregistration DELETE has a fixed timeout of its own, not PGQ_STATEMENT_TIMEOUT_MS. */
const DEREGISTER_SECONDS = 10

/**
 * The worst case of the shutdown sequence, whose steps run one after another:
 *   stop the poller: a claim in flight is uninterruptible, bounded by the statement timeout, then drained  T + D
 *   hand back prefetched jobs, flush acks: nothing to do here (no prefetch, the job never finishes)         0
 *   let the running job finish within the grace, then interrupt it                                         G
 *   release what the worker holds: statement timeout, then drained                                          T + D
 *   interrupt the lease renewal, maintenance and heartbeat fibers, each possibly mid-statement              3D
 *   deregister the process (its own timeout), then drained                                                  10 s + D
 *   close the pools: the sockets are destroyed without waiting (measured: exit within ms)                   0
 * = 2T + G + 6D + 10 s = 43 s. Measured: 10-16 s without the LISTEN session. With it (the default), closing
 * the pool that holds the unanswered LISTEN session never ends, and the worker's own last resort ends it:
 * `shutdownDeadlineSeconds` = G + 4 (T + D) + 15 s = 40 s after SIGTERM it exits 1. The bound is the larger
 * of the two, with 3 s to spare.
 */
const BOUND = Duration.seconds(
  Math.max(
    2 * STATEMENT_TIMEOUT_SECONDS + GRACE_SECONDS + 6 * DRAIN_SECONDS + DEREGISTER_SECONDS,
    GRACE_SECONDS + 4 * (STATEMENT_TIMEOUT_SECONDS + DRAIN_SECONDS) + 15
  ) + 3
)

/** A TCP proxy to `target` that can be switched to a blackhole: read and drop everything, answer nothing. */
const proxy = (target: URL) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly port: number; readonly blackhole: () => void; readonly close: () => void }>((resume) => {
      let blackholed = false
      const sockets = new Set<Socket>()
      const track = (socket: Socket) => {
        sockets.add(socket)
        socket.on("error", () => socket.destroy())
        socket.on("close", () => sockets.delete(socket))
      }
      const forward = (from: Socket, to: Socket) =>
        from.on("data", (chunk: Buffer) => {
          if (!blackholed) to.write(chunk)
        })
      const server = createServer((client) => {
        track(client)
        client.on("data", () => {}) // a blackhole keeps reading: the client's writes succeed and vanish
        if (blackholed) return
        const upstream = connect({ host: target.hostname, port: Number(target.port || 5432) })
        track(upstream)
        forward(client, upstream)
        forward(upstream, client)
        // A close is passed on only while the path is alive: a blackhole reports nothing.
        client.on("close", () => blackholed || upstream.destroy())
        upstream.on("close", () => blackholed || client.destroy())
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        resume(Effect.succeed({
          port: typeof address === "object" && address !== null ? address.port : 0,
          blackhole: () => (blackholed = true),
          close: () => {
            for (const socket of sockets) socket.destroy()
            server.close()
          }
        }))
      })
    }),
    (p) => Effect.sync(p.close)
  )

const viaProxy = (url: string, port: number) => {
  const proxied = new URL(url)
  proxied.hostname = "127.0.0.1"
  proxied.port = String(port)
  return proxied.toString()
}

layer(testDb("blackhole_process"), { excludeTestServices: true })("dist/worker.js, database blackholed", (it) => {
  it.effect("SIGTERM ends the worker within the bound of its settings while no statement is answered", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const q = yield* Queue
      const sql = yield* SqlClient.SqlClient
      const hole = yield* proxy(new URL(url))
      const healthPort = yield* freePort
      const worker = yield* spawnNode("worker.js", {
        DATABASE_URL: viaProxy(url, hole.port),
        PGQ_SCHEMA: schema,
        PGQ_TASKS: "./dist/demo/tasks.js",
        PGQ_QUEUES: "blackholed",
        PGQ_POLL_INTERVAL_MS: "20",
        PGQ_POLL_MAX_MS: "100",
        PGQ_HEARTBEAT_SECONDS: "0.5",
        PGQ_PROCESS_STALE_SECONDS: "2",
        PGQ_SHUTDOWN_GRACE_SECONDS: String(GRACE_SECONDS),
        PGQ_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_SECONDS * 1000),
        // With the LISTEN session (the default): its teardown waits, without a bound of the driver's, for its
        // UNLISTEN to be answered; the worker abandons it and, past its own deadline, exits anyway.
        PGQ_HEALTH_PORT: String(healthPort)
      })
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "blackholed" })
      // Running, not merely claimed: the worker got the claim's answer before the blackhole.
      yield* eventually(httpGet(`http://127.0.0.1:${healthPort}/health`), (r) => JSON.parse(r.body).in_flight === 1)

      hole.blackhole()
      const sentAt = yield* Clock.currentTimeMillis
      worker.child.kill("SIGTERM")
      const exit = yield* worker.exit.pipe(Effect.timeoutOption(BOUND))
      const seconds = ((yield* Clock.currentTimeMillis) - sentAt) / 1000
      console.log(`[measure] blackholed worker: ${JSON.stringify(Option.getOrNull(exit))} ${seconds.toFixed(2)} s after SIGTERM (bound ${Duration.format(BOUND)})`)
      expect(Option.isSome(exit), `no exit within ${Duration.format(BOUND)}:\n${worker.output()}`).toBe(true)
      // Shutdown is an interruption, and each failed step is logged, not raised: exit 0 (1 would do too).
      expect([0, 1]).toContain(Option.getOrThrow(exit).code)
      // The blackhole held: the release never got through, so the job comes back when its lease expires.
      const [row] = yield* sql<{ state: string }>`SELECT state FROM ${sql(`${schema}.message`)}`
      expect(row?.state).toBe("claimed")
    }), { timeout: 120_000 })
})
