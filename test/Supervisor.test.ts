/**
 * The prefork supervisor without real workers: PGQ_PROCESSES and the shared grace (Config), the pure state
 * machine (Fleet), and the supervisor itself over a fake launcher under TestClock (restart backoff, crash
 * loop and recovery, fork failures, the shared shutdown deadline, recycling, summed counters). The cases
 * of the reference's test catalogue (§15.11) are named after it where they apply. The node launcher is
 * checked against a tiny IPC child (no database).
 */
import { describe, expect, it } from "@effect/vitest"
import { type Cause, Clock, Context, Deferred, Effect, Exit, Fiber, Layer, Metric, Option, Queue as Q, Scope } from "effect"
import { TestClock } from "effect/testing"
import { fileURLToPath } from "node:url"
import { parseSettings } from "../src/Config.ts"
import { ForkFailed } from "../src/Errors.ts"
import * as Fleet from "../src/Fleet.ts"
import * as Health from "../src/Health.ts"
import * as Metrics from "../src/Metrics.ts"
import { recycleReason } from "../src/SupervisedWorker.ts"
import { type ChildMessage, type ForkedChild, Launcher, Supervisor, type SupervisorOptions } from "../src/Supervisor.ts"
import { childEnv, childGraceSeconds, fleetCheck, nodeLauncher, SLOT_VARIABLE } from "../src/SupervisorNode.ts"

const parse = (env: Record<string, string>) => Effect.runSync(parseSettings(env).pipe(Effect.result))
const setting = <K extends "processes" | "shutdownGraceSeconds">(key: K, env: Record<string, string>) => {
  const result = parse(env)
  return result._tag === "Success" ? result.success[key] : result.failure.message
}

describe("PGQ_PROCESSES (concurrency)", () => {
  it("unset and empty default to one; a valid value is kept", () => {
    expect(setting("processes", {})).toBe(1)
    expect(setting("processes", { PGQ_PROCESSES: "" })).toBe(1)
    expect(setting("processes", { PGQ_PROCESSES: " 4 " })).toBe(4)
  })
  it("is clamped to 64", () => {
    expect(setting("processes", { PGQ_PROCESSES: "65" })).toBe(64)
    expect(setting("processes", { PGQ_PROCESSES: "1000" })).toBe(64)
  })
  it("below one or not an integer is InvalidConfig naming PGQ_PROCESSES", () => {
    for (const value of ["0", "-3", "2.5", "two", "NaN", "Infinity"]) {
      expect(setting("processes", { PGQ_PROCESSES: value }), value).toMatch(/^PGQ_PROCESSES: expected a positive integer/)
    }
  })
})

describe("PGQ_SHUTDOWN_GRACE_SECONDS (shared across children)", () => {
  it("defaults to max(30, VT); an explicit value wins as-is, even below 30", () => {
    expect(setting("shutdownGraceSeconds", {})).toBe(30)
    expect(setting("shutdownGraceSeconds", { PGQ_VT_SECONDS: "9060" })).toBe(9060)
    expect(setting("shutdownGraceSeconds", { PGQ_VT_SECONDS: "5" })).toBe(30)
    expect(setting("shutdownGraceSeconds", { PGQ_VT_SECONDS: "9060", PGQ_SHUTDOWN_GRACE_SECONDS: "45" })).toBe(45)
    expect(setting("shutdownGraceSeconds", { PGQ_SHUTDOWN_GRACE_SECONDS: "5" })).toBe(5)
  })
  it("negative, non-finite or malformed values, and a malformed VT, are refused by name", () => {
    for (const value of ["-1", "Infinity", "NaN", "soon"]) {
      expect(setting("shutdownGraceSeconds", { PGQ_SHUTDOWN_GRACE_SECONDS: value }), value).toMatch(/^PGQ_SHUTDOWN_GRACE_SECONDS:/)
    }
    expect(setting("shutdownGraceSeconds", { PGQ_VT_SECONDS: "x" })).toMatch(/^PGQ_VT_SECONDS:/)
  })
  it("a child drains within the grace less a margin, so it can release before the SIGKILL", () => {
    expect(childGraceSeconds(30)).toBe(28)
    expect(childGraceSeconds(2)).toBe(1.5)
  })
})

