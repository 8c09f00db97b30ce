/**
 * The reaper's barrier recovery, retention sweeps and gauges on a real Postgres. The reference's §15.9
 * "Recovery (DB)" catalogue maps onto these, with the SQL status store for the ordinary cases and a spy
 * around it (a port, not SQL) for failed reads and writes, NoStatus and progress made during a recovery.
 * Beyond the reference: a barrier whose batches all completed is healed (its callback fires once with the
 * ordered results) instead of being marked ERROR; an ex-leader's recovery changes nothing; an ERROR mark
 * racing the last batch's completion ends one way only (ERROR and no callback, or the callback and no ERROR).
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Cause, Deferred, Effect, Fiber, Layer, Logger, type LogLevel, Metric, Option, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { TestClock } from "effect/testing"
import * as Barrier from "../src/Barrier.ts"
import { makeBarrierRecovery, type BarrierRecoveryOptions } from "../src/BarrierRecovery.ts"
import * as ExecutionStatus from "../src/ExecutionStatus.ts"
import { makeLeaderLease } from "../src/LeaderLease.ts"
import { makeCadence } from "../src/MaintenanceJob.ts"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import { Queue } from "../src/Queue.ts"
import { makeQueueGauges, QueueGauges } from "../src/QueueGauges.ts"
import { makeTick, ReaperMetrics, type ReaperOptions } from "../src/Reaper.ts"
import { makeRetentionSweep, type RetentionOptions } from "../src/RetentionSweep.ts"
import { TestSchema, testDb } from "./support.ts"

const STUCK = 600
const LEASE = "recovery-test"

const stranded = (n: number) =>
  `[reaper-recovery] Execution stranded: ${n} batch(es) never completed before the barrier expired (worker crash / lost task).`

const db = testDb("barrier_recovery", { maxConnections: 16 })
const providers = Layer.unwrap(TestSchema.use(({ schema }) => Effect.succeed(ProcessRegistry.layer(schema))))

const tables = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const t = (name: string) => sql(`${schema}.${name}`)
  return {
    sql,
    schema,
    barrier: t("barrier"),
    markers: t("barrier_batch"),
    message: t("message"),
    execution: t("execution"),
    deadLetter: t("dead_letter")
  }
})

/** Every test starts from empty tables: recovery looks at every stranded barrier of the schema. */
const reset = Effect.gen(function*() {
  const { sql, barrier, markers, message, execution, deadLetter } = yield* tables
  for (const table of [barrier, markers, message, execution, deadLetter]) yield* sql`DELETE FROM ${table}`
})

interface StartSpec {
  readonly batches?: number
  readonly org?: string
  readonly callback?: Partial<Barrier.CallbackSpec>
}

/** A real fan-out (barrier row, N batch jobs, EXECUTING) of `id`. */
const start = (id: string, spec: StartSpec = {}) =>
  Barrier.Barrier.use((b) =>
    b.start({
      executionId: id,
      orgId: spec.org ?? "org",
      batches: Array.from({ length: spec.batches ?? 3 }, (_, i) => ({ task: "part", payload: { i }, queue: `q-${id}` })),
      callback: { task: "gather", context: { id }, queue: `cb-${id}`, ...spec.callback }
    })
  ).pipe(Effect.tap((r) => Effect.sync(() => expect(r._tag).toBe("Started"))))

/** Count batches as done (their markers with results, `remaining` down), as `Barrier.complete` would. */
const counted = (id: string, results: ReadonlyArray<readonly [number, unknown]>) =>
  Effect.gen(function*() {
    const { sql, barrier, markers } = yield* tables
    for (const [index, result] of results) {
      yield* sql`INSERT INTO ${markers} (execution_id, batch_index, result)
                 VALUES (${id}, ${index}, ${JSON.stringify(result)}::jsonb)`
    }
    yield* sql`UPDATE ${barrier} SET remaining = remaining - ${results.length}, last_progress_at = now()
               WHERE execution_id = ${id}`
  })

/** Make a barrier stranded: past its expiry, or without progress for longer than the stuck timeout. */
const strand = (id: string, how: "expired" | "stuck" = "expired", createdMinutesAgo = 120) =>
  Effect.gen(function*() {
    const { sql, barrier } = yield* tables
    const created = sql`now() - ${createdMinutesAgo} * interval '1 minute'`
    yield* how === "expired"
      ? sql`UPDATE ${barrier} SET created_at = ${created}, expires_at = now() - interval '1 second',
                                last_progress_at = ${created} WHERE execution_id = ${id}`
      : sql`UPDATE ${barrier} SET created_at = ${created}, expires_at = now() + interval '1 hour',
                                last_progress_at = now() - ${STUCK + 60} * interval '1 second' WHERE execution_id = ${id}`
  })

const barrierOf = (id: string) =>
  tables.pipe(
    Effect.flatMap(({ sql, barrier }) =>
      sql<{ remaining: number }>`SELECT remaining FROM ${barrier} WHERE execution_id = ${id}`
    ),
    Effect.map((rows) => rows[0])
  )

const markerCount = (id: string) =>
  tables.pipe(
    Effect.flatMap(({ sql, markers }) =>
      sql<{ n: number }>`SELECT count(*)::int AS n FROM ${markers} WHERE execution_id = ${id}`
    ),
    Effect.map((rows) => rows[0]!.n)
  )

const executionOf = (id: string) =>
  tables.pipe(
    Effect.flatMap(({ sql, execution }) =>
      sql<{ status: string; error_message: string | null }>`
        SELECT status, error_message FROM ${execution} WHERE execution_id = ${id}`
    ),
    Effect.map((rows) => rows[0])
  )

