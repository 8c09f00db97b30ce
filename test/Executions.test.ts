import { expect, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql"
import * as Barrier from "../src/Barrier.ts"
import { ExecutionNotFound } from "../src/Errors.ts"
import * as ExecutionStatus from "../src/ExecutionStatus.ts"
import { Executions } from "../src/Executions.ts"
import { type ClaimedJob, Queue } from "../src/Queue.ts"
import { TestSchema, testDb } from "./support.ts"

/** The stuck timeout these tests run with (PGQ_STUCK_TIMEOUT_SECONDS). */
const STUCK = 600

const db = Layer.unwrap(
  TestSchema.use(({ schema }) => Effect.succeed(Executions.layer({ schema, stuckTimeoutSeconds: STUCK })))
).pipe(Layer.provideMerge(testDb("executions")))

const table = (name: string) =>
  TestSchema.use(({ schema }) => SqlClient.SqlClient.use((sql) => Effect.succeed(sql(`${schema}.${name}`))))

const fanOut = (executionId: string, n: number, queue: string) =>
  Barrier.Barrier.use((b) =>
    b.start({
      executionId,
      orgId: "acme",
      batches: Array.from({ length: n }, (_, i) => ({ task: "part", payload: { i }, queue })),
      callback: { task: "gather", queue: `${queue}-cb` }
    })
  )

const claim = (queue: string, limit: number) =>
  Queue.use((q) => q.claim({ queues: [queue], limit, leaseSeconds: 30, processId: "test" })).pipe(
    Effect.map((jobs) => [...jobs].sort((a, b) => (a.batchIndex ?? 0) - (b.batchIndex ?? 0)))
  )

const asBatch = (job: ClaimedJob): Barrier.BatchAttempt => ({ ...job, executionId: job.executionId!, batchIndex: job.batchIndex! })

/** Pretend `seconds` passed for a barrier (the server clock cannot move, the data can). */
const age = (executionId: string, column: "created" | "progress", seconds: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const barrier = yield* table("barrier")
    yield* column === "created"
      ? sql`UPDATE ${barrier} SET created_at = created_at - ${seconds} * interval '1 second',
                                 expires_at = expires_at - ${seconds} * interval '1 second',
                                 last_progress_at = last_progress_at - ${seconds} * interval '1 second'
            WHERE execution_id = ${executionId}`
      : sql`UPDATE ${barrier} SET last_progress_at = last_progress_at - ${seconds} * interval '1 second'
            WHERE execution_id = ${executionId}`
  })

