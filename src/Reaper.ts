/**
 * The leader-only maintenance tick: re-arm expired claims, promote due jobs, prune dead processes (and
 * free their claims at once), recover stranded barriers (BarrierRecovery), and on their own cadences the
 * retention sweeps (RetentionSweep) and the queue and barrier gauges (QueueGauges). Every statement carries
 * the leader fence, so an ex-leader that was paused or partitioned changes nothing. One job failing does not
 * stop the others.
 *
 * Every job works in bounded batches (MAINTENANCE_BATCH rows, each batch its own short transaction, a short
 * pause between batches, at most MAX_BATCHES per tick; see MaintenanceJob): the fence's share lock on the
 * lease row lasts one batch, so the leader's own renew never waits behind a backlog of a million rows.
 *
 * `Reaper.layer` runs the tick on a Schedule inside `Leadership`: only the leader ticks; a standby
 * campaigns. Its liveness (for /health) is the tick heartbeat while leading and the campaign heartbeat
 * while standing by, so a healthy standby answers 200 and a wedged leader answers 503.
 */
import { Clock, Context, Duration, Effect, Layer, Metric, Option, Ref, Schedule, Stream } from "effect"
import type { SqlClient } from "effect/sql"
import { makeBarrierRecovery, type RecoveryOutcome } from "./BarrierRecovery.ts"
import type { PgqSettings } from "./Config.ts"
import { ExecutionStatus } from "./ExecutionStatus.ts"
import type { Liveness } from "./Health.ts"
import { Leadership, type LeadershipState, type LeaderTerm } from "./Leadership.ts"
import { inBatches, makeCadence } from "./MaintenanceJob.ts"
import { ProcessRegistry } from "./ProcessRegistry.ts"
import { Queue } from "./Queue.ts"
import { makeQueueGauges, QueueGauges } from "./QueueGauges.ts"
import { makeRetentionSweep, type SweepOutcome } from "./RetentionSweep.ts"

export { inBatches, MAX_BATCHES } from "./MaintenanceJob.ts"

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
  /** How often the retention sweeps run (they need not run every tick). Default 60 s. */
  readonly sweepEverySeconds?: number
  /** Client-side bound of each maintenance statement (PGQ_STATEMENT_TIMEOUT_MS). */
  readonly statementTimeoutMs?: number
  /** A barrier without progress this long is stranded, like an expired one (PGQ_STUCK_TIMEOUT_SECONDS). Default 9000. */
  readonly stuckTimeoutSeconds?: number
  /** Leave stranded barriers without an org id alone (an HTTP status store needs one). Default false. */
  readonly requireOrgId?: boolean
  /** Stranded barriers one tick looks at (oldest first, round robin over ticks). Default 100. */
  readonly recoveryLimit?: number
  /** Batch markers of ended executions are kept this long (PGQ_MARKER_RETENTION_SECONDS). Default 86400. */
  readonly markerRetentionSeconds?: number
  /**
   * Finished executions in the `execution` table are kept this long (PGQ_EXECUTION_RETENTION_DAYS); unset:
   * not swept (an HTTP status store keeps statuses elsewhere).
   */
  readonly executionRetentionSeconds?: number
  /** How often the leader refreshes the queue and barrier gauges. Default 15 s. */
  readonly gaugeEverySeconds?: number
  /**
   * Announce healed callbacks and jobs freed from dead processes to LISTENing workers (PGQ_NOTIFY). Default
   * false: they are found by polling.
   */
  readonly notify?: boolean
  /** Behind PgBouncer's transaction pooling (PGQ_PGBOUNCER): no witness session for the heartbeat. */
  readonly pgbouncer?: boolean
  /** The execution-status store `layerFromOptions` provides: HTTP when `statusUrl` is set, else the SQL store. */
  readonly status?: Pick<PgqSettings, "statusUrl" | "statusToken" | "statusTimeoutMs">
}

/** What one leader tick did; a job that failed is named in `failures` and counted as 0. */
export interface TickOutcome {
  readonly term: number
  readonly rearmed: number
  readonly promoted: number
  readonly pruned: number
  readonly released: number
  /** Dead letters deleted by retention. */
  readonly swept: number
  /** Stranded barriers ended ERROR (or cleaned up, their execution being finished or gone). */
  readonly recovered: number
  /** Stranded barriers whose batches had all completed: their callback enqueued. */
  readonly healed: number
  /** Stranded barriers left for the next tick because the status port or a statement failed. */
  readonly recoveryFailures: number
  readonly sweptMarkers: number
  readonly sweptExecutions: number
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
  losses: gauge("pgq_reaper_lease_losses", "Times this reaper lost the lease (renew refused or failed)"),
  barrierRecovered: counter(
    "pgq_reaper_barrier_recovered_total",
    "Stranded barriers ended: execution marked ERROR, or already finished or gone (cleanup only)"
  ),
  barrierHealed: counter("pgq_reaper_barrier_healed_total", "Stranded barriers whose batches all completed: callback re-fired"),
  barrierRecoveryFailures: counter(
    "pgq_reaper_barrier_recovery_failures_total",
    "Stranded barriers left for the next tick (status read or write failed, statement failed)"
  ),
  /** Tagged `table`: dead_letter, barrier_batch, execution. */
  sweepFailures: counter("pgq_reaper_sweep_failures_total", "Retention sweeps that failed, by table"),
  sweptMarkers: counter("pgq_reaper_swept_markers_total", "Batch markers of ended executions deleted by retention"),
  sweptExecutions: counter("pgq_reaper_swept_executions_total", "Finished executions deleted by retention"),
  gaugeRefreshFailures: counter("pgq_reaper_gauge_refresh_failures_total", "Refreshes of the queue and barrier gauges that failed"),
  ...QueueGauges
}

