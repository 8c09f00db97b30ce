/**
 * The leader-only maintenance tick: re-arm expired claims, promote due jobs, prune dead processes (and
 * free their claims at once), sweep old dead letters. Every statement carries the leader fence, so an
 * ex-leader that was paused or partitioned changes nothing. One job failing does not stop the others.
 *
 * Every job works in bounded batches (MAINTENANCE_BATCH rows, each batch its own short transaction, a short
 * pause between batches, at most MAX_BATCHES per tick): the fence's share lock on the lease row lasts one
 * batch, so the leader's own renew never waits behind a backlog of a million rows.
 *
 * `Reaper.layer` runs the tick on a Schedule inside `Leadership`: only the leader ticks; a standby
 * campaigns. Its liveness (for /health) is the tick heartbeat while leading and the campaign heartbeat
 * while standing by, so a healthy standby answers 200 and a wedged leader answers 503.
 */
import { Clock, Context, Duration, Effect, Layer, Metric, Ref, Schedule, Stream } from "effect"
import type { SqlClient } from "effect/sql"
import type { PgqSettings } from "./Config.ts"
import type { Liveness } from "./Health.ts"
import { Leadership, type LeadershipState, type LeaderTerm } from "./Leadership.ts"
import { ProcessRegistry } from "./ProcessRegistry.ts"
import { MAINTENANCE_BATCH, Queue } from "./Queue.ts"

export interface ReaperOptions {
  readonly schema: string
  readonly maxAttempts: number
  /** Lease name; several reapers (or reaper groups) may use distinct names. Default "reaper". */
  readonly leaseName?: string
  readonly leaseSeconds: number
  readonly intervalSeconds: number
  /** The reaper's own process row: heartbeat period and stale timeout. */
  readonly processStaleSeconds: number
  readonly heartbeatSeconds: number
  readonly deadLetterRetentionSeconds: number
  /** How often the dead-letter retention sweep runs (it need not run every tick). Default 60 s. */
  readonly sweepEverySeconds?: number
  /** Client-side bound of each maintenance statement (PGQ_STATEMENT_TIMEOUT_MS). */
  readonly statementTimeoutMs?: number
}

/** What one leader tick did; a job that failed is named in `failures` and counted as 0. */
export interface TickOutcome {
  readonly term: number
  readonly rearmed: number
  readonly promoted: number
  readonly pruned: number
  readonly released: number
  readonly swept: number
  readonly failures: ReadonlyArray<string>
}

const gauge = (name: string, description: string) => Metric.gauge(name, { description })
const counter = (name: string, description: string) => Metric.counter(name, { description })

export const ReaperMetrics = {
  isLeader: gauge("pgq_reaper_is_leader", "1 while this reaper holds the lease"),
  term: gauge("pgq_reaper_term", "Term of the lease this reaper holds (0 when standing by)"),
  ticks: counter("pgq_reaper_ticks_total", "Leader ticks run"),
  tickFailures: counter("pgq_reaper_tick_failures_total", "Tick jobs that failed (logged; the loop goes on)"),
  rearmed: counter("pgq_reaper_rearmed_total", "Expired claims made ready again"),
  promoted: counter("pgq_reaper_promoted_total", "Due scheduled jobs made ready"),
  pruned: counter("pgq_reaper_pruned_processes_total", "Processes pruned for a stale heartbeat"),
  released: counter("pgq_reaper_released_total", "Claims of pruned processes made ready"),
  swept: counter("pgq_reaper_swept_dead_letters_total", "Dead letters deleted by retention"),
  acquisitions: gauge("pgq_reaper_lease_acquisitions", "Times this reaper won the lease"),
  losses: gauge("pgq_reaper_lease_losses", "Times this reaper lost the lease (renew refused or failed)")
}

export class Reaper extends Context.Service<Reaper, {
  readonly leadership: Effect.Effect<LeadershipState>
  readonly liveness: Effect.Effect<Liveness>
  readonly lastTick: Effect.Effect<TickOutcome | null>
}>()("effect-pg-queue/Reaper") {
  static readonly layer = (options: ReaperOptions) => Layer.effect(Reaper, makeReaper(options))
}