layer(db, { excludeTestServices: true })("Executions", (it) => {
  it.effect("show: status, barrier progress, batches done / pending by state / dead, callback not fired", () =>
    Effect.gen(function*() {
      yield* fanOut("e-show", 4, "show")
      const [done, dead, running] = yield* claim("show", 3)
      yield* Barrier.Barrier.use((b) => b.complete(asBatch(done!), { ok: 1 }))
      // Dead-lettered without an abort (as a replayable dead letter would be): the barrier stays live.
      yield* Queue.use((q) => q.deadLetter(dead!, "smtp said no"))
      const view = yield* Executions.use((e) => e.show("e-show"))
      expect(view).toMatchObject({
        executionId: "e-show",
        orgId: "acme",
        status: { _tag: "Found", status: "EXECUTING" },
        barrier: { total: 4, remaining: 3, stranded: false },
        batches: { done: 1, ready: 1, scheduled: 0, claimed: 1, deadLettered: 1 },
        callback: null
      })
      expect(view.deadLetters).toEqual([
        expect.objectContaining({ msgId: dead!.msgId, batchIndex: dead!.batchIndex, lastError: "smtp said no" })
      ])
      expect(view.barrier!.ageSeconds).toBeGreaterThanOrEqual(0)
      expect(view.barrier!.expiresInSeconds).toBeGreaterThan(3000)
      expect(running!.batchIndex).toBe(2)
    }))

  it.effect("show: after the last batch the barrier is gone and the callback is pending", () =>
    Effect.gen(function*() {
      yield* fanOut("e-cb", 1, "cb")
      const [only] = yield* claim("cb", 1)
      expect(yield* Barrier.Barrier.use((b) => b.complete(asBatch(only!), 7))).toBe("complete")
      const view = yield* Executions.use((e) => e.show("e-cb"))
      expect(view).toMatchObject({
        barrier: null,
        batches: { done: 1, ready: 0, scheduled: 0, claimed: 0, deadLettered: 0 },
        callback: { state: "ready", attempt: 0 }
      })
    }))

  it.effect("show: an execution known only to the status store; an unknown id is ExecutionNotFound naming it", () =>
    Effect.gen(function*() {
      yield* ExecutionStatus.ExecutionStatus.use((s) => s.mark("e-only", "acme", "COMPLETED"))
      expect(yield* Executions.use((e) => e.show("e-only"))).toMatchObject({
        status: { _tag: "Found", status: "COMPLETED" },
        barrier: null,
        batches: { done: 0, ready: 0, scheduled: 0, claimed: 0, deadLettered: 0 }
      })
      const missing = yield* Executions.use((e) => e.show("e-nope")).pipe(Effect.flip)
      expect(missing).toBeInstanceOf(ExecutionNotFound)
      expect(missing.message).toContain(`"e-nope"`)
    }))

  it.effect("list: live barriers with progress and age; --stranded is expired or idle past the stuck timeout; bounded", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`DELETE FROM ${yield* table("barrier")}`
      yield* fanOut("l-fresh", 2, "list")
      yield* fanOut("l-expired", 2, "list")
      yield* fanOut("l-idle", 3, "list")
      yield* age("l-expired", "created", 3600 + 5)
      yield* age("l-idle", "progress", STUCK + 5)
      const all = yield* Executions.use((e) => e.list({ stranded: false, limit: 10 }))
      expect(all.map((b) => [b.executionId, b.total, b.remaining, b.stranded]).sort()).toEqual([
        ["l-expired", 2, 2, true],
        ["l-fresh", 2, 2, false],
        ["l-idle", 3, 3, true]
      ])
      const expired = all.find((b) => b.executionId === "l-expired")!
      expect(expired.expiresInSeconds).toBeLessThan(0)
      expect(expired.ageSeconds).toBeGreaterThan(3600)
      expect(all.find((b) => b.executionId === "l-idle")!.idleSeconds).toBeGreaterThan(STUCK)
      const stranded = yield* Executions.use((e) => e.list({ stranded: true, limit: 10 }))
      expect(stranded.map((b) => b.executionId).sort()).toEqual(["l-expired", "l-idle"])
      expect(yield* Executions.use((e) => e.list({ stranded: false, limit: 1 }))).toHaveLength(1)
      expect(yield* Executions.use((e) => e.counts)).toEqual({ live: 3, stranded: 2, capped: false })
    }))

  it.effect("stop: STOPPED and pending batches removed; again: already ended; an unknown id writes nothing", () =>
    Effect.gen(function*() {
      yield* fanOut("e-stop", 3, "stop")
      const stopped = yield* Executions.use((e) => e.stop("e-stop"))
      expect(stopped).toEqual({ executionId: "e-stop", outcome: "ended", status: { _tag: "Found", status: "STOPPED" } })
      expect(yield* claim("stop", 10)).toEqual([])
      expect((yield* Executions.use((e) => e.stop("e-stop"))).outcome).toBe("already-ended")
      const missing = yield* Executions.use((e) => e.stop("e-ghost")).pipe(Effect.flip)
      expect(missing).toBeInstanceOf(ExecutionNotFound)
      expect(yield* ExecutionStatus.ExecutionStatus.use((s) => s.read("e-ghost", ""))).toEqual({ _tag: "Gone" })
    }))
})
