/**
 * Maintenance of the message table, in bounded batches: claims whose lease expired become ready again, due
 * delayed and backed-off jobs become ready. The reaper runs them fenced by its term, workers for their own
 * queues.
 */
import { Effect } from "effect"
import type { Statement } from "effect/sql"
import type { Statements } from "./QueueStatements.ts"

/** Rows one maintenance statement touches at most (River's maintenance services use the same figure). */
export const MAINTENANCE_BATCH = 1000

/**
 * Limits of a maintenance statement: only these queues (default all), only while `fence` holds, at most
 * `limit` rows (default MAINTENANCE_BATCH).
 */
export interface MaintenanceScope {
  readonly queues?: ReadonlyArray<string>
  readonly limit?: number
  /** A leader fence (`LeaderTerm.fence`): the statement changes nothing once the term is lost. */
  readonly fence?: Statement.Fragment
}

export const makeQueueMaintenance = (statements: Statements) => {
  const { sql, message, bounded } = statements

  /** Which rows a maintenance statement may touch: some queues, and only while a leader fence holds. */
  const scopeFilter = (scope: MaintenanceScope) =>
    sql.and([
      scope.queues === undefined ? sql`TRUE` : sql`queue = ANY(${scope.queues}::text[])`,
      scope.fence ?? sql`TRUE`
    ])

  /**
   * One bounded batch of a maintenance update: lock up to `limit` rows matching `where` in `order` (skipping
   * rows others hold), then `set` them. Returns how many rows it changed; a caller loops while that is
   * `limit`, so no statement ever touches an unbounded number of rows.
   */
  const maintenanceBatch = (
    where: Statement.Fragment,
    order: Statement.Fragment,
    set: Statement.Fragment,
    scope: MaintenanceScope
  ) =>
    sql<{ n: number }>`
      WITH batch AS (
        SELECT ctid FROM ${message}
        WHERE ${where} AND ${scopeFilter(scope)}
        ORDER BY ${order} LIMIT ${scope.limit ?? MAINTENANCE_BATCH}
        FOR UPDATE SKIP LOCKED
      ), changed AS (
        -- By ctid (a TID scan): a join on msg_id can be planned as a loop over the whole table when the
        -- statistics say it is empty (see lockedAttempts in QueueStatements.ts).
        UPDATE ${message} AS m SET ${set} WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM batch)) RETURNING 1
      )
      SELECT count(*)::int AS n FROM changed`.pipe(Effect.map((rows) => rows[0]!.n))

  /** One batch of claims whose lease expired (their worker died or stalled): ready again. */
  const rearmExpired = Effect.fn("Queue.rearmExpired")(function*(scope?: MaintenanceScope) {
    return yield* bounded(maintenanceBatch(
      sql`state = 'claimed' AND vt <= now()`,
      sql`vt`,
      sql`state = 'ready', vt = NULL, claimed_by = NULL, claim_token = NULL`,
      scope ?? {}
    ))
  })

  /** One batch of delayed and backed-off jobs whose time has come: ready. */
  const promoteDue = Effect.fn("Queue.promoteDue")(function*(scope?: MaintenanceScope) {
    return yield* bounded(maintenanceBatch(
      sql`state = 'scheduled' AND visible_at <= now()`,
      sql`visible_at`,
      sql`state = 'ready'`,
      scope ?? {}
    ))
  })

  return { rearmExpired, promoteDue }
}
