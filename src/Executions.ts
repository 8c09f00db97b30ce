/**
 * The operator's view of fan-out executions, behind `pgq execution show|stop`, `pgq barrier list` and the
 * barrier counts of `pgq status`: read-only queries over `barrier`, `barrier_batch`, `message` and
 * `dead_letter` (every list has a LIMIT, every count is one execution's rows or capped), the status from the
 * execution-status port, and `stop` through `Barrier.stop`.
 *
 * "Stranded" is the reaper's predicate: the barrier expired (`expires_at < now()`) or made no progress for the
 * stuck timeout (`last_progress_at < now() - PGQ_STUCK_TIMEOUT_SECONDS`), both on the database clock.
 */
import { Context, Effect, Layer, Option } from "effect"
import { SqlClient } from "effect/sql"
import { Barrier, type EndResult } from "./Barrier.ts"
import { ExecutionNotFound } from "./Errors.ts"
import * as ExecutionStatus from "./ExecutionStatus.ts"

export interface ExecutionsOptions {
  readonly schema: string
  /** PGQ_STUCK_TIMEOUT_SECONDS: a barrier without progress this long is stranded. */
  readonly stuckTimeoutSeconds: number
}

/** A live barrier: its progress and its clocks (ages in seconds, from the database's `now()`). */
export interface BarrierProgress {
  readonly executionId: string
  readonly orgId: string
  readonly total: number
  readonly remaining: number
  readonly createdAt: Date
  readonly expiresAt: Date
  readonly lastProgressAt: Date
  readonly ageSeconds: number
  /** Seconds since the last batch completed (or since the start). */
  readonly idleSeconds: number
  /** Negative once expired. */
  readonly expiresInSeconds: number
  readonly stranded: boolean
}

/** What the status port answered, or why it could not. */
export type StatusView = ExecutionStatus.ReadResult | { readonly _tag: "Unreadable"; readonly reason: string }

export interface DeadJob {
  readonly msgId: string
  /** null: the callback. */
  readonly batchIndex: number | null
  readonly task: string
  readonly attempts: number
  readonly lastError: string
  readonly failedAt: Date
}

export type CallbackView =
  | { readonly state: "ready" | "scheduled" | "claimed"; readonly msgId: string; readonly attempt: number }
  | { readonly state: "dead-lettered"; readonly msgId: string; readonly attempt: number }

export interface ExecutionView {
  readonly executionId: string
  readonly orgId: string
  readonly status: StatusView
  /** null once the execution's barrier is gone (completed, aborted, stopped or recovered). */
  readonly barrier: BarrierProgress | null
  readonly batches: {
    /** Counted batches (their markers). */
    readonly done: number
    /** Batch jobs waiting, by state (`claimed`: running now). */
    readonly ready: number
    readonly scheduled: number
    readonly claimed: number
    readonly deadLettered: number
  }
  /** The callback's job while it is pending or dead-lettered; null when not enqueued yet or already run. */
  readonly callback: CallbackView | null
  /** The newest dead letters of this execution (at most DEAD_SHOWN). */
  readonly deadLetters: ReadonlyArray<DeadJob>
}

export interface BarrierCounts {
  readonly live: number
  readonly stranded: number
  /** A count reached COUNT_CAP and stopped there. */
  readonly capped: boolean
}

export interface StopResult {
  readonly executionId: string
  readonly outcome: EndResult
  /** The status after the stop. */
  readonly status: StatusView
}

/** Dead letters `show` lists (the count covers all of them). */
export const DEAD_SHOWN = 10
/** `status` counts barriers up to this many, so it stays cheap on a table of any size. */
export const COUNT_CAP = 10_000

interface BarrierRow {
  readonly execution_id: string
  readonly org_id: string
  readonly total: number
  readonly remaining: number
  readonly created_at: Date
  readonly expires_at: Date
  readonly last_progress_at: Date
  readonly age_seconds: number
  readonly idle_seconds: number
  readonly expires_in_seconds: number
  readonly stranded: boolean
}

type Nullable<A> = { readonly [K in keyof A]: A[K] | null }

const isLive = (row: Nullable<BarrierRow>): row is BarrierRow => row.execution_id !== null

const toProgress = (row: BarrierRow): BarrierProgress => ({
  executionId: row.execution_id,
  orgId: row.org_id,
  total: row.total,
  remaining: row.remaining,
  createdAt: row.created_at,
  expiresAt: row.expires_at,
  lastProgressAt: row.last_progress_at,
  ageSeconds: row.age_seconds,
  idleSeconds: row.idle_seconds,
  expiresInSeconds: row.expires_in_seconds,
  stranded: row.stranded
})

