/**
 * The consumer loop as a scoped Layer. It claims up to `concurrency` (+ `prefetch`) jobs at a time, runs
 * at most `concurrency` of them at once as fibers, renews every held lease every lease/3 in one statement,
 * acks in batches, and on scope close stops claiming, hands back jobs it has not started, drains within
 * the grace period and releases what is left.
 */
import { Clock, Context, Duration, Effect, Fiber, FiberSet, Layer, Metric, Option, Queue as Q, Ref, Schedule, Semaphore } from "effect"
import type { PgqSettings } from "./Config.ts"
import * as Health from "./Health.ts"
import * as Metrics from "./Metrics.ts"
import { ProcessRegistry } from "./ProcessRegistry.ts"
import { type Attempt, type ClaimedJob, Queue } from "./Queue.ts"
import * as Wakeup from "./Wakeup.ts"
import { backoffSeconds, defaultBackoff, type JobContext, type Outcome, type TaskRegistry } from "./Task.ts"

export interface WorkerOptions {
  readonly schema: string
  readonly queues: ReadonlyArray<string>
  readonly concurrency: number
  /**
   * Jobs claimed ahead of free slots and held locally, their leases renewed, so the next claim overlaps
   * running jobs. Raises throughput for short jobs; keep it 0 for long jobs, where a prefetched job would
   * wait for a slot here while another worker sits idle. Default 0.
   */
  readonly prefetch?: number
  /**
   * LISTEN for enqueue notifications and cut the idle poll wait short when one names our queues (default
   * false; needs a PgClient and a session of its own, so not behind PgBouncer).
   */
  readonly listen?: boolean
  /** The claim window (visibility timeout); renewed every third of it while a job runs. */
  readonly leaseSeconds: number
  readonly maxAttempts: number
  readonly pollIntervalMs: number
  readonly pollMaxMs: number
  readonly shutdownGraceSeconds: number
  readonly heartbeatSeconds: number
  /** A process silent this long is presumed dead; an idle worker prunes it and frees its claims. */
  readonly processStaleSeconds: number
}

export interface WorkerStatus {
  readonly processId: string
  readonly inFlight: number
  /** Claimed jobs waiting in the local prefetch buffer for a free slot. */
  readonly prefetched: number
  readonly secondsSinceLastPoll: number
  readonly processed: number
}

/** A job this worker has claimed: waiting for a slot (prefetched) or started. */
interface Held {
  readonly attempt: Attempt
  started: boolean
}

/**
 * Delay between polls: none after a poll that claimed work, otherwise doubling from `minMs` to
 * `maxMs` (0.1 s, 0.2 s, 0.4 s … 2 s with the defaults), reset by the next poll that finds work.
 */
export const pollSchedule = (minMs: number, maxMs: number): Schedule.Schedule<number, number> =>
  Schedule.fromStep(
    Effect.sync(() => {
      let idleDelay = minMs
      return (_now: number, claimed: number) => {
        if (claimed > 0) {
          idleDelay = minMs
          return Effect.succeed([claimed, Duration.zero] as [number, Duration.Duration])
        }
        const delay = idleDelay
        idleDelay = Math.min(idleDelay * 2, maxMs)
        return Effect.succeed([claimed, Duration.millis(delay)] as [number, Duration.Duration])
      }
    })
  )

/** How long a finished job's ack may wait for a claim to ride along with before it is sent on its own. */
const ACK_GATHER = Duration.millis(5)

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

export class Worker extends Context.Service<Worker, {
  readonly processId: string
  readonly status: Effect.Effect<WorkerStatus>
}>()("effect-pg-queue/Worker") {
  static readonly layer = <R>(registry: TaskRegistry<R>, options: WorkerOptions) =>
    Layer.effect(Worker, makeWorker(registry, options))
}

