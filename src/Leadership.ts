/**
 * Leader election as a scoped Layer. A background fiber campaigns for a named lease on a Schedule; once it
 * wins it runs the leader-only `work` while renewing the lease on a fixed cadence. Whichever ends first
 * decides (`Effect.raceFirst`):
 *
 * - a renew that is refused, fails or times out ends leadership with a typed `LeaseLost`; the work is
 *   interrupted at once and the fiber goes back to campaigning;
 * - work that fails (or dies) is logged, the lease is released, and the fiber campaigns again after one
 *   campaign interval (so a crash-looping work cannot spin, and a standby gets its chance);
 * - work that succeeds keeps leadership: the lease is renewed until the scope closes or the lease is lost.
 *   Leader work is normally a loop; a one-shot work therefore runs once per term, not once per process.
 *
 * Closing the scope interrupts the work and releases the lease (errors logged, never thrown), so a standby
 * takes over within one campaign interval instead of one lease.
 *
 * Leadership is only a belief: a paused process may still think it leads. Leader-only writes must carry
 * the term's `fence` (see `LeaderTerm`) in the same statement; the database then refuses a stale leader.
 * To bound the belief locally too, a renew that has not answered within `leaseSeconds - renewEvery` (when
 * the lease would run out) counts as lost.
 *
 * Known gap: if the scope closes while an acquiring UPDATE is in flight and it commits, we never learn the
 * term, so that lease is not released; it simply expires after one lease.
 */
import { Cause, Context, Duration, Effect, Exit, Layer, Option, Schedule, Stream, SubscriptionRef } from "effect"
import type { SqlClient, Statement } from "effect/sql"
import { reasonOf } from "./Database.ts"
import { InvalidConfig, LeaseLost } from "./Errors.ts"
import { makeLeaderLease, validateLeaseSeconds, workerId } from "./LeaderLease.ts"

/** The term this process currently leads, with the fence its leader-only writes must carry. */
export class LeaderTerm extends Context.Service<LeaderTerm, {
  readonly name: string
  readonly holder: string
  readonly term: number
  /** `EXISTS (…)` over the lease row: put it in the WHERE of every leader-only write. */
  readonly fence: Statement.Fragment
}>()("effect-pg-queue/LeaderTerm") {}

/** Observable state for /health and /metrics. Counters only grow. */
export interface LeadershipState {
  readonly name: string
  readonly holder: string
  readonly isLeader: boolean
  /** The term held right now; null while standing by. */
  readonly term: number | null
  /** tryAcquire attempts (won or not). */
  readonly campaigns: number
  readonly acquisitions: number
  readonly renewals: number
  /** Step-downs caused by `LeaseLost`: a renew refused, failed or timed out (or the work failed with one). */
  readonly losses: number
  /** Step-downs caused by the work failing or dying. */
  readonly workFailures: number
  /** Releases that actually freed the row (work failure, shutdown). */
  readonly releases: number
  /** Why leadership last ended, if it ever did. */
  readonly lastStepDown: string | null
}

export interface LeadershipOptions<E, R> {
  /** Schema holding the `lease` table. */
  readonly schema: string
  /** Lease row name. Default "reaper". */
  readonly name?: string
  /** Lease length (PGQ_LEASE_SECONDS). */
  readonly leaseSeconds: number
  /** Renew cadence; must be shorter than the lease. */
  readonly renewEvery: Duration.Input
  /** Delay between campaign attempts, and after a step-down. Default: renewEvery. */
  readonly campaignEvery?: Duration.Input
  /** Holder id. Default: `workerId()` (`host:pid:random`). */
  readonly holder?: string
  /** Leader-only work for one term; `LeaderTerm` is provided to it as well. */
  readonly work: (term: LeaderTerm["Service"]) => Effect.Effect<void, E, R>
}

const positiveDuration = (input: Duration.Input, variable: string): Effect.Effect<Duration.Duration, InvalidConfig> => {
  const duration = Duration.fromInput(input)
  return Option.isSome(duration) && Duration.isFinite(duration.value) && Duration.toMillis(duration.value) > 0
    ? Effect.succeed(duration.value)
    : Effect.fail(new InvalidConfig({ variable, reason: `must be a positive, finite duration, got ${String(input)}` }))
}

