/**
 * A 200-batch fan-out drained by real dist/worker.js processes that are SIGKILLed and replaced while it runs:
 * the callback is enqueued exactly once, with all 200 results in batch order, and the execution ends COMPLETED.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Ref, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { Barrier } from "../src/Barrier.ts"
import * as ExecutionStatus from "../src/ExecutionStatus.ts"
import { eventually, recordingTasks, type Spawned, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const BATCHES = 200

layer(testDb("barrier_process", { maxConnections: 6 }), { excludeTestServices: true })("fan-out under SIGKILL", (it) => {
  it.effect("workers SIGKILLed during a 200-batch fan-out: one callback with all 200 results in order", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const env = yield* recordingTasks(schema, url, {
        PGQ_CONCURRENCY: "5",
        PGQ_POLL_INTERVAL_MS: "20",
        PGQ_POLL_MAX_MS: "200"
      })
      const workers = yield* Ref.make<ReadonlyArray<Spawned>>([
        yield* spawnNode("worker.js", env),
        yield* spawnNode("worker.js", env)
      ])
      yield* Barrier.use((b) =>
        b.start({
          executionId: "e-killed",
          orgId: "org",
          batches: Array.from({ length: BATCHES }, (_, i) => ({ task: "chaos.part", payload: { i, ms: 20 + (i % 4) * 20 } })),
          callback: { task: "chaos.gather" }
        })
      )
      const runs = sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${schema}.chaos_run`)}`
      yield* eventually(runs, (rows) => rows[0]!.n > 10)

      // Every 700 ms SIGKILL the oldest worker and start a fresh one, five times.
      const killOne = Effect.gen(function*() {
        const [victim, ...rest] = yield* Ref.get(workers)
        victim!.child.kill("SIGKILL")
        yield* victim!.exit
        yield* Ref.set(workers, [...rest, yield* spawnNode("worker.js", env)])
      })
      yield* killOne.pipe(Effect.repeat({ schedule: Schedule.spaced("700 millis"), times: 4 }))

      const status = ExecutionStatus.ExecutionStatus.use((s) => s.read("e-killed", "org"))
      yield* eventually(status, (s) => s._tag === "Found" && s.status === "COMPLETED")
      const callbacks = yield* sql<{ msg_id: string; results: ReadonlyArray<number> }>`
        SELECT msg_id::text AS msg_id, results FROM ${sql(`${schema}.chaos_callback`)} ORDER BY ran_at`
      // The callback job may run more than once (at-least-once), but it was enqueued once, with every result.
      expect(new Set(callbacks.map((c) => c.msg_id)).size).toBe(1)
      expect(callbacks[0]!.results).toEqual(Array.from({ length: BATCHES }, (_, i) => i))
      const [killedRuns] = yield* sql<{ unfinished: number; doubled: number }>`
        SELECT count(*) FILTER (WHERE finished_at IS NULL)::int AS unfinished,
               (SELECT count(*) FROM (SELECT 1 FROM ${sql(`${schema}.chaos_run`)} GROUP BY msg_id, attempt HAVING count(*) > 1) d)::int AS doubled
        FROM ${sql(`${schema}.chaos_run`)}`
      console.log(`[measure] 200-batch fan-out under 5 worker SIGKILLs: ${killedRuns!.unfinished} runs cut short and redelivered`)
      expect(killedRuns!.doubled).toBe(0)
      const left = yield* sql`SELECT 1 FROM ${sql(`${schema}.barrier`)}`
      expect(left).toEqual([])
    }), { timeout: 90_000 })
})
