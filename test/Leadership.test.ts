/**
 * The Leadership layer under TestClock: schedules (campaign, renew) advance only when the test moves the
 * clock, while the lease SQL runs for real. Nothing sleeps for real: the test awaits state changes on the
 * layer's SubscriptionRef, and "lease time passing" on the server is simulated by shifting timestamps.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Layer, Option, Ref, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import { LeaderTerm, Leadership, type LeadershipOptions, type LeadershipState } from "../src/Leadership.ts"
import { leaseFixture, testDb } from "./support.ts"

const LEASE = 10
const RENEW = "2 seconds"
const CAMPAIGN = "1 second"

const setup = Effect.gen(function*() {
  const { schema, sql, leases, table, age } = yield* leaseFixture
  const row = (name: string) => leases.current(name).pipe(Effect.map(Option.getOrThrow))

  /** Build a Leadership layer in a scope of its own, so the test decides when it "shuts down". */
  const start = <E, R extends LeaderTerm = never>(options: Omit<LeadershipOptions<E, R>, "schema">) =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(Leadership.layer({ schema, ...options }), scope)
      return { scope, leadership: Context.get(context, Leadership) }
    })
  return { schema, sql, leases, table, age, row, start }
})

/**
 * Wait (without sleeping) until the state satisfies `predicate`. The real-time timeout is only a safety net
 * so a broken build fails fast with the last state instead of hanging until the test timeout.
 */
const awaitState = (leadership: Leadership["Service"], predicate: (s: LeadershipState) => boolean) =>
  leadership.changes.pipe(
    Stream.filter(predicate),
    Stream.runHead,
    Effect.map(Option.getOrThrow),
    Effect.timeoutOrElse({
      duration: "10 seconds",
      orElse: () =>
        Effect.flatMap(leadership.state, (s) => Effect.die(new Error(`state never matched; last: ${JSON.stringify(s)}`)))
    }),
    TestClock.withLive
  )

const never = () => Effect.never

