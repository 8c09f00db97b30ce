/**
 * The shape the reaper's maintenance jobs share (River's `internal/maintenance` services): each job is one
 * module with a name, a cadence and a bounded run under the leader's fence that returns what it did; the
 * reaper's tick composes them.
 *
 * Bounded means: one statement touches at most a batch of rows (its own short transaction, under the
 * statement timeout), a short pause separates two batches, and a run stops after a fixed number of batches;
 * the rest waits for the next run.
 * The fence's share lock on the lease row therefore lasts one batch, so the leader's renew never waits
 * behind a backlog.
 */
import { type Cause, Clock, Duration, Effect, Ref, Schedule } from "effect"
import { MAINTENANCE_BATCH } from "./Queue.ts"

/** Batches one maintenance job may run in one tick (the rest waits for the next tick). */
export const MAX_BATCHES = 50
/** Pause between two batches of one job, so the leader's renew and other traffic get the rows in between. */
const BATCH_PAUSE = Duration.millis(10)

export interface BatchBounds {
  /** Rows one statement touches at most (its LIMIT). Default MAINTENANCE_BATCH. */
  readonly batchSize?: number | undefined
  /** Statements one run issues at most. Default MAX_BATCHES. */
  readonly maxBatches?: number | undefined
}

/** Run `batch` (one bounded statement returning the rows it changed) until it comes back short. */
export const inBatches = <E>(batch: Effect.Effect<number, E>, bounds: BatchBounds = {}) =>
  Effect.gen(function*() {
    const size = bounds.batchSize ?? MAINTENANCE_BATCH
    const total = yield* Ref.make(0)
    yield* batch.pipe(
      Effect.tap((n) => Ref.update(total, (t) => t + n)),
      Effect.repeat({
        schedule: Schedule.spaced(BATCH_PAUSE),
        while: (n) => n >= size,
        times: (bounds.maxBatches ?? MAX_BATCHES) - 1
      })
    )
    return yield* Ref.get(total)
  })

/**
 * A job that need not run every tick: `due` is true on the first call and then at most once per
 * `everySeconds`. It advances before the job runs, so a failing job waits a full interval too; `reset`
 * makes the next call due (a new term starts afresh).
 */
export const makeCadence = (everySeconds: number) =>
  Effect.gen(function*() {
    const last = yield* Ref.make(Number.NEGATIVE_INFINITY)
    const due = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (now - (yield* Ref.get(last)) < everySeconds * 1000) return false
      yield* Ref.set(last, now)
      return true
    })
    return { due, reset: Ref.set(last, Number.NEGATIVE_INFINITY) }
  })

/** A statement bounded client-side (PGQ_STATEMENT_TIMEOUT_MS): cancelled, failing with a TimeoutError. */
export const boundedBy = (statementTimeoutMs: number | undefined) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Cause.TimeoutError, R> =>
  statementTimeoutMs === undefined ? effect : Effect.timeout(effect, Duration.millis(statementTimeoutMs))