export const makeLeadership = Effect.fnUntraced(function*<E, R>(options: LeadershipOptions<E, R>) {
  const leaseSeconds = yield* validateLeaseSeconds(options.leaseSeconds, "PGQ_LEASE_SECONDS")
  const renewEvery = yield* positiveDuration(options.renewEvery, "renewEvery")
  const campaignEvery = yield* positiveDuration(options.campaignEvery ?? options.renewEvery, "campaignEvery")
  if (Duration.toSeconds(renewEvery) >= leaseSeconds) {
    return yield* new InvalidConfig({
      variable: "PGQ_LEASE_SECONDS",
      reason: `must be longer than the renew interval (${Duration.format(renewEvery)}), got ${leaseSeconds} s`
    })
  }
  const leases = yield* makeLeaderLease({ schema: options.schema })
  const lease = yield* leases.candidate({
    name: options.name ?? "reaper",
    holder: options.holder ?? workerId(),
    leaseSeconds
  })
  const renewTimeout = Duration.seconds(leaseSeconds - Duration.toSeconds(renewEvery))

  const state = yield* SubscriptionRef.make<LeadershipState>({
    name: lease.name,
    holder: lease.holder,
    isLeader: false,
    term: null,
    campaigns: 0,
    acquisitions: 0,
    renewals: 0,
    losses: 0,
    workFailures: 0,
    releases: 0,
    lastStepDown: null
  })
  const update = (f: (s: LeadershipState) => LeadershipState) => SubscriptionRef.update(state, f)

  /** Try now, then every campaignEvery, until won. A database error is logged and counts as "not won". */
  const campaign = lease.tryAcquire.pipe(
    Effect.catch((error) =>
      Effect.logWarning("campaign failed; retrying", reasonOf(error)).pipe(Effect.as(Option.none<number>()))
    ),
    // A won attempt is counted by `won`, so each attempt publishes exactly one state carrying its outcome.
    Effect.tap((result) => Option.isNone(result) ? update((s) => ({ ...s, campaigns: s.campaigns + 1 })) : Effect.void),
    Effect.repeat({ schedule: Schedule.spaced(campaignEvery), until: Option.isSome })
  )

  const lost = (term: number, reason: string) => new LeaseLost({ lease: lease.name, holder: lease.holder, term, reason })

  const renewOnce = (term: number) =>
    lease.renew(term).pipe(
      Effect.timeout(renewTimeout),
      Effect.catch((error) =>
        Effect.fail(lost(term, Cause.isTimeoutError(error) ? "renew timed out" : `renew failed: ${reasonOf(error)}`))
      ),
      Effect.flatMap((renewed) =>
        renewed
          ? update((s) => ({ ...s, renewals: s.renewals + 1 }))
          : Effect.fail(lost(term, "renew refused: the lease expired or was taken over"))
      )
    )

  /** Runs until leadership ends; it never succeeds. */
  const lead = (term: number) => {
    const leaderTerm = LeaderTerm.of({ name: lease.name, holder: lease.holder, term, fence: lease.fence(term) })
    const work = options.work(leaderTerm).pipe(
      Effect.provideService(LeaderTerm, leaderTerm),
      Effect.andThen(Effect.logInfo("leader work finished; keeping the lease")),
      Effect.andThen(Effect.never)
    )
    // fixed: a slow renew does not push the next one later (spaced would drift by the renew's latency).
    const renewals = Effect.schedule(renewOnce(term), Schedule.fixed(renewEvery))
    return Effect.raceFirst(work, renewals)
  }

  const release = (term: number) =>
    lease.release(term).pipe(
      Effect.timeout(Duration.seconds(leaseSeconds)),
      Effect.flatMap((released) =>
        released
          ? update((s) => ({ ...s, releases: s.releases + 1 })).pipe(Effect.andThen(Effect.logInfo("lease released")))
          : Effect.logDebug("release was a no-op: the lease is no longer ours")
      ),
      Effect.catch((error) =>
        Effect.logWarning("lease release failed; a standby takes over after one lease", reasonOf(error))
      )
    )

  /**
   * Always release (it is fenced by the term, so a lost lease is left alone), then publish the step-down in
   * one state change, so an observer that sees it also sees the release's outcome.
   */
  const stepDown = (term: number, exit: Exit.Exit<unknown, unknown>) => {
    const cause = Exit.isFailure(exit) ? exit.cause : Cause.empty
    const shutdown = Cause.hasInterruptsOnly(cause)
    const error = Cause.findErrorOption(cause)
    const loss = Option.filter(error, (e): e is LeaseLost => e instanceof LeaseLost)
    const reason = shutdown
      ? "shutdown"
      : Option.isSome(loss)
      ? loss.value.reason
      : `work failed: ${reasonOf(Cause.squash(cause))}`
    const log = shutdown
      ? Effect.logInfo("leadership ended", reason)
      : Option.isSome(loss)
      ? Effect.logWarning("lost leadership; stepping down to standby", reason)
      : Effect.logError("leader work failed; stepping down", cause)
    return log.pipe(
      Effect.andThen(release(term)),
      Effect.andThen(update((s) => ({
        ...s,
        isLeader: false,
        term: null,
        losses: s.losses + (Option.isSome(loss) ? 1 : 0),
        workFailures: s.workFailures + (shutdown || Option.isSome(loss) ? 0 : 1),
        lastStepDown: reason
      })))
    )
  }

  const won = (term: number) =>
    update((s) => ({ ...s, isLeader: true, term, campaigns: s.campaigns + 1, acquisitions: s.acquisitions + 1 })).pipe(
      Effect.andThen(Effect.logInfo("acquired leadership", { term }))
    )

  // Campaign interruptibly; from the win on, nothing can interrupt us before stepDown is installed,
  // so a won lease is always released (or left to expire only if the process dies).
  const cycle = Effect.uninterruptibleMask((restore) =>
    restore(campaign).pipe(
      Effect.flatMap(Option.match({
        onNone: () => Effect.void,
        onSome: (term) =>
          won(term).pipe(
            Effect.andThen(restore(lead(term))),
            Effect.onExit((exit) => stepDown(term, exit)),
            // Leadership ended for a reason handled above; interruption (shutdown) keeps propagating.
            Effect.catchCause((cause) => Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause) : Effect.void)
          )
      }))
    )
  )

  // Runs after the cycle fiber below has been interrupted (finalizers run in reverse): a campaign query
  // interrupted in flight may still have won, and we would not know the term to release.
  yield* Effect.addFinalizer(() =>
    lease.relinquish.pipe(
      Effect.timeout(Duration.seconds(leaseSeconds)),
      Effect.flatMap((freed) => freed ? Effect.logInfo("released a lease won by an interrupted campaign") : Effect.void),
      Effect.ignore
    )
  )

  yield* cycle.pipe(
    // The background fiber must never die silently (a failed forkScoped fiber is not reported anywhere).
    Effect.catchCause((cause) =>
      Cause.hasInterruptsOnly(cause)
        ? Effect.failCause(cause)
        : Effect.logError("leadership cycle failed; campaigning again", cause)
    ),
    Effect.repeat(Schedule.spaced(campaignEvery)),
    Effect.annotateLogs({ lease: lease.name, holder: lease.holder }),
    Effect.forkScoped
  )

  return {
    name: lease.name,
    holder: lease.holder,
    state: SubscriptionRef.get(state),
    changes: SubscriptionRef.changes(state)
  }
})

export class Leadership extends Context.Service<Leadership, {
  readonly name: string
  readonly holder: string
  /** The current state. */
  readonly state: Effect.Effect<LeadershipState>
  /** The current state, then every change. */
  readonly changes: Stream.Stream<LeadershipState>
}>()("effect-pg-queue/Leadership") {
  /**
   * Campaign, lead and renew for as long as the layer's scope is open; fails to build with
   * `InvalidConfig` when the lease, intervals or holder id are unusable.
   */
  static readonly layer = <E, R>(
    options: LeadershipOptions<E, R>
  ): Layer.Layer<Leadership, InvalidConfig, SqlClient.SqlClient | Exclude<R, LeaderTerm>> =>
    Layer.effect(Leadership, makeLeadership(options))
}
