/**
 * A worker's slots: held jobs start in claim order as slots free up, each in a fiber of its own (a lost
 * attempt is interrupted alone, and whatever its handler forks ends with it).
 *
 * A job is launched the moment a slot is free — by the claim that brought it or by the job that frees the
 * slot — not queued on a semaphore: with hundreds of jobs prefetched, every release of a semaphore permit
 * walks all of its waiters, and every waiting job is a parked fiber.
 */
import { Effect, FiberSet, Queue as Q } from "effect"
import type { ClaimedJob } from "./Queue.ts"
import type { HeldJobs } from "./HeldJobs.ts"

/**
 * Jobs that finish as soon as they start (no-op or synchronous handlers) start their successors inline, for
 * at most this long a turn: then the poll loop can send the next claim while the rest run (claims overlap
 * work), and heartbeats and I/O are not held up.
 */
const PUMP_BUDGET_MS = 2

export interface SlotsOptions<R> {
  readonly concurrency: number
  readonly held: HeldJobs
  /** When our process row was last confirmed (see HeldJobs.admit). */
  readonly registeredAt: () => number
  /** Run an admitted job to its settlement (it is no longer held once this ends); never fails. */
  readonly run: (key: string, job: ClaimedJob) => Effect.Effect<void, never, R>
  /** A slot is free, or jobs wait for the poll loop to start them (`pump` again). */
  readonly freed: () => void
}

export const makeSlots = Effect.fnUntraced(function*<R>(options: SlotsOptions<R>) {
  const { held } = options
  const fibers = yield* FiberSet.make<void>()
  const launch = yield* FiberSet.runtime(fibers)<R>()
  /** Held jobs waiting for a slot, oldest first (from `head`). */
  let waiting: Array<{ readonly key: string; readonly job: ClaimedJob } | undefined> = []
  let head = 0
  /** Fibers launched and not yet ended: the slots in use. */
  let active = 0
  let pumping = false
  /** Wakes the starter: jobs wait and a turn of their own should start them. */
  const more = yield* Q.sliding<void>(1)

  const ended = (key: string) => {
    held.done(key)
    active--
    options.freed()
    pump()
  }

  const fiberOf = (key: string, job: ClaimedJob) =>
    held.admit(key, options.registeredAt).pipe(
      Effect.flatMap((admitted) => admitted ? options.run(key, job) : Effect.void),
      Effect.onExit(() => Effect.sync(() => ended(key)))
    )

  /** Start waiting jobs while slots are free. Re-entered from a job that ends inside it: the loop goes on. */
  const pump = () => {
    if (pumping) return
    pumping = true
    const began = performance.now()
    while (active < options.concurrency && head < waiting.length) {
      if (performance.now() - began > PUMP_BUDGET_MS) {
        Q.offerUnsafe(more, undefined)
        break
      }
      const next = waiting[head]!
      waiting[head++] = undefined
      // Dropped meanwhile: handed back at shutdown, or found lost by a renewal.
      if (!held.has(next.key)) continue
      active++
      held.attach(next.key, launch(fiberOf(next.key, next.job)))
    }
    if (head === waiting.length) {
      waiting = []
      head = 0
    }
    pumping = false
  }

  yield* Q.take(more).pipe(Effect.andThen(Effect.sync(pump)), Effect.forever, Effect.forkScoped)

  return {
    /** Queue held jobs for a slot; the starter's next turn starts what fits. */
    offer: (jobs: ReadonlyArray<{ readonly key: string; readonly job: ClaimedJob }>) => {
      for (const entry of jobs) waiting.push(entry)
      Q.offerUnsafe(more, undefined)
    },
    /** Every launched job has ended. */
    awaitEmpty: FiberSet.awaitEmpty(fibers),
    /** Interrupt the jobs still running. */
    interruptAll: FiberSet.clear(fibers)
  }
})
