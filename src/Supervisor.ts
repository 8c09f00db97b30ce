/**
 * The prefork supervisor behind `PGQ_PROCESSES > 1`: N worker processes, each a scoped resource (fork with
 * an IPC channel; release = ask it to drain, SIGKILL at the shared deadline), watched by a monitor on a
 * one-second Schedule, behind one fleet liveness endpoint. The rules (backoff, crash loop, fleet age) are
 * the pure state machine of Fleet.ts; this module feeds it events and acts on its verdicts.
 *
 * Children load the task registry and open their pools themselves: nothing but the environment crosses the
 * fork. Each reports its poll-loop age and job counters every second; the supervisor sums the counters into
 * its own /metrics.
 */
import { type Cause, Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Metric, Option, Queue as Q, Ref, Schedule, Schema, Scope, Semaphore, Stream } from "effect"
import { ForkFailed } from "./Errors.ts"
import * as Fleet from "./Fleet.ts"
import * as Metrics from "./Metrics.ts"

// --- The IPC protocol (JSON over the fork's channel) ---

/** The child's worker is running: the supervisor's acquisition of it is complete. */
export const Ready = Schema.TaggedStruct("Ready", {})
/** Every second: the child's poll-loop age, its jobs in flight and its job counters (totals). */
export const Beat = Schema.TaggedStruct("Beat", {
  ageSeconds: Schema.Finite,
  inFlight: Schema.Finite,
  counters: Schema.Record(Schema.String, Schema.Finite)
})
/** The child is draining to be recycled (PGQ_MAX_JOBS_PER_PROCESS, PGQ_MAX_RSS_MB): replace it, no crash. */
export const Recycling = Schema.TaggedStruct("Recycling", { reason: Schema.String })
/** The child's last word once its worker has drained: the final job counters. */
export const Drained = Schema.TaggedStruct("Drained", { counters: Schema.Record(Schema.String, Schema.Finite) })
export const ChildMessage = Schema.Union([Ready, Beat, Recycling, Drained])
export type ChildMessage = typeof ChildMessage.Type
/** From the supervisor: drain and exit. */
export const Stop = Schema.TaggedStruct("Stop", {})

/** A forked child, as the supervisor drives it. */
export interface ForkedChild {
  readonly pid: number
  /** Waits for the child's exit and tells how it ended. */
  readonly exited: Effect.Effect<Fleet.ChildExit>
  /** Ask it to drain and exit; nothing when it is gone. */
  readonly stop: Effect.Effect<void>
  readonly kill: Effect.Effect<void>
}

/** Starts child processes: `node:child_process.fork` in production (SupervisorNode.ts), a fake in tests. */
export class Launcher extends Context.Service<Launcher, {
  /**
   * Fork the child of `slot`, its messages going to `inbox`, which ends when the channel has closed (after
   * the last message); ForkFailed when the OS refuses.
   */
  readonly fork: (slot: number, inbox: Q.Enqueue<ChildMessage, Cause.Done>) => Effect.Effect<ForkedChild, ForkFailed>
}>()("effect-pg-queue/Supervisor/Launcher") {}

export interface SupervisorOptions {
  readonly processes: number
  /** One deadline for every child's drain at shutdown, counted from the stop signal. */
  readonly graceSeconds: number
  /** A heartbeat reporting a poll at most this old counts towards recovery from a crash loop. */
  readonly freshSeconds: number
  /** Monitor period (default 1 s). */
  readonly monitorEvery?: Duration.Duration
}

export const aliveChildren = Metric.gauge("pgq_supervisor_alive_children", { description: "Worker processes alive" })
export const configuredProcesses = Metric.gauge("pgq_supervisor_configured_processes", {
  description: "Worker processes the supervisor keeps (PGQ_PROCESSES)"
})
export const restartsTotal = Metric.counter("pgq_supervisor_restarts_total", {
  description: "Worker processes forked again after one exited (crashes and recycling)"
})
export const crashLooping = Metric.gauge("pgq_supervisor_crash_looping", {
  description: "1 while a slot has had 3 quick deaths in a row (and /health answers 503)"
})

/**
 * The worker's job counters (Metrics.ts), by name: what the children report and the supervisor sums. Every
 * counter there counts with numbers (not bigints), hence the cast.
 */
export const jobCounters: ReadonlyMap<string, Metric.Counter<number>> = new Map(
  Object.values(Metrics).flatMap((m) =>
    Metric.isMetric(m) && m.type === "Counter" ? [[m.id, m as unknown as Metric.Counter<number>] as const] : []
  )
)

export class Supervisor extends Context.Service<Supervisor, {
  readonly status: Effect.Effect<Fleet.FleetView>
}>()("effect-pg-queue/Supervisor") {
  /** The fleet for the life of the layer: forks every child and waits for each to be ready (or dead). */
  static readonly layer = (options: SupervisorOptions) => Layer.effect(Supervisor, makeSupervisor(options))
}

interface Running {
  readonly slot: number
  readonly child: ForkedChild
  readonly scope: Scope.Closeable
}

