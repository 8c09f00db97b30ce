/**
 * Whether a worker's LISTEN session is up (`status.listening`, `listening` in the /health body): true once it
 * LISTENs, false while the connection is lost (until the re-listen, every 2 s), false when LISTEN is off.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import * as Task from "../src/Task.ts"
import { Worker, type WorkerOptions } from "../src/Worker.ts"
import { eventually, freePort, httpGet, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const registry = Task.registry(Task.define({ name: "noop", payload: Schema.Unknown, handler: () => Effect.void }))

const workerOptions = (schema: string, listen: boolean): WorkerOptions => ({
  schema,
  queues: ["listening"],
  concurrency: 2,
  listen,
  leaseSeconds: 30,
  maxAttempts: 5,
  pollIntervalMs: 50,
  pollMaxMs: 200,
  shutdownGraceSeconds: 2,
  heartbeatSeconds: 1,
  processStaleSeconds: 5
})

const withWorker = <A, E, R>(listen: boolean, body: (worker: Worker["Service"]) => Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const { schema } = yield* TestSchema
    return yield* Worker.use(body).pipe(
      Effect.provide(Worker.layer(registry, workerOptions(schema, listen)).pipe(Layer.provide(ProcessRegistry.layer(schema))))
    )
  })

const listening = (worker: Worker["Service"]) => worker.status.pipe(Effect.map((s) => s.listening))

/** End the worker's LISTEN session from the server side, as a failover or an idle-session killer would. */
const terminateListener = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const rows = yield* sql<{ ended: boolean }>`
    SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity
    WHERE datname = current_database() AND query = ${`LISTEN "pgq_${schema}"`} AND pid <> pg_backend_pid()`
  return rows.filter((r) => r.ended).length
})

layer(testDb("listening"), { excludeTestServices: true })("Worker status: listening", (it) => {
  it.effect("true once it LISTENs, false while the session is lost, true again after the re-listen", () =>
    withWorker(true, (worker) =>
      Effect.gen(function*() {
        yield* eventually(listening(worker), (up) => up)
        expect(yield* eventually(terminateListener, (n) => n === 1)).toBe(1)
        yield* eventually(listening(worker), (up) => !up)
        yield* eventually(listening(worker), (up) => up)
      })), { timeout: 30_000 })

  it.effect("false when LISTEN is off", () =>
    withWorker(false, (worker) =>
      Effect.gen(function*() {
        const status = yield* worker.status
        expect(status.listening).toBe(false)
      })))

  it.effect("dist/worker.js: `listening` in the /health body", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const port = yield* freePort
      yield* spawnNode("worker.js", {
        DATABASE_URL: url,
        PGQ_SCHEMA: schema,
        PGQ_TASKS: "./dist/demo/tasks.js",
        PGQ_QUEUES: "listening-dist",
        PGQ_HEALTH_PORT: String(port)
      })
      const health = yield* eventually(
        httpGet(`http://127.0.0.1:${port}/health`),
        (r) => r.status === 200 && JSON.parse(r.body).listening === true
      )
      expect(JSON.parse(health.body)).toMatchObject({ status: "healthy", listening: true })
    }).pipe(Effect.scoped), { timeout: 30_000 })
})