export const makeExecutions = Effect.fnUntraced(function*(options: ExecutionsOptions) {
  const sql = yield* SqlClient.SqlClient
  const status = yield* ExecutionStatus.ExecutionStatus
  const barrier = yield* Barrier
  const t = (name: string) => sql(`${options.schema}.${name}`)
  const barrierTable = t("barrier")
  const markers = t("barrier_batch")
  const message = t("message")
  const deadLetter = t("dead_letter")

  const strandedPredicate = sql`(b.expires_at < now()
    OR b.last_progress_at < now() - ${options.stuckTimeoutSeconds} * interval '1 second')`
  const barrierColumns = sql`b.execution_id, b.org_id, b.total, b.remaining, b.created_at, b.expires_at,
    b.last_progress_at,
    extract(epoch FROM now() - b.created_at)::float8 AS age_seconds,
    extract(epoch FROM now() - b.last_progress_at)::float8 AS idle_seconds,
    extract(epoch FROM b.expires_at - now())::float8 AS expires_in_seconds,
    ${strandedPredicate} AS stranded`

  const readStatus = (executionId: string, orgId: string): Effect.Effect<StatusView> =>
    status.read(executionId, orgId).pipe(
      Effect.catchTag("StatusReadFailed", (error) => Effect.succeed({ _tag: "Unreadable" as const, reason: error.reason }))
    )

  /**
   * One statement, so one snapshot: the barrier, the counts and the callback cannot disagree because a batch
   * completed between two reads. The barrier's columns are null when it is gone.
   */
  const summary = (executionId: string) =>
    sql<Nullable<BarrierRow> & {
      ready: number
      scheduled: number
      claimed: number
      done: number
      dead: number
      job_org_id: string | null
      callback_msg_id: string | null
      callback_state: "ready" | "scheduled" | "claimed" | null
      callback_attempt: number | null
      dead_callback_msg_id: string | null
      dead_callback_attempt: number | null
      dead_org_id: string | null
    }>`
      WITH jobs AS (
        SELECT count(*) FILTER (WHERE batch_index IS NOT NULL AND state = 'ready')::int AS ready,
               count(*) FILTER (WHERE batch_index IS NOT NULL AND state = 'scheduled')::int AS scheduled,
               count(*) FILTER (WHERE batch_index IS NOT NULL AND state = 'claimed')::int AS claimed,
               min(org_id) AS job_org_id
        FROM ${message} WHERE execution_id = ${executionId}
      ), dead AS (
        SELECT count(*) FILTER (WHERE batch_index IS NOT NULL)::int AS dead, min(org_id) AS dead_org_id
        FROM ${deadLetter} WHERE execution_id = ${executionId}
      )
      SELECT jobs.*, dead.*, ${barrierColumns},
             (SELECT count(*)::int FROM ${markers} WHERE execution_id = ${executionId}) AS done,
             cb.msg_id::text AS callback_msg_id, cb.state AS callback_state, cb.read_ct AS callback_attempt,
             dcb.msg_id::text AS dead_callback_msg_id, dcb.read_ct AS dead_callback_attempt
      FROM jobs CROSS JOIN dead
      LEFT JOIN ${barrierTable} b ON b.execution_id = ${executionId}
      LEFT JOIN LATERAL (
        SELECT msg_id, state, read_ct FROM ${message}
        WHERE execution_id = ${executionId} AND batch_index IS NULL ORDER BY msg_id LIMIT 1
      ) cb ON true
      LEFT JOIN LATERAL (
        SELECT msg_id, read_ct FROM ${deadLetter}
        WHERE execution_id = ${executionId} AND batch_index IS NULL ORDER BY failed_at DESC LIMIT 1
      ) dcb ON true`.pipe(Effect.map((rows) => rows[0]!))

  const deadJobs = (executionId: string) =>
    sql<{ msg_id: string; batch_index: number | null; task: string; read_ct: number; last_error: string; failed_at: Date }>`
      SELECT msg_id::text AS msg_id, batch_index, task, read_ct, last_error, failed_at FROM ${deadLetter}
      WHERE execution_id = ${executionId} ORDER BY failed_at DESC, msg_id DESC LIMIT ${DEAD_SHOWN}`.pipe(
      Effect.map((rows) =>
        rows.map((r): DeadJob => ({
          msgId: r.msg_id,
          batchIndex: r.batch_index,
          task: r.task,
          attempts: r.read_ct,
          lastError: r.last_error,
          failedAt: r.failed_at
        }))
      )
    )

  const callbackOf = (s: Effect.Success<ReturnType<typeof summary>>): CallbackView | null =>
    s.callback_msg_id !== null && s.callback_state !== null
      ? { state: s.callback_state, msgId: s.callback_msg_id, attempt: s.callback_attempt ?? 0 }
      : s.dead_callback_msg_id !== null
      ? { state: "dead-lettered", msgId: s.dead_callback_msg_id, attempt: s.dead_callback_attempt ?? 0 }
      : null

  /** Everything known about one execution; `ExecutionNotFound` when nothing is. */
  const show = Effect.fn("Executions.show")(function*(executionId: string) {
    const s = yield* summary(executionId)
    const dead = yield* deadJobs(executionId)
    const live = isLive(s) ? Option.some(toProgress(s)) : Option.none()
    const orgId = Option.match(live, { onSome: (b) => b.orgId, onNone: () => s.job_org_id ?? s.dead_org_id ?? "" })
    const current = yield* readStatus(executionId, orgId)
    const callback = callbackOf(s)
    const anyRows = Option.isSome(live) || s.done + s.ready + s.scheduled + s.claimed + dead.length > 0 ||
      callback !== null
    if (!anyRows && current._tag !== "Found") return yield* new ExecutionNotFound({ executionId })
    return {
      executionId,
      orgId,
      status: current,
      barrier: Option.getOrNull(live),
      batches: { done: s.done, ready: s.ready, scheduled: s.scheduled, claimed: s.claimed, deadLettered: s.dead },
      callback,
      deadLetters: dead
    } satisfies ExecutionView
  })

  /** Live barriers, the ones expiring first first, a page at a time; `stranded`: only those the reaper would recover. */
  const list = Effect.fn("Executions.list")(function*(
    filter: { readonly stranded: boolean; readonly limit: number; readonly offset?: number }
  ) {
    const rows = yield* sql<BarrierRow>`
      SELECT ${barrierColumns} FROM ${barrierTable} b
      WHERE ${filter.stranded ? strandedPredicate : sql`TRUE`}
      ORDER BY b.expires_at, b.execution_id
      LIMIT ${filter.limit} OFFSET ${filter.offset ?? 0}`
    return rows.map(toProgress)
  })

  /** Live and stranded barriers, each counted up to COUNT_CAP. */
  const counts = sql<{ live: number; stranded: number }>`
    SELECT (SELECT count(*)::int FROM (SELECT 1 FROM ${barrierTable} LIMIT ${COUNT_CAP}) x) AS live,
           (SELECT count(*)::int FROM (SELECT 1 FROM ${barrierTable} b WHERE ${strandedPredicate} LIMIT ${COUNT_CAP}) x)
             AS stranded`.pipe(
    Effect.map(([row]): BarrierCounts => ({
      live: row!.live,
      stranded: row!.stranded,
      capped: row!.live >= COUNT_CAP
    })),
    Effect.withSpan("Executions.counts")
  )

  /**
   * Stop a known execution (`Barrier.stop`: STOPPED through the port, batches not started removed) and read
   * its status back. An unknown id is `ExecutionNotFound`: stopping it would create a STOPPED status record.
   */
  const stop = Effect.fn("Executions.stop")(function*(executionId: string) {
    const view = yield* show(executionId)
    const outcome = yield* barrier.stop(executionId, view.orgId)
    return { executionId, outcome, status: yield* readStatus(executionId, view.orgId) } satisfies StopResult
  })

  return { show, list, counts, stop }
})

