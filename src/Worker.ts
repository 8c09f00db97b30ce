/**
 * The consumer loop as a scoped Layer. It claims up to `concurrency` (+ `prefetch`) jobs at a time, runs
 * at most `concurrency` of them at once as fibers, renews every held lease every lease/3 in one statement,
 * acks in batches, and on scope close stops claiming, hands back jobs it has not started, drains within
 * the grace period and releases what is left.
 *
 * A worker's beliefs are checked against the database before it acts on them: everything it holds is keyed
 * by attempt (msg_id + claim token), an attempt whose renewal is refused is never started and, if running,
 * is interrupted; after a stall long enough to get it pruned it claims nothing until it has found out which
 * attempts it lost.
 */
import { Cause, Clock, Context, Duration, Effect, Fiber, FiberSet, Layer, Metric, Option, Queue as Q, Ref, Schedule, Semaphore } from "effect"
import type { SqlClient } from "effect/sql"
import type { PgqSettings } from "./Config.ts"
import { Barrier } from "./Barrier.ts"
import * as ErrorText from "./ErrorText.ts"
import * as ExecutionStatus from "./ExecutionStatus.ts"
import * as Health from "./Health.ts"
import * as Metrics from "./Metrics.ts"
import { ProcessRegistry } from "./ProcessRegistry.ts"
import { type Attempt, attemptKey, type ClaimedJob, Queue } from "./Queue.ts"
import * as Wakeup from "./Wakeup.ts"
import { type Disposition, makeSettlement } from "./Settlement.ts"
import type { JobContext, Outcome, TaskRegistry } from "./Task.ts"

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
  /**
   * A job naming a task this worker does not know is put off (with backoff, its attempt budget untouched)
   * for this long after its enqueue, then dead-lettered: during a rolling deploy, old workers must not bury
   * the new task types. Default 3600.
   */
  readonly unknownTaskGraceSeconds?: number
  /** Bound of the worker's own shutdown statements (ack flush, release). Default 10 s. */
  readonly statementTimeoutMs?: number
}

export interface WorkerStatus {
  readonly processId: string
  readonly inFlight: number
  /** Claimed jobs waiting in the local prefetch buffer for a free slot. */
  readonly prefetched: number
  readonly secondsSinceLastPoll: number
  /** Poll cycles so far (a full worker still polls, waiting at most `pollMaxMs` for a slot). */
  readonly polls: number
  readonly processed: number
}

/** A job this worker has claimed: waiting for a slot (prefetched), started, or found lost. */
interface Held {
  readonly job: ClaimedJob
  /** When (local clock, at sending) the claim or the last renewal that confirmed it was sent. */
  confirmedAt: number
  started: boolean
  /** Its outcome is being recorded: the row may already have moved on, which is not a lost lease. */
  settling: boolean
  fiber: Fiber.Fiber<void> | undefined
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

/** Pause before acks that could not be written are tried again. */
const ACK_RETRY = Duration.millis(500)

/** Recording an outcome (fail, dead-letter, defer) is retried through a brief outage: fenced, so safe. */
const SETTLE_RETRY = { schedule: Schedule.exponential(Duration.millis(200)), times: 5 }

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
  const barrier = yield* Barrier
  const scope = yield* Effect.scope

  const prefetch = options.prefetch ?? 0
  // Acks ride along with claims only with a prefetch buffer. Without one, the next claim is on the critical
  // path and a separate ack, on another connection, runs in parallel with it: measured 5.3k vs 4.2k jobs/s
  // (1 × 10, no-op). With a buffer, riding along saves a statement per batch: 9.2k vs 8.6k (prefetch 30).
  const acksRide = prefetch > 0
  const capacity = options.concurrency + prefetch
  const statementTimeout = Duration.millis(options.statementTimeoutMs ?? 10_000)
  const held = new Map<string, Held>()
  const slots = yield* Semaphore.make(options.concurrency)
  let draining = false
  const lastPollAt = yield* Ref.make(yield* Clock.currentTimeMillis)
  const processed = yield* Ref.make(0)
  const polls = yield* Ref.make(0)
  const slotFreed = yield* Q.sliding<void>(1)
  const wakeups = yield* Q.sliding<void>(1)
  const acks = yield* Q.unbounded<Attempt>()
  const acksWaiting = yield* Q.sliding<void>(1)
  const queueAck = (attempt: Attempt) => Q.offer(acks, attempt).pipe(Effect.andThen(Q.offer(acksWaiting, undefined)))
  const jobs = yield* FiberSet.make<void>()