layer(testDb("leadership"))("Leadership", (it) => {
  describe("configuration", () => {
    it.effect("refuses to start when renewEvery >= leaseSeconds, naming PGQ_LEASE_SECONDS", () =>
      Effect.gen(function*() {
        const { start } = yield* setup
        for (const renewEvery of ["10 seconds", "11 seconds"] as const) {
          const error = yield* Effect.flip(start({ name: "cfg", leaseSeconds: LEASE, renewEvery, work: never }))
          expect(error._tag).toBe("InvalidConfig")
          expect(error.variable).toBe("PGQ_LEASE_SECONDS")
        }
        const zero = yield* Effect.flip(start({ name: "cfg", leaseSeconds: 0, renewEvery: RENEW, work: never }))
        expect(zero.variable).toBe("PGQ_LEASE_SECONDS")
        const blank = yield* Effect.flip(
          start({ name: "cfg", leaseSeconds: LEASE, renewEvery: RENEW, holder: "  ", work: never })
        )
        expect(blank.variable).toBe("holder")
        const campaign = yield* Effect.flip(
          start({ name: "cfg", leaseSeconds: LEASE, renewEvery: RENEW, campaignEvery: 0, work: never })
        )
        expect(campaign.variable).toBe("campaignEvery")
      }))
  })

  describe("leading", () => {
    it.effect("wins a free lease at once, then renews exactly once per interval", () =>
      Effect.gen(function*() {
        const { start, age, row } = yield* setup
        const { leadership, scope } = yield* start({
          name: "renew",
          leaseSeconds: LEASE,
          renewEvery: RENEW,
          campaignEvery: CAMPAIGN,
          holder: "A",
          work: never
        })
        const leader = yield* awaitState(leadership, (s) => s.isLeader)
        expect(leader.term).toBe(1)
        expect(leader.acquisitions).toBe(1)
        for (let i = 1; i <= 4; i++) {
          // Let 5 s pass on the server so a renewal is visible as a jump back to a full lease.
          yield* age("renew", 5)
          yield* TestClock.adjust("1999 millis")
          expect((yield* leadership.state).renewals).toBe(i - 1)
          yield* TestClock.adjust("1 millis")
          yield* awaitState(leadership, (s) => s.renewals === i)
          expect((yield* row("renew")).expiresInSeconds).toBeGreaterThan(LEASE - 2)
        }
        const state = yield* leadership.state
        expect(state).toMatchObject({ isLeader: true, term: 1, renewals: 4, acquisitions: 1, losses: 0 })
        yield* Scope.close(scope, Exit.void)
      }))

    it.effect("provides LeaderTerm to the work, whose fenced writes pass", () =>
      Effect.gen(function*() {
        const { start, sql, schema } = yield* setup
        const scratch = sql(`${schema}.leadership_scratch`)
        yield* sql`CREATE TABLE ${scratch} (id int PRIMARY KEY, term bigint)`
        yield* sql`INSERT INTO ${scratch} VALUES (1, 0)`
        const wrote = yield* Deferred.make<number>()
        const work = (arg: LeaderTerm["Service"]) =>
          Effect.gen(function*() {
            const term = yield* LeaderTerm
            expect(term).toBe(arg)
            const rows = yield* sql`UPDATE ${scratch} SET term = ${term.term} WHERE id = 1 AND ${term.fence} RETURNING 1`
            yield* Deferred.succeed(wrote, rows.length)
          }).pipe(Effect.orDie)
        const { scope } = yield* start({ name: "fence", leaseSeconds: LEASE, renewEvery: RENEW, holder: "A", work })
        expect(yield* Deferred.await(wrote)).toBe(1)
        yield* Scope.close(scope, Exit.void)
      }))

    it.effect("work that finishes keeps leadership and keeps renewing", () =>
      Effect.gen(function*() {
        const { start, row } = yield* setup
        const runs = yield* Ref.make(0)
        const { leadership, scope } = yield* start({
          name: "done",
          leaseSeconds: LEASE,
          renewEvery: RENEW,
          holder: "A",
          work: () => Ref.update(runs, (n) => n + 1)
        })
        yield* awaitState(leadership, (s) => s.isLeader)
        yield* TestClock.adjust(RENEW)
        yield* awaitState(leadership, (s) => s.renewals === 1)
        yield* TestClock.adjust(RENEW)
        yield* awaitState(leadership, (s) => s.renewals === 2)
        expect(yield* leadership.state).toMatchObject({ isLeader: true, term: 1, acquisitions: 1 })
        expect(yield* Ref.get(runs)).toBe(1)
        expect((yield* row("done")).holder).toBe("A")
        yield* Scope.close(scope, Exit.void)
      }))
  })

  describe("losing and stepping down", () => {
    it.effect("a stolen lease interrupts the leader-only work within one renew interval", () =>
      Effect.gen(function*() {
        const { start, sql, table, row } = yield* setup
        const interrupted = yield* Deferred.make<void>()
        const { leadership, scope } = yield* start({
          name: "stolen",
          leaseSeconds: LEASE,
          renewEvery: RENEW,
          campaignEvery: CAMPAIGN,
          holder: "A",
          work: () => Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined)))
        })
        yield* awaitState(leadership, (s) => s.isLeader)
        yield* sql`UPDATE ${table} SET holder = 'thief', term = term + 1, expires_at = now() + interval '1 hour'
                   WHERE name = 'stolen'`
        yield* TestClock.adjust("1999 millis")
        expect(yield* Deferred.isDone(interrupted)).toBe(false)
        yield* TestClock.adjust("1 millis")
        yield* Deferred.await(interrupted)
        const after = yield* awaitState(leadership, (s) => s.losses === 1)
        expect(after).toMatchObject({ isLeader: false, term: null, losses: 1, workFailures: 0, releases: 0 })
        expect(after.lastStepDown).toContain("renew refused")
        expect((yield* row("stolen")).holder).toBe("thief") // the release was fenced: the thief keeps it

        // Back to campaigning: standby while the thief holds it, leader again once it is free.
        const campaigns = after.campaigns
        yield* TestClock.adjust(CAMPAIGN)
        yield* awaitState(leadership, (s) => s.campaigns === campaigns + 1)
        expect((yield* leadership.state).isLeader).toBe(false)
        yield* sql`UPDATE ${table} SET holder = '', expires_at = now() WHERE name = 'stolen'`
        yield* TestClock.adjust(CAMPAIGN)
        const again = yield* awaitState(leadership, (s) => s.isLeader)
        expect(again).toMatchObject({ term: 3, acquisitions: 2 })
        yield* Scope.close(scope, Exit.void)
      }))

    it.effect("a failing work is logged, the lease released, and leadership won again with a new term", () =>
      Effect.gen(function*() {
        const { start, row } = yield* setup
        const runs = yield* Ref.make(0)
        const secondRun = yield* Deferred.make<void>()
        const { leadership, scope } = yield* start({
          name: "failing",
          leaseSeconds: LEASE,
          renewEvery: RENEW,
          campaignEvery: CAMPAIGN,
          holder: "A",
          work: () =>
            Ref.updateAndGet(runs, (n) => n + 1).pipe(
              Effect.flatMap((n) =>
                n === 1 ? Effect.fail("boom" as const) : Deferred.succeed(secondRun, undefined).pipe(Effect.andThen(Effect.never))
              )
            )
        })
        const down = yield* awaitState(leadership, (s) => s.workFailures === 1)
        expect(down).toMatchObject({ isLeader: false, releases: 1, losses: 0 })
        expect(down.lastStepDown).toContain("boom")
        expect((yield* row("failing")).holder).toBe("")
        yield* TestClock.adjust(CAMPAIGN)
        const again = yield* awaitState(leadership, (s) => s.isLeader)
        expect(again).toMatchObject({ term: 2, acquisitions: 2 })
        yield* Deferred.await(secondRun)
        expect(yield* Ref.get(runs)).toBe(2)
        yield* Scope.close(scope, Exit.void)
      }))

    it.effect("a work defect counts as a failure too", () =>
      Effect.gen(function*() {
        const { start } = yield* setup
        const { leadership, scope } = yield* start({
          name: "defect",
          leaseSeconds: LEASE,
          renewEvery: RENEW,
          holder: "A",
          work: () => Effect.die(new Error("kaput"))
        })
        const down = yield* awaitState(leadership, (s) => s.workFailures === 1)
        expect(down.lastStepDown).toContain("kaput")
        yield* Scope.close(scope, Exit.void)
      }))

    it.effect("closing the scope interrupts the work and releases the lease", () =>
      Effect.gen(function*() {
        const { start, row } = yield* setup
        const interrupted = yield* Deferred.make<void>()
        const { leadership, scope } = yield* start({
          name: "close",
          leaseSeconds: LEASE,
          renewEvery: RENEW,
          holder: "A",
          work: () => Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined)))
        })
        yield* awaitState(leadership, (s) => s.isLeader)
        expect((yield* row("close")).holder).toBe("A")
        yield* Scope.close(scope, Exit.void)
        expect(yield* Deferred.isDone(interrupted)).toBe(true)
        const after = yield* row("close")
        expect(after.holder).toBe("")
        expect(after.expiresInSeconds).toBeLessThanOrEqual(0)
        expect(yield* leadership.state).toMatchObject({ isLeader: false, releases: 1, lastStepDown: "shutdown" })
      }))

    it.effect("closing the scope frees a lease that a campaign won without learning it (interrupted in flight)", () =>
      Effect.gen(function*() {
        const { start, leases, sql, table, row } = yield* setup
        yield* leases.tryAcquire("inflight", "someone-else", LEASE)
        const b = yield* start({ name: "inflight", leaseSeconds: LEASE, renewEvery: RENEW, holder: "B", work: never })
        yield* awaitState(b.leadership, (s) => s.campaigns === 1)
        // What an acquire that committed after its caller was interrupted leaves behind.
        yield* sql`UPDATE ${table} SET holder = 'B', term = term + 1, expires_at = now() + interval '10 seconds'
                   WHERE name = 'inflight'`
        expect((yield* b.leadership.state).isLeader).toBe(false)
        yield* Scope.close(b.scope, Exit.void)
        const after = yield* row("inflight")
        expect(after.holder).toBe("")
        expect(after.expiresInSeconds).toBeLessThanOrEqual(0)
      }))
  })

  describe("standby takeover", () => {
    it.effect("a standby takes over within one campaign interval after the leader releases", () =>
      Effect.gen(function*() {
        const { start, row } = yield* setup
        const options = { name: "handover", leaseSeconds: LEASE, renewEvery: RENEW, campaignEvery: CAMPAIGN } as const
        const a = yield* start({ ...options, holder: "A", work: never })
        const first = yield* awaitState(a.leadership, (s) => s.isLeader)
        const b = yield* start({ ...options, holder: "B", work: never })
        yield* awaitState(b.leadership, (s) => s.campaigns === 1)
        expect((yield* b.leadership.state).isLeader).toBe(false)
        // A standby shutting down leaves the leader alone.
        const c = yield* start({ ...options, holder: "C", work: never })
        yield* awaitState(c.leadership, (s) => s.campaigns === 1)
        yield* Scope.close(c.scope, Exit.void)
        expect(yield* c.leadership.state).toMatchObject({ isLeader: false, releases: 0 })
        expect((yield* row("handover")).holder).toBe("A")

        yield* Scope.close(a.scope, Exit.void)
        expect((yield* row("handover")).holder).toBe("")
        yield* TestClock.adjust(CAMPAIGN)
        const second = yield* awaitState(b.leadership, (s) => s.isLeader)
        expect(second.term).toBe(first.term! + 1)
        expect(second.campaigns).toBe(2)
        expect((yield* row("handover")).holder).toBe("B")
        yield* Scope.close(b.scope, Exit.void)
      }))

    it.effect("after a crash (no release) a standby takes over within one lease plus one campaign interval", () =>
      Effect.gen(function*() {
        const { start, leases, age, row } = yield* setup
        // A crashed leader leaves exactly this behind: a fresh lease that nobody renews or releases.
        const crashed = Option.getOrThrow(yield* leases.tryAcquire("crash", "crashed-process", LEASE))
        const b = yield* start({
          name: "crash",
          leaseSeconds: LEASE,
          renewEvery: RENEW,
          campaignEvery: CAMPAIGN,
          holder: "B",
          work: never
        })
        yield* awaitState(b.leadership, (s) => s.campaigns === 1)
        // Move both clocks one campaign interval at a time: the server's (timestamps) and the schedules'.
        let seconds = 0
        while (!(yield* b.leadership.state).isLeader) {
          expect(seconds).toBeLessThan(LEASE + 1)
          yield* age("crash", 1)
          seconds++
          yield* TestClock.adjust(CAMPAIGN)
          yield* awaitState(b.leadership, (s) => s.campaigns === seconds + 1)
        }
        // Not before the lease ran out, and no later than one campaign interval after.
        expect(seconds).toBe(LEASE)
        expect(yield* row("crash")).toMatchObject({ holder: "B", term: crashed + 1 })
        yield* Scope.close(b.scope, Exit.void)
      }))
  })
})