const makeWorker = Effect.fnUntraced(function*<R>(registry: TaskRegistry<R>, options: WorkerOptions) {
  const queue = yield* Queue
  const processes = yield* ProcessRegistry
  const processId = yield* processes.register({ kind: "worker", queues: options.queues, every: options.heartbeatSeconds })

  const prefetch = options.prefetch ?? 0
  // Acks ride along with claims only with a prefetch buffer. Without one, the next claim is on the critical
  // path and a separate ack, on another connection, runs in parallel with it: measured 5.3k vs 4.2k jobs/s
  // (1 × 10, no-op). With a buffer, riding along saves a statement per batch: 9.2k vs 8.6k (prefetch 30).
  const acksRide = prefetch > 0
  const capacity = options.concurrency + prefetch
  const held = new Map<string, Held>()
  const slots = yield* Semaphore.make(options.concurrency)
  let draining = false
  const lastPollAt = yield* Ref.make(yield* Clock.currentTimeMillis)
  const lastMaintenanceAt = yield* Ref.make(0)
  const lastPruneAt = yield* Ref.make(0)
  const processed = yield* Ref.make(0)
  const slotFreed = yield* Q.sliding<void>(1)
  const wakeups = yield* Q.sliding<void>(1)
  const acks = yield* Q.unbounded<Attempt>()
  const acksWaiting = yield* Q.sliding<void>(1)
  const queueAck = (attempt: Attempt) => Q.offer(acks, attempt).pipe(Effect.andThen(Q.offer(acksWaiting, undefined)))
  const jobs = yield* FiberSet.make<void>()

  const settle = Effect.fnUntraced(function*(job: ClaimedJob, outcome: Outcome) {
    const attempt = { msgId: job.msgId, attempt: job.attempt }
    switch (outcome._tag) {
      case "Succeeded":
        return yield* queueAck(attempt)
      case "Rejected":
        yield* Effect.logWarning(`job ${job.msgId} (${job.task}) dead-lettered: ${outcome.reason}`)
        yield* Metric.update(Metrics.jobsFailed, 1)
        return yield* queue.deadLetter(attempt, outcome.reason).pipe(
          Effect.tap((buried) => Metric.update(buried ? Metrics.jobsDeadLettered : Metrics.jobsStale, 1))
        )
      case "Failed": {
        yield* Metric.update(Metrics.jobsFailed, 1)
        if (outcome.action === "discard") {
          yield* Effect.logWarning(`job ${job.msgId} (${job.task}) failed and was discarded: ${outcome.error}`)
          return yield* queueAck(attempt)
        }
        const task = registry.tasks.get(job.task)
        const result = yield* queue.fail(attempt, {
          error: outcome.error,
          retryInSeconds: backoffSeconds(task?.backoff ?? defaultBackoff, job.attempt),
          deadLetter: outcome.action === "dead-letter"
        })
        yield* Effect.logWarning(`job ${job.msgId} (${job.task}) attempt ${job.attempt} failed (${result}): ${outcome.error}`)
        yield* Metric.update(
          result === "dead-lettered" ? Metrics.jobsDeadLettered : result === "retried" ? Metrics.jobsRetried : Metrics.jobsStale,
          1
        )
      }
    }
  })

  const outcomeOf = (job: ClaimedJob): Effect.Effect<Outcome, never, R> => {
    const task = registry.tasks.get(job.task)
    if (task === undefined) return Effect.succeed({ _tag: "Rejected", reason: `unknown task ${JSON.stringify(job.task)}` })
    if (job.attempt > job.maxAttempts) {
      return Effect.succeed({
        _tag: "Rejected",
        reason: `exceeded max_attempts (${job.maxAttempts}): attempt ${job.attempt} was claimed after earlier leases expired`
      })
    }
    return task.execute(job.payload, jobContext(job))
  }

  const runJob = (job: ClaimedJob) =>
    outcomeOf(job).pipe(
      Effect.flatMap((outcome) => settle(job, outcome)),
      Effect.catchCause((cause) => Effect.logError(`job ${job.msgId} (${job.task}): could not record its outcome`, cause)),
      Effect.ensuring(
        Effect.sync(() => held.delete(job.msgId)).pipe(
          Effect.andThen(Metric.update(Metrics.inFlight, -1)),
          Effect.andThen(Q.offer(slotFreed, undefined))
        )
      ),
      Effect.annotateLogs({ msg_id: job.msgId, task: job.task, attempt: job.attempt })
    )

  /** Take a slot and mark the job started, unless shutdown began while it waited (it is handed back). */
  const admit = (job: ClaimedJob) =>
    Effect.sync(() => {
      const entry = held.get(job.msgId)
      if (draining || entry === undefined) return false
      entry.started = true
      return true
    })

  /** Hold a claimed job and queue it for a slot. */
  const start = (job: ClaimedJob) =>
    Effect.suspend(() => {
      held.set(job.msgId, { attempt: { msgId: job.msgId, attempt: job.attempt }, started: false })
      return FiberSet.run(
        jobs,
        slots.withPermits(1)(
          admit(job).pipe(
            Effect.flatMap((admitted) =>
              admitted ? Metric.update(Metrics.inFlight, 1).pipe(Effect.andThen(runJob(job))) : Effect.void
            )
          )
        )
      )
    })

  /**
   * Room for the next claim. With a prefetch buffer, claim again only once it is half empty, so claims
   * stay batched instead of following each finished job one by one.
   */
  const room = () => held.size > options.concurrency + Math.floor(prefetch / 2) ? 0 : capacity - held.size

  /** Run `effect` when `every` ms have passed since it last ran (client clock: pacing only, not correctness). */
  const paced = (last: Ref.Ref<number>, every: number, effect: Effect.Effect<unknown, unknown>) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (now - (yield* Ref.get(last)) < every) return
      yield* Ref.set(last, now)
      yield* effect
    })

  /**
   * While idle, do the reaper's redelivery work for our own queues, so a dead reaper delays nothing:
   * promote due jobs and re-arm expired claims every poll interval; prune dead processes (freeing
   * their claims at once) every heartbeat.
   */
  const maintain = Effect.all([
    paced(lastMaintenanceAt, Math.max(options.pollIntervalMs, 250), Effect.all([
      queue.promoteDue({ queues: options.queues }),
      queue.rearmExpired({ queues: options.queues })
    ])),
    paced(lastPruneAt, options.heartbeatSeconds * 1000, processes.pruneStale(options.processStaleSeconds))
  ], { discard: true })

  /**
   * One poll: claim into the free room and start the jobs. Returns how many it claimed, or 1 when full:
   * it then waits for a slot, at most `pollMaxMs` so the poll heartbeat stays fresh under long jobs.
   */
  const poll = Effect.gen(function*() {
    yield* Ref.set(lastPollAt, yield* Clock.currentTimeMillis)
    const free = room()
    if (free <= 0) {
      yield* Q.take(slotFreed).pipe(Effect.timeoutOption(Duration.millis(options.pollMaxMs)))
      return 1
    }
    // Finished jobs waiting for their ack ride along with the claim (given back to the acker if it fails).
    const toAck = acksRide ? yield* Q.clear(acks) : []
    const [elapsed, { acked, claimed }] = yield* queue
      .ackAndClaim(toAck, { queues: options.queues, limit: free, leaseSeconds: options.leaseSeconds, processId })
      .pipe(Effect.timed, Effect.onError(() => Q.offerAll(acks, toAck)))
    yield* recordAcks(toAck, acked)
    yield* Metric.update(Metrics.claimLatency, Duration.toSeconds(elapsed))
    yield* Effect.forEach(claimed, start, { discard: true })
    if (claimed.length === 0) yield* maintain
    return claimed.length
  }).pipe(
    Effect.catchCause((cause) => Effect.logWarning("poll cycle failed; backing off", cause).pipe(Effect.as(0)))
  )

  const recordAcks = (attempts: ReadonlyArray<Attempt>, acked: ReadonlySet<string>) =>
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

  const flushAcks = (attempts: ReadonlyArray<Attempt>) =>
    queue.ackMany(attempts).pipe(
      Effect.flatMap((acked) => recordAcks(attempts, acked)),
      Effect.catchCause((cause) =>
        Effect.logError(`ack of ${attempts.length} job(s) failed; they will be redelivered after their lease`, cause)
      )
    )

  /** Renew every held lease (started or prefetched) in one statement. */
  const renewLeases = Effect.gen(function*() {
    const attempts = [...held.values()].map((h) => h.attempt)
    if (attempts.length === 0) return
    const renewed = yield* queue.extend(attempts, options.leaseSeconds)
    const lost = attempts.filter((a) => !renewed.has(a.msgId) && held.has(a.msgId))
    if (lost.length > 0) {
      yield* Metric.update(Metrics.leaseRenewFailures, lost.length)
      yield* Effect.logWarning(`lease lost for job(s) ${lost.map((a) => a.msgId).join(", ")}: they may run twice`)
    }
  }).pipe(Effect.catchCause((cause) => Effect.logWarning("lease renewal failed; retrying next tick", cause)))

  const renewEvery = Duration.millis(Math.max(100, (options.leaseSeconds * 1000) / 3))
  yield* renewLeases.pipe(Effect.delay(renewEvery), Effect.repeat(Schedule.spaced(renewEvery)), Effect.forkScoped)
  // The acker flushes what no claim picked up within ACK_GATHER (an idle or full worker claims rarely).
  const acker = yield* Q.take(acksWaiting).pipe(
    Effect.delay(acksRide ? ACK_GATHER : Duration.zero),
    // Uninterruptible once taken: shutdown waits for this flush instead of losing the acks it holds.
    Effect.andThen(Effect.uninterruptible(
      Q.clear(acks).pipe(Effect.flatMap((left) => left.length === 0 ? Effect.void : flushAcks(left)))
    )),
    Effect.forever,
    Effect.forkScoped
  )
  if (options.listen === true) {
    yield* Wakeup.listen({ schema: options.schema, queues: options.queues, wake: Q.offer(wakeups, undefined) }).pipe(
      Effect.forkScoped
    )
  }
  // An idle wait ends early when a notification names one of our queues.
  const schedule = pollSchedule(options.pollIntervalMs, options.pollMaxMs).pipe(
    Schedule.modifyDelay(({ duration }) =>
      Duration.isZero(duration)
        ? Effect.succeed(duration)
        : Q.take(wakeups).pipe(Effect.timeoutOption(duration), Effect.as(Duration.zero))
    )
  )
  const poller = yield* poll.pipe(
    Effect.repeat(schedule),
    Effect.forkScoped
  )

  /** Jobs never started go back to the queue at once, so other workers run them without waiting for us. */
  const handBackWaiting = Effect.gen(function*() {
    draining = true
    const waiting = [...held.values()].filter((h) => !h.started).map((h) => h.attempt)
    for (const attempt of waiting) held.delete(attempt.msgId)
    if (waiting.length === 0) return
    const released = yield* queue.release(waiting).pipe(Effect.orElseSucceed(() => 0))
    yield* Metric.update(Metrics.jobsReleased, released)
    yield* Effect.logInfo(`shutdown: handed back ${released} prefetched job(s) that had not started`)
  })

  // Shutdown is interruption: stop claiming, hand back unstarted jobs, drain within the grace period,
  // release the rest.
  yield* Effect.addFinalizer(() =>
    Effect.gen(function*() {
      yield* Fiber.interrupt(poller)
      yield* handBackWaiting
      const drained = yield* FiberSet.awaitEmpty(jobs).pipe(
        Effect.timeoutOption(Duration.seconds(options.shutdownGraceSeconds))
      )
      const unfinished = [...held.values()].map((h) => h.attempt)
      if (Option.isNone(drained)) yield* FiberSet.clear(jobs)
      yield* Fiber.interrupt(acker)
      yield* flushAcks(yield* Q.clear(acks))
      if (unfinished.length > 0) {
        const released = yield* queue.release(unfinished).pipe(Effect.orElseSucceed(() => 0))
        yield* Metric.update(Metrics.jobsReleased, released)
        yield* Effect.logWarning(`shutdown grace expired: released ${released} unfinished job(s) for immediate redelivery`)
      }
      yield* Effect.logInfo(`worker ${processId} drained`)
    })
  )

  const status = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const started = [...held.values()].filter((h) => h.started).length
    return {
      processId,
      inFlight: started,
      prefetched: held.size - started,
      secondsSinceLastPoll: (now - (yield* Ref.get(lastPollAt))) / 1000,
      processed: yield* Ref.get(processed)
    }
  })

  yield* Effect.logInfo(
    `worker ${processId} started: queues=${options.queues.join(",")} concurrency=${options.concurrency} prefetch=${prefetch} lease=${options.leaseSeconds}s tasks=${[...registry.tasks.keys()].join(",")}`
  )
  return Worker.of({ processId, status })
})

