/**
 * dist/worker.js with a task module that exports the Layer its handlers need (test/fixtures/layer-tasks.mjs):
 * built once at start-up on the worker's SqlClient, released after the drain, in a single worker and in the
 * supervisor's children; a layer that cannot be built stops the start with one line naming PGQ_TASKS; a handler
 * whose service nobody provides is dead-lettered at once with the service's name.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { Queue } from "../src/Queue.ts"
import { eventually, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const env = (schema: string, url: string, queue: string, extra: Record<string, string> = {}) => ({
  DATABASE_URL: url,
  PGQ_SCHEMA: schema,
  PGQ_TASKS: "./test/fixtures/layer-tasks.mjs",
  PGQ_QUEUES: queue,
  PGQ_POLL_INTERVAL_MS: "20",
  PGQ_POLL_MAX_MS: "100",
  PGQ_HEARTBEAT_SECONDS: "0.5",
  PGQ_PROCESS_STALE_SECONDS: "2",
  PGQ_SHUTDOWN_GRACE_SECONDS: "10",
  ...extra
})

const counts = (queue: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    const [row] = yield* sql<{ live: number; claimed: number; dead: number }>`
      SELECT (SELECT count(*) FROM ${sql(`${schema}.message`)} WHERE queue = ${queue})::int AS live,
             (SELECT count(*) FROM ${sql(`${schema}.message`)} WHERE queue = ${queue} AND state = 'claimed')::int AS claimed,
             (SELECT count(*) FROM ${sql(`${schema}.dead_letter`)} WHERE queue = ${queue})::int AS dead`
    return row!
  })

const deadLetterErrors = (queue: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    const rows = yield* sql<{ last_error: string }>`
      SELECT last_error FROM ${sql(`${schema}.dead_letter`)} WHERE queue = ${queue}`
    return rows.map((r) => r.last_error)
  })

layer(testDb("task_module_process"), { excludeTestServices: true })("dist/worker.js with a task module's layer", (it) => {
  it.effect("handlers get the module's service; an unprovided one dead-letters naming it; the layer outlives the drain", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const q = yield* Queue
      const worker = yield* spawnNode("worker.js", env(schema, url, "greetings"))
      yield* q.enqueueMany(Array.from({ length: 5 }, (_, i) => ({ task: "greet", payload: { name: `n${i}` }, options: { queue: "greetings" } })))
      yield* q.enqueue("orphan", { name: "x" }, { queue: "greetings" })
      yield* eventually(counts("greetings"), (c) => c.live === 0 && c.dead === 1)
      const [error] = yield* deadLetterErrors("greetings")
      expect(error).toContain("fixture/Nobody")
      expect(error).toContain("task orphan")
      expect((yield* q.stats()).find((s) => s.queue === "greetings")?.deadLettered).toBe(1)

      // A job running at SIGTERM finishes with its service; the layer is released after the drain.
      yield* q.enqueue("greet", { name: "late", ms: 1500 }, { queue: "greetings" })
      yield* eventually(counts("greetings"), (c) => c.claimed === 1)
      worker.child.kill("SIGTERM")
      expect(yield* worker.exit).toEqual({ code: 0, signal: null })
      expect(yield* counts("greetings")).toEqual({ live: 0, claimed: 0, dead: 1 })
      const output = worker.output()
      const drained = output.indexOf("drained")
      expect(drained).toBeGreaterThan(0)
      expect(output.indexOf("fixture: greeter released")).toBeGreaterThan(drained)
    }), { timeout: 60_000 })

  it.effect("a layer that cannot be built stops the start: exit 1, one line naming PGQ_TASKS and the failure", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const worker = yield* spawnNode("worker.js", env(schema, url, "down", { FIXTURE_LAYER_FAILS: "1" }))
      expect((yield* worker.exit).code).toBe(1)
      expect(worker.output()).toMatch(/pgq-worker: PGQ_TASKS: the layer exported by \.\/test\/fixtures\/layer-tasks\.mjs failed to build: GreeterDown/)
      expect(worker.output()).toContain("smtp.example is unreachable")
    }), { timeout: 30_000 })

  it.effect("the supervisor's children build the layer too", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const q = yield* Queue
      const supervisor = yield* spawnNode("worker.js", env(schema, url, "fleet", { PGQ_PROCESSES: "2", PGQ_SHUTDOWN_GRACE_SECONDS: "2" }))
      yield* q.enqueueMany(Array.from({ length: 10 }, (_, i) => ({ task: "greet", payload: { name: `n${i}` }, options: { queue: "fleet" } })))
      yield* eventually(counts("fleet"), (c) => c.live === 0)
      expect(yield* counts("fleet")).toEqual({ live: 0, claimed: 0, dead: 0 })
      supervisor.child.kill("SIGTERM")
      expect((yield* supervisor.exit).code).toBe(0)
      expect(supervisor.output().split("fixture: greeter released").length - 1).toBe(2)
    }), { timeout: 60_000 })
})