export class Reaper extends Context.Service<Reaper, {
  readonly leadership: Effect.Effect<LeadershipState>
  readonly liveness: Effect.Effect<Liveness>
  readonly lastTick: Effect.Effect<TickOutcome | null>
}>()("effect-pg-queue/Reaper") {
  static readonly layer = (options: ReaperOptions) => Layer.effect(Reaper, makeReaper(options))
}

const noRecovery: RecoveryOutcome = { selected: 0, recovered: 0, healed: 0, failed: 0, skipped: 0 }
const noSweep: SweepOutcome = { deadLetters: 0, markers: 0, executions: 0, failed: [] }

/**
 * One leader tick under `term`'s fence. `stepDown` clears what only a leader publishes (the gauges) and
 * makes the next term refresh them at once.
 */
export const makeTick = Effect.fnUntraced(function*(options: ReaperOptions) {
  const queue = yield* Queue
  const processes = yield* ProcessRegistry
  const statementTimeoutMs = options.statementTimeoutMs
  const stuckTimeoutSeconds = options.stuckTimeoutSeconds ?? 9000
  const recovery = yield* makeBarrierRecovery({
    schema: options.schema,
    stuckTimeoutSeconds,
    limit: options.recoveryLimit,
    statementTimeoutMs,
    requireOrgId: options.requireOrgId
  })
  const retention = yield* makeRetentionSweep({
    schema: options.schema,
    deadLetterRetentionSeconds: options.deadLetterRetentionSeconds,
    markerRetentionSeconds: options.markerRetentionSeconds ?? 86_400,
    executionRetentionSeconds: options.executionRetentionSeconds,
    statementTimeoutMs
  })
  const gauges = yield* makeQueueGauges({ schema: options.schema, stuckTimeoutSeconds, statementTimeoutMs })
  const sweepCadence = yield* makeCadence(options.sweepEverySeconds ?? 60)
  const gaugeCadence = yield* makeCadence(options.gaugeEverySeconds ?? 15)

  const failed = (label: string) => (cause: unknown) =>
    Effect.logWarning(`reaper: ${label} failed; retrying next tick`, cause).pipe(
      Effect.andThen(Metric.update(ReaperMetrics.tickFailures, 1))
    )

  const job = <E>(label: string, effect: Effect.Effect<number, E>) =>
    effect.pipe(
      Effect.map((n) => ({ n, failed: [] as ReadonlyArray<string> })),
      Effect.catchCause((cause) => failed(label)(cause).pipe(Effect.as({ n: 0, failed: [label] })))
    )

  const refreshGauges = Effect.gen(function*() {
    if (!(yield* gaugeCadence.due)) return [] as ReadonlyArray<string>
    return yield* gauges.refresh.pipe(
      Effect.as([] as ReadonlyArray<string>),
      Effect.catchCause((cause) =>
        failed("gauge refresh")(cause).pipe(
          Effect.andThen(Metric.update(ReaperMetrics.gaugeRefreshFailures, 1)),
          Effect.as(["gauge refresh"])
        )
      )
    )
  })

  const run = Effect.fnUntraced(function*(term: LeaderTerm["Service"]) {
    const scope = { fence: term.fence }
    const rearmed = yield* job("re-arm expired claims", inBatches(queue.rearmExpired(scope)))
    const promoted = yield* job("promote due jobs", inBatches(queue.promoteDue(scope)))
    const prune = yield* processes.pruneStale(scope).pipe(
      Effect.map((r) => ({ ...r, failed: [] as ReadonlyArray<string> })),
      Effect.catchCause((cause) =>
        failed("prune stale processes")(cause).pipe(
          Effect.as({ pruned: 0, released: 0, queues: [], failed: ["prune stale processes"] })
        )
      )
    )
    // Idle workers claim the freed jobs now rather than at their next poll.
    yield* queue.announceReady(prune.queues)
    // After redelivery: a slow status service must not delay the jobs above.
    const recovered = yield* recovery.run(term).pipe(
      Effect.map((r) => ({ ...r, failures: [] as ReadonlyArray<string> })),
      Effect.catchCause((cause) => failed(recovery.name)(cause).pipe(Effect.as({ ...noRecovery, failures: [recovery.name] })))
    )
    const swept = (yield* sweepCadence.due) ? yield* retention.run(term) : noSweep
    const gaugeFailures = yield* refreshGauges
    const outcome: TickOutcome = {
      term: term.term,
      rearmed: rearmed.n,
      promoted: promoted.n,
      pruned: prune.pruned,
      released: prune.released,
      swept: swept.deadLetters,
      recovered: recovered.recovered,
      healed: recovered.healed,
      recoveryFailures: recovered.failed,
      sweptMarkers: swept.markers,
      sweptExecutions: swept.executions,
      failures: [
        ...rearmed.failed,
        ...promoted.failed,
        ...prune.failed,
        ...recovered.failures,
        ...swept.failed.map((table) => `retention sweep of ${table}`),
        ...gaugeFailures
      ]
    }
    yield* Effect.all([
      Metric.update(ReaperMetrics.ticks, 1),
      Metric.update(ReaperMetrics.rearmed, outcome.rearmed),
      Metric.update(ReaperMetrics.promoted, outcome.promoted),
      Metric.update(ReaperMetrics.pruned, outcome.pruned),
      Metric.update(ReaperMetrics.released, outcome.released),
      Metric.update(ReaperMetrics.swept, outcome.swept),
      Metric.update(ReaperMetrics.barrierRecovered, outcome.recovered),
      Metric.update(ReaperMetrics.barrierHealed, outcome.healed),
      Metric.update(ReaperMetrics.barrierRecoveryFailures, outcome.recoveryFailures),
      Metric.update(ReaperMetrics.sweptMarkers, outcome.sweptMarkers),
      Metric.update(ReaperMetrics.sweptExecutions, outcome.sweptExecutions),
      ...swept.failed.map((table) => Metric.update(Metric.withAttributes(ReaperMetrics.sweepFailures, { table }), 1))
    ], { discard: true })
    if (outcome.rearmed + outcome.released + outcome.pruned + outcome.swept + outcome.sweptMarkers + outcome.sweptExecutions > 0) {
      yield* Effect.logInfo(
        `reaper tick (term ${term.term}): re-armed ${outcome.rearmed}, promoted ${outcome.promoted}, ` +
          `pruned ${outcome.pruned} process(es) freeing ${outcome.released} claim(s), swept ${outcome.swept} dead letter(s), ` +
          `${outcome.sweptMarkers} batch marker(s) and ${outcome.sweptExecutions} finished execution(s)`
      )
    }
    return outcome
  })

  const stepDown = gauges.clear.pipe(Effect.andThen(gaugeCadence.reset))
  return Object.assign(run, { stepDown })
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
          Effect.asVoid,
          // A step-down (lease lost, shutdown) withdraws the leader-only gauges.
          Effect.ensuring(tick.stepDown)
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
  statementTimeoutMs: settings.statementTimeoutMs,
  stuckTimeoutSeconds: settings.stuckTimeoutSeconds,
  requireOrgId: Option.isSome(settings.statusUrl),
  markerRetentionSeconds: settings.markerRetentionSeconds,
  // The execution table is ours only with the SQL status store.
  ...(Option.isNone(settings.statusUrl) ? { executionRetentionSeconds: settings.executionRetentionDays * 86_400 } : {}),
  notify: settings.notify,
  pgbouncer: settings.pgbouncer,
  status: { statusUrl: settings.statusUrl, statusToken: settings.statusToken, statusTimeoutMs: settings.statusTimeoutMs }
})

