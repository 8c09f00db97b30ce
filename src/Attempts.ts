/**
 * The statements of one attempt's life: claim (with the acks that ride along), extend, ack, fail, defer,
 * dead-letter, release. Every one is fenced by the attempt's claim token, so an attempt that lost its lease
 * can never ack, extend, fail or release a newer attempt.
 */
import { type Cause, Effect } from "effect"
import type { SqlError, Statement } from "effect/sql"
import type { Statements } from "./QueueStatements.ts"

/** A claimed job. Its `Attempt` (msgId, attempt, token) is the fence every later operation carries. */
export interface ClaimedJob {
  readonly msgId: string
  readonly token: string
  readonly queue: string
  readonly task: string
  readonly payload: unknown
  readonly orgId: string
  readonly priority: number
  readonly attempt: number
  readonly maxAttempts: number
  readonly enqueuedAt: Date
  readonly executionId: string | null
  readonly batchIndex: number | null
  /**
   * For a barrier batch: its barrier still exists (false once the execution was stopped, aborted or
   * recovered; such a batch is not run). Always true for other jobs.
   */
  readonly barrierLive: boolean
}

export interface ClaimOptions {
  readonly queues: ReadonlyArray<string>
  readonly limit: number
  readonly leaseSeconds: number
  /** Recorded as `claimed_by`, so a dead process's claims can be freed. */
  readonly processId: string
  /**
   * Claim only while `processId` is registered in the process table. A process that was pruned (presumed
   * dead after a stall) must first find out which of its attempts it lost before it claims again.
   */
  readonly registered?: boolean
}

/** What `ackAndClaim` did; `unregistered` when `registered` was asked for and the process row is gone. */
export interface AckAndClaim {
  readonly acked: ReadonlySet<string>
  readonly claimed: ReadonlyArray<ClaimedJob>
  readonly unregistered: boolean
}

/**
 * The fence of one attempt. `token` is random per claim: `attempt` (read_ct) alone can be handed out twice
 * when a database crash undoes an asynchronously committed claim.
 */
export interface Attempt {
  readonly msgId: string
  readonly attempt: number
  readonly token: string
}

/** The key of an attempt in a worker's memory: never the msg_id alone. */
export const attemptKey = (attempt: Attempt): string => `${attempt.msgId}/${attempt.token}`

export type DeferResult = "deferred" | "dead-lettered" | "stale"

export type FailResult = "retried" | "dead-lettered" | "stale"

interface Tokens {
  readonly tokens: ReadonlyArray<string>
}

interface ClaimRow {
  readonly msg_id: string
  readonly claim_token: string
  readonly queue: string
  readonly task: string
  readonly payload: unknown
  readonly org_id: string
  readonly priority: number
  readonly read_ct: number
  readonly max_attempts: number
  readonly enqueued_at: Date
  readonly execution_id: string | null
  readonly batch_index: number | null
  readonly barrier_live: boolean
}

const toClaimed = (row: ClaimRow): ClaimedJob => ({
  msgId: row.msg_id,
  token: row.claim_token,
  queue: row.queue,
  task: row.task,
  payload: row.payload,
  orgId: row.org_id,
  priority: row.priority,
  attempt: row.read_ct,
  maxAttempts: row.max_attempts,
  enqueuedAt: row.enqueued_at,
  executionId: row.execution_id,
  batchIndex: row.batch_index,
  barrierLive: row.barrier_live
})