const callbacksOf = (id: string) =>
  tables.pipe(Effect.flatMap(({ sql, message }) =>
    sql<{
      task: string
      queue: string
      payload: unknown
      org_id: string
      priority: number
      max_attempts: number
      state: string
    }>`SELECT task, queue, payload, org_id, priority, max_attempts, state FROM ${message}
       WHERE execution_id = ${id} AND batch_index IS NULL`
  ))

/** Win the test lease for `holder`, first freeing it from whoever a previous test left there. */
const termFor = (holder: string, free = true) =>
  Effect.gen(function*() {
    const { sql, schema } = yield* tables
    if (free) yield* sql`UPDATE ${sql(`${schema}.lease`)} SET holder = '', expires_at = now() WHERE name = ${LEASE}`
    const lease = yield* makeLeaderLease({ schema })
    const term = Option.getOrThrow(yield* lease.tryAcquire(LEASE, holder, 30))
    return { name: LEASE, holder, term, fence: lease.fence(LEASE, holder, term) }
  })

/** A leader term that was taken over: its fence no longer holds. */
const staleTerm = Effect.gen(function*() {
  const { sql, schema } = yield* tables
  const stale = yield* termFor("paused-leader")
  yield* sql`UPDATE ${sql(`${schema}.lease`)} SET expires_at = now() - interval '1 second' WHERE name = ${LEASE}`
  const fresh = yield* termFor("new-leader", false)
  return { stale, fresh }
})

type Port = ExecutionStatus.ExecutionStatusShape

interface Spy {
  readonly port: Port
  readonly reads: Array<string>
  readonly marks: Array<{ readonly id: string; readonly status: string; readonly message: string | undefined }>
}

/** The SQL store with every call recorded, and some answers replaced. */
const spy = (overrides: Partial<Port> = {}) =>
  Effect.gen(function*() {
    const base = yield* ExecutionStatus.ExecutionStatus
    const reads: Spy["reads"] = []
    const marks: Spy["marks"] = []
    const port: Port = {
      read: (id, org) =>
        Effect.suspend(() => {
          reads.push(`${id}@${org}`)
          return (overrides.read ?? base.read)(id, org)
        }),
      mark: (id, org, status, message) =>
        Effect.suspend(() => {
          marks.push({ id, status, message })
          return (overrides.mark ?? base.mark)(id, org, status, message)
        })
    }
    return { port, reads, marks } satisfies Spy
  })

const recoveryWith = (port: Port | undefined, options: Partial<BarrierRecoveryOptions> = {}) =>
  Effect.gen(function*() {
    const { schema } = yield* TestSchema
    const make = makeBarrierRecovery({ schema, stuckTimeoutSeconds: STUCK, ...options })
    return yield* port === undefined ? make : make.pipe(Effect.provideService(ExecutionStatus.ExecutionStatus, port))
  })

interface LogLine {
  readonly level: LogLevel.LogLevel
  readonly text: string
}

/** Run `effect` with its log lines captured (and not printed). */
const captureLogs = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const lines: Array<LogLine> = []
    const logger = Logger.make(({ cause, logLevel, message }) => {
      const parts = Array.isArray(message) ? message : [message]
      lines.push({ level: logLevel, text: [...parts.map(String), cause.reasons.length === 0 ? "" : Cause.pretty(cause)].join(" ") })
    })
    const result = yield* effect.pipe(Effect.provide(Logger.layer([logger])))
    return [result, lines] as const
  })

/** A status store outside the database (like the HTTP adapter): its writes never roll back with ours. */
const memoryPort = (initial: Record<string, ExecutionStatus.Status>): Port => {
  const stored = new Map(Object.entries(initial))
  return {
    read: (id) =>
      Effect.sync(() => {
        const status = stored.get(id)
        return status === undefined ? { _tag: "Gone" } : { _tag: "Found", status }
      }),
    mark: (id, _org, status) =>
      Effect.sync(() => {
        const current = stored.get(id)
        const after = current !== undefined && ExecutionStatus.isTerminal(current) ? current : status
        stored.set(id, after)
        return { _tag: "Marked", status: after }
      })
  }
}

const readFails = (id: string) => Effect.fail(new ExecutionStatus.StatusReadFailed({ executionId: id, reason: "HTTP 503" }))

const zero = { selected: 0, recovered: 0, healed: 0, failed: 0, skipped: 0 }

