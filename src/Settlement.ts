/**
 * What a worker does with a job once its outcome is known: ack, retry, defer, dead-letter — and for the jobs
 * of a fan-out, the barrier's bookkeeping. A batch's success is counted in the same transaction as its ack
 * (`Barrier.complete`); a batch that fails for good aborts its execution; a callback's end marks the
 * execution COMPLETED or ERROR. Every write is fenced by the attempt, so a zombie attempt changes nothing.
 */
import { Cause, Duration, Effect, Metric, Option, Schedule } from "effect"
import type { Barrier, BatchAttempt } from "./Barrier.ts"
import * as ErrorText from "./ErrorText.ts"
import * as Metrics from "./Metrics.ts"
import { findUnstorable } from "./Json.ts"
import type { Attempt, ClaimedJob, Queue } from "./Queue.ts"
import { backoffSeconds, defaultBackoff, type JobContext, type Outcome, type TaskRegistry } from "./Task.ts"

/** What the worker does with a job: the task's outcome, put off (unknown task), or skipped (ended execution). */
export type Disposition =
  | Outcome
  | { readonly _tag: "Deferred"; readonly reason: string }
  | { readonly _tag: "Skipped"; readonly reason: string }

const jobContext = (job: ClaimedJob): JobContext => ({
  msgId: job.msgId,
  task: job.task,
  queue: job.queue,
  attempt: job.attempt,
  maxAttempts: job.maxAttempts,
  orgId: job.orgId,
  enqueuedAt: job.enqueuedAt,
  executionId: job.executionId,
  batchIndex: job.batchIndex
})

/** Run a claimed job, or decide not to: what happens to it is its disposition. Never fails. */
export const dispositionOf = <R>(registry: TaskRegistry<R>, job: ClaimedJob): Effect.Effect<Disposition, never, R> => {
  const task = registry.tasks.get(job.task)
  if (task === undefined) {
    return Effect.succeed({
      _tag: "Deferred",
      reason: `unknown task ${JSON.stringify(job.task)}: not in this worker's registry (${[...registry.tasks.keys()].join(", ")})`
    })
  }
  if (!job.barrierLive) {
    return Effect.succeed({ _tag: "Skipped", reason: `execution ${job.executionId} has already ended` })
  }
  if (job.attempt > job.maxAttempts) {
    return Effect.succeed({
      _tag: "Rejected",
      reason: `exceeded max_attempts (${job.maxAttempts}): attempt ${job.attempt} was claimed after earlier leases expired`
    })
  }
  // Task is an interface: a hand-written `execute` could still die, and the job must not stay claimed.
  return task.execute(job.payload, jobContext(job)).pipe(
    Effect.catchCause((cause) =>
      Cause.hasInterruptsOnly(cause)
        ? Effect.failCause(cause)
        : Effect.succeed<Outcome>({ _tag: "Failed", action: "retry", error: ErrorText.describeCause(cause) })
    )
  )
}

/** Backoff of a job whose task this worker does not know: 5 s doubling to 5 minutes. */
const UNKNOWN_TASK_BACKOFF = { baseSeconds: 5, maxSeconds: 300 }

export interface SettlementOptions<R> {
  readonly queue: Queue["Service"]
  readonly barrier: Barrier["Service"]
  readonly registry: TaskRegistry<R>
  readonly unknownTaskGraceSeconds: number
  /** Queue a plain ack (batched by the worker). */
  readonly ack: (attempt: Attempt) => Effect.Effect<void>
  /**
   * Where a batch's completion runs. The worker runs it in the background, so the job's slot is free at once
   * (as a plain ack does): concurrent completions then share one statement (`Barrier.complete` batches them).
   * Default: inline.
   */
  readonly background?: (completion: Effect.Effect<void>) => Effect.Effect<void>
}

/** Recording an outcome (fail, dead-letter, defer, a batch's completion) is retried through a brief outage. */
export const SETTLE_RETRY = { schedule: Schedule.exponential(Duration.millis(200)), times: 5 }

const batchOf = (job: ClaimedJob): Option.Option<BatchAttempt> =>
  job.executionId !== null && job.batchIndex !== null
    ? Option.some({ ...job, executionId: job.executionId, batchIndex: job.batchIndex })
    : Option.none()

const isCallback = (job: ClaimedJob) => job.executionId !== null && job.batchIndex === null

/**
 * A plain job (not part of a fan-out) that succeeded: recording it only queues its ack, which cannot fail, so
 * it needs no retry (most jobs take this path).
 */
export const isPlainSuccess = (job: ClaimedJob, disposition: Disposition): boolean =>
  disposition._tag === "Succeeded" && job.executionId === null