export const makeAttempts = (statements: Statements) => {
  const { sql, message, deadLetterTable, processTable, barrierTable, lockedAttempts, relaxedCommit, bounded } = statements

  /**
   * The claim tokens of a relation of changed rows, as one array column `tokens`: one row to build, send and
   * decode instead of a row per attempt.
   */
  const tokensOf = (changed: Statement.Fragment) =>
    sql`(SELECT coalesce(array_agg(claim_token::text), '{}') FROM ${changed}) AS tokens`

  /** Delete (complete) the rows of still-current attempts, returning their msg_id: the ack. */
  const deleteAttempts = (attempts: ReadonlyArray<Attempt>) =>
    sql`DELETE FROM ${message} AS m WHERE m.ctid = ANY(ARRAY(${lockedAttempts(attempts)}))
        RETURNING m.msg_id, m.claim_token`

  /**
   * Ack finished attempts and claim up to `limit` ready jobs in one statement (one round trip and one
   * commit where a worker would otherwise spend two). The claim is the CTE join form, so it never
   * over-claims. Each queue is read through its own ordered, LIMITed walk of the claim index (the LATERAL
   * join), so the cost of a claim does not grow with the backlog and the plan does not depend on fresh
   * statistics; `queue = ANY(...)` would sort every ready row of the queues on each claim.
   */
  const ackAndClaim = Effect.fn("Queue.ackAndClaim")(function*(
    acks: ReadonlyArray<Attempt>,
    options: ClaimOptions
  ): Effect.fn.Return<AckAndClaim, SqlError.SqlError | Cause.TimeoutError> {
    if (options.limit <= 0 || options.queues.length === 0) {
      return { acked: yield* ackMany(acks), claimed: [], unregistered: false }
    }
    const relaxed = yield* relaxedCommit
    const registered = options.registered === true
      ? sql`EXISTS (SELECT 1 FROM ${processTable} WHERE process_id = ${options.processId})`
      : sql`TRUE`
    // The claimed jobs, then one 'meta' row (it sorts after 'job') with what was acked (one array, not a row
    // per ack: half the rows to build, send and decode) and whether we are registered.
    const rows = yield* sql<ClaimRow & { readonly kind: "job" | "meta"; readonly tokens: ReadonlyArray<string>; readonly ok: boolean }>`
      WITH acked AS (${deleteAttempts(acks)}), registered AS (SELECT ${registered} AS ok ${relaxed}), locked AS (
        SELECT c.ctid FROM unnest(${[...new Set(options.queues)]}::text[]) AS q(name)
        CROSS JOIN LATERAL (
          SELECT ctid, msg_id, priority FROM ${message}
          WHERE queue = q.name AND state = 'ready'
          ORDER BY priority DESC, msg_id
          LIMIT ${options.limit}
          FOR UPDATE SKIP LOCKED
        ) AS c
        WHERE (SELECT ok FROM registered)
        ORDER BY c.priority DESC, c.msg_id
        LIMIT ${options.limit}
      ), claimed AS (
        UPDATE ${message} AS m
        SET state = 'claimed', vt = now() + ${options.leaseSeconds} * interval '1 second',
            read_ct = m.read_ct + 1, claimed_by = ${options.processId}, claim_token = gen_random_uuid()
        WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM locked))
        RETURNING m.msg_id, m.claim_token, m.queue, m.task, m.payload, m.org_id, m.priority, m.read_ct, m.max_attempts,
                  m.enqueued_at, m.execution_id, m.batch_index,
                  (m.batch_index IS NULL OR EXISTS (
                    SELECT 1 FROM ${barrierTable} b WHERE b.execution_id = m.execution_id)) AS barrier_live
      )
      SELECT kind, msg_id::text AS msg_id, claim_token::text AS claim_token, queue, task, payload, org_id, priority,
             read_ct, max_attempts, enqueued_at, execution_id, batch_index, barrier_live, tokens, ok
      FROM (
        SELECT 'job' AS kind, msg_id, claim_token, queue, task, payload, org_id, priority, read_ct, max_attempts,
               enqueued_at, execution_id, batch_index, barrier_live, NULL::text[] AS tokens, NULL::boolean AS ok
        FROM claimed
        UNION ALL
        SELECT 'meta', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               ${tokensOf(sql`acked`)}, (SELECT ok FROM registered)
      ) AS answer
      ORDER BY kind, priority DESC, answer.msg_id`
    const meta = rows[rows.length - 1]!
    return {
      acked: new Set(meta.tokens),
      claimed: rows.slice(0, -1).map(toClaimed),
      unregistered: !meta.ok
    }
  }, (effect) => bounded(effect))

  /** Claim up to `limit` ready jobs (see `ackAndClaim`). */
  const claim = (options: ClaimOptions) => ackAndClaim([], options).pipe(Effect.map((r) => r.claimed))

  /** Push the lease of still-held attempts forward; returns the claim tokens of the attempts still ours. */
  const extend = Effect.fn("Queue.extend")(function*(attempts: ReadonlyArray<Attempt>, leaseSeconds: number) {
    if (attempts.length === 0) return new Set<string>()
    const rows = yield* sql<Tokens>`
      WITH extended AS (
        UPDATE ${message} AS m SET vt = now() + ${leaseSeconds} * interval '1 second'
        WHERE m.ctid = ANY(ARRAY(${lockedAttempts(attempts)}))
        RETURNING m.claim_token
      )
      SELECT ${tokensOf(sql`extended`)} ${yield* relaxedCommit}`
    return new Set(rows[0]!.tokens)
  }, (effect) => bounded(effect))

  /** Complete attempts (delete their rows); returns the claim tokens of the attempts actually acked. */
  const ackMany = Effect.fn("Queue.ackMany")(function*(attempts: ReadonlyArray<Attempt>) {
    if (attempts.length === 0) return new Set<string>()
    const rows = yield* sql<Tokens>`
      WITH acked AS (${deleteAttempts(attempts)})
      SELECT ${tokensOf(sql`acked`)} ${yield* relaxedCommit}`
    return new Set(rows[0]!.tokens)
  }, (effect) => bounded(effect))

  const ack = (attempt: Attempt) => ackMany([attempt]).pipe(Effect.map((acked) => acked.has(attempt.token)))

  /**
   * Settle a failed attempt in one statement: move it to dead_letter when `exhausted` holds for its row,
   * otherwise schedule it again after `retryInSeconds` (`spare` attempts added to its budget). "stale" when
   * the attempt's fence no longer matches.
   */
  const settleFailure = (
    attempt: Attempt,
    exhausted: Statement.Fragment,
    options: { readonly error: string; readonly retryInSeconds: number; readonly spare: number }
  ) =>
    sql<{ dead: number; retried: number }>`
      WITH target AS (
        SELECT m.ctid, ${exhausted} AS exhausted FROM ${message} AS m
        WHERE m.ctid = ANY(ARRAY(${lockedAttempts([attempt])}))
      ), dead AS (
        DELETE FROM ${message} AS m WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM target WHERE exhausted))
        RETURNING m.*
      ), buried AS (
        INSERT INTO ${deadLetterTable} (msg_id, queue, task, payload, org_id, priority, read_ct, max_attempts,
                                        last_error, enqueued_at, execution_id, batch_index)
        SELECT msg_id, queue, task, payload, org_id, priority, read_ct, max_attempts, ${options.error},
               enqueued_at, execution_id, batch_index FROM dead
        ON CONFLICT (msg_id) DO UPDATE SET last_error = EXCLUDED.last_error, failed_at = now(),
                                           read_ct = EXCLUDED.read_ct
        RETURNING msg_id
      ), retried AS (
        UPDATE ${message} AS m
        SET state = 'scheduled', visible_at = now() + ${options.retryInSeconds} * interval '1 second',
            vt = NULL, claimed_by = NULL, claim_token = NULL, last_error = ${options.error},
            max_attempts = m.max_attempts + ${options.spare}
        WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM target WHERE NOT exhausted))
        RETURNING m.msg_id
      )
      SELECT (SELECT count(*) FROM buried)::int AS dead, (SELECT count(*) FROM retried)::int AS retried`.pipe(
      Effect.map(([row]): FailResult => row!.dead > 0 ? "dead-lettered" : row!.retried > 0 ? "retried" : "stale")
    )

  /**
   * A failed attempt: retry after `retryInSeconds` (state scheduled), or move to dead_letter when the
   * attempts are exhausted or `deadLetter` is forced. One statement; "stale" if the fence did not match.
   */
  const fail = Effect.fn("Queue.fail")(function*(
    attempt: Attempt,
    options: { readonly error: string; readonly retryInSeconds: number; readonly deadLetter?: boolean }
  ) {
    const exhausted = sql`(m.read_ct >= m.max_attempts OR ${options.deadLetter ?? false})`
    return yield* settleFailure(attempt, exhausted, { ...options, spare: 0 })
  }, (effect) => bounded(effect))

  /**
   * Put an attempt off without spending its budget (a task this worker does not know yet, during a rolling
   * deploy): scheduled again after `retryInSeconds` until `budgetSeconds` after the enqueue (server clock),
   * then dead-lettered with `error`.
   */
  const defer = Effect.fn("Queue.defer")(function*(
    attempt: Attempt,
    options: { readonly error: string; readonly retryInSeconds: number; readonly budgetSeconds: number }
  ) {
    const exhausted = sql`(m.enqueued_at + ${options.budgetSeconds} * interval '1 second' <= now())`
    const result = yield* settleFailure(attempt, exhausted, { ...options, spare: 1 })
    return (result === "retried" ? "deferred" : result) satisfies DeferResult
  }, (effect) => bounded(effect))

  /** Move an attempt to dead_letter now, with the reason. */
  const deadLetter = (attempt: Attempt, reason: string) =>
    fail(attempt, { error: reason, retryInSeconds: 0, deadLetter: true }).pipe(Effect.map((r) => r === "dead-lettered"))

  /** Ready now, without spending an attempt (max_attempts grows with read_ct; read_ct never goes back). */
  const giveBack = sql`state = 'ready', vt = NULL, claimed_by = NULL, claim_token = NULL, visible_at = now(),
                       max_attempts = m.max_attempts + 1`

  /** Give attempts back (graceful shutdown, prefetched jobs not started). */
  const release = Effect.fn("Queue.release")(function*(attempts: ReadonlyArray<Attempt>) {
    if (attempts.length === 0) return 0
    const rows = yield* sql<{ n: number }>`
      WITH released AS (
        UPDATE ${message} AS m SET ${giveBack} WHERE m.ctid = ANY(ARRAY(${lockedAttempts(attempts)}))
        RETURNING m.msg_id
      )
      SELECT count(*)::int AS n ${yield* relaxedCommit} FROM released`
    return rows[0]!.n
  }, (effect) => bounded(effect))

  /**
   * Give back everything `processId` still holds, known to it or not (a claim that committed while its
   * answer was lost to an interruption). Only for a process that has stopped running jobs: its last act.
   */
  const releaseHeldBy = Effect.fn("Queue.releaseHeldBy")(function*(processId: string) {
    const rows = yield* sql<{ n: number }>`
      WITH released AS (
        UPDATE ${message} AS m SET ${giveBack}
        WHERE m.state = 'claimed' AND m.claimed_by = ${processId}
        RETURNING m.msg_id
      )
      SELECT count(*)::int AS n ${yield* relaxedCommit} FROM released`
    return rows[0]!.n
  }, (effect) => bounded(effect))

  return { ackAndClaim, claim, extend, ackMany, ack, fail, defer, deadLetter, release, releaseHeldBy }
}