layer(providers.pipe(Layer.provideMerge(db)), { excludeTestServices: true })("Barrier recovery", (it) => {
  it.effect("recovers only stranded barriers: marks ERROR (never completed), removes barrier and markers; a fresh one is untouched", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-expired", { batches: 3 })
      yield* counted("e-expired", [[0, "r0"]])
      yield* strand("e-expired")
      yield* start("e-fresh", { batches: 2 })
      yield* counted("e-fresh", [[1, "r1"]])
      const s = yield* spy()
      const recovery = yield* recoveryWith(s.port)
      const outcome = yield* recovery.run(yield* termFor("leader"))
      expect(outcome).toEqual({ ...zero, selected: 1, recovered: 1 })
      expect(s.reads).toEqual(["e-expired@org"])
      expect(s.marks).toEqual([{ id: "e-expired", status: "ERROR", message: stranded(2) }])
      expect(yield* executionOf("e-expired")).toEqual({ status: "ERROR", error_message: stranded(2) })
      expect(yield* barrierOf("e-expired")).toBeUndefined()
      expect(yield* markerCount("e-expired")).toBe(0)
      expect(yield* barrierOf("e-fresh")).toEqual({ remaining: 1 })
      expect(yield* markerCount("e-fresh")).toBe(1)
      expect((yield* executionOf("e-fresh"))!.status).toBe("EXECUTING")
      // Its batches not run yet are no longer live: a worker that claims one skips it.
      const jobs = yield* Queue.use((q) => q.claim({ queues: ["q-e-expired"], limit: 10, leaseSeconds: 30, processId: "t" }))
      expect(jobs.map((j) => j.barrierLive)).toEqual([false, false, false])
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual(zero)
    }))

  it.effect("a stranded barrier whose batches all completed is healed: one callback with the ordered results, no ERROR", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-heal", {
        batches: 3,
        org: "org-h",
        callback: { context: { report: 7 }, priority: 7, maxAttempts: 2 }
      })
      yield* counted("e-heal", [[2, { c: 3 }], [0, "a"], [1, null]])
      yield* strand("e-heal")
      const s = yield* spy()
      const recovery = yield* recoveryWith(s.port)
      const term = yield* termFor("leader")
      expect(yield* recovery.run(term)).toEqual({ ...zero, selected: 1, healed: 1 })
      expect(s.marks).toEqual([])
      const callbacks = yield* callbacksOf("e-heal")
      expect(callbacks).toEqual([{
        task: "gather",
        queue: "cb-e-heal",
        payload: { executionId: "e-heal", results: ["a", null, { c: 3 }], context: { report: 7 } },
        org_id: "org-h",
        priority: 7,
        max_attempts: 2,
        state: "ready"
      }])
      expect(yield* barrierOf("e-heal")).toBeUndefined()
      expect((yield* executionOf("e-heal"))!.status).toBe("EXECUTING")
      // Markers stay, as after a normal last completion (a late duplicate still finds its marker).
      expect(yield* markerCount("e-heal")).toBe(3)
      expect(yield* recovery.run(term)).toEqual(zero)
      expect(yield* callbacksOf("e-heal")).toHaveLength(1)
    }))

  it.effect("remaining below zero is marked ERROR with the inconsistent-state reason", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-neg", { batches: 1 })
      yield* counted("e-neg", [[0, 1]])
      const { sql, barrier } = yield* tables
      yield* sql`UPDATE ${barrier} SET remaining = -1 WHERE execution_id = 'e-neg'`
      yield* strand("e-neg")
      const recovery = yield* recoveryWith(undefined)
      expect(yield* recovery.run(yield* termFor("leader"))).toMatchObject({ recovered: 1 })
      expect(yield* executionOf("e-neg")).toEqual({
        status: "ERROR",
        error_message: "[reaper-recovery] Execution stranded: the barrier was already torn down (remaining < 0) " +
          "yet the execution was left non-terminal — inconsistent state."
      })
      expect(yield* callbacksOf("e-neg")).toEqual([])
      expect(yield* barrierOf("e-neg")).toBeUndefined()
    }))

  it.effect("an already-terminal execution is only cleaned up: no mark, no callback, status kept", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-done", { batches: 2 })
      yield* counted("e-done", [[0, 1], [1, 2]])
      yield* start("e-stopped", { batches: 2 })
      const statuses = yield* ExecutionStatus.ExecutionStatus
      yield* statuses.mark("e-done", "org", "COMPLETED")
      yield* statuses.mark("e-stopped", "org", "STOPPED")
      yield* strand("e-done")
      yield* strand("e-stopped", "stuck")
      const s = yield* spy()
      const recovery = yield* recoveryWith(s.port)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 2, recovered: 2 })
      expect(s.marks).toEqual([])
      expect((yield* executionOf("e-done"))!.status).toBe("COMPLETED")
      expect((yield* executionOf("e-stopped"))!.status).toBe("STOPPED")
      expect(yield* callbacksOf("e-done")).toEqual([])
      for (const id of ["e-done", "e-stopped"]) {
        expect(yield* barrierOf(id)).toBeUndefined()
        expect(yield* markerCount(id)).toBe(0)
      }
    }))

  it.effect("a Gone execution is cleaned up without a mark", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-gone", { batches: 2 })
      yield* counted("e-gone", [[0, 1]])
      yield* strand("e-gone")
      const { sql, execution } = yield* tables
      yield* sql`DELETE FROM ${execution} WHERE execution_id = 'e-gone'`
      const s = yield* spy()
      const recovery = yield* recoveryWith(s.port)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 1, recovered: 1 })
      expect(s.marks).toEqual([])
      expect(yield* executionOf("e-gone")).toBeUndefined()
      expect(yield* barrierOf("e-gone")).toBeUndefined()
      expect(yield* markerCount("e-gone")).toBe(0)
    }))

  it.effect("a Gone (or finished) execution whose barrier made progress meanwhile is left alone", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-gone-race", { batches: 2 })
      yield* strand("e-gone-race", "stuck")
      const { sql, barrier } = yield* tables
      // The read answers Gone, but meanwhile the execution id was re-run and its barrier is live again.
      const s = yield* spy({
        read: (id) =>
          sql`UPDATE ${barrier} SET last_progress_at = now() WHERE execution_id = ${id}`.pipe(
            Effect.orDie,
            Effect.as({ _tag: "Gone" } as const)
          )
      })
      const recovery = yield* recoveryWith(s.port)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 1, skipped: 1 })
      expect(yield* barrierOf("e-gone-race")).toEqual({ remaining: 2 })
    }))

  it.effect("with a store that needs an org (HTTP), a barrier without one is kept and logged, the port never called", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-no-org", { batches: 2, org: "" })
      yield* strand("e-no-org")
      const s = yield* spy()
      const recovery = yield* recoveryWith(s.port, { requireOrgId: true })
      const [outcome, logs] = yield* captureLogs(recovery.run(yield* termFor("leader")))
      expect(outcome).toEqual({ ...zero, selected: 1, skipped: 1 })
      expect(s.reads).toEqual([])
      expect(s.marks).toEqual([])
      expect(yield* barrierOf("e-no-org")).toEqual({ remaining: 2 })
      expect(logs.filter((l) => l.level === "Error" && l.text.includes("e-no-org") && l.text.includes("organization"))).toHaveLength(1)
    }))

  it.effect("with the SQL store (executions keyed by id alone) a barrier without an org is recovered", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-no-org-sql", { batches: 2, org: "" })
      yield* strand("e-no-org-sql")
      const recovery = yield* recoveryWith(undefined)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 1, recovered: 1 })
      expect(yield* barrierOf("e-no-org-sql")).toBeUndefined()
    }))

  it.effect("NoStatus keeps the barrier and marks nothing", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-nostatus", { batches: 2 })
      yield* strand("e-nostatus")
      const s = yield* spy({ read: () => Effect.succeed({ _tag: "NoStatus" }) })
      const recovery = yield* recoveryWith(s.port)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 1, skipped: 1 })
      expect(s.marks).toEqual([])
      expect(yield* barrierOf("e-nostatus")).toEqual({ remaining: 2 })
      expect(yield* markerCount("e-nostatus")).toBe(0)
    }))

  it.effect("a failed status read keeps the row and counts a failure; when every recovery fails it is logged as systemic", () =>
    Effect.gen(function*() {
      yield* reset
      for (const id of ["e-read-1", "e-read-2"]) {
        yield* start(id, { batches: 2 })
        yield* counted(id, [[0, "x"]])
        yield* strand(id)
      }
      const s = yield* spy({ read: readFails })
      const recovery = yield* recoveryWith(s.port)
      const [outcome, logs] = yield* captureLogs(recovery.run(yield* termFor("leader")))
      expect(outcome).toEqual({ ...zero, selected: 2, failed: 2 })
      expect(s.reads).toHaveLength(2)
      expect(s.marks).toEqual([])
      for (const id of ["e-read-1", "e-read-2"]) {
        expect(yield* barrierOf(id)).toEqual({ remaining: 1 })
        expect(yield* markerCount(id)).toBe(1)
        expect((yield* executionOf(id))!.status).toBe("EXECUTING")
      }
      const systemic = logs.filter((l) => l.level === "Error" && l.text.includes("likely systemic"))
      expect(systemic).toHaveLength(1)
      expect(systemic[0]!.text).toContain("recovered=0, healed=0, failed=2, skipped=0 of 2")
    }))

  it.effect("a failed or refused status write keeps the barrier and its markers", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-write", { batches: 3 })
      yield* counted("e-write", [[1, "y"]])
      yield* strand("e-write")
      const s = yield* spy({
        mark: (id, _org, status) => Effect.fail(new ExecutionStatus.StatusWriteFailed({ executionId: id, status, reason: "HTTP 500" }))
      })
      const recovery = yield* recoveryWith(s.port)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 1, failed: 1 })
      expect(s.marks).toHaveLength(1)
      expect(yield* barrierOf("e-write")).toEqual({ remaining: 2 })
      expect(yield* markerCount("e-write")).toBe(1)
      expect((yield* executionOf("e-write"))!.status).toBe("EXECUTING")
    }))

  it.effect("one failing execution does not block the others (a partial failure is a warning, not systemic)", () =>
    Effect.gen(function*() {
      yield* reset
      for (const id of ["e-a", "e-bad", "e-c"]) {
        yield* start(id, { batches: 2 })
        yield* strand(id)
      }
      const base = yield* ExecutionStatus.ExecutionStatus
      const s = yield* spy({ read: (id, org) => (id === "e-bad" ? readFails(id) : base.read(id, org)) })
      const recovery = yield* recoveryWith(s.port)
      const [outcome, logs] = yield* captureLogs(recovery.run(yield* termFor("leader")))
      expect(outcome).toEqual({ ...zero, selected: 3, recovered: 2, failed: 1 })
      expect((yield* executionOf("e-a"))!.status).toBe("ERROR")
      expect((yield* executionOf("e-c"))!.status).toBe("ERROR")
      expect(yield* barrierOf("e-bad")).toEqual({ remaining: 2 })
      expect(logs.some((l) => l.text.includes("likely systemic"))).toBe(false)
      expect(logs.filter((l) => l.level === "Warn" && l.text.includes("recovered=2, healed=0, failed=1, skipped=0 of 3")))
        .toHaveLength(1)
    }))

  it.effect("a barrier that makes progress during its recovery is neither marked nor removed", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-progress", { batches: 3 })
      yield* strand("e-progress", "stuck")
      const { sql, barrier } = yield* tables
      const base = yield* ExecutionStatus.ExecutionStatus
      // While the status is read, a batch completes (or the execution is re-run): no longer stranded.
      const s = yield* spy({
        read: (id, org) =>
          sql`UPDATE ${barrier} SET last_progress_at = now() WHERE execution_id = ${id}`.pipe(
            Effect.orDie,
            Effect.andThen(base.read(id, org))
          )
      })
      const recovery = yield* recoveryWith(s.port)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 1, skipped: 1 })
      expect(s.marks).toEqual([])
      expect(yield* barrierOf("e-progress")).toEqual({ remaining: 3 })
      expect((yield* executionOf("e-progress"))!.status).toBe("EXECUTING")
    }))

  it.effect("no progress for the stuck timeout is stranded even while expires_at is in the future", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-stuck", { batches: 2 })
      yield* strand("e-stuck", "stuck")
      const recovery = yield* recoveryWith(undefined)
      expect(yield* recovery.run(yield* termFor("leader"))).toEqual({ ...zero, selected: 1, recovered: 1 })
      expect(yield* executionOf("e-stuck")).toEqual({ status: "ERROR", error_message: stranded(2) })
    }))

  it.effect("when everything is skipped nothing is logged as a failure or a summary", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-skip", { batches: 2 })
      yield* strand("e-skip")
      const s = yield* spy({ read: () => Effect.succeed({ _tag: "NoStatus" }) })
      const recovery = yield* recoveryWith(s.port)
      const [outcome, logs] = yield* captureLogs(recovery.run(yield* termFor("leader")))
      expect(outcome).toEqual({ ...zero, selected: 1, skipped: 1 })
      expect(logs.filter((l) => l.level === "Error")).toEqual([])
      expect(logs.some((l) => l.text.includes("of 1 stranded"))).toBe(false)
    }))

  it.effect("nothing stranded: a no-op with no status call and no log", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-live", { batches: 2 })
      const s = yield* spy()
      const recovery = yield* recoveryWith(s.port)
      const [outcome, logs] = yield* captureLogs(recovery.run(yield* termFor("leader")))
      expect(outcome).toEqual(zero)
      expect(s.reads).toEqual([])
      expect(logs).toEqual([])
    }))

  it.effect("an ex-leader's recovery changes nothing and asks the port nothing", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-ex", { batches: 2 })
      yield* strand("e-ex")
      yield* start("e-ex-heal", { batches: 1 })
      yield* counted("e-ex-heal", [[0, "done"]])
      yield* strand("e-ex-heal")
      const { stale, fresh } = yield* staleTerm
      const s = yield* spy()
      const recovery = yield* recoveryWith(s.port)
      expect((yield* recovery.run(stale)).recovered + (yield* recovery.run(stale)).healed).toBe(0)
      expect(s.marks).toEqual([])
      expect(yield* barrierOf("e-ex")).toEqual({ remaining: 2 })
      expect(yield* barrierOf("e-ex-heal")).toEqual({ remaining: 0 })
      expect(yield* callbacksOf("e-ex-heal")).toEqual([])
      expect((yield* executionOf("e-ex"))!.status).toBe("EXECUTING")
      // The real leader does the work.
      expect(yield* recovery.run(fresh)).toMatchObject({ recovered: 1, healed: 1 })
    }))

  it.effect("an ex-leader whose term is lost during the mark rolls the mark back (SQL store)", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-lost", { batches: 2 })
      yield* strand("e-lost")
      const { sql, schema } = yield* tables
      const term = yield* termFor("leader-lost")
      const base = yield* ExecutionStatus.ExecutionStatus
      // The lease is taken over (by another connection) while the status is being written.
      const steal = yield* Deferred.make<void>()
      const stolen = yield* Deferred.make<void>()
      yield* Effect.forkChild(
        Deferred.await(steal).pipe(
          Effect.andThen(sql`UPDATE ${sql(`${schema}.lease`)} SET holder = 'thief', term = term + 1 WHERE name = ${LEASE}`),
          Effect.andThen(Deferred.succeed(stolen, undefined)),
          Effect.orDie
        )
      )
      const s = yield* spy({
        mark: (id, org, status, message) =>
          base.mark(id, org, status, message).pipe(
            Effect.tap(() => Deferred.succeed(steal, undefined).pipe(Effect.andThen(Deferred.await(stolen))))
          )
      })
      const recovery = yield* recoveryWith(s.port)
      expect(yield* recovery.run(term)).toMatchObject({ recovered: 0 })
      expect(s.marks).toHaveLength(1)
      expect(yield* barrierOf("e-lost")).toEqual({ remaining: 2 })
      expect((yield* executionOf("e-lost"))!.status).toBe("EXECUTING")
    }))

  for (const store of ["the SQL store", "a store outside the database (like HTTP)"] as const) {
    it.effect(`the ERROR mark racing the last batch's completion ends one way only (${store})`, () =>
      Effect.gen(function*() {
        yield* reset
        const id = `e-late-${store.length}`
        yield* start(id, { batches: 2 })
        const claimed = yield* Queue.use((q) => q.claim({ queues: [`q-${id}`], limit: 2, leaseSeconds: 300, processId: "w" }))
        const batches = claimed.map((job): Barrier.BatchAttempt => ({ ...job, executionId: id, batchIndex: job.batchIndex! }))
        const barrier = yield* Barrier.Barrier
        expect(yield* barrier.complete(batches[0]!, "first")).toBe("pending")
        yield* strand(id)
        const base = store === "the SQL store" ? yield* ExecutionStatus.ExecutionStatus : memoryPort({ [id]: "EXECUTING" })
        const marking = yield* Deferred.make<void>()
        const proceed = yield* Deferred.make<void>()
        const s = yield* spy({
          read: base.read,
          mark: (id, org, status, message) =>
            Deferred.succeed(marking, undefined).pipe(
              Effect.andThen(Deferred.await(proceed)),
              Effect.andThen(base.mark(id, org, status, message))
            )
        })
        const recovery = yield* recoveryWith(s.port)
        const reaper = yield* Effect.forkChild(recovery.run(yield* termFor("leader")))
        yield* Deferred.await(marking)
        // The last batch completes while the reaper is marking: it must wait for the reaper's verdict.
        const completed = yield* Deferred.make<Barrier.CompleteResult>()
        const late = yield* Effect.forkChild(
          barrier.complete(batches[1]!, "second").pipe(Effect.tap((r) => Deferred.succeed(completed, r)))
        )
        const { sql, schema } = yield* tables
        const waiting = sql<{ n: number }>`
          SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE wait_event_type = 'Lock' AND position(${schema} in query) > 0`.pipe(Effect.map((rows) => rows[0]!.n))
        yield* Effect.all([waiting, Deferred.isDone(completed)]).pipe(
          Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: ([n, done]) => n > 0 || done })
        )
        yield* Deferred.succeed(proceed, undefined)
        const outcome = yield* Fiber.join(reaper)
        const result = yield* Fiber.join(late)
        const status = yield* base.read(id, "org")
        const callbacks = yield* callbacksOf(id)
        // The reaper's ERROR (the completion is abandoned), never ERROR and a callback.
        expect({ outcome, result, status, callbacks: callbacks.length }).toEqual({
          outcome: { ...zero, selected: 1, recovered: 1 },
          result: "abandoned",
          status: { _tag: "Found", status: "ERROR" },
          callbacks: 0
        })
      }))
  }

  it.effect("overlapping heals and a redelivered batch fire exactly one callback", () =>
    Effect.gen(function*() {
      yield* reset
      yield* start("e-heal-race", { batches: 2 })
      yield* counted("e-heal-race", [[0, "a"], [1, "b"]])
      yield* strand("e-heal-race")
      const { sql, message } = yield* tables
      // Batch 1 delivered again (a replayed dead letter): its completion is a duplicate.
      yield* sql`INSERT INTO ${message} (queue, task, payload, execution_id, batch_index)
                 VALUES ('q-again', 'part', '{}', 'e-heal-race', 1)`
      const [again] = yield* Queue.use((q) => q.claim({ queues: ["q-again"], limit: 1, leaseSeconds: 300, processId: "w" }))
      const term = yield* termFor("leader")
      const recoveries = yield* Effect.all(Array.from({ length: 4 }, () => recoveryWith(undefined)))
      const barrier = yield* Barrier.Barrier
      const [outcomes, completion] = yield* Effect.all([
        Effect.all(recoveries.map((r) => r.run(term)), { concurrency: "unbounded" }),
        barrier.complete({ ...again!, executionId: "e-heal-race", batchIndex: 1 }, "b-again")
      ], { concurrency: "unbounded" })
      expect(outcomes.reduce((n, o) => n + o.healed, 0)).toBe(1)
      expect(completion).toBe("duplicate")
      const callbacks = yield* callbacksOf("e-heal-race")
      expect(callbacks.map((c) => c.payload)).toEqual([{ executionId: "e-heal-race", results: ["a", "b"], context: { id: "e-heal-race" } }])
    }))

  it.effect("each run looks at a bounded page, oldest first, and rows it keeps do not starve the others", () =>
    Effect.gen(function*() {
      yield* reset
      for (const [i, id] of ["e-kept-1", "e-kept-2", "e-kept-3"].entries()) {
        yield* start(id, { batches: 1, org: "" })
        yield* strand(id, "expired", 300 - i)
      }
      for (const id of ["e-next-1", "e-next-2"]) {
        yield* start(id, { batches: 1 })
        yield* strand(id, "expired", 100)
      }
      const recovery = yield* recoveryWith(undefined, { limit: 2, requireOrgId: true })
      const term = yield* termFor("leader")
      const [first, logs] = yield* captureLogs(recovery.run(term))
      expect(first).toEqual({ ...zero, selected: 2, skipped: 2 })
      expect(logs.filter((l) => l.text.includes("e-kept-1") || l.text.includes("e-kept-2"))).toHaveLength(2)
      const second = yield* captureLogs(recovery.run(term)).pipe(Effect.map(([o]) => o))
      expect(second).toEqual({ ...zero, selected: 2, recovered: 1, skipped: 1 })
      const third = yield* captureLogs(recovery.run(term)).pipe(Effect.map(([o]) => o))
      expect(third).toEqual({ ...zero, selected: 1, recovered: 1 })
      expect((yield* executionOf("e-next-1"))!.status).toBe("ERROR")
      expect((yield* executionOf("e-next-2"))!.status).toBe("ERROR")
      // Then it starts over from the oldest.
      const fourth = yield* captureLogs(recovery.run(term)).pipe(Effect.map(([o]) => o))
      expect(fourth).toEqual({ ...zero, selected: 2, skipped: 2 })
    }))
})

