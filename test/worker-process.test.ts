import { expect, layer } from "@effect/vitest"
import { Clock, Effect, Option } from "effect"
import { SqlClient } from "effect/sql"
import { Queue } from "../src/Queue.ts"
import { eventually, freePort, httpGet, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const workerEnv = (schema: string, url: string, extra: Record<string, string> = {}) => ({
  DATABASE_URL: url,
  PGQ_SCHEMA: schema,
  PGQ_TASKS: "./dist/demo/tasks.js",
  PGQ_POLL_INTERVAL_MS: "20",
  PGQ_POLL_MAX_MS: "100",
  PGQ_HEARTBEAT_SECONDS: "0.5",
  PGQ_PROCESS_STALE_SECONDS: "2",
  ...extra
})

const messageRows = (queue: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    return yield* sql<{ state: string; read_ct: number; claimed_by: string | null }>`
      SELECT state, read_ct, claimed_by FROM ${sql(`${schema}.message`)} WHERE queue = ${queue} ORDER BY msg_id`
  })

const processCount = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const [row] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${schema}.process`)}`
  return row!.n
})

layer(testDb("worker_process"), { excludeTestServices: true })("dist/worker.js", (it) => {
  it.effect("serves /health and /metrics while it works; SIGTERM releases unfinished jobs and exits 0", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const q = yield* Queue
      const port = yield* freePort
      const worker = yield* spawnNode(
        "worker.js",
        workerEnv(schema, url, { PGQ_QUEUES: "served", PGQ_HEALTH_PORT: String(port), PGQ_SHUTDOWN_GRACE_SECONDS: "1" })
      )
      const health = yield* eventually(httpGet(`http://127.0.0.1:${port}/health`), (r) => r.status === 200)
      expect(JSON.parse(health.body)).toMatchObject({ status: "healthy", check: "pgq_worker_poll", stale_after_seconds: 60 })
      expect((yield* httpGet(`http://127.0.0.1:${port}/nope`)).status).toBe(404)

      yield* q.enqueueMany(Array.from({ length: 20 }, (_, i) => ({ task: "echo", payload: { message: `m${i}` }, options: { queue: "served" } })))
      yield* eventually(messageRows("served"), (rows) => rows.length === 0)
      const metrics = yield* eventually(httpGet(`http://127.0.0.1:${port}/metrics`), (r) => /pgq_jobs_processed_total\S* 20\b/.test(r.body))
      expect(metrics.body).toContain("pgq_claim_latency_seconds")

      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "served" })
      yield* eventually(messageRows("served"), (rows) => rows[0]?.state === "claimed")
      worker.child.kill("SIGTERM")
      const exit = yield* worker.exit
      expect(exit).toEqual({ code: 0, signal: null })
      const [released] = yield* messageRows("served")
      expect(released).toMatchObject({ state: "ready", read_ct: 1, claimed_by: null })
      expect(yield* processCount).toBe(0)
    }), { timeout: 60_000 })

  it.effect("a SIGKILLed worker's job runs again on another worker within the process-stale timeout", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const q = yield* Queue
      const env = workerEnv(schema, url, { PGQ_QUEUES: "killed" })
      const victim = yield* spawnNode("worker.js", env)
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "killed" })
      const [claimed] = yield* eventually(messageRows("killed"), (rows) => rows[0]?.state === "claimed")
      expect(claimed!.claimed_by).toContain(`:${victim.child.pid}:`)
      const rescuer = yield* spawnNode("worker.js", env)
      yield* eventually(processCount, (n) => n === 2)

      const killedAt = yield* Clock.currentTimeMillis
      victim.child.kill("SIGKILL")
      const [rescued] = yield* eventually(messageRows("killed"), (rows) => rows[0]?.read_ct === 2 && rows[0]?.state === "claimed")
      const seconds = ((yield* Clock.currentTimeMillis) - killedAt) / 1000
      console.log(`[measure] SIGKILLed worker's job running again on another worker after ${seconds.toFixed(2)} s (stale timeout 2 s, lease 30 s)`)
      expect(rescued!.claimed_by).toContain(`:${rescuer.child.pid}:`)
      // The promise: rescue by pruning, within the stale timeout plus a heartbeat of the victim (its last
      // one may be that old) and one pruning round of the rescuer (every heartbeat), with a second to
      // spare; the lease (30 s) would only be the fallback.
      expect(seconds).toBeLessThan(2 + 0.5 + 0.5 + 1)
    }), { timeout: 60_000 })

  it.effect("a SIGKILLed worker is rescued once its database session is gone, long before its stale timeout; a stopped one is not", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const q = yield* Queue
      // Stale 30 s, lease 120 s: only the closed session of the dead process can explain a rescue within seconds.
      const env = workerEnv(schema, url, {
        PGQ_QUEUES: "witnessed",
        PGQ_HEARTBEAT_SECONDS: "1",
        PGQ_PROCESS_STALE_SECONDS: "30",
        PGQ_VT_SECONDS: "120"
      })
      const victim = yield* spawnNode("worker.js", env)
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "witnessed" })
      yield* eventually(messageRows("witnessed"), (rows) => rows[0]?.state === "claimed")
      const rescuer = yield* spawnNode("worker.js", env)
      yield* eventually(processCount, (n) => n === 2)

      // Stopped, its session stays open: a stall, judged by the stale timeout only (30 s), never pruned in 4 s.
      victim.child.kill("SIGSTOP")
      yield* Effect.sleep("4 seconds")
      expect((yield* messageRows("witnessed"))[0]).toMatchObject({ state: "claimed", read_ct: 1 })
      expect(yield* processCount).toBe(2)
      victim.child.kill("SIGCONT")
      yield* Effect.sleep("1 second")

      const killedAt = yield* Clock.currentTimeMillis
      victim.child.kill("SIGKILL")
      const [rescued] = yield* eventually(messageRows("witnessed"), (rows) => rows[0]?.read_ct === 2 && rows[0]?.state === "claimed")
      const seconds = ((yield* Clock.currentTimeMillis) - killedAt) / 1000
      console.log(`[measure] SIGKILLed worker's job running again after ${seconds.toFixed(2)} s (heartbeat 1 s, stale 30 s, lease 120 s)`)
      expect(rescued!.claimed_by).toContain(`:${rescuer.child.pid}:`)
      // The promise: two of the victim's heartbeats after its session closed, one maintenance round (250 ms)
      // and the claim, with a second to spare.
      expect(seconds).toBeLessThan(2 * 1 + 0.25 + 1)
    }), { timeout: 60_000 })

  it.effect("a job enqueued by dist/cli.js wakes an idle worker at once (LISTEN/NOTIFY), not at its next poll", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const port = yield* freePort
      // Idle polls a minute apart: only a notification can start the job within the test's timeout.
      yield* spawnNode(
        "worker.js",
        workerEnv(schema, url, {
          PGQ_QUEUES: "woken",
          PGQ_POLL_INTERVAL_MS: "60000",
          PGQ_POLL_MAX_MS: "60000",
          PGQ_HEALTH_PORT: String(port)
        })
      )
      yield* eventually(httpGet(`http://127.0.0.1:${port}/health`), (r) => r.status === 200)
      const enqueue = Effect.gen(function*() {
        const cli = yield* spawnNode("cli.js", { DATABASE_URL: url, PGQ_SCHEMA: schema }, [
          "enqueue", "--task", "noop", "--payload", "{}", "--queue", "woken"
        ])
        expect((yield* cli.exit).code).toBe(0)
      }).pipe(Effect.scoped)
      // Enqueue again if nothing ran within 3 s: the worker may not be LISTENing yet when it reports healthy.
      const drained = eventually(messageRows("woken"), (rows) => rows.length === 0).pipe(Effect.timeoutOption("3 seconds"))
      yield* enqueue.pipe(Effect.andThen(drained), Effect.repeat({ until: Option.isSome }))
      const metrics = yield* httpGet(`http://127.0.0.1:${port}/metrics`)
      expect(metrics.body).toMatch(/pgq_jobs_processed_total\S* [1-9]/)
    }), { timeout: 40_000 })

  it.effect("bad configuration exits non-zero with a message naming the variable", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const cases: ReadonlyArray<[Record<string, string>, string]> = [
        [{ PGQ_CONCURRENCY: "0" }, "PGQ_CONCURRENCY"],
        [{ PGQ_VT_SECONDS: "ten" }, "PGQ_VT_SECONDS"],
        [{ PGQ_PGBOUNCER: "maybe" }, "PGQ_PGBOUNCER"],
        [{ PGQ_POLL_INTERVAL_MS: "500", PGQ_POLL_MAX_MS: "100" }, "PGQ_POLL_MAX_MS"],
        [{ PGQ_TASKS: "./does/not/exist.js" }, "PGQ_TASKS"],
        [{ DATABASE_URL: "mysql://x@127.0.0.1/db" }, "DATABASE_URL"]
      ]
      for (const [extra, variable] of cases) {
        const child = yield* spawnNode("worker.js", workerEnv(schema, url, extra))
        const exit = yield* child.exit
        expect(exit.code, variable).toBe(1)
        expect(child.output()).toContain(variable)
      }
      const unreachable = yield* spawnNode("worker.js", workerEnv(schema, "postgres://u:hunter2@127.0.0.1:1/nowhere"))
      expect((yield* unreachable.exit).code).toBe(1)
      expect(unreachable.output()).toContain("127.0.0.1:1/nowhere")
      expect(unreachable.output()).not.toContain("hunter2")
    }), { timeout: 60_000 })
})
