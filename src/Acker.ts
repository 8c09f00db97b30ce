/**
 * A worker's acks: finished attempts wait here and leave in batches — riding along with the next claim when
 * a prefetch buffer keeps claims off the critical path, otherwise flushed at once by a background fiber on
 * another connection. Acks that cannot be written (the database is away) are kept and tried again: the
 * attempt fence makes that safe, an attempt whose lease ran out meanwhile is refused, never acked twice.
 */
import { Duration, Effect, Fiber, Metric, Queue as Q, Ref } from "effect"
import * as Metrics from "./Metrics.ts"
import { type Attempt, Queue } from "./Queue.ts"

/** How long a finished job's ack may wait for a claim to ride along with before it is sent on its own. */
const ACK_GATHER = Duration.millis(5)

/** Pause before acks that could not be written are tried again. */
const ACK_RETRY = Duration.millis(500)

export interface AckerOptions {
  /**
   * Acks ride along with claims (`takeForClaim`) while this holds (a prefetch buffer keeps claims off the
   * critical path); the fiber then only sends what no claim took within 5 ms.
   */
  readonly ride: () => boolean
  /** Bound of the last flush at shutdown. */
  readonly statementTimeout: Duration.Duration
}

export const makeAcker = Effect.fnUntraced(function*(options: AckerOptions) {
  const queue = yield* Queue
  const pending = yield* Q.unbounded<Attempt>()
  const waiting = yield* Q.sliding<void>(1)
  const processed = yield* Ref.make(0)

  /** Count what the database acked; the rest were refused by the fence (re-claimed elsewhere). */
  const record = (attempts: ReadonlyArray<Attempt>, acked: ReadonlySet<string>) =>
    Effect.all([
      Metric.update(Metrics.jobsProcessed, acked.size),
      Ref.update(processed, (n) => n + acked.size),
      acked.size < attempts.length
        ? Metric.update(Metrics.jobsStale, attempts.length - acked.size).pipe(
          Effect.andThen(Effect.logWarning(
            `${attempts.length - acked.size} ack(s) refused by the attempt fence: those jobs were re-claimed elsewhere (possible double run)`
          ))
        )
        : Effect.void
    ], { discard: true })

  /** Ack `attempts`; false when the statement failed. */
  const flush = (attempts: ReadonlyArray<Attempt>) =>
    attempts.length === 0 ? Effect.succeed(true) : queue.ackMany(attempts).pipe(
      Effect.flatMap((acked) => record(attempts, acked)),
      Effect.as(true),
      Effect.catchCause((cause) =>
        Effect.logError(`ack of ${attempts.length} job(s) failed; trying again`, cause).pipe(Effect.as(false))
      )
    )

  /** Queue acks and wake the fiber: one synchronous step (every finished job passes here). */
  const giveBack = (attempts: ReadonlyArray<Attempt>) =>
    Effect.sync(() => {
      Q.offerAllUnsafe(pending, attempts)
      Q.offerUnsafe(waiting, undefined)
    })

  const fiber = yield* Q.take(waiting).pipe(
    Effect.andThen(Effect.suspend(() => options.ride() ? Effect.sleep(ACK_GATHER) : Effect.void)),
    // Uninterruptible once taken: shutdown waits for this flush instead of losing the acks it holds.
    Effect.andThen(Effect.uninterruptible(
      Q.clear(pending).pipe(
        Effect.flatMap((left) =>
          flush(left).pipe(Effect.flatMap((written) => written ? Effect.void : Effect.delay(giveBack(left), ACK_RETRY)))
        )
      )
    )),
    Effect.forever,
    Effect.forkScoped
  )

  return {
    /** Queue the ack of a finished attempt. */
    add: (attempt: Attempt) => giveBack([attempt]),
    /** The acks that ride along with a claim about to be sent (none when acks do not ride). */
    takeForClaim: Effect.suspend(() => options.ride() ? Q.clear(pending) : Effect.succeed<ReadonlyArray<Attempt>>([])),
    /** A claim that carried acks failed: they wait for the next one, or for the fiber. */
    giveBack,
    record,
    processed: Ref.get(processed),
    /** Shutdown: stop the fiber and flush what is left once, bounded; true when every ack was written. */
    stop: Effect.gen(function*() {
      yield* Fiber.interrupt(fiber)
      const left = yield* Q.clear(pending)
      return yield* flush(left).pipe(
        Effect.timeoutOption(options.statementTimeout),
        Effect.map((written) => written._tag === "Some" && written.value)
      )
    })
  }
})

export type Acker = Effect.Success<ReturnType<typeof makeAcker>>
