/**
 * What every queue statement shares: the schema's tables, the per-claim fence, the relaxed commit of
 * runtime bookkeeping, and the client-side statement timeout. The statement families (Attempts, Maintenance,
 * DeadLetters, QueueStats) are built on it and composed into the Queue service.
 */
import { type Cause, Duration, Effect, Option } from "effect"
import type { SqlClient } from "effect/sql"
import type { Attempt } from "./Attempts.ts"

export interface StatementDefaults {
  readonly schema: string
  /** See QueueDefaults.asyncCommit. */
  readonly asyncCommit?: boolean
  /** See QueueDefaults.statementTimeoutMs. */
  readonly statementTimeoutMs?: number
}

const fenceIds = (attempts: ReadonlyArray<Attempt>) => ({
  ids: attempts.map((a) => a.msgId),
  tokens: attempts.map((a) => a.token)
})

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
  /** The per-claim fence: the row is still claimed by exactly this claim. */
  const fenced = sql`m.msg_id = a.msg_id AND m.claim_token = a.token AND m.state = 'claimed'`

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


  return { sql, message, deadLetterTable, processTable, barrierTable, attemptsOf, fenced, relaxedCommit, bounded }
}

export type Statements = ReturnType<typeof makeStatements>