describe("Fleet (pure state machine)", () => {
  const at = (s: number) => s * 1000
  const fresh = Fleet.make(2, 0, 4)

  it("record and reap keep the slots consistent; a slot out of range raises", () => {
    const forked = Fleet.forked(fresh, 1, 42, at(1))
    expect(Fleet.view(forked, at(1))).toMatchObject({ alive: 1, processes: 2 })
    const reaped = Fleet.exited(forked, 1, 42, { code: 1, signal: null }, at(2))
    expect(reaped.slots[1]).toMatchObject({ pid: null, crashes: 1, restartAt: at(4) })
    expect(reaped.slots[1]!.lastExit).toEqual({ pid: 42, code: 1, signal: null, uptimeSeconds: 1, recycled: false })
    expect(() => Fleet.forked(fresh, 2, 1, 0)).toThrow(/slot 2 is out of range/)
    expect(() => Fleet.beat(fresh, -1, 1, 0, 0)).toThrow(RangeError)
  })

  it("an exit of a child the slot no longer has (already reaped) changes nothing; a live child is left alone", () => {
    const forked = Fleet.forked(fresh, 0, 7, 0)
    expect(Fleet.exited(forked, 0, 8, { code: 1, signal: null }, at(1))).toEqual(forked)
    expect(Fleet.due(forked, at(100))).toEqual([])
  })

  it("a fork does not reseed the slot's poll: a restarted child earns freshness by polling", () => {
    const polled = Fleet.beat(Fleet.forked(fresh, 0, 7, 0), 0, 7, 0, at(1))
    const dead = Fleet.exited(polled, 0, 7, { code: null, signal: "SIGKILL" }, at(5))
    const reforked = Fleet.forked(dead, 0, 8, at(7))
    expect(Fleet.view(reforked, at(7)).slots[0]!.secondsSincePoll).toBe(6)
    expect(Fleet.view(Fleet.beat(reforked, 0, 8, 0.5, at(8)), at(8)).slots[0]!.secondsSincePoll).toBe(0.5)
  })

  it("quick deaths count up with backoff 2, 4, 6 s and make the fleet crash-looping at three (age null)", () => {
    let fleet = fresh
    const backoffs: Array<number> = []
    let t = 0
    for (let pid = 1; pid <= 3; pid++) {
      fleet = Fleet.forked(fleet, 0, pid, t)
      fleet = Fleet.exited(fleet, 0, pid, { code: 1, signal: null }, t + 500)
      backoffs.push((fleet.slots[0]!.restartAt! - (t + 500)) / 1000)
      t = fleet.slots[0]!.restartAt!
    }
    expect(backoffs).toEqual([2, 4, 6])
    expect(Fleet.view(fleet, t)).toMatchObject({ crashLooping: true, ageSeconds: null })
    expect(Fleet.restartBackoffSeconds(20)).toBe(30)
  })

  it("a child that lived 10 s resets the count (backoff 2 s)", () => {
    let fleet = Fleet.exited(Fleet.forked(fresh, 0, 1, 0), 0, 1, { code: 1, signal: null }, at(1))
    fleet = Fleet.exited(Fleet.forked(fleet, 0, 2, at(3)), 0, 2, { code: 1, signal: null }, at(4))
    expect(fleet.slots[0]!.crashes).toBe(2)
    fleet = Fleet.exited(Fleet.forked(fleet, 0, 3, at(8)), 0, 3, { code: 1, signal: null }, at(18))
    expect(fleet.slots[0]).toMatchObject({ crashes: 0, restartAt: at(20) })
  })

  it("a crash-looping slot recovers once its child has polled freshly for 10 s; a stale beat restarts the count", () => {
    let fleet = fresh
    for (let pid = 1; pid <= 3; pid++) fleet = Fleet.exited(Fleet.forked(fleet, 0, pid, 0), 0, pid, { code: 1, signal: null }, 0)
    fleet = Fleet.forked(fleet, 0, 4, at(10))
    fleet = Fleet.beat(fleet, 0, 4, 0.1, at(11))
    fleet = Fleet.beat(fleet, 0, 4, 5, at(15)) // not fresh (> 4 s): the run starts over
    fleet = Fleet.beat(fleet, 0, 4, 0.1, at(16))
    fleet = Fleet.beat(fleet, 0, 4, 0.1, at(25.9))
    expect(Fleet.isCrashLooping(fleet)).toBe(true)
    fleet = Fleet.beat(fleet, 0, 4, 0.1, at(26))
    expect(Fleet.isCrashLooping(fleet)).toBe(false)
    expect(Fleet.view(fleet, at(26))).toMatchObject({ crashLooping: false, ageSeconds: 26 }) // slot 1 never polled
  })

  it("freshness is the oldest poll over every slot, dead or waiting ones included", () => {
    let fleet = Fleet.forked(Fleet.forked(fresh, 0, 1, 0), 1, 2, 0)
    fleet = Fleet.beat(Fleet.beat(fleet, 0, 1, 0, at(3)), 1, 2, 0, at(5))
    fleet = Fleet.exited(fleet, 0, 1, { code: 1, signal: null }, at(4))
    expect(Fleet.view(fleet, at(6))).toMatchObject({ alive: 1, oldestSeconds: 3, ageSeconds: 3 })
  })

  it("due restarts respect the backoff, oldest first; nothing is due, or rescheduled, while stopping", () => {
    let fleet = Fleet.forked(Fleet.forked(fresh, 0, 1, 0), 1, 2, 0)
    fleet = Fleet.exited(fleet, 1, 2, { code: 1, signal: null }, at(1)) // due at 3
    fleet = Fleet.exited(fleet, 0, 1, { code: 1, signal: null }, at(2)) // due at 4
    expect(Fleet.due(fleet, at(2.9))).toEqual([])
    expect(Fleet.due(fleet, at(3))).toEqual([1])
    expect(Fleet.due(fleet, at(4))).toEqual([1, 0])
    expect(Fleet.due(Fleet.stop(fleet), at(4))).toEqual([])
    const stopping = Fleet.stop(Fleet.forked(fresh, 0, 1, 0))
    expect(Fleet.exited(stopping, 0, 1, { code: 0, signal: null }, at(1)).slots[0]!.restartAt).toBeNull()
  })

  it("a recycled child leaves its slot at once: due now, no crash counted, its later exit changes nothing", () => {
    const fleet = Fleet.recycled(Fleet.forked(fresh, 0, 1, 0), 0, 1, at(3))
    expect(fleet.slots[0]).toMatchObject({ pid: null, crashes: 0, restartAt: at(3) })
    expect(fleet.slots[0]!.lastExit).toMatchObject({ recycled: true, uptimeSeconds: 3 })
    expect(Fleet.exited(fleet, 0, 1, { code: 0, signal: null }, at(4))).toEqual(fleet)
  })
})