/** Worker options from the validated settings. */
export const optionsFromSettings = (settings: PgqSettings): WorkerOptions => ({
  schema: settings.schema,
  queues: settings.queues,
  concurrency: settings.concurrency,
  prefetch: settings.prefetch,
  listen: settings.notify && !settings.pgbouncer,
  leaseSeconds: settings.vtSeconds,
  maxAttempts: settings.maxAttempts,
  pollIntervalMs: settings.pollIntervalMs,
  pollMaxMs: settings.pollMaxMs,
  shutdownGraceSeconds: settings.shutdownGraceSeconds,
  heartbeatSeconds: settings.heartbeatSeconds,
  processStaleSeconds: settings.processStaleSeconds
})

/** A worker with its Queue and process registration, from settings. */
export const layerFromSettings = <R>(registry: TaskRegistry<R>, settings: PgqSettings) =>
  Worker.layer(registry, optionsFromSettings(settings)).pipe(
    Layer.provide(ProcessRegistry.layer(settings.schema)),
    Layer.provide(Queue.fromSettings(settings))
  )

/**
 * What `node dist/worker.js` runs: the worker, and /health + /metrics when PGQ_HEALTH_PORT is set,
 * until interrupted.
 */
export const serve = <R>(registry: TaskRegistry<R>, settings: PgqSettings) =>
  Effect.gen(function*() {
    const worker = yield* Worker
    yield* Option.match(settings.healthPort, {
      onNone: () => Effect.void,
      onSome: (port) =>
        Layer.build(Health.layer(port, {
          check: "pgq_worker_poll",
          ageKey: "seconds_since_last_poll",
          staleAfterSeconds: settings.healthStaleSeconds,
          liveness: worker.status.pipe(
            Effect.map((s) => ({
              ageSeconds: s.secondsSinceLastPoll,
              extra: { process_id: s.processId, in_flight: s.inFlight, prefetched: s.prefetched, processed: s.processed }
            }))
          )
        }))
    })
    return yield* Effect.never
  }).pipe(Effect.provide(layerFromSettings(registry, settings)), Effect.scoped)
