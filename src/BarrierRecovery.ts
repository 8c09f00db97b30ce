/**
 * The reaper's recovery of stranded barriers: executions whose barrier expired (`expires_at < now()`) or made
 * no progress for the stuck timeout (`last_progress_at < now() - stuck`), because a worker crashed, a batch
 * job was lost, or an abort could not confirm its ERROR mark.
 *
 * Per run it looks at one bounded page of stranded barriers, oldest first, continuing after the last page on
 * the next run (and starting over once it reaches the end), so rows it has to keep never starve the others.
 * For each, the reference algorithm (seed-system §10.4):
 *
 * 1. no org → kept, logged as an ERROR, the status port is not asked;
 * 2. status read: `StatusReadFailed` → kept (a failure); `NoStatus` → kept; `Gone` or a terminal status →
 *    only the barrier and its markers are removed (a terminal status is never overwritten);
 * 3. otherwise, in ONE transaction: re-check it is still stranded while locking its row (SKIP LOCKED: a batch
 *    completing right now holds it) — if not, it made progress and is left alone; then
 *    - `remaining == 0` (every batch completed, the callback never fired) → HEAL: enqueue the callback with
 *      the ordered results (`Barrier.enqueueCallback`) and delete the barrier row;
 *    - else mark ERROR with the reference's reason, and only on a confirmed mark delete the barrier row and
 *      its markers. A failed write keeps everything for the next run.
 *
 * The row lock is held across the mark, so a late completion of the last batch waits for the verdict and then
 * finds no barrier: an execution ends either ERROR with no callback, or with its callback and no ERROR, never
 * both. With the SQL status store the mark even commits or rolls back with the delete. Every delete carries
 * the leader fence (taken last, so the lease row is share-locked only briefly and never across a status
 * call); a fence that no longer holds rolls the transaction back and ends the run, and the fence is checked
 * before each status call, so an ex-leader neither writes rows nor asks the port to mark.
 */
import { Effect, Option, Ref } from "effect"
import { SqlClient, type Statement } from "effect/sql"
import { type CallbackDescriptor, enqueueCallback } from "./Barrier.ts"
import { LeaseLost } from "./Errors.ts"
import { ExecutionStatus, isTerminal } from "./ExecutionStatus.ts"
import type { LeaderTerm } from "./Leadership.ts"
import { Queue } from "./Queue.ts"
import { boundedBy } from "./MaintenanceJob.ts"

/** Stranded barriers one run looks at, by default. */
export const RECOVERY_LIMIT = 100

export interface BarrierRecoveryOptions {
  readonly schema: string
  /** A barrier without progress this long is stranded (PGQ_STUCK_TIMEOUT_SECONDS). */
  readonly stuckTimeoutSeconds: number
  /** Stranded barriers one run looks at. Default RECOVERY_LIMIT. */
  readonly limit?: number | undefined
  /** Client-side bound of each statement (PGQ_STATEMENT_TIMEOUT_MS). */
  readonly statementTimeoutMs?: number | undefined
  /**
   * Leave barriers without an org id alone (the reference's rule): for a status store that cannot answer
   * without one (an HTTP service). The SQL store keys executions by id alone, so it needs none. Default false.
   */
  readonly requireOrgId?: boolean | undefined
}

/** What one run did; `selected = recovered + healed + failed + skipped`. */
export interface RecoveryOutcome {
  readonly selected: number
  /** Ended: marked ERROR, or cleaned up because the execution was already finished or gone. */
  readonly recovered: number
  /** Every batch had completed: the callback was enqueued. */
  readonly healed: number
  /** Kept because the status port or a statement failed; tried again next run. */
  readonly failed: number
  /** Kept on purpose: no org, no status, progress made meanwhile, or the run stopped (leadership lost). */
  readonly skipped: number
}

type Verdict = "recovered" | "healed" | "failed" | "skipped"
/** A verdict whose literal type survives return-type inference. */
const verdict = <V extends Verdict>(v: V): V => v

/** Why a stranded execution is marked ERROR (the reference's wording). */
export const strandedMessage = (remaining: number): string =>
  `[reaper-recovery] Execution stranded: ${
    remaining > 0
      ? `${remaining} batch(es) never completed before the barrier expired (worker crash / lost task)`
      : "the barrier was already torn down (remaining < 0) yet the execution was left non-terminal — inconsistent state"
  }.`

interface StrandedRow {
  readonly execution_id: string
  readonly org_id: string
  readonly remaining: number
  /** `created_at` as text: an exact keyset cursor (a JS Date would drop the microseconds). */
  readonly created: string
}