/** Batches one maintenance job may run in one tick (the rest waits for the next tick). */
export const MAX_BATCHES = 50
/** Pause between two batches of one job, so the leader's renew and other traffic get the rows in between. */
const BATCH_PAUSE = Duration.millis(10)

/** Run `batch` (one bounded statement returning the rows it changed) until it comes back short. */
export const inBatches = <E>(batch: Effect.Effect<number, E>) =>
  Effect.gen(function*() {
    const total = yield* Ref.make(0)
    yield* batch.pipe(
      Effect.tap((n) => Ref.update(total, (t) => t + n)),
      Effect.repeat({ schedule: Schedule.spaced(BATCH_PAUSE), while: (n) => n >= MAINTENANCE_BATCH, times: MAX_BATCHES - 1 })
    )
    return yield* Ref.get(total)
  })

/** One leader tick under `term`'s fence. */
export const makeTick = Effect.fnUntraced(function*(options: ReaperOptions) {
  const queue = yield* Queue
  const processes = yield* ProcessRegistry
  const lastSweepAt = yield* Ref.make(Number.NEGATIVE_INFINITY)

  const job = <E>(label: string, effect: Effect.Effect<number, E>) =>
    effect.pipe(
      Effect.map((n) => ({ n, failed: [] as ReadonlyArray<string> })),
      Effect.catchCause((cause) =>
        Effect.logWarning(`reaper: ${label} failed; retrying next tick`, cause).pipe(
          Effect.andThen(Metric.update(ReaperMetrics.tickFailures, 1)),
          Effect.as({ n: 0, failed: [label] })
        )
      )
    )

  const sweepDue = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    if (now - (yield* Ref.get(lastSweepAt)) < (options.sweepEverySeconds ?? 60) * 1000) return false
    // The cadence advances before the sweep, so a failing sweep waits a full interval too.
    yield* Ref.set(lastSweepAt, now)
    return true
  })

  return Effect.fnUntraced(function*(term: LeaderTerm["Service"]) {
    const scope = { fence: term.fence }
    const rearmed = yield* job("re-arm expired claims", inBatches(queue.rearmExpired(scope)))
    const promoted = yield* job("promote due jobs", inBatches(queue.promoteDue(scope)))
    const prune = yield* processes.pruneStale(scope).pipe(
      Effect.map((r) => ({ ...r, failed: [] as ReadonlyArray<string> })),
      Effect.catchCause((cause) =>
        Effect.logWarning("reaper: prune stale processes failed; retrying next tick", cause).pipe(
          Effect.andThen(Metric.update(ReaperMetrics.tickFailures, 1)),
          Effect.as({ pruned: 0, released: 0, failed: ["prune stale processes"] })
        )
      )
    )
    const swept = (yield* sweepDue)
      ? yield* job("dead-letter retention sweep", inBatches(queue.sweepDeadLetters(options.deadLetterRetentionSeconds, scope)))
      : { n: 0, failed: [] }
    const outcome: TickOutcome = {
      term: term.term,
      rearmed: rearmed.n,
      promoted: promoted.n,
      pruned: prune.pruned,
      released: prune.released,
      swept: swept.n,
      failures: [...rearmed.failed, ...promoted.failed, ...prune.failed, ...swept.failed]
    }
    yield* Effect.all([
      Metric.update(ReaperMetrics.ticks, 1),
      Metric.update(ReaperMetrics.rearmed, outcome.rearmed),
      Metric.update(ReaperMetrics.promoted, outcome.promoted),
      Metric.update(ReaperMetrics.pruned, outcome.pruned),
      Metric.update(ReaperMetrics.released, outcome.released),
      Metric.update(ReaperMetrics.swept, outcome.swept)
    ], { discard: true })
    if (outcome.rearmed + outcome.released + outcome.pruned + outcome.swept > 0) {
      yield* Effect.logInfo(
        `reaper tick (term ${term.term}): re-armed ${outcome.rearmed}, promoted ${outcome.promoted}, ` +
          `pruned ${outcome.pruned} process(es) freeing ${outcome.released} claim(s), swept ${outcome.swept} dead letter(s)`
      )
    }
    return outcome
  })
})