export const makeSettlement = <R>(options: SettlementOptions<R>) => {
  const { barrier, queue } = options

  /** A job of a fan-out went to the dead-letter table: its execution ends ERROR. */
  const buried = (job: ClaimedJob, reason: string) =>
    Effect.gen(function*() {
      yield* Metric.update(Metrics.jobsDeadLettered, 1)
      const batch = batchOf(job)
      if (Option.isSome(batch)) {
        const ended = yield* barrier.abort(batch.value.executionId, job.orgId, batch.value.batchIndex, reason)
        if (ended === "ended") yield* Metric.update(Metrics.barrierAborts, 1)
        if (ended === "unconfirmed") {
          yield* Effect.logWarning(
            `execution ${batch.value.executionId}: batch ${batch.value.batchIndex} failed for good but the ERROR mark ` +
              "was not confirmed; its barrier stays for the reaper"
          )
        }
      } else if (isCallback(job)) {
        yield* barrier.finish(job.executionId!, job.orgId, { _tag: "Failed", reason })
      }
    })

  const deadLetter = (job: ClaimedJob, reason: string) =>
    queue.deadLetter(job, reason).pipe(
      Effect.flatMap((wasBuried) => wasBuried ? buried(job, reason) : Metric.update(Metrics.jobsStale, 1))
    )

  /** A batch's result must be storable as jsonb, like a payload; otherwise it fails for good, naming the field. */
  const succeeded = (job: ClaimedJob, result: unknown) =>
    Effect.gen(function*() {
      const batch = batchOf(job)
      if (Option.isNone(batch)) {
        // A callback marks its execution COMPLETED before its ack: a crash in between re-runs the callback
        // (at-least-once, the mark is idempotent) instead of leaving a finished execution EXECUTING.
        if (isCallback(job)) yield* barrier.finish(job.executionId!, job.orgId, { _tag: "Succeeded" })
        return yield* options.ack(job)
      }
      const unstorable = findUnstorable(result ?? null, "result")
      if (Option.isSome(unstorable)) {
        return yield* deadLetter(job, `${unstorable.value.path} ${unstorable.value.reason}`)
      }
      const completion = Effect.gen(function*() {
        const counted = yield* barrier.complete(batch.value, result ?? null).pipe(Effect.retry(SETTLE_RETRY))
        yield* Metric.update(
          counted === "pending" || counted === "complete"
            ? Metrics.barrierBatches
            : counted === "stale"
            ? Metrics.jobsStale
            : Metrics.barrierAbandoned,
          1
        )
        if (counted === "complete") yield* Metric.update(Metrics.barrierCallbacks, 1)
        if (counted !== "stale") yield* Metric.update(Metrics.jobsProcessed, 1)
      }).pipe(
        Effect.catchCause((cause) =>
          Effect.logError(`batch ${job.msgId} of ${job.executionId}: could not record its completion`, cause)
        )
      )
      return yield* (options.background ?? ((e) => e))(completion)
    })

  const failed = (job: ClaimedJob, outcome: Extract<Outcome, { _tag: "Failed" }>) =>
    Effect.gen(function*() {
      yield* Metric.update(Metrics.jobsFailed, 1)
      if (outcome.action === "discard") {
        yield* Effect.logWarning(`job ${job.msgId} (${job.task}) failed and was discarded: ${outcome.error}`)
        // A discarded batch still counts (with no result): otherwise its barrier could never complete. A
        // discarded callback ends its execution ERROR: it must not stay EXECUTING forever.
        if (Option.isSome(batchOf(job))) return yield* succeeded(job, null)
        if (isCallback(job)) {
          yield* barrier.finish(job.executionId!, job.orgId, { _tag: "Failed", reason: `discarded: ${outcome.error}` })
        }
        return yield* options.ack(job)
      }
      const task = options.registry.tasks.get(job.task)
      const result = yield* queue.fail(job, {
        error: outcome.error,
        retryInSeconds: backoffSeconds(task?.backoff ?? defaultBackoff, job.attempt),
        deadLetter: outcome.action === "dead-letter"
      })
      yield* Effect.logWarning(`job ${job.msgId} (${job.task}) attempt ${job.attempt} failed (${result}): ${outcome.error}`)
      if (result === "dead-lettered") return yield* buried(job, outcome.error)
      yield* Metric.update(result === "retried" ? Metrics.jobsRetried : Metrics.jobsStale, 1)
    })

  const deferred = (job: ClaimedJob, reason: string) =>
    Effect.gen(function*() {
      const result = yield* queue.defer(job, {
        error: reason,
        retryInSeconds: backoffSeconds(UNKNOWN_TASK_BACKOFF, job.attempt),
        budgetSeconds: options.unknownTaskGraceSeconds
      })
      yield* Effect.logWarning(`job ${job.msgId} (${job.task}) ${result}: ${reason}`)
      if (result === "dead-lettered") yield* buried(job, reason)
    })

  /** Record `disposition` for `job`. */
  return (job: ClaimedJob, disposition: Disposition) => {
    switch (disposition._tag) {
      case "Succeeded":
        return isPlainSuccess(job, disposition) ? options.ack(job) : succeeded(job, disposition.result)
      case "Skipped":
        return Effect.logInfo(`job ${job.msgId} (${job.task}) not run: ${disposition.reason}`).pipe(
          Effect.andThen(Metric.update(Metrics.barrierSkipped, 1)),
          Effect.andThen(options.ack(job))
        )
      case "Rejected":
        return Effect.logWarning(`job ${job.msgId} (${job.task}) dead-lettered: ${disposition.reason}`).pipe(
          Effect.andThen(Metric.update(Metrics.jobsFailed, 1)),
          Effect.andThen(deadLetter(job, disposition.reason))
        )
      case "Deferred":
        return deferred(job, disposition.reason)
      case "Failed":
        return failed(job, disposition)
    }
  }
}