const retentionOptions = (schema: string): RetentionOptions => ({
  schema,
  deadLetterRetentionSeconds: 3600,
  markerRetentionSeconds: 86_400,
  executionRetentionSeconds: 30 * 86_400
})

layer(providers.pipe(Layer.provideMerge(db)), { excludeTestServices: true })("Retention sweeps", (it) => {
  it.effect("old markers of ended executions and old finished executions go; live, young and unfinished ones stay", () =>
    Effect.gen(function*() {
      yield* reset
      const { sql, schema, markers, execution } = yield* tables
      const marker = (id: string, index: number, age: string) =>
        sql`INSERT INTO ${markers} (execution_id, batch_index, created_at) VALUES (${id}, ${index}, now() - ${age}::interval)`
      for (const i of [0, 1, 2]) yield* marker("m-ended-old", i, "2 days")
      yield* marker("m-ended-young", 0, "1 hour")
      yield* start("m-live-old", { batches: 2 })
      yield* marker("m-live-old", 0, "2 days")
      const exec = (id: string, status: string, age: string) =>
        sql`INSERT INTO ${execution} (execution_id, status, updated_at) VALUES (${id}, ${status}, now() - ${age}::interval)`
      yield* exec("x-done-old", "COMPLETED", "31 days")
      yield* exec("x-error-old", "ERROR", "40 days")
      yield* exec("x-running-old", "EXECUTING", "40 days")
      yield* exec("x-done-young", "STOPPED", "29 days")
      yield* start("x-ended-with-barrier", { batches: 1 })
      yield* sql`UPDATE ${execution} SET status = 'ERROR', updated_at = now() - interval '40 days'
                 WHERE execution_id = 'x-ended-with-barrier'`
      const sweep = yield* makeRetentionSweep(retentionOptions(schema))
      const outcome = yield* sweep.run(yield* termFor("leader"))
      expect(outcome).toEqual({ deadLetters: 0, markers: 3, executions: 2, failed: [] })
      expect(yield* markerCount("m-ended-old")).toBe(0)
      expect(yield* markerCount("m-ended-young")).toBe(1)
      expect(yield* markerCount("m-live-old")).toBe(1)
      const left = yield* sql<{ execution_id: string }>`SELECT execution_id FROM ${execution} ORDER BY 1`
      expect(left.map((r) => r.execution_id)).toEqual([
        "m-live-old",
        "x-done-young",
        "x-ended-with-barrier",
        "x-running-old"
      ])
    }))

  it.effect("without an execution retention (an HTTP status store) the execution table is left alone", () =>
    Effect.gen(function*() {
      yield* reset
      const { sql, schema, execution } = yield* tables
      yield* sql`INSERT INTO ${execution} (execution_id, status, updated_at) VALUES ('x-old', 'COMPLETED', now() - interval '400 days')`
      const sweep = yield* makeRetentionSweep({ ...retentionOptions(schema), executionRetentionSeconds: undefined })
      expect(yield* sweep.run(yield* termFor("leader"))).toMatchObject({ executions: 0, failed: [] })
      expect(yield* executionOf("x-old")).toMatchObject({ status: "COMPLETED" })
    }))

  it.effect("sweeps are fenced (an ex-leader deletes nothing) and bounded per statement and per run", () =>
    Effect.gen(function*() {
      yield* reset
      const { sql, schema, markers, execution } = yield* tables
      yield* sql`INSERT INTO ${markers} (execution_id, batch_index, created_at)
                 SELECT 'm-many-' || (i / 10), i % 10, now() - interval '2 days' FROM generate_series(0, 249) AS i`
      yield* sql`INSERT INTO ${execution} (execution_id, status, updated_at)
                 SELECT 'x-many-' || i, 'COMPLETED', now() - interval '60 days' FROM generate_series(1, 130) AS i`
      const sweep = yield* makeRetentionSweep({ ...retentionOptions(schema), bounds: { batchSize: 100, maxBatches: 2 } })
      const { stale, fresh } = yield* staleTerm
      expect(yield* sweep.run(stale)).toEqual({ deadLetters: 0, markers: 0, executions: 0, failed: [] })
      expect(yield* sweep.run(fresh)).toEqual({ deadLetters: 0, markers: 200, executions: 130, failed: [] })
      expect(yield* sweep.run(fresh)).toEqual({ deadLetters: 0, markers: 50, executions: 0, failed: [] })
    }))

  it.effect("a failing sweep counts its own consecutive failures and does not stop the others", () =>
    Effect.gen(function*() {
      yield* reset
      const { sql, schema, markers } = yield* tables
      const marker = sql`INSERT INTO ${markers} (execution_id, batch_index, created_at) VALUES ('m-old', 0, now() - interval '2 days')`
      const sweep = yield* makeRetentionSweep(retentionOptions(schema))
      const term = yield* termFor("leader")
      const broken = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        sql.unsafe(`ALTER TABLE "${schema}".execution RENAME TO execution_gone`).pipe(
          Effect.andThen(effect),
          Effect.ensuring(sql.unsafe(`ALTER TABLE "${schema}".execution_gone RENAME TO execution`).pipe(Effect.orDie))
        )
      const streak = (logs: ReadonlyArray<LogLine>) =>
        logs.filter((l) => l.text.includes("retention sweep of execution failed")).map((l) => l.text.match(/\((\d+) consecutive\)/)?.[1])
      yield* marker
      const [first, logs1] = yield* broken(captureLogs(sweep.run(term)))
      expect(first).toEqual({ deadLetters: 0, markers: 1, executions: 0, failed: ["execution"] })
      expect(streak(logs1)).toEqual(["1"])
      const [, logs2] = yield* broken(captureLogs(sweep.run(term)))
      expect(streak(logs2)).toEqual(["2"])
      expect((yield* sweep.run(term)).failed).toEqual([])
      const [, logs3] = yield* broken(captureLogs(sweep.run(term)))
      expect(streak(logs3)).toEqual(["1"])
    }))
})