// --- The supervisor over a fake launcher, under TestClock ---

interface FakeChild {
  readonly slot: number
  readonly pid: number
  readonly inbox: Q.Enqueue<ChildMessage, Cause.Done>
  readonly exited: Deferred.Deferred<Fleet.ChildExit>
  stops: number
  obedient: boolean
}

const makeFake = Effect.gen(function*() {
  const forks: Array<FakeChild> = []
  const refuse = new Set<number>()
  const defaults = { obedient: true }
  const launcher = Launcher.of({
    fork: (slot, inbox) =>
      Effect.gen(function*() {
        if (refuse.has(slot)) return yield* new ForkFailed({ slot, processes: 3, reason: "spawn EAGAIN" })
        const exited = yield* Deferred.make<Fleet.ChildExit>()
        // Like the channel, the inbox ends with the child.
        yield* Deferred.await(exited).pipe(Effect.andThen(Q.end(inbox)), Effect.forkDetach)
        const child: FakeChild = { slot, pid: 100 + forks.length, inbox, exited, stops: 0, obedient: defaults.obedient }
        forks.push(child)
        Q.offerUnsafe(inbox, { _tag: "Ready" })
        return {
          pid: child.pid,
          exited: Deferred.await(exited),
          stop: Effect.sync(() => {
            child.stops++
            if (child.obedient) Deferred.doneUnsafe(exited, Effect.succeed({ code: 0, signal: null }))
          }),
          kill: Effect.sync(() => Deferred.doneUnsafe(exited, Effect.succeed({ code: null, signal: "SIGKILL" })))
        } satisfies ForkedChild
      })
  })
  const latest = (slot: number) => forks.filter((c) => c.slot === slot).at(-1)!
  const forksOf = (slot: number) => forks.filter((c) => c.slot === slot).length
  return { launcher, forks, refuse, defaults, latest, forksOf }
})