const childName = (slot: number, pid: number) => `worker process ${slot} (pid ${pid})`

const makeSupervisor = Effect.fnUntraced(function*(options: SupervisorOptions) {
  const launcher = yield* Launcher
  const fleetScope = yield* Effect.scope
  const fleet = yield* Ref.make(Fleet.make(options.processes, yield* Clock.currentTimeMillis, options.freshSeconds))
  /** Every child not yet exited, by pid: the slots' children and recycled ones still draining. */
  const running = yield* Ref.make<ReadonlyMap<number, Running>>(new Map())
  const inFlight = yield* Ref.make<ReadonlyMap<number, number>>(new Map())
  const deadline = yield* Ref.make(Option.none<number>())
  const forking = yield* Semaphore.make(1)
  const graceMs = options.graceSeconds * 1000
  const now = Clock.currentTimeMillis

  /** Release of a child: ask it to drain, wait until the shared deadline, then SIGKILL it. */
  const release = (slot: number, child: ForkedChild) =>
    Effect.gen(function*() {
      yield* child.stop
      const at = yield* now
      const shared = yield* Ref.get(deadline)
      const until = Option.getOrElse(shared, () => at + graceMs)
      const drained = yield* child.exited.pipe(Effect.timeoutOption(Duration.millis(Math.max(0, until - at))))
      if (Option.isSome(drained)) {
        if (Option.isSome(shared)) yield* Effect.logInfo(`${childName(slot, child.pid)} drained`)
        return
      }
      yield* Effect.logWarning(
        `${childName(slot, child.pid)} did not drain within the shared ${options.graceSeconds} s grace: SIGKILL`
      )
      yield* child.kill
      yield* child.exited
    })

  const forget = (pid: number) =>
    Effect.all([
      Ref.update(running, (m) => new Map([...m].filter(([p]) => p !== pid))),
      Ref.update(inFlight, (m) => new Map([...m].filter(([p]) => p !== pid)))
    ])

  const onMessage = (slot: number, pid: number, ready: Deferred.Deferred<void>) => {
    const reported = new Map<string, number>()
    // Totals per child, summed as deltas: the fleet's counters keep what dead children did.
    const count = (counters: Readonly<Record<string, number>>) =>
      Effect.forEach(Object.entries(counters), ([id, total]) => {
        const counter = jobCounters.get(id)
        const delta = total - (reported.get(id) ?? 0)
        reported.set(id, total)
        return counter !== undefined && delta > 0 ? Metric.update(counter, delta) : Effect.void
      }, { discard: true })
    return (message: ChildMessage) =>
      Effect.gen(function*() {
        switch (message._tag) {
          case "Ready":
            return yield* Deferred.succeed(ready, undefined)
          case "Recycling": {
            const at = yield* now
            yield* Ref.update(fleet, (f) => Fleet.recycled(f, slot, pid, at))
            yield* Effect.logInfo(`${childName(slot, pid)} is recycling (${message.reason}): replacing it now`)
            return yield* Effect.forkIn(restartDue, fleetScope)
          }
          case "Beat": {
            const at = yield* now
            yield* Ref.update(fleet, (f) => Fleet.beat(f, slot, pid, message.ageSeconds, at))
            yield* Ref.update(inFlight, (m) => new Map(m).set(pid, message.inFlight))
            return yield* count(message.counters)
          }
          case "Drained":
            return yield* count(message.counters)
        }
      })
  }

  const logExit = (slot: number, exit: Fleet.ChildExit, uptimeSeconds: number, after: Fleet.Slot, pid: number) => {
    const how = exit.signal === null ? `with code ${exit.code}` : `on ${exit.signal}`
    const what = `${childName(slot, pid)} exited ${how} after ${uptimeSeconds.toFixed(1)} s`
    if (after.lastExit?.pid !== pid || after.restartAt === null) return Effect.logInfo(what)
    const next = `forking it again in ${Fleet.restartBackoffSeconds(after.crashes)} s (quick deaths in a row: ${after.crashes})`
    return after.crashes >= Fleet.CRASH_LOOP_AT
      ? Effect.logError(`${what}; crash-looping: /health answers 503 until a child of this slot polls for 10 s; ${next}`)
      : Effect.logWarning(`${what}; ${next}`)
  }

  /**
   * A child's exit: record it (a recycled child's changes nothing), take the messages it sent last (its final
   * counters are read after its exit is seen), and close its scope.
   */
  const onExit = (
    slot: number,
    pid: number,
    forkedAt: number,
    scope: Scope.Closeable,
    consumer: Fiber.Fiber<void>,
    exit: Fleet.ChildExit
  ) =>
    Effect.gen(function*() {
      const at = yield* now
      const after = yield* Ref.updateAndGet(fleet, (f) => Fleet.exited(f, slot, pid, exit, at))
      yield* Fiber.await(consumer).pipe(Effect.timeoutOption(Duration.seconds(1)))
      yield* forget(pid)
      yield* Scope.close(scope, Exit.void)
      yield* logExit(slot, exit, (at - forkedAt) / 1000, after.slots[slot]!, pid)
    })

  /**
   * Fork `slot`'s child into a scope of its own, closed when it exits or at shutdown. Uninterruptible, so a
   * forked child is always recorded and so always released. Returns the wait for its Ready (or its death).
   */
  const launch = (slot: number) =>
    Effect.gen(function*() {
      const inbox = yield* Q.unbounded<ChildMessage, Cause.Done>()
      const scope = yield* Scope.make()
      const child = yield* Effect.acquireRelease(launcher.fork(slot, inbox), (c) => release(slot, c)).pipe(
        Scope.provide(scope),
        Effect.onError(() => Scope.close(scope, Exit.void))
      )
      const forkedAt = yield* now
      yield* Ref.update(fleet, (f) => Fleet.forked(f, slot, child.pid, forkedAt))
      yield* Ref.update(running, (m) => new Map(m).set(child.pid, { slot, child, scope }))
      const ready = yield* Deferred.make<void>()
      const consumer = yield* Stream.fromQueue(inbox).pipe(
        Stream.runForEach(onMessage(slot, child.pid, ready)),
        Effect.forkIn(scope)
      )
      yield* child.exited.pipe(
        Effect.flatMap((exit) => onExit(slot, child.pid, forkedAt, scope, consumer, exit)),
        Effect.forkIn(fleetScope)
      )
      const isReady = Effect.raceFirst(Deferred.await(ready), Effect.asVoid(child.exited))
      return { slot, pid: child.pid, forkedAt, ready: isReady }
    }).pipe(Effect.uninterruptible)

  const logReady = (launched: Effect.Success<ReturnType<typeof launch>>) =>
    launched.ready.pipe(
      Effect.andThen(Ref.get(running)),
      Effect.flatMap((live) =>
        live.has(launched.pid)
          ? now.pipe(Effect.flatMap((at) => Effect.logInfo(`${childName(launched.slot, launched.pid)} ready in ${at - launched.forkedAt} ms`)))
          : Effect.void
      )
    )

  /** Fork every slot whose backoff has passed; a refused fork keeps the slot due for the next tick. */
  const restartDue: Effect.Effect<void> = forking.withPermits(1)(
    Effect.gen(function*() {
      const slots = Fleet.due(yield* Ref.get(fleet), yield* now)
      for (const slot of slots) {
        yield* launch(slot).pipe(
          Effect.tap((launched) => Metric.update(restartsTotal, 1).pipe(Effect.andThen(Effect.forkIn(logReady(launched), fleetScope)))),
          Effect.catchTag("ForkFailed", (error) => Effect.logError(`${error.message}; retrying on the next tick`))
        )
      }
    })
  )

  const status = Effect.gen(function*() {
    return Fleet.view(yield* Ref.get(fleet), yield* now)
  })

  const publish = Effect.gen(function*() {
    const view = yield* status
    yield* Metric.update(aliveChildren, view.alive)
    yield* Metric.update(crashLooping, view.crashLooping ? 1 : 0)
    yield* Metric.update(Metrics.inFlight, [...(yield* Ref.get(inFlight)).values()].reduce((a, b) => a + b, 0))
  })

  /** Shutdown: no more forks; every child drains against ONE deadline; stragglers are SIGKILLed. */
  yield* Effect.addFinalizer(() =>
    Effect.gen(function*() {
      const startedAt = yield* now
      yield* Ref.update(fleet, Fleet.stop)
      yield* Ref.set(deadline, Option.some(startedAt + graceMs))
      const children = [...(yield* Ref.get(running)).values()]
      yield* Effect.logInfo(`stopping ${children.length} worker process(es) within a shared ${options.graceSeconds} s grace`)
      yield* Effect.forEach(children, ({ scope }) => Scope.close(scope, Exit.void), { concurrency: "unbounded", discard: true })
      yield* Effect.logInfo(`all worker processes stopped after ${((yield* now) - startedAt) / 1000} s`)
    })
  )

  yield* Metric.update(configuredProcesses, options.processes)
  // Shown from the first scrape, at 0 until a child reports.
  yield* Effect.forEach(jobCounters.values(), (counter) => Metric.update(counter, 0), { discard: true })
  const startedAt = yield* now
  const first = yield* Effect.forEach(Array.from({ length: options.processes }, (_, slot) => slot), launch, {
    concurrency: "unbounded"
  })
  yield* Effect.forEach(first, (launched) => launched.ready, { concurrency: "unbounded", discard: true })
  const view = yield* status
  yield* Effect.logInfo(`supervisor: ${view.alive} of ${options.processes} worker processes ready in ${(yield* now) - startedAt} ms`)

  yield* restartDue.pipe(
    Effect.andThen(publish),
    Effect.catchCause((cause) => Effect.logError("supervisor monitor tick failed; retrying", cause)),
    Effect.repeat(Schedule.spaced(options.monitorEvery ?? Duration.seconds(1))),
    Effect.forkScoped
  )
  return Supervisor.of({ status })
})