  const startedCount = () => [...held.values()].filter((h) => h.started).length
  const gaugeInFlight = Effect.suspend(() => Metric.update(Metrics.inFlight, startedCount()))

  /**
   * Find out which held attempts are still ours (one renewal statement): a prefetched attempt that is not
   * is dropped, a running one is interrupted (its outcome would be refused by the fence anyway, and it must
   * not run on beside the attempt that replaced it).
   */
  const renewLeases = (stops: "await" | "background") => Effect.gen(function*() {
    const entries = [...held.entries()].filter(([, h]) => !h.settling)
    if (entries.length === 0) return
    const sentAt = yield* Clock.currentTimeMillis
    const renewed = yield* queue.extend(entries.map(([, h]) => h.job), options.leaseSeconds)
    for (const [, h] of entries) if (renewed.has(h.job.token)) h.confirmedAt = sentAt
    const lost = entries.filter(([key, h]) => !renewed.has(h.job.token) && held.get(key) === h && !h.settling)
    if (lost.length === 0) return
    for (const [key] of lost) held.delete(key)
    yield* Metric.update(Metrics.leaseRenewFailures, lost.length)
    yield* Effect.logWarning(
      `lease lost for job(s) ${lost.map(([, h]) => `${h.job.msgId} (attempt ${h.job.attempt})`).join(", ")}: ` +
        "stopping them; the database gave them to another claim"
    )
    // On the renewal schedule, interrupted in the background: a handler slow to stop must not hold up the
    // renewal of the others. After a prune, awaited: nothing is claimed again before the lost runs stopped.
    const fibers = lost.flatMap(([, h]) => h.fiber === undefined ? [] : [h.fiber])
    const interrupt = Effect.forEach(fibers, Fiber.interrupt, { concurrency: "unbounded", discard: true })
    yield* stops === "await" ? interrupt : Effect.forkIn(interrupt, scope)
    yield* gaugeInFlight
  })

  const checkLeases = renewLeases("background").pipe(
    Effect.catchCause((cause) => Effect.logWarning("lease renewal failed; retrying next tick", cause))
  )

  const registration = yield* processes.register({
    kind: "worker",
    queues: options.queues,
    every: options.heartbeatSeconds,
    staleSeconds: options.processStaleSeconds,
    // Pruned during a stall: every claim we held was freed. Stop what is no longer ours before claiming again.
    onPruned: renewLeases("await").pipe(Effect.orDie)
  })
  const processId = registration.processId

  const settle = makeSettlement({
    queue,
    barrier,
    registry,
    unknownTaskGraceSeconds: options.unknownTaskGraceSeconds ?? 3600,
    ack: queueAck
  })