const options: SupervisorOptions = { processes: 2, graceSeconds: 5, freshSeconds: 4 }

/** Build the supervisor in `scope` over the fake launcher. */
const start = (fake: Effect.Success<typeof makeFake>, scope: Scope.Scope, opts: SupervisorOptions = options) =>
  Layer.buildWithScope(Supervisor.layer(opts).pipe(Layer.provide(Layer.succeed(Launcher, fake.launcher))), scope).pipe(
    Effect.map(Context.get(Supervisor))
  )

/** Let the supervisor's fibers run until `ok` holds (no clock involved). */
const settle = <A>(read: Effect.Effect<A>, ok: (a: A) => boolean) =>
  Effect.yieldNow.pipe(
    Effect.andThen(read),
    Effect.repeat({ until: ok, times: 10_000 }),
    Effect.flatMap((a) => ok(a) ? Effect.succeed(a) : Effect.die(new Error(`never settled: ${JSON.stringify(a)}`)))
  )

/** The fleet /health answer: status and body, as Health serves it. */
const fleetVerdict = (supervisor: Supervisor["Service"]) => {
  const check = fleetCheck({ healthStaleSeconds: 60 }, supervisor)
  return check.liveness.pipe(Effect.map((reading) => Health.verdict(check, reading)))
}

const die = (child: FakeChild, exit: Fleet.ChildExit = { code: 1, signal: null }) =>
  Deferred.succeed(child.exited, exit)

const beat = (child: FakeChild, ageSeconds: number, counters: Record<string, number> = {}) =>
  Effect.sync(() => Q.offerUnsafe(child.inbox, { _tag: "Beat", ageSeconds, inFlight: 0, counters }))

