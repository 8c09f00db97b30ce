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
import { Clock, Context, Duration, Effect, Fiber, FiberSet, Layer, Metric, Option, Queue as Q, Ref, Schedule } from "effect"
import type { SqlClient } from "effect/sql"
import type { PgqSettings } from "./Config.ts"
import { Barrier } from "./Barrier.ts"
import * as ExecutionStatus from "./ExecutionStatus.ts"
import { exitIfShutdownHangs } from "./Shutdown.ts"
import * as Metrics from "./Metrics.ts"
import { ProcessRegistry } from "./ProcessRegistry.ts"
import { makeAcker } from "./Acker.ts"
import { makeHeldJobs } from "./HeldJobs.ts"
import { makeSlots } from "./Slots.ts"
import { type Attempt, type ClaimedJob, Queue } from "./Queue.ts"
import * as Wakeup from "./Wakeup.ts"
import { dispositionOf, isPlainSuccess, makeSettlement, SETTLE_RETRY } from "./Settlement.ts"
import { makePrefetch } from "./Prefetch.ts"
import type { TaskRegistry } from "./Task.ts"

export interface WorkerOptions {
  readonly schema: string
  readonly queues: ReadonlyArray<string>
  readonly concurrency: number
  /**
   * Jobs claimed ahead of free slots and held locally, their leases renewed, so the next claim overlaps
   * running jobs: a fixed number (0: none), or "auto" (the default): what this process will start within
   * 50 ms at its recent pace, so short jobs are claimed in large batches and long jobs are never held here
   * while another worker sits idle (Prefetch.ts).
   */
  readonly prefetch?: number | "auto"
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
  /** The LISTEN session for wake-ups is up (false with LISTEN off, and between a lost session and its re-listen). */
  readonly listening: boolean
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

  const prefetch = makePrefetch(options.prefetch ?? "auto", options.concurrency)
  const statementTimeout = Duration.millis(options.statementTimeoutMs ?? 10_000)
  const clock = yield* Clock.Clock
  const lastPollAt = yield* Ref.make(yield* Clock.currentTimeMillis)
  const polls = yield* Ref.make(0)
  const slotFreed = yield* Q.sliding<void>(1)
  const wakeups = yield* Q.sliding<void>(1)
  const listening = yield* Ref.make(false)
  /** Batch completions under way: the job's slot is already free, the statement still to come. */
  const completions = yield* FiberSet.make<void>()
  const held = yield* makeHeldJobs(options)
  // Acks ride along with claims only with a prefetch buffer. Without one, the next claim is on the critical
  // path and a separate ack, on another connection, runs in parallel with it: measured 5.3k vs 4.2k jobs/s
  // (1 × 10, no-op). With a buffer, riding along saves a statement per batch: 9.2k vs 8.6k (prefetch 30).
  const acker = yield* makeAcker({ ride: () => prefetch.ahead() > 0, statementTimeout })

  const registration = yield* processes.register({
    kind: "worker",
    queues: options.queues,
    every: options.heartbeatSeconds,
    staleSeconds: options.processStaleSeconds,
    // Pruned during a stall: every claim we held was freed. Stop what is no longer ours before claiming again.
    onPruned: held.renew("await").pipe(Effect.orDie)
  })
  const processId = registration.processId

  const settle = makeSettlement({
    queue,
    barrier,
    registry,
    unknownTaskGraceSeconds: options.unknownTaskGraceSeconds ?? 3600,
    ack: acker.add,
    background: (completion) => FiberSet.run(completions, completion).pipe(Effect.asVoid)
  })

