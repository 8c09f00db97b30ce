import { expect, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Layer, Ref, Schedule, Schema } from "effect"
import { SqlClient } from "effect/sql"
import * as Barrier from "../src/Barrier.ts"
import * as ExecutionStatus from "../src/ExecutionStatus.ts"
import { type ClaimedJob, Queue } from "../src/Queue.ts"
import * as Task from "../src/Task.ts"
import { options, TestSchema, testDb, withWorker } from "./support.ts"

const db = testDb("barrier", { maxConnections: 20 })

const table = (name: string) => TestSchema.use(({ schema }) => SqlClient.SqlClient.use((sql) => Effect.succeed(sql(`${schema}.${name}`))))

const barrierRow = (executionId: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ total: number; remaining: number; org_id: string; ttl: number }>`
      SELECT total, remaining, org_id, extract(epoch FROM expires_at - created_at)::float8 AS ttl
      FROM ${yield* table("barrier")} WHERE execution_id = ${executionId}`
    return rows[0]
  })

const statusOf = (executionId: string) =>
  ExecutionStatus.ExecutionStatus.use((s) => s.read(executionId, "org"))

/** Claim every job of an execution's batches (as workers would), in batch order. */
const claimBatches = (queue: string, limit = 1000) =>
  Queue.use((q) => q.claim({ queues: [queue], limit, leaseSeconds: 30, processId: "test" })).pipe(
    Effect.map((jobs) => [...jobs].sort((a, b) => (a.batchIndex ?? 0) - (b.batchIndex ?? 0)))
  )

const BarrierService = Barrier.Barrier

const asBatch = (job: ClaimedJob): Barrier.BatchAttempt => ({ ...job, executionId: job.executionId!, batchIndex: job.batchIndex! })

const fanOut = (executionId: string, n: number, queue: string) =>
  BarrierService.use((b) =>
    b.start({
      executionId,
      orgId: "org",
      batches: Array.from({ length: n }, (_, i) => ({ task: "part", payload: { i }, queue })),
      callback: { task: "gather", context: { report: executionId }, queue: `${queue}-callback` }
    })
  )