describe("Supervisor (fake children, TestClock)", () => {
  it.effect("a dead child is reaped and forked again after its backoff: 2, 4, 6 s; three quick deaths are a crash loop (503, valid JSON)", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const supervisor = yield* start(fake, yield* Effect.scope)
      expect(fake.forks.map((c) => c.slot)).toEqual([0, 1])
      // Dead at a tick; forked again at the tick its backoff ends, not one before.
      for (const backoff of [2, 4, 6]) {
        const forksBefore = fake.forksOf(0)
        yield* die(fake.latest(0))
        yield* settle(supervisor.status, (v) => v.slots[0]!.pid === null)
        yield* TestClock.adjust(`${backoff - 1} seconds`)
        expect(fake.forksOf(0)).toBe(forksBefore)
        yield* TestClock.adjust("1 second")
        yield* settle(Effect.sync(() => fake.forksOf(0)), (n) => n > forksBefore)
      }
      expect(yield* Clock.currentTimeMillis).toBe(12_000)
      const view = yield* supervisor.status
      expect(view).toMatchObject({ crashLooping: true, ageSeconds: null, alive: 2 })
      expect(view.slots[0]).toMatchObject({ crashes: 3, restarts: 3 })

      const { status, body } = yield* fleetVerdict(supervisor)
      expect(status).toBe(503)
      const parsed = JSON.parse(JSON.stringify(body))
      expect(parsed).toMatchObject({
        status: "unhealthy",
        check: "pgq_fleet",
        oldest_child_seconds_since_poll: null,
        crash_looping: true,
        alive_children: 2,
        processes: 2
      })
      expect(parsed.slots[0]).toMatchObject({ slot: 0, restarts: 3, quick_deaths: 3, last_exit: { code: 1, signal: null, recycled: false } })
    }))

  it.effect("a crash-looping slot recovers once its new child has polled freshly for 10 s", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const supervisor = yield* start(fake, yield* Effect.scope)
      for (let death = 1; death <= 3; death++) {
        const forksBefore = fake.forksOf(0)
        yield* die(fake.latest(0))
        yield* settle(supervisor.status, (v) => v.slots[0]!.pid === null)
        yield* TestClock.adjust(`${Fleet.restartBackoffSeconds(death)} seconds`)
        yield* settle(Effect.sync(() => fake.forksOf(0)), (n) => n > forksBefore)
      }
      expect((yield* supervisor.status).crashLooping).toBe(true)
      const healthy = fake.latest(0)
      for (let s = 0; s < 10; s++) {
        yield* beat(healthy, 0.2)
        yield* beat(fake.latest(1), 0.2)
        yield* TestClock.adjust("1 second")
      }
      expect((yield* supervisor.status).crashLooping).toBe(true)
      yield* beat(healthy, 0.2)
      yield* beat(fake.latest(1), 0.2)
      const view = yield* settle(supervisor.status, (v) => !v.crashLooping && v.ageSeconds === 0.2)
      expect(view).toMatchObject({ crashLooping: false, ageSeconds: 0.2 })
      expect((yield* fleetVerdict(supervisor)).status).toBe(200)
    }))

  it.effect("a child that lived longer than 10 s resets the count: forked again after 2 s", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const supervisor = yield* start(fake, yield* Effect.scope)
      yield* die(fake.latest(0))
      yield* TestClock.adjust("2 seconds")
      yield* settle(Effect.sync(() => fake.forksOf(0)), (n) => n === 2)
      yield* TestClock.adjust("11 seconds")
      yield* die(fake.latest(0))
      const view = yield* settle(supervisor.status, (v) => v.slots[0]!.pid === null)
      expect(view.slots[0]!.crashes).toBe(0)
      yield* TestClock.adjust("1 second")
      expect(fake.forksOf(0)).toBe(2)
      yield* TestClock.adjust("1 second")
      yield* settle(Effect.sync(() => fake.forksOf(0)), (n) => n === 3)
    }))

  it.effect("a re-forked child is not born fresh: the fleet's age counts the dead and waiting slot", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const supervisor = yield* start(fake, yield* Effect.scope)
      yield* beat(fake.latest(0), 0)
      yield* beat(fake.latest(1), 0)
      yield* TestClock.adjust("5 seconds")
      yield* beat(fake.latest(1), 0)
      yield* die(fake.latest(0), { code: null, signal: "SIGKILL" })
      yield* settle(supervisor.status, (v) => v.slots[0]!.pid === null)
      yield* TestClock.adjust("1 second")
      expect((yield* supervisor.status).oldestSeconds).toBe(6)
      yield* TestClock.adjust("1 second")
      const reforked = yield* settle(supervisor.status, (v) => v.slots[0]!.pid !== null)
      expect(reforked.slots[0]!.secondsSincePoll).toBe(7)
      expect(reforked.ageSeconds).toBe(7)
      yield* beat(fake.latest(0), 0.3)
      yield* settle(supervisor.status, (v) => v.slots[0]!.secondsSincePoll === 0.3)
    }))

  it.effect("a refused re-fork is logged and retried on the next tick, the slot kept due", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const supervisor = yield* start(fake, yield* Effect.scope)
      fake.refuse.add(0)
      yield* die(fake.latest(0))
      yield* TestClock.adjust("2 seconds")
      yield* TestClock.adjust("1 second")
      expect(fake.forksOf(0)).toBe(1)
      expect((yield* supervisor.status).slots[0]!.pid).toBeNull()
      fake.refuse.delete(0)
      yield* TestClock.adjust("1 second")
      yield* settle(Effect.sync(() => fake.forksOf(0)), (n) => n === 2)
      expect((yield* supervisor.status).slots[0]!.restarts).toBe(1)
    }))

  it.effect("a refused fork while building the first fleet stops the children already started and fails naming PGQ_PROCESSES", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      fake.refuse.add(2)
      const scope = yield* Scope.make()
      const exit = yield* start(fake, scope, { ...options, processes: 3 }).pipe(Effect.exit)
      yield* Scope.close(scope, exit)
      expect(Exit.isFailure(exit)).toBe(true)
      const error = Exit.isFailure(exit) ? Option.getOrUndefined(Exit.findErrorOption(exit)) : undefined
      expect(error).toBeInstanceOf(ForkFailed)
      expect(String(error?.message)).toMatch(/cannot start worker process 3 of 3: spawn EAGAIN; lower PGQ_PROCESSES/)
      expect(fake.forks.map((c) => [c.slot, c.stops])).toEqual([[0, 1], [1, 1]])
      for (const child of fake.forks) expect(yield* Deferred.await(child.exited)).toEqual({ code: 0, signal: null })
    }))

  it.effect("shutdown: every child is asked at once, ONE shared deadline, stragglers SIGKILLed at it, nothing forked again", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const scope = yield* Scope.make()
      const supervisor = yield* start(fake, scope, { ...options, processes: 3 })
      fake.forks[1]!.obedient = false
      fake.forks[2]!.obedient = false
      yield* die(fake.latest(0)) // dead and waiting for its re-fork when the stop comes
      yield* settle(supervisor.status, (v) => v.alive === 2)
      const closing = yield* Scope.close(scope, Exit.void).pipe(Effect.forkChild)
      yield* settle(Effect.sync(() => fake.forks.map((c) => c.stops)), (stops) => stops[1] === 1 && stops[2] === 1)
      yield* TestClock.adjust("4999 millis")
      expect(closing.pollUnsafe()).toBeUndefined()
      yield* TestClock.adjust("1 milli")
      yield* Fiber.join(closing)
      // Both stragglers at 5 s: one deadline, not one grace per child (that would end at 10 s).
      expect(yield* Deferred.await(fake.forks[1]!.exited)).toEqual({ code: null, signal: "SIGKILL" })
      expect(yield* Deferred.await(fake.forks[2]!.exited)).toEqual({ code: null, signal: "SIGKILL" })
      yield* TestClock.adjust("10 seconds")
      expect(fake.forks).toHaveLength(3)
    }))

  it.effect("shutdown: a child that drains before the deadline is not killed, and the stop returns as soon as all are gone", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const scope = yield* Scope.make()
      yield* start(fake, scope)
      fake.forks[1]!.obedient = false
      const closing = yield* Scope.close(scope, Exit.void).pipe(Effect.forkChild)
      yield* TestClock.adjust("3 seconds")
      yield* die(fake.forks[1]!, { code: 0, signal: null })
      yield* Fiber.join(closing)
      expect(yield* Clock.currentTimeMillis).toBe(3000)
      expect(yield* Deferred.await(fake.forks[0]!.exited)).toEqual({ code: 0, signal: null })
      expect(yield* Deferred.await(fake.forks[1]!.exited)).toEqual({ code: 0, signal: null })
    }))

  it.effect("recycling: the child leaves its slot and is replaced at once (no crash); it still drains at shutdown", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const scope = yield* Scope.make()
      const supervisor = yield* start(fake, scope)
      const old = fake.latest(0)
      old.obedient = false
      Q.offerUnsafe(old.inbox, { _tag: "Recycling", reason: "ran 100 jobs" })
      yield* settle(Effect.sync(() => fake.forksOf(0)), (n) => n === 2)
      expect(yield* Clock.currentTimeMillis).toBe(0)
      const view = yield* supervisor.status
      expect(view.slots[0]).toMatchObject({ crashes: 0, restarts: 1, lastExit: { recycled: true } })
      expect(view.alive).toBe(2)
      const closing = yield* Scope.close(scope, Exit.void).pipe(Effect.forkChild)
      yield* settle(Effect.sync(() => old.stops), (n) => n === 1)
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.join(closing)
      expect(yield* Deferred.await(old.exited)).toEqual({ code: null, signal: "SIGKILL" })
    }))

  it.effect("the children's job counters are summed into the supervisor's, dead children's (and their last word) included", () =>
    Effect.gen(function*() {
      const fake = yield* makeFake
      const supervisor = yield* start(fake, yield* Effect.scope)
      const processed = Metric.value(Metrics.jobsProcessed).pipe(Effect.map((s) => s.count))
      const before = yield* processed
      yield* beat(fake.latest(0), 0, { pgq_jobs_processed_total: 5 })
      yield* beat(fake.latest(0), 0, { pgq_jobs_processed_total: 8 })
      yield* beat(fake.latest(1), 0, { pgq_jobs_processed_total: 3, not_ours_total: 99 })
      yield* settle(processed, (n) => n === before + 11)
      // Its last word after the drain, read after its exit.
      Q.offerUnsafe(fake.latest(0).inbox, { _tag: "Drained", counters: { pgq_jobs_processed_total: 10 } })
      yield* die(fake.latest(0))
      yield* TestClock.adjust("2 seconds")
      yield* settle(supervisor.status, (v) => v.slots[0]!.pid !== null)
      yield* beat(fake.latest(0), 0, { pgq_jobs_processed_total: 2 })
      expect(yield* settle(processed, (n) => n === before + 15)).toBe(before + 15)
    }))
})