const makeReaper = Effect.fnUntraced(function*(options: ReaperOptions) {
  const tick = yield* makeTick(options)
  const lastTick = yield* Ref.make<TickOutcome | null>(null)
  const lastBeat = yield* Ref.make(yield* Clock.currentTimeMillis)
  const beat = Clock.currentTimeMillis.pipe(Effect.flatMap((now) => Ref.set(lastBeat, now)))
  const interval = Duration.millis(options.intervalSeconds * 1000)

  const leadership = yield* Layer.build(
    Leadership.layer({
      schema: options.schema,
      name: options.leaseName ?? "reaper",
      leaseSeconds: options.leaseSeconds,
      renewEvery: interval,
      campaignEvery: interval,
      work: (term) =>
        tick(term).pipe(
          Effect.tap((outcome) => Ref.set(lastTick, outcome)),
          Effect.andThen(beat),
          Effect.repeat(Schedule.spaced(interval)),
          Effect.asVoid
        )
    })
  ).pipe(Effect.map(Context.get(Leadership)))

  // Standby liveness is the campaign loop; leader liveness is the tick loop (a wedged tick goes stale).
  yield* leadership.changes.pipe(
    Stream.runForEach((state) =>
      Effect.all([
        Metric.update(ReaperMetrics.isLeader, state.isLeader ? 1 : 0),
        Metric.update(ReaperMetrics.term, state.term ?? 0),
        Metric.update(ReaperMetrics.acquisitions, state.acquisitions),
        Metric.update(ReaperMetrics.losses, state.losses),
        state.isLeader && state.renewals > 0 ? Effect.void : beat
      ], { discard: true })
    ),
    Effect.forkScoped
  )

  const liveness = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const state = yield* leadership.state
    const outcome = yield* Ref.get(lastTick)
    return {
      ageSeconds: (now - (yield* Ref.get(lastBeat))) / 1000,
      extra: {
        is_leader: state.isLeader,
        term: state.term,
        holder: state.holder,
        last_tick: outcome
      }
    }
  })

  return Reaper.of({ leadership: leadership.state, liveness, lastTick: Ref.get(lastTick) })
})

/** Reaper options from the validated settings. */
export const optionsFromSettings = (settings: PgqSettings): ReaperOptions => ({
  schema: settings.schema,
  maxAttempts: settings.maxAttempts,
  leaseSeconds: settings.leaseSeconds,
  intervalSeconds: settings.reaperIntervalSeconds,
  processStaleSeconds: settings.processStaleSeconds,
  heartbeatSeconds: settings.heartbeatSeconds,
  deadLetterRetentionSeconds: settings.deadLetterRetentionDays * 86_400,
  statementTimeoutMs: settings.statementTimeoutMs
})

/** The reaper with its Queue and process registration (what `dist/reaper.js` runs). */
export const layerFromOptions = (options: ReaperOptions) =>
  Reaper.layer(options).pipe(
    Layer.provide(Layer.effectDiscard(
      ProcessRegistry.use((registry) =>
        registry.register({ kind: "reaper", every: options.heartbeatSeconds, staleSeconds: options.processStaleSeconds })
      )
    ).pipe(Layer.provideMerge(ProcessRegistry.layer(options.schema)))),
    // The reaper never enqueues, so it needs no wake-up announcer.
    Layer.provide(Queue.layer({
      schema: options.schema,
      maxAttempts: options.maxAttempts,
      notify: false,
      ...(options.statementTimeoutMs === undefined ? {} : { statementTimeoutMs: options.statementTimeoutMs })
    }))
  )

export type ReaperRequirements = SqlClient.SqlClient