/** The status store of `options`: the HTTP adapter when a URL is set, else the SQL store. */
const statusLayer = (options: ReaperOptions) =>
  ExecutionStatus.fromSettings({
    schema: options.schema,
    statusUrl: options.status?.statusUrl ?? Option.none(),
    statusToken: options.status?.statusToken ?? Option.none(),
    statusTimeoutMs: options.status?.statusTimeoutMs ?? 5000,
    statementTimeoutMs: options.statementTimeoutMs ?? 10_000
  })

/** The reaper with its Queue, execution-status store and process registration (what `dist/reaper.js` runs). */
export const layerFromOptions = (options: ReaperOptions) =>
  Reaper.layer(options).pipe(
    Layer.provide(Layer.effectDiscard(
      ProcessRegistry.use((registry) =>
        registry.register({ kind: "reaper", every: options.heartbeatSeconds, staleSeconds: options.processStaleSeconds })
      )
    ).pipe(Layer.provideMerge(ProcessRegistry.layer(options.schema, { sessionWitness: options.pgbouncer !== true })))),
    Layer.provide(statusLayer(options)),
    // The reaper enqueues only the callbacks it heals.
    Layer.provide(Queue.layer({
      schema: options.schema,
      maxAttempts: options.maxAttempts,
      notify: options.notify ?? false,
      ...(options.statementTimeoutMs === undefined ? {} : { statementTimeoutMs: options.statementTimeoutMs })
    }))
  )

export type ReaperRequirements = SqlClient.SqlClient