describe("the supervised child's side", () => {
  it("recycles after PGQ_MAX_JOBS_PER_PROCESS jobs or past PGQ_MAX_RSS_MB, never when unset", () => {
    const limits = { maxJobsPerProcess: Option.some(100), maxRssMb: Option.some(300) }
    const mb = 1024 * 1024
    expect(recycleReason(limits, 99, 100 * mb)).toEqual(Option.none())
    expect(recycleReason(limits, 100, 100 * mb)).toEqual(Option.some("ran 100 jobs (PGQ_MAX_JOBS_PER_PROCESS=100)"))
    expect(recycleReason(limits, 0, 301 * mb)).toEqual(Option.some("resident memory 301 MiB (PGQ_MAX_RSS_MB=300)"))
    expect(recycleReason({ maxJobsPerProcess: Option.none(), maxRssMb: Option.none() }, 1e9, 1e12)).toEqual(Option.none())
  })

  it("a child's environment: its slot, one process, no health port, no migration, its share of the grace", () => {
    const settings = Effect.runSync(parseSettings({ PGQ_SHUTDOWN_GRACE_SECONDS: "10" }))
    const env = childEnv({ PGQ_HEALTH_PORT: "8080", PGQ_PROCESSES: "4", DATABASE_URL: "postgres://x/y", UNSET: undefined }, settings, 3)
    expect(env).toEqual({
      DATABASE_URL: "postgres://x/y",
      [SLOT_VARIABLE]: "3",
      PGQ_PROCESSES: "1",
      PGQ_AUTO_MIGRATE: "false",
      PGQ_SHUTDOWN_GRACE_SECONDS: "8"
    })
  })
})