  /** Run an admitted job and record its outcome; its handler time sizes the prefetch. */
  const runJob = (key: string, job: ClaimedJob) =>
    Effect.suspend(() => {
      const began = clock.currentTimeMillisUnsafe()
      return Effect.flatMap(dispositionOf(registry, job), (disposition) => {
        prefetch.record(clock.currentTimeMillisUnsafe() - began)
        held.settling(key)
        const settled = settle(job, disposition)
        return isPlainSuccess(job, disposition) ? settled : Effect.retry(settled, SETTLE_RETRY)
      })
    }).pipe(
      Effect.catchCause((cause) => Effect.logError(`job ${job.msgId} (${job.task}): could not record its outcome`, cause)),
      Effect.annotateLogs({ msg_id: job.msgId, task: job.task, attempt: job.attempt })
    )

  const slots = yield* makeSlots({
    concurrency: options.concurrency,
    held,
    registeredAt: registration.confirmedAt,
    run: runJob,
    freed: () => Q.offerUnsafe(slotFreed, undefined)
  })

  /**
   * Room for the next claim. With a prefetch buffer, claim again only once it is half empty, so claims
   * stay batched instead of following each finished job one by one.
   */
  const room = () => {
    const ahead = prefetch.ahead()
    return held.size() > options.concurrency + Math.floor(ahead / 2) ? 0 : options.concurrency + ahead - held.size()
  }

  /**
   * Ack what is waiting, claim into the free room and hold what was claimed: uninterruptible (bounded by the
   * statement timeout), so shutdown can never let a claim commit while its rows are dropped.
   */
  const claimAndHold = (free: number) =>
    Effect.gen(function*() {
      const toAck = yield* acker.takeForClaim
      const sentAt = yield* Clock.currentTimeMillis
      const [elapsed, result] = yield* queue
        .ackAndClaim(toAck, { queues: options.queues, limit: free, leaseSeconds: options.leaseSeconds, processId, registered: true })
        .pipe(Effect.timed, Effect.onError(() => acker.giveBack(toAck)))
      yield* acker.record(toAck, result.acked)
      yield* Metric.update(Metrics.claimLatency, Duration.toSeconds(elapsed))
      slots.offer(result.claimed.map((job) => ({ key: held.hold(job, sentAt), job })))
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

  yield* forkMaintenance(options, Q.offer(wakeups, undefined))
  const renewEvery = Duration.millis(Math.max(100, (options.leaseSeconds * 1000) / 3))
  yield* held.renew("background").pipe(
    Effect.catchCause((cause) => Effect.logWarning("lease renewal failed; retrying next tick", cause)),
    Effect.delay(renewEvery),
    Effect.repeat(Schedule.spaced(renewEvery)),
    Effect.forkScoped
  )
  if (options.listen === true) {
    // Not a child of the scope: stopping it sends UNLISTEN, which a database that swallows every packet never
    // answers, and shutdown must not wait for that (bounded here, abandoned after the statement timeout).
    const listener = yield* Wakeup.listen({ schema: options.schema, queues: options.queues, wake: Q.offer(wakeups, undefined), listening })
      .pipe(Effect.forkDetach)
    yield* Effect.addFinalizer(() => Fiber.interrupt(listener).pipe(Effect.timeout(statementTimeout), Effect.ignore))
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
    const waiting = yield* held.stopAdmitting
    if (waiting.length === 0) return
    const released = yield* queue.release(waiting).pipe(Effect.orElseSucceed(() => 0))
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
      yield* Fiber.interrupt(poller)
      yield* handBackWaiting.pipe(Effect.timeout(statementTimeout), Effect.ignore)
      const drained = yield* slots.awaitEmpty.pipe(
        Effect.timeoutOption(Duration.seconds(options.shutdownGraceSeconds))
      )
      const unfinished = yield* held.unfinished
      if (Option.isNone(drained)) yield* slots.interruptAll
      const completed = yield* FiberSet.awaitEmpty(completions).pipe(Effect.timeoutOption(statementTimeout))
      const acked = yield* acker.stop
      // A completion or an ack not written: release only what never finished (a finished batch whose
      // completion is lost comes back after its lease, like a lost ack).
      yield* releaseAll(acked && Option.isSome(completed), unfinished)
      yield* Effect.logInfo(`worker ${processId} drained`)
    })
  )

