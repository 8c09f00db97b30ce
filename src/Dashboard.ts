/**
 * The operator's dashboard, as data: what `/api/*` answers and the page renders. Read-only queries over
 * Postgres (every list is one page, LIMIT/OFFSET in SQL; every count of a table that can grow is capped), the
 * queue counts of `Queue.stats`, the barrier views of `Executions`, and an in-memory throughput history
 * (DashboardThroughput.ts) sampled on a Schedule while the server runs. The two actions are the existing
 * fenced operations: `Queue.replayDeadLetters` and `Executions.stop` (`Barrier.stop`).
 *
 * The overview is cached briefly, so any number of open pages costs one set of counts per `cacheMs`.
 */
import { Context, Duration, Effect, Layer, Option, Ref, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { Barrier } from "./Barrier.ts"
import type { PgqSettings } from "./Config.ts"
import { emptyHistory, type History, type Interval, type QueueSample, record, type Sample } from "./DashboardThroughput.ts"
import { ExecutionStatus } from "./ExecutionStatus.ts"
import { COUNT_CAP, Executions } from "./Executions.ts"
import type { LeadershipState } from "./Leadership.ts"
import { Queue, type QueueStats } from "./Queue.ts"
import type { TickOutcome } from "./Reaper.ts"

/** What only a dashboard inside `dist/reaper.js` knows: this process's leadership and its last tick. */
export interface ReaperView {
  readonly lastTick: Effect.Effect<TickOutcome | null>
  readonly leadership: Effect.Effect<LeadershipState>
}

export interface DashboardOptions {
  readonly schema: string
  /** PGQ_STUCK_TIMEOUT_SECONDS: the stranded predicate of the barrier views. */
  readonly stuckTimeoutSeconds: number
  /** The `execution` table is the status store (no PGQ_STATUS_URL): recent finished executions come from it. */
  readonly sqlStatusStore: boolean
  /** Throughput sample period. Default 10 s. */
  readonly sampleSeconds?: number
  /** Intervals kept. Default 60 (ten minutes at the default period). */
  readonly historySize?: number
  /** How long one overview is served to every page before it is read again. Default 1000 ms. */
  readonly cacheMs?: number
  readonly reaper?: ReaperView
}

/** One page of a list: `offset` rows skipped, at most `limit` returned. */
export interface Page {
  readonly offset: number
  readonly limit: number
}

export const MAX_PAGE = 100
/** Dead-letter errors are cut to this many characters in lists; the detail view has the whole text. */
export const ERROR_PREVIEW = 300
/** The detail view shows at most this many characters of a payload. */
export const PAYLOAD_SHOWN = 100_000

export interface QueueRow extends QueueStats {
  /** Registered worker processes that consume the queue. */
  readonly consumers: number
}

export interface LeaseRow {
  readonly name: string
  readonly holder: string
  readonly term: number
  readonly held: boolean
  readonly acquiredAt: Date
  readonly expiresAt: Date
  /** Negative once expired (database clock). */
  readonly expiresInSeconds: number
}

export interface ProcessRow {
  readonly processId: string
  readonly kind: string
  readonly host: string
  readonly pid: number
  readonly queues: ReadonlyArray<string>
  readonly startedAt: Date
  readonly heartbeatAgeSeconds: number
  readonly heartbeatSeconds: number
  readonly staleSeconds: number
  /** Silent for longer than its own stale timeout: the reaper prunes it (and frees its claims) next tick. */
  readonly stale: boolean
  readonly inFlight: number
  /**
   * For a worker: the supervisor it most likely runs under — the newest supervisor on the same host, with the
   * same queues, started before it (the `process` table records no parent).
   */
  readonly supervisor: string | null
}

export interface DeadLetterRow {
  readonly msgId: string
  readonly queue: string
  readonly task: string
  readonly orgId: string
  readonly attempts: number
  readonly maxAttempts: number
  /** The first ERROR_PREVIEW characters. */
  readonly lastError: string
  readonly errorTruncated: boolean
  readonly failedAt: Date
  readonly ageSeconds: number
  readonly executionId: string | null
  readonly batchIndex: number | null
}

export interface DeadLetterDetail extends Omit<DeadLetterRow, "errorTruncated"> {
  readonly priority: number
  readonly enqueuedAt: Date
  /** The payload as indented JSON, cut to PAYLOAD_SHOWN characters. */
  readonly payload: string
  readonly payloadTruncated: boolean
}

export interface FinishedExecution {
  readonly executionId: string
  readonly orgId: string
  readonly status: string
  readonly errorMessage: string | null
  readonly updatedAt: Date
  readonly ageSeconds: number
  /** Ended by the reaper's recovery of a stranded barrier. */
  readonly recovered: boolean
}

export interface Overview {
  /** Database clock. */
  readonly now: Date
  readonly schema: string
  readonly queues: ReadonlyArray<QueueRow>
  readonly throughput: { readonly sampleSeconds: number; readonly intervals: ReadonlyArray<Interval> }
  readonly leases: ReadonlyArray<LeaseRow>
  /** Inside dist/reaper.js only: this reaper's leadership and its last tick. */
  readonly reaper: { readonly leadership: LeadershipState; readonly lastTick: TickOutcome | null } | null
  readonly fleet: { readonly total: number; readonly stale: number; readonly byKind: Readonly<Record<string, number>> }
  readonly barriers: { readonly live: number; readonly stranded: number; readonly capped: boolean }
  readonly deadLetters: { readonly total: number; readonly capped: boolean }
}

export const makeDashboard = Effect.fnUntraced(function*(options: DashboardOptions) {
  const sql = yield* SqlClient.SqlClient
  const queue = yield* Queue
  const executions = yield* Executions
  const t = (name: string) => sql(`${options.schema}.${name}`)
  const message = t("message")
  const deadLetter = t("dead_letter")
  const processTable = t("process")
  const sampleSeconds = options.sampleSeconds ?? 10
  const historySize = options.historySize ?? 60
  const historyRef = yield* Ref.make<History>(emptyHistory)

  const leases = sql<{
    name: string
    holder: string
    term: number
    held: boolean
    acquired_at: Date
    expires_at: Date
    expires_in: number
  }>`
    SELECT name, holder, term::float8 AS term, (holder <> '' AND expires_at > now()) AS held, acquired_at, expires_at,
           extract(epoch FROM expires_at - now())::float8 AS expires_in
    FROM ${t("lease")} ORDER BY name LIMIT ${MAX_PAGE}`.pipe(
    Effect.map((rows) =>
      rows.map((r): LeaseRow => ({
        name: r.name,
        holder: r.holder,
        term: r.term,
        held: r.held,
        acquiredAt: r.acquired_at,
        expiresAt: r.expires_at,
        expiresInSeconds: r.expires_in
      }))
    )
  )

  const consumers = sql<{ queue: string; n: number }>`
    SELECT q AS queue, count(*)::int AS n FROM ${processTable}, unnest(queues) AS q
    WHERE kind = 'worker' GROUP BY q`

  const fleetSummary = sql<{ kind: string; total: number; stale: number }>`
    SELECT kind, count(*)::int AS total,
           count(*) FILTER (WHERE heartbeat_at < now() - stale_seconds * interval '1 second')::int AS stale
    FROM ${processTable} GROUP BY kind`.pipe(
    Effect.map((rows) => ({
      total: rows.reduce((n, r) => n + r.total, 0),
      stale: rows.reduce((n, r) => n + r.stale, 0),
      byKind: Object.fromEntries(rows.map((r) => [r.kind, r.total]))
    }))
  )

  const deadTotal = sql<{ n: number }>`
    SELECT count(*)::int AS n FROM (SELECT 1 FROM ${deadLetter} LIMIT ${COUNT_CAP}) x`.pipe(
    Effect.map(([row]) => ({ total: row!.n, capped: row!.n >= COUNT_CAP }))
  )

  const dbNow = sql<{ now: Date }>`SELECT now() AS now`.pipe(Effect.map(([row]) => row!.now))

  const readOverview = Effect.gen(function*() {
    const [now, stats, served, leaseRows, fleet, barriers, dead, history] = yield* Effect.all([
      dbNow,
      queue.stats(),
      consumers,
      leases,
      fleetSummary,
      executions.counts,
      deadTotal,
      Ref.get(historyRef)
    ], { concurrency: 2 })
    const byQueue = new Map(served.map((r) => [r.queue, r.n]))
    const known = new Set(stats.map((s) => s.queue))
    const idle = [...byQueue.keys()].filter((q) => !known.has(q)).map((q): QueueStats => ({
      queue: q,
      ready: 0,
      scheduled: 0,
      claimed: 0,
      deadLettered: 0,
      oldestReadySeconds: null
    }))
    const queues = [...stats, ...idle]
      .map((s): QueueRow => ({ ...s, consumers: byQueue.get(s.queue) ?? 0 }))
      .sort((a, b) => a.queue.localeCompare(b.queue))
    const reaper = options.reaper === undefined ? null : {
      leadership: yield* options.reaper.leadership,
      lastTick: yield* options.reaper.lastTick
    }
    return {
      now,
      schema: options.schema,
      queues,
      throughput: { sampleSeconds, intervals: history.intervals },
      leases: leaseRows,
      reaper,
      fleet,
      barriers,
      deadLetters: dead
    } satisfies Overview
  }).pipe(Effect.withSpan("Dashboard.overview"))

  const processes = Effect.fn("Dashboard.processes")(function*(page: Page) {
    const rows = yield* sql<{
      process_id: string
      kind: string
      host: string
      pid: number
      queues: ReadonlyArray<string>
      started_at: Date
      heartbeat_age: number
      heartbeat_seconds: number
      stale_seconds: number
      stale: boolean
      in_flight: number
      supervisor: string | null
    }>`
      SELECT p.process_id, p.kind, p.host, p.pid, p.queues, p.started_at,
             extract(epoch FROM now() - p.heartbeat_at)::float8 AS heartbeat_age,
             p.heartbeat_seconds, p.stale_seconds,
             p.heartbeat_at < now() - p.stale_seconds * interval '1 second' AS stale,
             (SELECT count(*)::int FROM ${message} m
              WHERE m.state = 'claimed' AND m.claimed_by = p.process_id) AS in_flight,
             sup.process_id AS supervisor
      FROM ${processTable} p
      LEFT JOIN LATERAL (
        SELECT s.process_id, s.started_at FROM ${processTable} s
        WHERE p.kind = 'worker' AND s.kind = 'supervisor' AND s.host = p.host AND s.queues = p.queues
          AND s.started_at <= p.started_at
        ORDER BY s.started_at DESC LIMIT 1
      ) sup ON true
      ORDER BY p.host, coalesce(sup.started_at, p.started_at), coalesce(sup.process_id, p.process_id),
               p.kind <> 'supervisor', p.started_at, p.process_id
      LIMIT ${page.limit} OFFSET ${page.offset}`
    return rows.map((r): ProcessRow => ({
      processId: r.process_id,
      kind: r.kind,
      host: r.host,
      pid: r.pid,
      queues: r.queues,
      startedAt: r.started_at,
      heartbeatAgeSeconds: r.heartbeat_age,
      heartbeatSeconds: r.heartbeat_seconds,
      staleSeconds: r.stale_seconds,
      stale: r.stale,
      inFlight: r.in_flight,
      supervisor: r.supervisor
    }))
  })

  interface DeadRow {
    readonly msg_id: string
    readonly queue: string
    readonly task: string
    readonly org_id: string
    readonly read_ct: number
    readonly max_attempts: number
    readonly last_error: string
    readonly failed_at: Date
    readonly age: number
    readonly execution_id: string | null
    readonly batch_index: number | null
  }
  const deadColumns = sql`msg_id::text AS msg_id, queue, task, org_id, read_ct, max_attempts, failed_at,
    extract(epoch FROM now() - failed_at)::float8 AS age, execution_id, batch_index`
  const toDead = (r: DeadRow) => ({
    msgId: r.msg_id,
    queue: r.queue,
    task: r.task,
    orgId: r.org_id,
    attempts: r.read_ct,
    maxAttempts: r.max_attempts,
    lastError: r.last_error,
    failedAt: r.failed_at,
    ageSeconds: r.age,
    executionId: r.execution_id,
    batchIndex: r.batch_index
  })

  /** Newest first, like `dead-letter list`, without payloads and with the errors cut short. */
  const deadLetters = Effect.fn("Dashboard.deadLetters")(function*(page: Page) {
    const rows = yield* sql<DeadRow & { truncated: boolean }>`
      SELECT ${deadColumns}, left(last_error, ${ERROR_PREVIEW}) AS last_error,
             length(last_error) > ${ERROR_PREVIEW} AS truncated
      FROM ${deadLetter} ORDER BY failed_at DESC, msg_id DESC
      LIMIT ${page.limit} OFFSET ${page.offset}`
    return rows.map((r): DeadLetterRow => ({ ...toDead(r), errorTruncated: r.truncated }))
  })

  /** One dead letter with its payload; none for an unknown id. */
  const deadLetterDetail = Effect.fn("Dashboard.deadLetter")(function*(msgId: string) {
    const rows = yield* sql<DeadRow & { priority: number; enqueued_at: Date; payload: string; payload_truncated: boolean }>`
      SELECT ${deadColumns}, last_error, priority, enqueued_at,
             left(jsonb_pretty(payload), ${PAYLOAD_SHOWN}) AS payload,
             length(jsonb_pretty(payload)) > ${PAYLOAD_SHOWN} AS payload_truncated
      FROM ${deadLetter} WHERE msg_id = ${msgId}::bigint`
    return Option.map(Option.fromNullishOr(rows[0]), (r): DeadLetterDetail => ({
      ...toDead(r),
      priority: r.priority,
      enqueuedAt: r.enqueued_at,
      payload: r.payload,
      payloadTruncated: r.payload_truncated
    }))
  })

  /** Executions that ended, newest first (SQL status store only; an HTTP store keeps them elsewhere). */
  const finishedExecutions = Effect.fn("Dashboard.finishedExecutions")(function*(page: Page) {
    if (!options.sqlStatusStore) return null
    const rows = yield* sql<{
      execution_id: string
      org_id: string
      status: string
      error_message: string | null
      updated_at: Date
      age: number
      recovered: boolean
    }>`
      SELECT execution_id, org_id, status, left(error_message, ${ERROR_PREVIEW}) AS error_message, updated_at,
             extract(epoch FROM now() - updated_at)::float8 AS age,
             coalesce(error_message LIKE '[reaper-recovery]%', false) AS recovered
      FROM ${t("execution")} WHERE status IN ('COMPLETED', 'ERROR', 'STOPPED')
      ORDER BY updated_at DESC, execution_id LIMIT ${page.limit} OFFSET ${page.offset}`
    return rows.map((r): FinishedExecution => ({
      executionId: r.execution_id,
      orgId: r.org_id,
      status: r.status,
      errorMessage: r.error_message,
      updatedAt: r.updated_at,
      ageSeconds: r.age,
      recovered: r.recovered
    }))
  })

  const barriers = (filter: { readonly stranded: boolean } & Page) => executions.list(filter)

  // ---- throughput sampling ----

  /**
   * One statement, so the counts and the sequence's value are read together: an enqueue committing between
   * two statements would be counted as an arrival twice or never.
   */
  const readSample = (previous: Sample | null) =>
    Effect.gen(function*() {
      const lastId = previous?.lastId ?? 0
      const since = previous === null ? sql`'-infinity'::timestamptz` : sql`${previous.atText}::timestamptz`
      const sequence = `"${options.schema}".message`
      const rows = yield* sql<{ at: number; at_text: string; last_id: number; queue: string | null } & QueueSample>`
        WITH clock AS (
          SELECT (extract(epoch FROM now()) * 1000)::float8 AS at, now()::text AS at_text,
                 coalesce(pg_sequence_last_value(pg_get_serial_sequence(${sequence}, 'msg_id')::regclass), 0)::float8
                   AS last_id
        ), live AS (
          SELECT queue, count(*)::int AS live,
                 count(*) FILTER (WHERE msg_id > ${lastId})::int AS arrived,
                 count(*) FILTER (WHERE state = 'claimed')::int AS claimed
          FROM ${message} GROUP BY queue
        ), dead AS (
          SELECT queue, count(*)::int AS failed, count(*) FILTER (WHERE msg_id > ${lastId})::int AS dead_arrived
          FROM ${deadLetter} WHERE failed_at > ${since} GROUP BY queue
        ), queues AS (
          SELECT coalesce(live.queue, dead.queue) AS queue, coalesce(live.live, 0) AS live,
                 coalesce(live.arrived, 0) AS arrived, coalesce(live.claimed, 0) AS claimed,
                 coalesce(dead.failed, 0) AS failed, coalesce(dead.dead_arrived, 0) AS "deadArrived"
          FROM live FULL JOIN dead ON live.queue = dead.queue
        )
        SELECT clock.*, queues.* FROM clock LEFT JOIN queues ON true`
      const served = yield* consumers
      const clock = rows[0]!
      return {
        at: clock.at,
        atText: clock.at_text,
        lastId: clock.last_id,
        queues: Object.fromEntries(
          rows.flatMap((r) =>
            r.queue === null
              ? []
              : [[r.queue, { live: r.live, arrived: r.arrived, failed: r.failed, deadArrived: r.deadArrived, claimed: r.claimed }]]
          )
        ),
        served: served.map((r) => r.queue)
      } satisfies Sample
    })

  /** Take one sample now and add the interval since the previous one. */
  const sampleNow = Ref.get(historyRef).pipe(
    Effect.flatMap((history) => readSample(history.last)),
    Effect.flatMap((sample) => Ref.update(historyRef, (history) => record(history, sample, historySize))),
    Effect.withSpan("Dashboard.sample")
  )

  const overview = yield* Effect.cachedWithTTL(readOverview, Duration.millis(options.cacheMs ?? 1000))

  return {
    overview,
    processes,
    deadLetters,
    deadLetter: deadLetterDetail,
    finishedExecutions,
    barriers,
    execution: executions.show,
    sampleNow,
    history: Ref.get(historyRef),
    sampleSeconds,
    /** The existing fenced operations behind the two actions. */
    replayDeadLetter: (msgId: string) => queue.replayDeadLetters([msgId]),
    stopExecution: executions.stop
  }
})

export class Dashboard extends Context.Service<Dashboard, Effect.Success<ReturnType<typeof makeDashboard>>>()(
  "effect-pg-queue/Dashboard"
) {
  /** The queries and the sampler's history; the sampler runs for the life of the layer. */
  static readonly layer = (options: DashboardOptions) =>
    Layer.effect(
      Dashboard,
      Effect.gen(function*() {
        const dashboard = yield* makeDashboard(options)
        yield* dashboard.sampleNow.pipe(
          Effect.catchCause((cause) => Effect.logWarning("dashboard: throughput sample failed; next one on schedule", cause)),
          Effect.repeat(Schedule.spaced(Duration.seconds(dashboard.sampleSeconds))),
          Effect.forkScoped
        )
        return dashboard
      })
    )

  /** The dashboard with what it reads through (Queue, Executions, Barrier, status store), as the settings say. */
  static readonly fromSettings = (
    settings: PgqSettings,
    extra: { readonly reaper?: ReaperView | undefined; readonly sampleSeconds?: number | undefined } = {}
  ) =>
    Dashboard.layer({
      schema: settings.schema,
      stuckTimeoutSeconds: settings.stuckTimeoutSeconds,
      sqlStatusStore: Option.isNone(settings.statusUrl),
      ...(extra.reaper === undefined ? {} : { reaper: extra.reaper }),
      ...(extra.sampleSeconds === undefined ? {} : { sampleSeconds: extra.sampleSeconds })
    }).pipe(
      Layer.provide(
        Executions.layer({ schema: settings.schema, stuckTimeoutSeconds: settings.stuckTimeoutSeconds }).pipe(
          Layer.provide(Barrier.layer({ schema: settings.schema, ttlSeconds: settings.barrierTtlSeconds })),
          Layer.provideMerge(Queue.fromSettings(settings)),
          Layer.provideMerge(ExecutionStatus.fromSettings(settings))
        )
      )
    )
}