layer(db, { excludeTestServices: true })("Barrier", (it) => {
  it.effect("start writes the barrier, N batch jobs with their index and EXECUTING, in one transaction", () =>
    Effect.gen(function*() {
      expect(yield* fanOut("e-start", 3, "start")).toEqual({ _tag: "Started", executionId: "e-start", batches: 3 })
      expect(yield* barrierRow("e-start")).toEqual({ total: 3, remaining: 3, org_id: "org", ttl: 3600 })
      const jobs = yield* claimBatches("start")
      expect(jobs.map((j) => [j.executionId, j.batchIndex, j.payload, j.orgId, j.barrierLive])).toEqual([
        ["e-start", 0, { i: 0 }, "org", true],
        ["e-start", 1, { i: 1 }, "org", true],
        ["e-start", 2, { i: 2 }, "org", true]
      ])
      expect(yield* statusOf("e-start")).toEqual({ _tag: "Found", status: "EXECUTING" })
    }))

  it.effect("bad starts are typed errors naming the field, and write nothing", () =>
    Effect.gen(function*() {
      const b = yield* BarrierService
      const cases = [
        [{ executionId: "e-bad", batches: [] }, "batches"],
        [{ executionId: " ", batches: [{ task: "t", payload: 1 }] }, "executionId"],
        [{ executionId: "e-bad", batches: [{ task: "t", payload: 1 }], ttlSeconds: 0 }, "ttlSeconds"],
        [{ executionId: "e-bad", batches: [{ task: "t", payload: 1 }], ttlSeconds: -5 }, "ttlSeconds"],
        [{ executionId: "e-bad", batches: [{ task: "t", payload: 1n }] }, "payload"]
      ] as const
      for (const [spec, field] of cases) {
        const error = yield* b.start({ ...spec, callback: { task: "cb" } }).pipe(Effect.flip)
        expect(String(error.message), field).toContain(field)
      }
      expect(yield* barrierRow("e-bad")).toBeUndefined()
      expect(yield* statusOf("e-bad")).toEqual({ _tag: "Gone" })
    }))

  it.effect("inside a host transaction the fan-out exists iff the host commits", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const rolledBack = yield* sql.withTransaction(fanOut("e-host", 2, "host").pipe(Effect.andThen(Effect.fail("host failed"))))
        .pipe(Effect.exit)
      expect(Exit.isFailure(rolledBack)).toBe(true)
      expect(yield* barrierRow("e-host")).toBeUndefined()
      expect(yield* claimBatches("host")).toEqual([])
      expect(yield* statusOf("e-host")).toEqual({ _tag: "Gone" })
      yield* sql.withTransaction(fanOut("e-host", 2, "host"))
      expect((yield* claimBatches("host")).length).toBe(2)
    }))

  it.effect("a redelivered orchestrator does not fan out twice; rerun resets and fans out again", () =>
    Effect.gen(function*() {
      yield* fanOut("e-twice", 2, "twice")
      expect(yield* fanOut("e-twice", 2, "twice")).toMatchObject({ _tag: "AlreadyStarted", reason: "its barrier is live" })
      const [first, held] = yield* claimBatches("twice", 2)
      expect(yield* BarrierService.use((b) => b.complete(asBatch(first!), "r0"))).toBe("pending")
      const rerun = yield* BarrierService.use((b) =>
        b.start({
          executionId: "e-twice",
          orgId: "org",
          rerun: true,
          batches: [{ task: "part", payload: { again: true }, queue: "twice" }],
          callback: { task: "gather", queue: "twice-callback" }
        })
      )
      expect(rerun).toEqual({ _tag: "Started", executionId: "e-twice", batches: 1 })
      expect(yield* barrierRow("e-twice")).toMatchObject({ total: 1, remaining: 1 })
      // Every job of the old run is gone, a claimed one too: its worker's completion is stale and cannot count
      // toward the new run (before, it counted and fired the new run's callback).
      expect(yield* BarrierService.use((b) => b.complete(asBatch(held!), "old"))).toBe("stale")
      expect(yield* barrierRow("e-twice")).toMatchObject({ total: 1, remaining: 1 })
      const jobs = yield* claimBatches("twice")
      expect(jobs.map((j) => j.payload)).toEqual([{ again: true }])
    }))

  it.effect("the last batch fires the callback once with every result in batch order, and the barrier goes", () =>
    Effect.gen(function*() {
      yield* fanOut("e-order", 4, "order")
      const jobs = yield* claimBatches("order")
      const b = yield* BarrierService
      // Completed in reverse order: results still arrive by batch index.
      const outcomes = []
      for (const job of [...jobs].reverse()) outcomes.push(yield* b.complete(asBatch(job), { index: job.batchIndex }))
      expect(outcomes).toEqual(["pending", "pending", "pending", "complete"])
      expect(yield* barrierRow("e-order")).toBeUndefined()
      const [callback, ...more] = yield* Queue.use((q) =>
        q.claim({ queues: ["order-callback"], limit: 10, leaseSeconds: 30, processId: "test" })
      )
      expect(more).toEqual([])
      expect(callback).toMatchObject({ task: "gather", executionId: "e-order", batchIndex: null, orgId: "org" })
      expect(callback!.payload).toEqual({
        executionId: "e-order",
        results: [{ index: 0 }, { index: 1 }, { index: 2 }, { index: 3 }],
        context: { report: "e-order" }
      })
    }))

  it.effect("a duplicate batch only acks; a stale attempt changes nothing; a late one after the end is abandoned", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const message = yield* table("message")
      yield* fanOut("e-dup", 2, "dup")
      const [a, b2] = yield* claimBatches("dup")
      const barrier = yield* BarrierService
      expect(yield* barrier.complete({ ...asBatch(a!), token: "00000000-0000-4000-8000-000000000000" }, 1)).toBe("stale")
      expect(yield* barrierRow("e-dup")).toMatchObject({ remaining: 2 })
      expect(yield* barrier.complete(asBatch(a!), 1)).toBe("pending")
      // The same batch delivered again as another job (a replayed dead letter, a duplicate enqueue).
      yield* sql`INSERT INTO ${message} (queue, task, payload, execution_id, batch_index) VALUES ('dup', 'part', '{}', 'e-dup', 0)`
      const [again] = yield* claimBatches("dup")
      expect(yield* barrier.complete(asBatch(again!), 1)).toBe("duplicate")
      expect(yield* barrierRow("e-dup")).toMatchObject({ remaining: 1 })
      expect(yield* barrier.stop("e-dup")).toBe("ended")
      expect(yield* barrier.complete(asBatch(b2!), 2)).toBe("abandoned")
      expect(yield* Queue.use((q) => q.claim({ queues: ["dup-callback"], limit: 10, leaseSeconds: 30, processId: "t" }))).toEqual([])
    }))

  it.effect("remaining below zero tears the barrier down without a callback", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* fanOut("e-neg", 2, "neg")
      const [a] = yield* claimBatches("neg", 1)
      yield* sql`UPDATE ${yield* table("barrier")} SET remaining = 0 WHERE execution_id = 'e-neg'`
      expect(yield* BarrierService.use((b) => b.complete(asBatch(a!), null))).toBe("abandoned")
      expect(yield* barrierRow("e-neg")).toBeUndefined()
      expect(yield* Queue.use((q) => q.claim({ queues: ["neg-callback"], limit: 10, leaseSeconds: 30, processId: "t" }))).toEqual([])
    }))

  it.effect("16 connections completing the last 16 batches at once: exactly one callback", () =>
    Effect.gen(function*() {
      yield* fanOut("e-race", 16, "race")
      const jobs = yield* claimBatches("race")
      const barrier = yield* BarrierService
      const outcomes = yield* Effect.all(jobs.map((job) => barrier.complete(asBatch(job), job.batchIndex)), {
        concurrency: "unbounded"
      })
      expect(outcomes.filter((o) => o === "complete")).toHaveLength(1)
      expect(outcomes.filter((o) => o === "pending")).toHaveLength(15)
      const callbacks = yield* Queue.use((q) => q.claim({ queues: ["race-callback"], limit: 10, leaseSeconds: 30, processId: "t" }))
      expect(callbacks).toHaveLength(1)
      expect((callbacks[0]!.payload as { results: ReadonlyArray<number> }).results).toEqual(Array.from({ length: 16 }, (_, i) => i))
    }))

  it.effect("abort marks ERROR and tears the barrier down keeping the markers; of concurrent aborts one wins", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* fanOut("e-abort", 3, "abort")
      const [a] = yield* claimBatches("abort", 1)
      const barrier = yield* BarrierService
      yield* barrier.complete(asBatch(a!), "done")
      const ends = yield* Effect.all(
        Array.from({ length: 8 }, () => barrier.abort("e-abort", "org", 1, "boom")),
        { concurrency: "unbounded" }
      )
      expect(ends.filter((e) => e === "ended")).toHaveLength(1)
      expect(ends.filter((e) => e === "already-ended")).toHaveLength(7)
      expect(yield* statusOf("e-abort")).toEqual({ _tag: "Found", status: "ERROR" })
      expect(yield* barrierRow("e-abort")).toBeUndefined()
      const markers = yield* sql`SELECT batch_index FROM ${yield* table("barrier_batch")} WHERE execution_id = 'e-abort'`
      expect(markers).toHaveLength(1)
      // Batches not started yet are removed; the execution cannot be started again.
      expect(yield* claimBatches("abort")).toEqual([])
      expect(yield* fanOut("e-abort", 3, "abort")).toMatchObject({ _tag: "AlreadyStarted" })
    }))

  it.effect("an end only acts on a live barrier: not after the callback fired, not for a batch already counted", () =>
    Effect.gen(function*() {
      yield* fanOut("e-late-end", 2, "late-end")
      const [a, b2] = yield* claimBatches("late-end")
      const barrier = yield* BarrierService
      expect(yield* barrier.complete(asBatch(a!), "a")).toBe("pending")
      // A failing duplicate of batch 0 (already counted) must not end the execution.
      expect(yield* barrier.abort("e-late-end", "org", 0, "duplicate failed")).toBe("already-ended")
      expect(yield* statusOf("e-late-end")).toEqual({ _tag: "Found", status: "EXECUTING" })
      expect(yield* barrier.complete(asBatch(b2!), "b")).toBe("complete")
      // The callback fired: a late stop or abort changes nothing, and the callback completes the execution.
      expect(yield* barrier.stop("e-late-end", "org")).toBe("already-ended")
      expect(yield* barrier.abort("e-late-end", "org", 1, "late failure")).toBe("already-ended")
      expect(yield* statusOf("e-late-end")).toEqual({ _tag: "Found", status: "EXECUTING" })
      expect(yield* barrier.finish("e-late-end", "org", { _tag: "Succeeded" })).toEqual({ _tag: "Marked", status: "COMPLETED" })
    }))

  it.effect("a failing duplicate's abort that waits on a completion of the same batch sees it counted", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const barrierTable = yield* table("barrier")
      const markers = yield* table("barrier_batch")
      yield* fanOut("e-race-end", 3, "race-end")
      const barrier = yield* BarrierService
      // A completion of batch 0 in flight: the barrier row locked, the marker written, not committed yet (what
      // Barrier.complete's statement holds until its commit). The abort of a failing duplicate of batch 0 starts
      // meanwhile, waits for the row, and must find the batch counted once it gets it.
      const locked = yield* Deferred.make<void>()
      const commit = yield* Deferred.make<void>()
      const completing = yield* Effect.forkChild(sql.withTransaction(Effect.gen(function*() {
        yield* sql`SELECT 1 FROM ${barrierTable} WHERE execution_id = 'e-race-end' FOR UPDATE`
        yield* sql`INSERT INTO ${markers} (execution_id, batch_index, result) VALUES ('e-race-end', 0, '"a"')`
        yield* sql`UPDATE ${barrierTable} SET remaining = remaining - 1 WHERE execution_id = 'e-race-end'`
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(commit)
      })))
      yield* Deferred.await(locked)
      const aborting = yield* Effect.forkChild(barrier.abort("e-race-end", "org", 0, "duplicate failed"))
      // The abort is waiting for the row lock when the completion commits.
      const { schema } = yield* TestSchema
      yield* Effect.repeat(
        sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity
                           WHERE wait_event_type = 'Lock' AND position(${schema} IN query) > 0`,
        { schedule: Schedule.spaced("10 millis"), until: (rows) => rows[0]!.n > 0 }
      )
      yield* Deferred.succeed(commit, undefined)
      yield* Fiber.join(completing)
      expect(yield* Fiber.join(aborting)).toBe("already-ended")
      expect(yield* statusOf("e-race-end")).toEqual({ _tag: "Found", status: "EXECUTING" })
      expect(yield* barrierRow("e-race-end")).toMatchObject({ remaining: 2 })
    }), { timeout: 30_000 })

  it.effect("stop marks STOPPED, removes the batches not started, and a later start is refused", () =>
    Effect.gen(function*() {
      yield* fanOut("e-stop", 5, "stop")
      const [running] = yield* claimBatches("stop", 1)
      expect(yield* BarrierService.use((b) => b.stop("e-stop"))).toBe("ended")
      expect(yield* statusOf("e-stop")).toEqual({ _tag: "Found", status: "STOPPED" })
      expect(yield* claimBatches("stop")).toEqual([])
      expect(yield* BarrierService.use((b) => b.complete(asBatch(running!), 0))).toBe("abandoned")
      expect(yield* BarrierService.use((b) => b.stop("e-stop"))).toBe("already-ended")
      expect(yield* fanOut("e-stop", 5, "stop")).toMatchObject({ _tag: "AlreadyStarted" })
    }))
})

/** A status port that cannot be reached: marks and reads fail, typed. */
const unreachable = Layer.succeed(ExecutionStatus.ExecutionStatus, ExecutionStatus.ExecutionStatus.of({
  read: (executionId) => Effect.fail(new ExecutionStatus.StatusReadFailed({ executionId, reason: "connection refused" })),
  mark: (executionId, _org, status) =>
    Effect.fail(new ExecutionStatus.StatusWriteFailed({ executionId, status, reason: "connection refused" }))
}))

const unconfirmedDb = Layer.unwrap(
  TestSchema.use(({ schema }) =>
    Effect.succeed(BarrierService.layer({ schema, ttlSeconds: 3600 }).pipe(Layer.provide(unreachable)))
  )
).pipe(Layer.provideMerge(testDb("barrier_unconfirmed")))

layer(unconfirmedDb, { excludeTestServices: true })("Barrier without a status port", (it) => {
  it.effect("an abort whose ERROR mark is not confirmed keeps the barrier row for the reaper", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const { schema } = yield* TestSchema
      // Seed a live barrier directly (start itself needs the port to mark EXECUTING).
      yield* sql`INSERT INTO ${sql(`${schema}.barrier`)} (execution_id, org_id, total, remaining, callback, expires_at)
                 VALUES ('e-unconfirmed', 'org', 2, 2, '{"task":"cb","context":null,"queue":"default","priority":5}', now() + interval '1 hour')`
      expect(yield* BarrierService.use((b) => b.abort("e-unconfirmed", "org", 0, "boom"))).toBe("unconfirmed")
      const left = yield* sql`SELECT remaining FROM ${sql(`${schema}.barrier`)} WHERE execution_id = 'e-unconfirmed'`
      expect(left).toEqual([{ remaining: 2 }])
      // And a start cannot fan out without confirming EXECUTING: nothing is written.
      const failed = yield* BarrierService.use((b) =>
        b.start({ executionId: "e-no-port", batches: [{ task: "t", payload: 1 }], callback: { task: "cb" } })
      ).pipe(Effect.exit)
      expect(Exit.isFailure(failed)).toBe(true)
      const none = yield* sql`SELECT 1 FROM ${sql(`${schema}.barrier`)} WHERE execution_id = 'e-no-port'`
      expect(none).toEqual([])
    }))
})

class PartFailed extends Schema.TaggedError<PartFailed>()("PartFailed", { index: Schema.Number }) {}

const waitFor = <A, E, R>(check: Effect.Effect<A, E, R>, until: (a: A) => boolean) =>
  check.pipe(Effect.repeat({ schedule: Schedule.spaced("20 millis"), until }))

layer(testDb("barrier_worker", { maxConnections: 12 }), { excludeTestServices: true })("Barrier with a worker", (it) => {
  it.effect("20 batches, then exactly one callback with their results in batch order (decoded with the result Schema)", () =>
    Effect.gen(function*() {
      const gathered = yield* Ref.make<ReadonlyArray<ReadonlyArray<{ readonly square: number }>>>([])
      const Square = Schema.Struct({ square: Schema.Number })
      const part = Task.define({
        name: "square",
        payload: Schema.Struct({ n: Schema.Number }),
        result: Square,
        handler: ({ n }) => Effect.succeed({ square: n * n })
      })
      const gather = Task.define({
        name: "gather-squares",
        payload: Barrier.callbackPayload(Square, Schema.Struct({ label: Schema.String })),
        handler: ({ results }) => Ref.update(gathered, (xs) => [...xs, results])
      })
      const batches = yield* Effect.forEach(Array.from({ length: 20 }, (_, n) => n), (n) => Barrier.batch(part, { n }, { queue: "squares" }))
      yield* BarrierService.use((b) =>
        b.start({ executionId: "e-squares", orgId: "org", batches, callback: { task: "gather-squares", context: { label: "x" }, queue: "squares" } })
      )
      yield* withWorker(
        Task.registry(part, gather),
        (s) => options(s, "squares"),
        waitFor(statusOf("e-squares"), (s) => s._tag === "Found" && s.status === "COMPLETED")
      )
      expect(yield* Ref.get(gathered)).toEqual([Array.from({ length: 20 }, (_, n) => ({ square: n * n }))])
      expect(yield* barrierRow("e-squares")).toBeUndefined()
    }), { timeout: 30_000 })

  it.effect("a batch that fails for good ends the execution ERROR: the callback never fires, pending batches are not run", () =>
    Effect.gen(function*() {
      const ran = yield* Ref.make<ReadonlyArray<number>>([])
      const callbacks = yield* Ref.make(0)
      const part = Task.define({
        name: "fragile",
        payload: Schema.Struct({ i: Schema.Number }),
        onFailure: () => "dead-letter" as const,
        handler: ({ i }) => Ref.update(ran, (xs) => [...xs, i]).pipe(Effect.andThen(i === 0 ? Effect.fail(new PartFailed({ index: i })) : Effect.void))
      })
      const gather = Task.define({ name: "never-gathered", payload: Schema.Unknown, handler: () => Ref.update(callbacks, (n) => n + 1) })
      yield* BarrierService.use((b) =>
        b.start({
          executionId: "e-fragile",
          orgId: "org",
          batches: Array.from({ length: 30 }, (_, i) => ({ task: "fragile", payload: { i }, queue: "fragile" })),
          callback: { task: "never-gathered", queue: "fragile" }
        })
      )
      yield* withWorker(
        Task.registry(part, gather),
        (s) => options(s, "fragile"),
        waitFor(statusOf("e-fragile"), (s) => s._tag === "Found" && s.status === "ERROR")
      )
      expect(yield* Ref.get(callbacks)).toBe(0)
      expect(yield* barrierRow("e-fragile")).toBeUndefined()
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql<{ error_message: string }>`SELECT error_message FROM ${yield* table("execution")} WHERE execution_id = 'e-fragile'`
      expect(row!.error_message).toContain("[barrier-abort] batch 0 failed")
      const left = yield* sql`SELECT 1 FROM ${yield* table("message")} WHERE execution_id = 'e-fragile' AND state <> 'claimed'`
      expect(left).toEqual([])
    }), { timeout: 30_000 })

  it.effect("batches of a stopped execution are acked without running; an unstorable result aborts, naming the field", () =>
    Effect.gen(function*() {
      const ran = yield* Ref.make(0)
      const part = Task.define({
        name: "counted",
        payload: Schema.Struct({ bad: Schema.Boolean }),
        handler: ({ bad }) => Ref.update(ran, (n) => n + 1).pipe(Effect.as(bad ? { big: 1n } : { ok: true }))
      })
      const sql = yield* SqlClient.SqlClient
      yield* BarrierService.use((b) =>
        b.start({ executionId: "e-stopped", orgId: "org", batches: [{ task: "counted", payload: { bad: false }, queue: "stopped" }], callback: { task: "cb", queue: "stopped" } })
      )
      // Ended behind the worker's back (its barrier gone) while the batch still waits: it must not run.
      yield* sql`DELETE FROM ${yield* table("barrier")} WHERE execution_id = 'e-stopped'`
      yield* BarrierService.use((b) =>
        b.start({ executionId: "e-unstorable", orgId: "org", batches: [{ task: "counted", payload: { bad: true }, queue: "stopped" }], callback: { task: "cb", queue: "stopped" } })
      )
      yield* withWorker(
        Task.registry(part),
        (s) => options(s, "stopped"),
        waitFor(statusOf("e-unstorable"), (s) => s._tag === "Found" && s.status === "ERROR")
      )
      expect(yield* Ref.get(ran)).toBe(1)
      const [dead] = yield* sql<{ last_error: string }>`SELECT last_error FROM ${yield* table("dead_letter")} WHERE execution_id = 'e-unstorable'`
      expect(dead!.last_error).toContain("result.big is a bigint")
      const pending = yield* sql`SELECT 1 FROM ${yield* table("message")} WHERE execution_id = 'e-stopped'`
      expect(pending).toEqual([])
    }), { timeout: 30_000 })

  it.effect("a callback that fails and is discarded still ends its execution (ERROR), never EXECUTING forever", () =>
    Effect.gen(function*() {
      const part = Task.define({ name: "fine", payload: Schema.Struct({}), handler: () => Effect.succeed(1) })
      const gather = Task.define({
        name: "discarding-gather",
        payload: Schema.Unknown,
        onFailure: () => "discard" as const,
        handler: () => Effect.fail(new PartFailed({ index: -1 }))
      })
      yield* BarrierService.use((b) =>
        b.start({ executionId: "e-discard", orgId: "org", batches: [{ task: "fine", payload: {}, queue: "discard" }], callback: { task: "discarding-gather", queue: "discard" } })
      )
      yield* withWorker(
        Task.registry(part, gather),
        (s) => options(s, "discard"),
        waitFor(statusOf("e-discard"), (s) => s._tag === "Found" && s.status === "ERROR")
      )
    }), { timeout: 30_000 })
})
