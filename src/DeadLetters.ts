/**
 * The dead-letter table: list, replay (in bounded batches, each as a new job with a fresh msg_id so no old
 * fence can match), and the retention sweep.
 */
import { Effect } from "effect"
import { MAINTENANCE_BATCH, type MaintenanceScope } from "./QueueMaintenance.ts"
import type { Statements } from "./QueueStatements.ts"

export interface DeadLetter {
  readonly msgId: string
  readonly queue: string
  readonly task: string
  readonly payload: unknown
  readonly attempts: number
  readonly lastError: string
  readonly failedAt: Date
}

export const makeDeadLetters = (statements: Statements) => {
  const { sql, message, deadLetterTable, bounded } = statements

  const listDeadLetters = Effect.fn("Queue.listDeadLetters")(function*(limit: number = 100) {
    const rows = yield* sql<{
      msg_id: string
      queue: string
      task: string
      payload: unknown
      read_ct: number
      last_error: string
      failed_at: Date
    }>`
      SELECT msg_id::text AS msg_id, queue, task, payload, read_ct, last_error, failed_at
      FROM ${deadLetterTable} ORDER BY failed_at DESC, msg_id DESC LIMIT ${limit}`
    return rows.map((r): DeadLetter => ({
      msgId: r.msg_id,
      queue: r.queue,
      task: r.task,
      payload: r.payload,
      attempts: r.read_ct,
      lastError: r.last_error,
      failedAt: r.failed_at
    }))
  })

  /**
   * Move dead letters back into the queue as new jobs (a fresh msg_id, so no fence of the old job
   * can ever match) with a fresh attempt budget. `ids` undefined replays all of them.
   */
  const replayDeadLetters = Effect.fn("Queue.replayDeadLetters")(function*(ids?: ReadonlyArray<string>) {
    const filter = ids === undefined ? sql`TRUE` : sql`msg_id = ANY(${ids}::bigint[])`
    // In batches: replaying a million dead letters must not be one statement.
    const batch = sql<{ n: number }>`
      WITH batch AS (
        SELECT ctid FROM ${deadLetterTable} WHERE ${filter}
        ORDER BY msg_id LIMIT ${MAINTENANCE_BATCH} FOR UPDATE SKIP LOCKED
      ), revived AS (
        DELETE FROM ${deadLetterTable} AS d WHERE d.ctid = ANY(ARRAY(SELECT ctid FROM batch))
        RETURNING queue, task, payload, org_id, priority, max_attempts, enqueued_at, execution_id, batch_index, last_error
      ), inserted AS (
        INSERT INTO ${message} (queue, task, payload, org_id, priority, state, visible_at, max_attempts,
                                enqueued_at, execution_id, batch_index, last_error)
        SELECT queue, task, payload, org_id, priority, 'ready', now(), max_attempts, now(), execution_id,
               batch_index, last_error FROM revived
        RETURNING 1
      )
      SELECT count(*)::int AS n FROM inserted`.pipe(Effect.map((rows) => rows[0]!.n))
    let total = 0
    for (let n = MAINTENANCE_BATCH; n === MAINTENANCE_BATCH; total += n) n = yield* batch
    return total
  })

  /** One batch of dead letters older than the retention window: deleted. */
  const sweepDeadLetters = Effect.fn("Queue.sweepDeadLetters")(function*(
    retentionSeconds: number,
    scope?: MaintenanceScope
  ) {
    const rows = yield* bounded(sql<{ n: number }>`
      WITH batch AS (
        SELECT ctid FROM ${deadLetterTable}
        WHERE failed_at < now() - ${retentionSeconds} * interval '1 second' AND ${scope?.fence ?? sql`TRUE`}
        ORDER BY failed_at LIMIT ${scope?.limit ?? MAINTENANCE_BATCH}
        FOR UPDATE SKIP LOCKED
      ), swept AS (
        DELETE FROM ${deadLetterTable} AS d WHERE d.ctid = ANY(ARRAY(SELECT ctid FROM batch)) RETURNING 1
      )
      SELECT count(*)::int AS n FROM swept`)
    return rows[0]!.n
  })

  return { listDeadLetters, replayDeadLetters, sweepDeadLetters }
}
