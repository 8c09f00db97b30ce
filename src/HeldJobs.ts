/**
 * What a worker holds: the attempts it claimed, waiting for a slot (prefetched) or running, keyed by attempt
 * (msg_id + claim token), never by msg_id alone, so two attempts of one job can never overwrite each other.
 *
 * Holding is only a belief. `renew` checks it against the database (one statement for every held lease): an
 * attempt that is no longer ours is dropped if it has not started and interrupted if it has. `admit` lets a
 * job start only while its claim is recently confirmed; after a stall it confirms first.
 */
import { Clock, Effect, Fiber, Metric } from "effect"
import * as Metrics from "./Metrics.ts"
import { attemptKey, type ClaimedJob, Queue } from "./Queue.ts"

interface Held {
  readonly job: ClaimedJob
  /** When (local clock, at sending) the claim or the last renewal that confirmed it was sent. */
  confirmedAt: number
  started: boolean
  /** Its outcome is being recorded: the row may already have moved on, which is not a lost lease. */
  settling: boolean
  fiber: Fiber.Fiber<void> | undefined
}

export interface HeldJobsOptions {
  readonly leaseSeconds: number
  readonly processStaleSeconds: number
}

export const makeHeldJobs = Effect.fnUntraced(function*(options: HeldJobsOptions) {
  const queue = yield* Queue
  const scope = yield* Effect.scope
  // Every job passes through admit and done: they read the clock and set the gauge synchronously.
  const clock = yield* Clock.Clock
  const context = yield* Effect.context<never>()
  const held = new Map<string, Held>()
  let admitting = true
  /** How many held attempts have started: kept as a count, every admit and every done reads it. */
  let running = 0
  const gauge = () => Metrics.inFlight.updateUnsafe(running, context)
  const remove = (key: string) => {
    const entry = held.get(key)
    if (entry === undefined) return
    held.delete(key)
    if (entry.started) {
      running--
      gauge()
    }
  }

  /**
   * Find out which held attempts are still ours: a prefetched attempt that is not is dropped, a running one
   * interrupted (its outcome would be refused by the fence anyway, and it must not run on beside the attempt
   * that replaced it). On the renewal schedule the interruptions run in the background, so a handler slow to
   * stop does not hold up the others; after a prune they are awaited, so nothing is claimed again before the
   * lost runs stopped.
   */
  const renew = (stops: "await" | "background") =>
    Effect.gen(function*() {
      const entries = [...held.entries()].filter(([, h]) => !h.settling)
      if (entries.length === 0) return
      const sentAt = clock.currentTimeMillisUnsafe()
      const renewed = yield* queue.extend(entries.map(([, h]) => h.job), options.leaseSeconds)
      for (const [, h] of entries) if (renewed.has(h.job.token)) h.confirmedAt = sentAt
      const lost = entries.filter(([key, h]) => !renewed.has(h.job.token) && held.get(key) === h && !h.settling)
      if (lost.length === 0) return
      for (const [key] of lost) remove(key)
      yield* Metric.update(Metrics.leaseRenewFailures, lost.length)
      yield* Effect.logWarning(
        `lease lost for job(s) ${lost.map(([, h]) => `${h.job.msgId} (attempt ${h.job.attempt})`).join(", ")}: ` +
          "stopping them; the database gave them to another claim"
      )
      const fibers = lost.flatMap(([, h]) => h.fiber === undefined ? [] : [h.fiber])
      const interrupt = Effect.forEach(fibers, Fiber.interrupt, { concurrency: "unbounded", discard: true })
      yield* stops === "await" ? interrupt : Effect.forkIn(interrupt, scope)
    })

  /**
   * How long a belief stays trusted without asking the database: well inside both the lease (renewed every
   * third of it) and the stale timeout (after which a pruner may free our claims). Past it — after a stall
   * (a GC pause, a blocked event loop, a SIGSTOP) — a job is confirmed before it starts.
   */
  const trustMs = (Math.min(options.leaseSeconds, options.processStaleSeconds) * 1000 * 2) / 3

  /** Mark the job started, unless admission stopped (shutdown) or the attempt is no longer ours. */
  const start = (key: string, entry: Held) => {
    if (!admitting || held.get(key) !== entry) return false
    entry.started = true
    running++
    gauge()
    return true
  }

  /**
   * Start the job now if that can be decided without the database: true (started), false (shutdown, or no
   * longer ours), undefined (its claim must be confirmed first, see `admit`). `registeredAt` is when our process
   * row was last confirmed: until the stale timeout after it nobody can have pruned us.
   */
  const admitNow = (key: string, registeredAt: () => number): boolean | undefined => {
    const entry = held.get(key)
    if (!admitting || entry === undefined) return false
    return clock.currentTimeMillisUnsafe() - Math.min(entry.confirmedAt, registeredAt()) < trustMs
      ? start(key, entry)
      : undefined
  }

  /** Start the job if its claim is recently confirmed; after a stall, confirm it first. */
  const admit = (key: string, registeredAt: () => number): Effect.Effect<boolean> =>
    Effect.suspend(() => {
      const now = admitNow(key, registeredAt)
      if (now !== undefined) return Effect.succeed(now)
      const entry = held.get(key)!
      return renew("await").pipe(
        // Unconfirmable (the database is away): not started; its lease expires and it is claimed again.
        Effect.catchCause((cause) =>
          Effect.logWarning(`job ${entry.job.msgId}: its claim could not be confirmed; not starting it`, cause)
            .pipe(Effect.andThen(Effect.sync(() => remove(key))))
        ),
        Effect.andThen(Effect.sync(() => start(key, entry)))
      )
    })

  return {
    size: () => held.size,
    started: () => running,
    /** Hold a claimed job; returns its key. */
    hold: (job: ClaimedJob, confirmedAt: number) => {
      const key = attemptKey(job)
      held.set(key, { job, confirmedAt, started: false, settling: false, fiber: undefined })
      return key
    },
    /** The fiber that runs it, so a lost attempt can be interrupted. */
    attach: (key: string, fiber: Fiber.Fiber<void>) => {
      const entry = held.get(key)
      if (entry !== undefined) entry.fiber = fiber
    },
    admitNow,
    admit,
    /** From here on its outcome is being written. */
    settling: (key: string) => {
      const entry = held.get(key)
      if (entry !== undefined) entry.settling = true
    },
    /** It ended (settled, lost or never started). */
    done: remove,
    renew,
    /** Shutdown: admit nothing more; returns the jobs that never started (no longer held). */
    stopAdmitting: Effect.sync(() => {
      admitting = false
      const waiting = [...held.entries()].filter(([, h]) => !h.started)
      for (const [key] of waiting) remove(key)
      return waiting.map(([, h]) => h.job)
    }),
    /** The jobs still held (running, or not yet settled). */
    unfinished: Effect.sync(() => [...held.values()].map((h) => h.job))
  }
})

export type HeldJobs = Effect.Success<ReturnType<typeof makeHeldJobs>>