layer(providers.pipe(Layer.provideMerge(db)), { excludeTestServices: true })("Reaper tick and gauges", (it) => {
  it.effect("queue depth and oldest age per queue, live and stranded barriers; a drained queue reads 0; clear zeroes all", () =>
    Effect.gen(function*() {
      yield* reset
      const { sql, schema, message } = yield* tables
      const q = yield* Queue
      yield* q.enqueueMany([1, 2, 3].map((i) => ({ task: "t", payload: { i }, options: { queue: "g-a" } })))
      yield* q.enqueue("t", {}, { queue: "g-b" })
      yield* q.enqueue("t", {}, { queue: "g-b", delay: 60_000 })
      yield* sql`UPDATE ${message} SET enqueued_at = now() - interval '120 seconds'
                 WHERE msg_id = (SELECT min(msg_id) FROM ${message} WHERE queue = 'g-a')`
      yield* start("e-gauge-live", { batches: 1 })
      yield* start("e-gauge-stranded", { batches: 1 })
      yield* strand("e-gauge-stranded")
      const gauges = yield* makeQueueGauges({ schema, stuckTimeoutSeconds: STUCK })
      const depth = (queue: string) =>
        Metric.value(Metric.withAttributes(QueueGauges.queueDepth, { queue })).pipe(Effect.map((s) => s.value))
      const oldest = (queue: string) =>
        Metric.value(Metric.withAttributes(QueueGauges.queueOldestAge, { queue })).pipe(Effect.map((s) => s.value))
      const value = (gauge: typeof QueueGauges.barrierLive) => Metric.value(gauge).pipe(Effect.map((s) => s.value))
      yield* gauges.refresh
      // The batch jobs of both fan-outs are ready jobs too.
      expect([yield* depth("g-a"), yield* depth("g-b"), yield* depth("q-e-gauge-live")]).toEqual([3, 1, 1])
      expect(yield* oldest("g-a")).toBeGreaterThanOrEqual(120)
      expect(yield* oldest("g-b")).toBeLessThan(120)
      expect([yield* value(QueueGauges.barrierLive), yield* value(QueueGauges.barrierStranded)]).toEqual([2, 1])
      yield* sql`DELETE FROM ${message} WHERE queue = 'g-b'`
      yield* gauges.refresh
      expect([yield* depth("g-b"), yield* oldest("g-b")]).toEqual([0, 0])
      yield* gauges.clear
      expect([yield* depth("g-a"), yield* oldest("g-a"), yield* value(QueueGauges.barrierLive), yield* value(QueueGauges.barrierStranded)])
        .toEqual([0, 0, 0, 0])
    }))

  it.effect("the retention sweeps run on their own cadence, not every tick", () =>
    Effect.gen(function*() {
      yield* reset
      const { sql, schema, markers } = yield* tables
      const oldMarker = (id: string) =>
        sql`INSERT INTO ${markers} (execution_id, batch_index, created_at) VALUES (${id}, 0, now() - interval '2 days')`
      const tick = yield* makeTick({
        schema,
        maxAttempts: 5,
        leaseName: LEASE,
        leaseSeconds: 30,
        intervalSeconds: 1,
        processStaleSeconds: 10,
        heartbeatSeconds: 1,
        deadLetterRetentionSeconds: 3600,
        sweepEverySeconds: 3600
      })
      const term = yield* termFor("leader")
      yield* oldMarker("m-first")
      expect(yield* tick(term)).toMatchObject({ sweptMarkers: 1 })
      yield* oldMarker("m-second")
      expect(yield* tick(term)).toMatchObject({ sweptMarkers: 0 })
      expect(yield* markerCount("m-second")).toBe(1)
    }))

  it.effect("a leader tick recovers and heals, counts them in its outcome and metrics, and a step-down clears the gauges", () =>
    Effect.gen(function*() {
      yield* reset
      const { schema } = yield* tables
      yield* start("e-tick-error", { batches: 2 })
      yield* strand("e-tick-error")
      yield* start("e-tick-heal", { batches: 1 })
      yield* counted("e-tick-heal", [[0, "ok"]])
      yield* strand("e-tick-heal", "stuck")
      const options: ReaperOptions = {
        schema,
        maxAttempts: 5,
        leaseName: LEASE,
        leaseSeconds: 30,
        intervalSeconds: 1,
        processStaleSeconds: 10,
        heartbeatSeconds: 1,
        deadLetterRetentionSeconds: 3600,
        sweepEverySeconds: 0,
        stuckTimeoutSeconds: STUCK
      }
      const count = (counter: typeof ReaperMetrics.barrierRecovered) => Metric.value(counter).pipe(Effect.map((s) => s.count))
      const before = [yield* count(ReaperMetrics.barrierRecovered), yield* count(ReaperMetrics.barrierHealed)]
      const tick = yield* makeTick(options)
      const outcome = yield* tick(yield* termFor("leader"))
      expect(outcome).toMatchObject({ recovered: 1, healed: 1, recoveryFailures: 0, failures: [] })
      expect([yield* count(ReaperMetrics.barrierRecovered), yield* count(ReaperMetrics.barrierHealed)])
        .toEqual([before[0]! + 1, before[1]! + 1])
      expect((yield* Metric.value(QueueGauges.barrierStranded)).value).toBe(0)
      expect((yield* Metric.value(Metric.withAttributes(QueueGauges.queueDepth, { queue: "cb-e-tick-heal" }))).value).toBe(1)
      yield* tick.stepDown
      expect((yield* Metric.value(Metric.withAttributes(QueueGauges.queueDepth, { queue: "cb-e-tick-heal" }))).value).toBe(0)
    }))
})

describe("Maintenance cadence", () => {
  it.effect("due at once, then once per interval; a reset makes it due again", () =>
    Effect.gen(function*() {
      const cadence = yield* makeCadence(60)
      expect(yield* cadence.due).toBe(true)
      expect(yield* cadence.due).toBe(false)
      yield* TestClock.adjust("59 seconds")
      expect(yield* cadence.due).toBe(false)
      yield* TestClock.adjust("1 second")
      expect(yield* cadence.due).toBe(true)
      expect(yield* cadence.due).toBe(false)
      yield* cadence.reset
      expect(yield* cadence.due).toBe(true)
    }))
})