  const status = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const started = held.started()
    return {
      processId,
      inFlight: started,
      prefetched: held.size() - started,
      secondsSinceLastPoll: (now - (yield* Ref.get(lastPollAt))) / 1000,
      polls: yield* Ref.get(polls),
      processed: yield* acker.processed,
      listening: yield* Ref.get(listening)
    }
  })

  yield* Effect.logInfo(
    `worker ${processId} started: queues=${options.queues.join(",")} concurrency=${options.concurrency} prefetch=${options.prefetch ?? "auto"} lease=${options.leaseSeconds}s tasks=${[...registry.tasks.keys()].join(",")}`
  )
  return Worker.of({ processId, status })
})

/**
 * The reaper's redelivery work for our own queues, on its own schedule (not only when idle: a busy worker
 * must not leave due retries waiting behind its backlog), so a dead reaper delays nothing: promote due
 * jobs, re-arm expired claims and prune dead processes (freeing their claims at once) every poll interval
 * (at least 250 ms), one bounded batch each. Whatever became ready wakes our poller and is announced to
 * the other listening workers: rescue must not wait for anyone's next poll.
 */
const forkMaintenance = Effect.fnUntraced(function*(options: WorkerOptions, wake: Effect.Effect<unknown>) {
  const queue = yield* Queue
  const processes = yield* ProcessRegistry
  const every = Duration.millis(Math.max(options.pollIntervalMs, 250))
  const maintain = Effect.gen(function*() {
    const promoted = yield* queue.promoteDue({ queues: options.queues, limit: 100 })
    const rearmed = yield* queue.rearmExpired({ queues: options.queues, limit: 100 })
    const pruned = yield* processes.pruneStale()
    const ready = new Set([...(promoted + rearmed > 0 ? options.queues : []), ...pruned.queues])
    if (ready.size === 0) return
    yield* queue.announceReady([...ready])
    yield* wake
  }).pipe(Effect.catchCause((cause) => Effect.logWarning("worker maintenance failed; retrying", cause)))
  yield* maintain.pipe(Effect.repeat(Schedule.spaced(every)), Effect.delay(every), Effect.forkScoped)
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
  return Layer.mergeAll(ProcessRegistry.layer(settings.schema, { sessionWitness: !settings.pgbouncer }), barrier)
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
  Effect.scoped(Effect.gen(function*() {
    const worker = yield* Layer.build(layerWithRuntime(registry, settings, runtime)).pipe(
      Effect.map(Context.get(Worker))
    )
    yield* Option.match(settings.healthPort, {
      onNone: () => Effect.void,
      // Imported on demand: the HTTP server stack is a large share of a worker's start-up time and memory.
      onSome: (port) =>
        Effect.flatMap(Effect.promise(() => import("./Health.ts")), (Health) => Layer.build(Health.layer(port, {
          check: "pgq_worker_poll",
          ageKey: "seconds_since_last_poll",
          staleAfterSeconds: settings.healthStaleSeconds,
          liveness: worker.status.pipe(
            Effect.map((s) => ({
              ageSeconds: s.secondsSinceLastPoll,
              extra: {
                process_id: s.processId,
                in_flight: s.inFlight,
                prefetched: s.prefetched,
                processed: s.processed,
                listening: s.listening
              }
            }))
          )
        })))
    })
    // In the same scope as the worker and added last, so it is armed first when shutdown begins.
    yield* exitIfShutdownHangs(shutdownDeadlineSeconds(settings), "pgq-worker")
    return yield* Effect.never
  }))

/**
 * The longest a clean shutdown may take: the drain grace, then a few bounded statements (each may also wait
 * out the driver's 5 s cancel of a query the database never answers), with room to spare.
 */
export const shutdownDeadlineSeconds = (settings: PgqSettings) =>
  settings.shutdownGraceSeconds + (4 * (settings.statementTimeoutMs + 5_000)) / 1000 + 15
