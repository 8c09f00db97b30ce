/**
 * The review's repro, scaled down: one dist/worker.js and one dist/reaper.js, a long job, and the worker
 * SIGSTOPped past its stale timeout while the job runs. The reaper prunes it and frees the job; when the worker
 * resumes it must stop the attempt it lost before it runs the job again: never two runs of the job at once in
 * one process, no ack refused for a run it should not have finished, no dead letter.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { Queue } from "../src/Queue.ts"
import { eventually, recordingTasks, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

layer(testDb("stall_process"), { excludeTestServices: true })("a stalled worker", (it) => {
  it.effect("SIGSTOPped past its stale timeout: pruned, then on SIGCONT it stops the lost attempt and runs the job once more", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const env = yield* recordingTasks(schema, url, {
        PGQ_QUEUES: "stall",
        PGQ_LEASE_SECONDS: "2",
        PGQ_REAPER_INTERVAL_SECONDS: "0.5"
      })
      const worker = yield* spawnNode("worker.js", env)
      yield* spawnNode("reaper.js", env)
      const id = yield* Queue.use((q) => q.enqueue("chaos.job", { i: 0, ms: 6000 }, { queue: "stall" }))
      const runs = sql<{ attempt: number; alongside: number; finished: boolean }>`
        SELECT attempt, alongside, finished_at IS NOT NULL AS finished FROM ${sql(`${schema}.chaos_run`)}
        WHERE msg_id = ${id}::bigint ORDER BY run_id`
      yield* eventually(runs, (r) => r.length === 1)

      worker.child.kill("SIGSTOP")
      // The reaper frees the job once the worker's heartbeat is 2 s old.
      const freed = sql<{ state: string }>`SELECT state FROM ${sql(`${schema}.message`)} WHERE msg_id = ${id}::bigint`
      yield* eventually(freed, (r) => r[0]?.state === "ready")
      worker.child.kill("SIGCONT")

      yield* eventually(freed, (r) => r.length === 0)
      const ran = yield* runs
      expect(ran.map((r) => r.attempt)).toEqual([1, 2])
      expect(ran.map((r) => r.alongside)).toEqual([0, 0])
      // The first attempt was stopped, not finished: only the second one completed the job.
      expect(ran.map((r) => r.finished)).toEqual([false, true])
      const dead = yield* sql`SELECT 1 FROM ${sql(`${schema}.dead_letter`)}`
      expect(dead).toHaveLength(0)
      expect(worker.output()).toContain("was pruned as stale")
      expect(worker.output()).not.toContain("refused by the attempt fence")
    }), { timeout: 60_000 })
})