export class Executions extends Context.Service<Executions, Effect.Success<ReturnType<typeof makeExecutions>>>()(
  "effect-pg-queue/Executions"
) {
  /** Needs the SqlClient, the execution-status port and the Barrier (for `stop`). */
  static readonly layer = (options: ExecutionsOptions) => Layer.effect(Executions, makeExecutions(options))
}

// ---------------------------------------------------------------------------------------------------------
// Text for people (the CLI); `--json` prints the values above as they are.
// ---------------------------------------------------------------------------------------------------------

/** 4.2s, 3m 05s, 2h 07m, 3d 4h. */
export const formatSeconds = (seconds: number): string => {
  const s = Math.abs(seconds)
  if (s < 60) return `${s.toFixed(1)}s`
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`
}

export const formatStatus = (status: StatusView): string => {
  switch (status._tag) {
    case "Found":
      return status.status
    case "Gone":
      return "none (the status store does not know it)"
    case "NoStatus":
      return "none (the status store has no status for it)"
    case "Unreadable":
      return `unknown (the status store could not be read: ${status.reason})`
  }
}

const strandedWhy = (b: BarrierProgress, stuckTimeoutSeconds: number) =>
  b.expiresInSeconds < 0
    ? `STRANDED: expired ${formatSeconds(b.expiresInSeconds)} ago`
    : `STRANDED: no progress for ${formatSeconds(b.idleSeconds)} (stuck timeout ${formatSeconds(stuckTimeoutSeconds)})`

const barrierLine = (b: BarrierProgress, stuckTimeoutSeconds: number) =>
  `${b.total - b.remaining} of ${b.total} batches counted, ${b.remaining} left; started ${formatSeconds(b.ageSeconds)} ago, ` +
  `last progress ${formatSeconds(b.idleSeconds)} ago, ` +
  (b.stranded
    ? strandedWhy(b, stuckTimeoutSeconds)
    : `expires in ${formatSeconds(b.expiresInSeconds)} (${b.expiresAt.toISOString()})`)

const callbackLine = (view: ExecutionView) => {
  const cb = view.callback
  if (cb?.state === "dead-lettered") return `dead-lettered (job ${cb.msgId}, ${cb.attempt} attempt(s))`
  if (cb !== null) {
    const state = cb.state === "claimed" ? "running" : cb.state
    return `pending: job ${cb.msgId} is ${state} (attempt ${cb.attempt})`
  }
  if (view.barrier !== null) return `not enqueued yet (it is, with every result, when the last batch is counted)`
  const final = view.status._tag === "Found" ? view.status.status : undefined
  return final === "COMPLETED" ? "ran (the execution is COMPLETED)" : "none pending (the barrier is gone)"
}

/** `execution show` as lines for a person. */
export const formatExecution = (view: ExecutionView, stuckTimeoutSeconds: number): string => {
  const b = view.batches
  const lines = [
    `execution ${view.executionId}${view.orgId === "" ? "" : ` (org ${view.orgId})`}`,
    `  status    ${formatStatus(view.status)}`,
    `  barrier   ${view.barrier === null ? "none (ended, or never started)" : barrierLine(view.barrier, stuckTimeoutSeconds)}`,
    `  batches   ${b.done} done, ${b.ready + b.scheduled + b.claimed} pending (ready ${b.ready}, scheduled ${b.scheduled}, ` +
    `running ${b.claimed}), ${b.deadLettered} dead-lettered`,
    `  callback  ${callbackLine(view)}`
  ]
  for (const d of view.deadLetters) {
    const which = d.batchIndex === null ? "callback" : `batch ${d.batchIndex}`
    lines.push(`  dead      ${which}: job ${d.msgId} (${d.task}), ${d.attempts} attempt(s), ${d.failedAt.toISOString()}: ${d.lastError}`)
  }
  return lines.join("\n")
}

const pad = (value: string | number, width: number) => String(value).padStart(width)

/** `barrier list` as a table. */
export const formatBarriers = (barriers: ReadonlyArray<BarrierProgress>, stranded: boolean): string => {
  if (barriers.length === 0) return stranded ? "(no stranded barriers)" : "(no live barriers)"
  const header = `${"execution".padEnd(28)}${"org".padEnd(12)}${pad("done", 8)}${pad("total", 8)}${pad("age", 10)}` +
    `${pad("idle", 10)}${pad("expires in", 12)}  `
  const lines = barriers.map((b) =>
    `${b.executionId.padEnd(28)}${b.orgId.padEnd(12)}${pad(b.total - b.remaining, 8)}${pad(b.total, 8)}` +
    `${pad(formatSeconds(b.ageSeconds), 10)}${pad(formatSeconds(b.idleSeconds), 10)}` +
    `${pad(b.expiresInSeconds < 0 ? `-${formatSeconds(b.expiresInSeconds)}` : formatSeconds(b.expiresInSeconds), 12)}` +
    `${b.stranded ? "  STRANDED" : ""}`
  )
  return [header.trimEnd(), ...lines].join("\n")
}

/** The `status` line about barriers. */
export const formatCounts = (counts: BarrierCounts, stuckTimeoutSeconds: number): string => {
  const n = (value: number) => (value >= COUNT_CAP ? `${COUNT_CAP}+` : String(value))
  return `barriers: ${n(counts.live)} live, ${n(counts.stranded)} stranded ` +
    `(expired, or no progress for ${formatSeconds(stuckTimeoutSeconds)})`
}

/** What `execution stop` did, as one line. */
export const formatStop = (result: StopResult): string => {
  const status = formatStatus(result.status)
  switch (result.outcome) {
    case "ended":
      return `execution ${result.executionId} stopped (status ${status}): its batches not started yet were removed; ` +
        "batches already running finish and are not counted"
    case "already-ended":
      return `execution ${result.executionId}: its barrier had already ended; status ${status}`
    case "unconfirmed":
      return `execution ${result.executionId}: the status store did not confirm STOPPED; nothing was removed`
  }
}
