/**
 * What every queue statement shares: the schema's tables, the per-claim fence, the relaxed commit of
 * runtime bookkeeping, and the client-side statement timeout. The statement families (Attempts, Maintenance,
 * DeadLetters, QueueStats) are built on it and composed into the Queue service.
 */
import { type Cause, Duration, Effect, Option } from "effect"
import type { SqlClient, Statement } from "effect/sql"
import type { Attempt } from "./Attempts.ts"

export interface StatementDefaults {
  readonly schema: string
  /** See QueueDefaults.asyncCommit. */
  readonly asyncCommit?: boolean
  /** See QueueDefaults.statementTimeoutMs. */
  readonly statementTimeoutMs?: number
}

/** In msg_id order: every statement that waits for row locks takes them in that order, so none deadlock. */
const fenceIds = (attempts: ReadonlyArray<Attempt>) => {
  const sorted = [...attempts].sort((a, b) => a.msgId.length - b.msgId.length || (a.msgId < b.msgId ? -1 : 1))
  return { ids: sorted.map((a) => a.msgId), tokens: sorted.map((a) => a.token) }
}

/**
 * The `ctid`s of the rows still claimed by the attempts of `source` (a relation `a(msg_id, token)`), locked
 * in `source`'s order: see `lockedAttempts`.
 */
export const lockedClaims = (sql: SqlClient.SqlClient, message: Statement.Identifier, source: Statement.Fragment) =>
  sql`SELECT x.ctid FROM ${source}
      CROSS JOIN LATERAL (
        SELECT m.ctid, m.claim_token, m.state FROM ${message} AS m WHERE m.msg_id = a.msg_id OFFSET 0 FOR UPDATE
      ) AS x
      WHERE x.claim_token = a.token AND x.state = 'claimed'`

export const makeStatements = (sql: SqlClient.SqlClient, defaults: StatementDefaults) => {
  const message = sql(`${defaults.schema}.message`)
  const deadLetterTable = sql(`${defaults.schema}.dead_letter`)
  const processTable = sql(`${defaults.schema}.process`)
  const barrierTable = sql(`${defaults.schema}.barrier`)
  /** The attempts of a fenced statement, as a relation `a(msg_id, token)`. */
  const attemptsOf = (attempts: ReadonlyArray<Attempt>) => {
    const { ids, tokens } = fenceIds(attempts)
    return sql`unnest(${ids}::bigint[], ${tokens}::uuid[]) AS a(msg_id, token)`
  }
  /**
   * The `ctid`s of the rows of the attempts that are still current, locked, as a subquery for a statement to
   * change them by `ctid = ANY(ARRAY(...))` (a TID scan). The shape is what makes the plan safe whatever the table's
   * statistics: a drained queue table is analyzed with pages but no rows, and the planner then believes it
   * holds one row and loops over every claimed row once per attempt (8,000 acks: 12.5 s instead of 50 ms).
   * Here the attempts drive the loop (LATERAL), each row is found through the primary key (the only index
   * the subquery's condition can use; OFFSET 0 keeps the fence out of it), and the lock keeps its ctid valid
   * until the statement's own write.
   */
  const lockedAttempts = (attempts: ReadonlyArray<Attempt>) => lockedClaims(sql, message, attemptsOf(attempts))

  /**
   * A column that makes the statement's own transaction commit asynchronously, when it runs on its own
   * (never inside a host transaction, whose durability is the host's call). Claims, renewals, acks and
   * releases are safe to lose: a server crash can undo at most the last ~0.6 s of them (3 × wal_writer_delay),
   * which redelivers those jobs, as any crash may; no job is lost. Measured: 1.29x the claim + ack throughput
   * of durable commits on this machine (bench/commit-mode.ts); more on slower disks.
   * Enqueues, failures and dead-letters always commit durably.
   */
  const relaxedCommit = Effect.serviceOption(sql.transactionService).pipe(
    Effect.map((tx) =>
      defaults.asyncCommit !== false && Option.isNone(tx)
        ? sql.literal(", set_config('synchronous_commit', 'off', true) AS relaxed")
        : sql.literal("")
    )
  )

  const bounded = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Cause.TimeoutError, R> =>
    defaults.statementTimeoutMs === undefined
      ? effect
      : Effect.timeout(effect, Duration.millis(defaults.statementTimeoutMs))


  return {
    sql,
    message,
    deadLetterTable,
    processTable,
    barrierTable,
    lockedAttempts,
    relaxedCommit,
    bounded
  }
}

export type Statements = ReturnType<typeof makeStatements>