interface Cursor {
  readonly created: string
  readonly executionId: string
}

export const makeBarrierRecovery = Effect.fnUntraced(function*(options: BarrierRecoveryOptions) {
  const sql = yield* SqlClient.SqlClient
  const queue = yield* Queue
  const status = yield* ExecutionStatus
  const limit = options.limit ?? RECOVERY_LIMIT
  const bounded = boundedBy(options.statementTimeoutMs)
  const barrier = sql(`${options.schema}.barrier`)
  const markers = sql(`${options.schema}.barrier_batch`)
  const stranded = sql`(expires_at < now() OR last_progress_at < now() - ${options.stuckTimeoutSeconds} * interval '1 second')`
  const cursor = yield* Ref.make(Option.none<Cursor>())

  const selectPage = (after: Option.Option<Cursor>) => {
    const pastCursor = Option.match(after, {
      onNone: () => sql`TRUE`,
      onSome: (c) => sql`(created_at, execution_id) > (${c.created}::timestamptz, ${c.executionId})`
    })
    return bounded(sql<StrandedRow>`
      SELECT execution_id, org_id, remaining, created_at::text AS created FROM ${barrier}
      WHERE ${stranded} AND ${pastCursor}
      ORDER BY created_at, execution_id LIMIT ${limit}`)
  }

  /** The next page after the last run's; from the oldest again once the end is reached. */
  const nextPage = Effect.gen(function*() {
    const after = yield* Ref.get(cursor)
    let page = yield* selectPage(after)
    if (page.length === 0 && Option.isSome(after)) page = yield* selectPage(Option.none())
    const last = page.at(-1)
    yield* Ref.set(
      cursor,
      page.length < limit || last === undefined
        ? Option.none()
        : Option.some({ created: last.created, executionId: last.execution_id })
    )
    return page
  })

  const lost = (term: LeaderTerm["Service"], reason: string) =>
    new LeaseLost({ lease: term.name, holder: term.holder, term: term.term, reason })

  /** The fence, checked on its own (released at once): never hold the lease row across a status call. */
  const stillLeading = (term: LeaderTerm["Service"]) =>
    bounded(sql<{ held: boolean }>`SELECT ${term.fence} AS held`).pipe(
      Effect.flatMap((rows) =>
        rows[0]?.held === true ? Effect.void : Effect.fail(lost(term, "the leader fence no longer holds"))
      )
    )

  /** Delete the barrier row (still stranded, fence holding) and its markers; true if the row went. */
  const removeBarrier = (executionId: string, fence: Statement.Fragment) =>
    bounded(sql<{ n: number }>`
      WITH gone AS (
        DELETE FROM ${barrier} WHERE execution_id = ${executionId} AND ${stranded} AND ${fence}
        RETURNING execution_id
      ), swept AS (
        DELETE FROM ${markers} AS b USING gone WHERE b.execution_id = gone.execution_id RETURNING 1
      )
      SELECT count(*)::int AS n FROM gone`).pipe(Effect.map((rows) => rows[0]!.n > 0))

  /** Finished or gone: the barrier and its markers are only left-overs. */
  const cleanUp = (row: StrandedRow, term: LeaderTerm["Service"]) =>
    Effect.gen(function*() {
      if (yield* removeBarrier(row.execution_id, term.fence)) return verdict("recovered")
      yield* Effect.logWarning(
        `barrier recovery: ${row.execution_id} made progress or was removed during recovery; left alone`
      )
      return verdict("skipped")
    })

  /** Every batch completed but the callback never fired: fire it now, exactly once (the row lock is ours). */
  const heal = (executionId: string, orgId: string, callback: CallbackDescriptor, term: LeaderTerm["Service"]) =>
    Effect.gen(function*() {
      const deleted = yield* bounded(sql`
        DELETE FROM ${barrier}
        WHERE execution_id = ${executionId} AND remaining = 0 AND ${stranded} AND ${term.fence}
        RETURNING 1`)
      if (deleted.length === 0) return yield* lost(term, "the leader fence refused the heal")
      yield* enqueueCallback({ sql, queue, schema: options.schema }, executionId, orgId, callback)
      yield* Effect.logWarning(
        `barrier recovery: healed ${executionId}: every batch had completed but its callback never fired; callback enqueued`
      )
      return verdict("healed")
    })

  /** Still stranded and live: heal it, or mark it ERROR and tear it down — one transaction holding its row. */
  const settle = (row: StrandedRow, term: LeaderTerm["Service"]) =>
    sql.withTransaction(Effect.gen(function*() {
      const [locked] = yield* bounded(sql<{ remaining: number; org_id: string; callback: CallbackDescriptor }>`
        SELECT remaining, org_id, callback FROM ${barrier}
        WHERE execution_id = ${row.execution_id} AND ${stranded}
        FOR UPDATE SKIP LOCKED`)
      if (locked === undefined) {
        yield* Effect.logWarning(
          `barrier recovery: ${row.execution_id} made progress during recovery (or a batch is completing); not marked ERROR`
        )
        return verdict("skipped")
      }
      if (locked.remaining === 0) return yield* heal(row.execution_id, locked.org_id, locked.callback, term)
      const marked = yield* status.mark(row.execution_id, locked.org_id, "ERROR", strandedMessage(locked.remaining))
      if (marked._tag === "Marked" && marked.status !== "ERROR") {
        yield* Effect.logWarning(`barrier recovery: ${row.execution_id} was already ${marked.status}; barrier removed`)
      }
      if (!(yield* removeBarrier(row.execution_id, term.fence))) {
        return yield* lost(term, "the leader fence refused the delete")
      }
      yield* Effect.logError(
        `barrier recovery: marked stranded execution ${row.execution_id} ERROR (remaining=${locked.remaining})`
      )
      return verdict("recovered")
    }))

  const recoverOne = (row: StrandedRow, term: LeaderTerm["Service"]): Effect.Effect<Verdict, LeaseLost> =>
    Effect.gen(function*() {
      if (row.org_id === "" && options.requireOrgId === true) {
        yield* Effect.logError(
          `barrier recovery: ${row.execution_id} has NO organization id; cannot ask its status, leaving the row`
        )
        return verdict("skipped")
      }
      yield* stillLeading(term)
      const read = yield* status.read(row.execution_id, row.org_id)
      if (read._tag === "Gone") {
        yield* Effect.logInfo(`barrier recovery: ${row.execution_id} no longer exists; removing its barrier only`)
        return yield* cleanUp(row, term)
      }
      if (read._tag === "NoStatus") {
        yield* Effect.logWarning(`barrier recovery: the status store returned no status for ${row.execution_id}; leaving the row`)
        return verdict("skipped")
      }
      if (isTerminal(read.status)) {
        yield* Effect.logWarning(
          `barrier recovery: ${row.execution_id} is already ${read.status}; cleaning up the orphaned barrier only`
        )
        return yield* cleanUp(row, term)
      }
      return yield* settle(row, term)
    }).pipe(
      Effect.catch((error) =>
        error._tag === "LeaseLost"
          ? Effect.fail(error)
          : Effect.logWarning(`barrier recovery of ${row.execution_id} failed; leaving the row for the next run`, error)
            .pipe(Effect.as(verdict("failed")))
      )
    )

  const summarize = (outcome: RecoveryOutcome) => {
    if (outcome.selected === 0) return Effect.void
    const line = `barrier recovery: recovered=${outcome.recovered}, healed=${outcome.healed}, failed=${outcome.failed}, ` +
      `skipped=${outcome.skipped} of ${outcome.selected} stranded barrier(s)`
    if (outcome.failed > 0 && outcome.recovered + outcome.healed === 0) {
      return Effect.logError(`${line}: likely systemic (status store down, bad migration)`)
    }
    if (outcome.failed > 0) return Effect.logWarning(line)
    return outcome.recovered + outcome.healed > 0 ? Effect.logInfo(line) : Effect.void
  }

  /** One bounded page of stranded barriers, each recovered on its own; stops early once the term is lost. */
  const run = Effect.fn("BarrierRecovery.run")(function*(term: LeaderTerm["Service"]) {
    const page = yield* nextPage
    const counts = { recovered: 0, healed: 0, failed: 0 }
    for (const row of page) {
      const verdict = yield* recoverOne(row, term).pipe(Effect.option)
      if (Option.isNone(verdict)) {
        yield* Effect.logWarning("barrier recovery: the leader fence no longer holds; stopping")
        break
      }
      if (verdict.value !== "skipped") counts[verdict.value]++
    }
    const outcome: RecoveryOutcome = {
      selected: page.length,
      ...counts,
      skipped: page.length - counts.recovered - counts.healed - counts.failed
    }
    yield* summarize(outcome)
    return outcome
  })

  return { name: "barrier recovery", run }
})
