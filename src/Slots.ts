/**
 * A worker's slots: held jobs start in claim order as slots free up, each in a fiber of its own (a lost
 * attempt is interrupted alone, and whatever its handler forks ends with it).
 *
 * A job is launched the moment a slot is free — by the claim that brought it or by the job that frees the
 * slot — not queued on a semaphore: with hundreds of jobs prefetched, every release of a semaphore permit
 * walks all of its waiters, and every waiting job is a parked fiber.
 */
import { Effect, Fiber, Queue as Q } from "effect"
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
  /** A job ended and its slot is free (the poll loop may have room to claim again). */
  readonly freed: () => void
}

export const makeSlots = Effect.fnUntraced(function*<R>(options: SlotsOptions<R>) {
  const { held } = options
  // Each job is a root fiber of its own, watched by a plain exit callback: no fiber set, no finalizer effect.
  const launch = Effect.runForkWith(yield* Effect.context<R>())
  /** Held jobs waiting for a slot, oldest first (from `head`). */
  let waiting: Array<{ readonly key: string; readonly job: ClaimedJob } | undefined> = []
  let head = 0
  /** The fibers of the jobs launched and not yet ended: the slots in use. */
  const running = new Set<Fiber.Fiber<void>>()
  let pumping = false
  /** Wakes the starter: jobs wait and a turn of their own should start them. */
  const more = yield* Q.sliding<void>(1)
  /** Offered when the last running job ends. */
  const idle = yield* Q.sliding<void>(1)

  /** A job whose claim must be confirmed first (after a stall). */
  const confirmThenRun = (key: string, job: ClaimedJob) =>
    Effect.flatMap(held.admit(key, options.registeredAt), (admitted) => admitted ? options.run(key, job) : Effect.void)

  /** Start waiting jobs while slots are free. Re-entered from a job that ends inside it: the loop goes on. */
  const pump = () => {
    if (pumping) return
    pumping = true
    const began = performance.now()
    while (running.size < options.concurrency && head < waiting.length) {
      if (performance.now() - began > PUMP_BUDGET_MS) {
        Q.offerUnsafe(more, undefined)
        break
      }
      const next = waiting[head]!
      waiting[head++] = undefined
      // Admitted here, synchronously, in the common case; not at all when dropped meanwhile (handed back at
      // shutdown, or found lost by a renewal).
      const admitted = held.admitNow(next.key, options.registeredAt)
      if (admitted === false) continue
      const fiber = launch(admitted === true ? options.run(next.key, next.job) : confirmThenRun(next.key, next.job))
      running.add(fiber)
      held.attach(next.key, fiber)
      // Called at once when the job already ended (a synchronous handler).
      fiber.addObserver(() => {
        running.delete(fiber)
        held.done(next.key)
        if (running.size === 0) Q.offerUnsafe(idle, undefined)
        options.freed()
        pump()
      })
    }
    if (head === waiting.length) {
      waiting = []
      head = 0
    }
    pumping = false
  }

  const interruptAll = Effect.suspend(() => Fiber.interruptAll([...running]))
  yield* Q.take(more).pipe(Effect.andThen(Effect.sync(pump)), Effect.forever, Effect.forkScoped)
  yield* Effect.addFinalizer(() => interruptAll)

  return {
    /** Queue held jobs for a slot, and start what fits now (for one turn: the starter takes the rest). */
    offer: (jobs: ReadonlyArray<{ readonly key: string; readonly job: ClaimedJob }>) => {
      for (const entry of jobs) waiting.push(entry)
      pump()
    },
    /** Every launched job has ended. */
    awaitEmpty: Effect.suspend(() => running.size === 0 ? Effect.void : Q.take(idle)).pipe(
      Effect.repeat({ until: () => running.size === 0 })
    ),
    /** Interrupt the jobs still running (and wait for them to stop). */
    interruptAll
  }
})