describe("the node launcher (real forks of a tiny IPC child)", () => {
  const fixture = fileURLToPath(new URL("./fixtures/ipc-child.mjs", import.meta.url))
  const fork = (entry: string, env: Record<string, string> = {}) =>
    Effect.gen(function*() {
      const inbox = yield* Q.unbounded<ChildMessage, Cause.Done>()
      const launcher = Context.get(yield* Layer.build(nodeLauncher({ entry, processes: 2, env: () => ({ PATH: process.env.PATH ?? "", ...env }) })), Launcher)
      const child = yield* launcher.fork(1, inbox)
      return { inbox, child }
    })

  it.live("a missing entry file is ForkFailed, not a crash loop", () =>
    Effect.gen(function*() {
      const error = yield* fork("/nonexistent/worker.js").pipe(Effect.flip)
      expect(error.message).toMatch(/cannot start worker process 2 of 2: the entry file \/nonexistent\/worker.js is missing/)
    }).pipe(Effect.scoped))

  it.live("forks with IPC: messages decoded (junk dropped), Stop drains it; a stubborn one is killed", () =>
    Effect.gen(function*() {
      const { inbox, child } = yield* fork(fixture)
      expect(yield* Q.take(inbox)).toEqual({ _tag: "Ready" })
      expect(yield* Q.take(inbox)).toEqual({ _tag: "Beat", ageSeconds: 0.25, inFlight: 1, counters: { pgq_jobs_processed_total: 3 } })
      yield* child.stop
      expect(yield* child.exited).toEqual({ code: 0, signal: null })
      expect(Exit.isFailure(yield* Effect.exit(Q.take(inbox)))).toBe(true) // ended with the channel
      yield* child.stop // gone: nothing happens

      const stubborn = yield* fork(fixture, { IPC_CHILD_STUBBORN: "1" })
      yield* Q.take(stubborn.inbox)
      yield* stubborn.child.stop
      yield* stubborn.child.kill
      expect(yield* stubborn.child.exited).toEqual({ code: null, signal: "SIGKILL" })
    }).pipe(Effect.scoped))
})