  const outcomeOf = (job: ClaimedJob): Effect.Effect<Disposition, never, R> => {
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

  const runJob = (key: string, job: ClaimedJob) =>
    outcomeOf(job).pipe(
      // From here on the outcome is being written: a renewal that no longer finds the row is not a loss.
      Effect.tap(() =>
        Effect.sync(() => {
          const entry = held.get(key)
          if (entry !== undefined) entry.settling = true
        })
      ),
      Effect.flatMap((outcome) => settle(job, outcome).pipe(Effect.retry(SETTLE_RETRY))),
      Effect.catchCause((cause) => Effect.logError(`job ${job.msgId} (${job.task}): could not record its outcome`, cause)),
      Effect.annotateLogs({ msg_id: job.msgId, task: job.task, attempt: job.attempt })
    )

  /**
   * How long a belief stays trusted without asking the database: well inside both the lease (renewed every
   * third of it) and the stale timeout (after which a pruner may free our claims). Past it — after a stall
   * (a GC pause, a blocked event loop, a SIGSTOP) — a job is confirmed before it starts.
   */
  const trustMs = (Math.min(options.leaseSeconds, options.processStaleSeconds) * 1000 * 2) / 3
  const isTrusted = (entry: Held) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const registered = yield* registration.confirmedAt
      return now - Math.min(entry.confirmedAt, registered) < trustMs
    })

  /**
   * Take a slot and mark the job started, unless shutdown began or the attempt is no longer ours: a job
   * whose claim is not recently confirmed is renewed first, and dropped when the renewal is refused.
   */
  const admit = (key: string) =>
    Effect.gen(function*() {
      const entry = held.get(key)
      if (draining || entry === undefined) return false
      if (!(yield* isTrusted(entry))) {
        // Unconfirmable (the database is away): not started; its lease expires and it is claimed again.
        yield* renewLeases("await").pipe(
          Effect.catchCause((cause) =>
            Effect.logWarning(`job ${entry.job.msgId}: its claim could not be confirmed; not starting it`, cause)
              .pipe(Effect.andThen(Effect.sync(() => held.delete(key))))
          )
        )
      }
      if (draining || held.get(key) !== entry) return false
      entry.started = true
      return true
    })

  const finished = (key: string) =>
    Effect.sync(() => held.delete(key)).pipe(
      Effect.andThen(gaugeInFlight),
      Effect.andThen(Q.offer(slotFreed, undefined))
    )

  /** Hold a claimed job and queue it for a slot. */
  const start = (job: ClaimedJob, confirmedAt: number) =>
    Effect.gen(function*() {
      const key = attemptKey(job)
      const entry: Held = { job, confirmedAt, started: false, settling: false, fiber: undefined }
      held.set(key, entry)
      entry.fiber = yield* FiberSet.run(
        jobs,
        slots.withPermits(1)(
          admit(key).pipe(
            Effect.flatMap((admitted) =>
              admitted ? gaugeInFlight.pipe(Effect.andThen(runJob(key, job)), Effect.ensuring(finished(key))) : Effect.void
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

  /**
   * Ack what is waiting, claim into the free room and hold what was claimed: uninterruptible (bounded by the
   * statement timeout), so shutdown can never let a claim commit while its rows are dropped.
   */
  const claimAndHold = (free: number) =>
    Effect.gen(function*() {
      // Finished jobs waiting for their ack ride along with the claim (given back to the acker if it fails).
      const toAck = acksRide ? yield* Q.clear(acks) : []
      const sentAt = yield* Clock.currentTimeMillis
      const [elapsed, result] = yield* queue
        .ackAndClaim(toAck, { queues: options.queues, limit: free, leaseSeconds: options.leaseSeconds, processId, registered: true })
        .pipe(Effect.timed, Effect.onError(() => Q.offerAll(acks, toAck)))
      yield* recordAcks(toAck, result.acked)
      yield* Metric.update(Metrics.claimLatency, Duration.toSeconds(elapsed))
      yield* Effect.forEach(result.claimed, (job) => start(job, sentAt), { discard: true })
      return result
    }).pipe(Effect.uninterruptible)

  /**
   * One poll: claim into the free room and start the jobs. Returns how many it claimed, or 1 when full:
   * it then waits for a slot, at most `pollMaxMs` so the poll heartbeat stays fresh under long jobs.
   */
  const poll = Effect.gen(function*() {
    yield* Ref.set(lastPollAt, yield* Clock.currentTimeMillis)
    yield* Ref.update(polls, (n) => n + 1)
    const free = room()
    if (free <= 0) {
      yield* Q.take(slotFreed).pipe(Effect.timeoutOption(Duration.millis(options.pollMaxMs)))
      return 1
    }
    const { claimed, unregistered } = yield* claimAndHold(free)
    // Pruned while we were stalled: find out what we lost and register again before the next claim.
    if (unregistered) yield* registration.heartbeat
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

  /** Ack `attempts`; false when the statement failed (they will be redelivered after their lease). */
  const flushAcks = (attempts: ReadonlyArray<Attempt>) =>
    attempts.length === 0 ? Effect.succeed(true) : queue.ackMany(attempts).pipe(
      Effect.flatMap((acked) => recordAcks(attempts, acked)),
      Effect.as(true),
      Effect.catchCause((cause) =>
        Effect.logError(`ack of ${attempts.length} job(s) failed; they will be redelivered after their lease`, cause)
          .pipe(Effect.as(false))
      )
    )

  /**
   * The reaper's redelivery work for our own queues, on its own schedule (not only when idle: a busy worker
   * must not leave due retries waiting behind its backlog), so a dead reaper delays nothing: promote due
   * jobs and re-arm expired claims every poll interval (at least 250 ms), one bounded batch each; prune
   * dead processes (freeing their claims at once) every heartbeat.
   */
  const maintenanceEvery = Duration.millis(Math.max(options.pollIntervalMs, 250))
  const heartbeatsPerMaintenance = Math.max(1, Math.round((options.heartbeatSeconds * 1000) / Duration.toMillis(maintenanceEvery)))
  let maintenanceRound = 0
  const maintain = Effect.gen(function*() {
    maintenanceRound += 1
    const promoted = yield* queue.promoteDue({ queues: options.queues, limit: 100 })
    yield* queue.rearmExpired({ queues: options.queues, limit: 100 })
    if (maintenanceRound % heartbeatsPerMaintenance === 0) yield* processes.pruneStale()
    if (promoted > 0) yield* Q.offer(wakeups, undefined)
  }).pipe(Effect.catchCause((cause) => Effect.logWarning("worker maintenance failed; retrying", cause)))
  yield* maintain.pipe(Effect.repeat(Schedule.spaced(maintenanceEvery)), Effect.delay(maintenanceEvery), Effect.forkScoped)

  const renewEvery = Duration.millis(Math.max(100, (options.leaseSeconds * 1000) / 3))
  yield* checkLeases.pipe(Effect.delay(renewEvery), Effect.repeat(Schedule.spaced(renewEvery)), Effect.forkScoped)
  // The acker flushes what no claim picked up within ACK_GATHER (an idle or full worker claims rarely).
  const acker = yield* Q.take(acksWaiting).pipe(
    Effect.delay(acksRide ? ACK_GATHER : Duration.zero),
    // Uninterruptible once taken: shutdown waits for this flush instead of losing the acks it holds.
    Effect.andThen(Effect.uninterruptible(Q.clear(acks).pipe(
      Effect.flatMap((left) =>
        flushAcks(left).pipe(
          // The database is away (a restart, a killed connection): keep them and try again shortly. The
          // fence makes a retry safe; an attempt whose lease ran out meanwhile is refused, never acked twice.
          Effect.flatMap((written) =>
            written
              ? Effect.void
              : Q.offerAll(acks, left).pipe(Effect.andThen(Q.offer(acksWaiting, undefined)), Effect.delay(ACK_RETRY))
          )
        )
      )
    ))),
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
  const poller = yield* poll.pipe(Effect.repeat(schedule), Effect.forkScoped)

  /** Jobs never started go back to the queue at once, so other workers run them without waiting for us. */
  const handBackWaiting = Effect.gen(function*() {
    draining = true
    const waiting = [...held.entries()].filter(([, h]) => !h.started)
    for (const [key] of waiting) held.delete(key)
    if (waiting.length === 0) return
    const released = yield* queue.release(waiting.map(([, h]) => h.job)).pipe(Effect.orElseSucceed(() => 0))
    yield* Metric.update(Metrics.jobsReleased, released)
    yield* Effect.logInfo(`shutdown: handed back ${released} prefetched job(s) that had not started`)
  })

  /**
   * Give back whatever the database still says we hold, known to us or not (a claim whose answer an
   * interruption lost). When the last acks could not be written, only our unfinished attempts: releasing a
   * finished job whose ack failed would run it again.
   */
  const releaseAll = (acksWritten: boolean, unfinished: ReadonlyArray<Attempt>) =>
    (acksWritten ? queue.releaseHeldBy(processId) : queue.release(unfinished)).pipe(
      Effect.timeout(statementTimeout),
      Effect.tap((released) =>
        released === 0 ? Effect.void : Metric.update(Metrics.jobsReleased, released).pipe(
          Effect.andThen(Effect.logWarning(`shutdown: released ${released} unfinished job(s) for immediate redelivery`))
        )
      ),
      Effect.catchCause((cause) =>
        Effect.logError("shutdown: could not release held jobs; they return when their lease expires", cause)
      )
    )

  // Shutdown is interruption: stop claiming (never in the middle of a claim), hand back unstarted jobs,
  // drain within the grace period, flush acks, release the rest — each database step bounded.
  yield* Effect.addFinalizer(() =>
    Effect.gen(function*() {
      draining = true
      yield* Fiber.interrupt(poller)
      yield* handBackWaiting.pipe(Effect.timeout(statementTimeout), Effect.ignore)
      const drained = yield* FiberSet.awaitEmpty(jobs).pipe(
        Effect.timeoutOption(Duration.seconds(options.shutdownGraceSeconds))
      )
      const unfinished = [...held.values()].map((h) => h.job)
      if (Option.isNone(drained)) yield* FiberSet.clear(jobs)
      yield* Fiber.interrupt(acker)
      const acksWritten = yield* flushAcks(yield* Q.clear(acks)).pipe(
        Effect.timeoutOption(statementTimeout),
        Effect.map(Option.getOrElse(() => false))
      )
      yield* releaseAll(acksWritten, unfinished)
      yield* Effect.logInfo(`worker ${processId} drained`)
    })
  )

  const status = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const started = startedCount()
    return {
      processId,
      inFlight: started,
      prefetched: held.size - started,
      secondsSinceLastPoll: (now - (yield* Ref.get(lastPollAt))) / 1000,
      polls: yield* Ref.get(polls),
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
  processStaleSeconds: settings.processStaleSeconds,
  unknownTaskGraceSeconds: settings.unknownTaskGraceSeconds,
  statementTimeoutMs: settings.statementTimeoutMs
})

/**
 * The worker's own services for the given settings: queue statements, process registration, and the
 * barrier bookkeeping with its execution-status port.
 */
const runtimeServices = (settings: PgqSettings) => {
  const queue = Queue.fromSettings(settings)
  const barrier = Barrier.layer({ schema: settings.schema, ttlSeconds: settings.barrierTtlSeconds }).pipe(
    Layer.provide(ExecutionStatus.ExecutionStatus.fromSettings(settings)),
    Layer.provideMerge(queue)
  )
  return Layer.mergeAll(ProcessRegistry.layer(settings.schema), barrier)
}

/** A worker with its Queue and process registration, from settings, on the context's database. */
export const layerFromSettings = <R>(registry: TaskRegistry<R>, settings: PgqSettings) =>
  Worker.layer(registry, optionsFromSettings(settings)).pipe(Layer.provide(runtimeServices(settings)))

/**
 * The same, with the worker's own statements (claim, renew, ack, heartbeat) on the `runtime` database and
 * the handlers' SqlClient from the context: a pool starved by handler queries never delays a renewal or a
 * heartbeat (which would get a live worker pruned).
 */
export const layerWithRuntime = <R, E2, R2>(
  registry: TaskRegistry<R>,
  settings: PgqSettings,
  runtime: Layer.Layer<SqlClient.SqlClient, E2, R2>
) =>
  Worker.layer(registry, optionsFromSettings(settings)).pipe(
    Layer.provide(runtimeServices(settings).pipe(Layer.provide(runtime)))
  )

/**
 * What `node dist/worker.js` runs: the worker, and /health + /metrics when PGQ_HEALTH_PORT is set,
 * until interrupted.
 */
export const serve = <R, E2, R2>(
  registry: TaskRegistry<R>,
  settings: PgqSettings,
  runtime: Layer.Layer<SqlClient.SqlClient, E2, R2>
) =>
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
  }).pipe(Effect.provide(layerWithRuntime(registry, settings, runtime)), Effect.scoped)
