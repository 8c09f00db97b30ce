/**
 * Per-queue counts: `stats()` for `cli status` and metrics (dead letters and the oldest ready job included), the
 * cheaper `pending()` for hosts and dashboards, and the one-line-per-queue table.
 */
import { Effect } from "effect"
import { InvalidConfig } from "./Errors.ts"
import { isQueueName, queueNameRule } from "./Names.ts"
import type { Statements } from "./QueueStatements.ts"

export interface QueueStats {
  readonly queue: string
  readonly ready: number
  readonly scheduled: number
  readonly claimed: number
  readonly deadLettered: number
  readonly oldestReadySeconds: number | null
}

/** What is still to run in a queue. Each count stops at the `limit` it was asked with. */
export interface PendingCount {
  readonly queue: string
  readonly ready: number
  readonly scheduled: number
  readonly claimed: number
  /** ready + scheduled + claimed */
  readonly pending: number
  /** A count reached the limit: the queue holds at least this many. */
  readonly capped: boolean
}

export interface PendingOptions {
  /** Each count stops here (default 10,000), so a deep backlog costs no more than this many index entries. */
  readonly limit?: number
}

export const DEFAULT_PENDING_LIMIT = 10_000

const checkPending = (queues: ReadonlyArray<string> | undefined, limit: number) => {
  if (!Number.isInteger(limit) || limit < 1) {
    return Effect.fail(new InvalidConfig({ variable: "pending limit", reason: `must be a positive integer, got ${limit}` }))
  }
  const bad = queues?.find((q) => typeof q !== "string" || !isQueueName(q))
  return bad === undefined
    ? Effect.void
    : Effect.fail(new InvalidConfig({ variable: "pending queues", reason: `queue name ${JSON.stringify(bad)} ${queueNameRule}` }))
}

export const makeQueueStats = (statements: Statements) => {
  const { sql, message, deadLetterTable, bounded } = statements
  const indexOrder = {
    ready: sql.literal("m.priority DESC, m.msg_id"),
    scheduled: sql.literal("m.visible_at"),
    claimed: sql.literal("m.vt")
  }

  /**
   * One capped count: the queue's rows in `state`, at most `limit` of them, read in the order of that state's
   * partial index so the planner walks it (a sequential scan would read the whole table for an empty queue).
   * Ready rows are found by queue on the claim index; scheduled and claimed ones by scanning their own, small
   * indexes (what is delayed, what is running).
   */
  const capped = (state: "ready" | "scheduled" | "claimed", limit: number) =>
    sql`(SELECT count(*)::int FROM (
          SELECT 1 FROM ${message} AS m WHERE m.queue = q.queue AND m.state = ${sql.literal(`'${state}'`)}
          ORDER BY ${indexOrder[state]} LIMIT ${limit}) AS c)`

  /**
   * The queues with pending jobs: those with ready jobs by a skip scan of the claim index (one probe per queue,
   * however deep the backlog), and those of scheduled or claimed jobs from their partial indexes.
   */
  const pendingQueues = sql`
    WITH RECURSIVE ready_queues(queue) AS (
      (SELECT queue FROM ${message} WHERE state = 'ready' ORDER BY queue LIMIT 1)
      UNION ALL
      SELECT (SELECT m.queue FROM ${message} AS m WHERE m.state = 'ready' AND m.queue > r.queue ORDER BY m.queue LIMIT 1)
      FROM ready_queues AS r WHERE r.queue IS NOT NULL
    )
    SELECT queue FROM ready_queues WHERE queue IS NOT NULL
    UNION SELECT DISTINCT queue FROM ${message} WHERE state = 'scheduled'
    UNION SELECT DISTINCT queue FROM ${message} WHERE state = 'claimed'`

  /**
   * Ready, scheduled and claimed jobs per queue, for hosts and dashboards: `queues` in the order given (zeros
   * for an empty one), or every queue with pending jobs by name. Cheaper than `stats()`: no dead-letter table, no
   * ages, and each count stops at `limit`.
   */
  const pending = Effect.fn("Queue.pending")(function*(queues?: ReadonlyArray<string>, options?: PendingOptions) {
    const limit = options?.limit ?? DEFAULT_PENDING_LIMIT
    yield* checkPending(queues, limit)
    const names = queues === undefined
      ? sql`(${pendingQueues}) AS q(queue) ORDER BY q.queue`
      : sql`unnest(${queues}::text[]) WITH ORDINALITY AS q(queue, n) ORDER BY q.n`
    const counts = sql<{ queue: string; ready: number; scheduled: number; claimed: number }>`
      SELECT q.queue, ${capped("ready", limit)} AS ready, ${capped("scheduled", limit)} AS scheduled,
             ${capped("claimed", limit)} AS claimed
      FROM ${names}`
    // The planner prices each capped count at its limit, so many queues can push the estimate past
    // jit_above_cost; JIT compilation would then cost ~100 ms for a statement that runs in a few.
    const rows = yield* bounded(sql.withTransaction(sql`SELECT set_config('jit', 'off', true)`.pipe(Effect.andThen(counts))))
    return rows.map((r): PendingCount => ({
      ...r,
      pending: r.ready + r.scheduled + r.claimed,
      capped: r.ready >= limit || r.scheduled >= limit || r.claimed >= limit
    }))
  })

  /** Per-queue counts for `cli status` and metrics. */
  const stats = Effect.fn("Queue.stats")(function*() {
    const rows = yield* sql<{
      queue: string
      ready: number
      scheduled: number
      claimed: number
      dead: number
      oldest: number | null
    }>`
      WITH live AS (
        SELECT queue,
               count(*) FILTER (WHERE state = 'ready')::int AS ready,
               count(*) FILTER (WHERE state = 'scheduled')::int AS scheduled,
               count(*) FILTER (WHERE state = 'claimed')::int AS claimed,
               extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE state = 'ready'))::float8 AS oldest
        FROM ${message} GROUP BY queue
      ), dead AS (
        SELECT queue, count(*)::int AS dead FROM ${deadLetterTable} GROUP BY queue
      )
      SELECT coalesce(live.queue, dead.queue) AS queue, coalesce(ready, 0) AS ready,
             coalesce(scheduled, 0) AS scheduled, coalesce(claimed, 0) AS claimed,
             coalesce(dead, 0) AS dead, oldest
      FROM live FULL JOIN dead ON live.queue = dead.queue
      ORDER BY 1`
    return rows.map((r): QueueStats => ({
      queue: r.queue,
      ready: r.ready,
      scheduled: r.scheduled,
      claimed: r.claimed,
      deadLettered: r.dead,
      oldestReadySeconds: r.oldest
    }))
  })

  return { stats, pending }
}

const pad = (value: string | number, width: number) => String(value).padStart(width)

/** The `status` table, one line per queue. */
export const formatStats = (stats: ReadonlyArray<QueueStats>): string => {
  const header = `${"queue".padEnd(20)}${pad("ready", 9)}${pad("scheduled", 11)}${pad("claimed", 9)}${pad("dead", 7)}${pad("oldest ready", 14)}`
  const lines = stats.map((s) =>
    `${s.queue.padEnd(20)}${pad(s.ready, 9)}${pad(s.scheduled, 11)}${pad(s.claimed, 9)}${pad(s.deadLettered, 7)}${
      pad(s.oldestReadySeconds === null ? "-" : `${s.oldestReadySeconds.toFixed(1)}s`, 14)
    }`
  )
  return [header, ...(lines.length === 0 ? ["(no jobs)"] : lines)].join("\n")
}

