/** Per-queue counts (`cli status`, metrics) and their one-line-per-queue table. */
import { Effect } from "effect"
import type { Statements } from "./QueueStatements.ts"

export interface QueueStats {
  readonly queue: string
  readonly ready: number
  readonly scheduled: number
  readonly claimed: number
  readonly deadLettered: number
  readonly oldestReadySeconds: number | null
}

export const makeQueueStats = (statements: Statements) => {
  const { sql, message, deadLetterTable } = statements

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

  return { stats }
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

