/**
 * The job queue: enqueue / enqueueMany / claim / extend / ack / fail / deadLetter / release, plus the
 * maintenance operations (re-arm expired claims, promote due jobs) that the reaper and idle workers run.
 *
 * Every statement is schema-qualified (PgBouncer does not keep search_path), every time comparison uses
 * the server's now(), and every per-attempt operation is fenced on (msg_id, read_ct, state = 'claimed'),
 * so an attempt that lost its lease can never ack, extend or fail a newer attempt.
 */
import { type Cause, Context, Duration, Effect, Layer, Option } from "effect"
import { SqlClient, type SqlError, type Statement } from "effect/sql"
import type { PgqSettings } from "./Config.ts"
import { PayloadRejected } from "./Errors.ts"
import { findUnstorable, hasNul } from "./Json.ts"
import { isQueueName, queueNameRule } from "./Names.ts"
import type { Task } from "./Task.ts"
import * as Wakeup from "./Wakeup.ts"

export interface EnqueueOptions {
  readonly queue?: string
  /** 1..10, higher runs first. Default 5. */
  readonly priority?: number
  /** Not visible before this much time has passed (server clock). */
  readonly delay?: Duration.Input
  readonly orgId?: string
  readonly maxAttempts?: number
  /** Barrier context, set by Barrier for fan-out batches. */
  readonly executionId?: string
  readonly batchIndex?: number
}

/** A job to enqueue: a task (typed) or a task name (raw JSON payload). */
export interface JobSpec {
  readonly task: string
  readonly payload: unknown
  readonly options?: EnqueueOptions
}

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

export interface QueueStats {
  readonly queue: string
  readonly ready: number
  readonly scheduled: number
  readonly claimed: number
  readonly deadLettered: number
  readonly oldestReadySeconds: number | null
}

export interface DeadLetter {
  readonly msgId: string
  readonly queue: string
  readonly task: string
  readonly payload: unknown
  readonly attempts: number
  readonly lastError: string
  readonly failedAt: Date
}

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

export interface QueueDefaults {
  readonly schema: string
  readonly maxAttempts: number
  /**
   * Let claims, lease renewals, acks and releases commit without waiting for the WAL flush (default
   * true). See `relaxedCommit` in `makeQueue`.
   */
  readonly asyncCommit?: boolean
  /**
   * Client-side bound of every runtime statement (claim, renew, ack, fail, release, maintenance): the query
   * is cancelled on the server and the call fails with a TimeoutError, so a hung database cannot wedge a
   * worker's or the reaper's loop, nor its shutdown (PGQ_STATEMENT_TIMEOUT_MS). Unset: unbounded.
   * Enqueues are left to the host's own timeouts.
   */
  readonly statementTimeoutMs?: number
  /**
   * After commit, NOTIFY listening workers of the queues that received ready jobs, so they start them at
   * once instead of at their next poll (default true; see Wakeup.ts).
   */
  readonly notify?: boolean
}

const isIntIn = (value: number, min: number, max: number) => Number.isInteger(value) && value >= min && value <= max

/** Validate one job before anything is written; the error names the task and the field. */
export const validateJob = (job: JobSpec, defaults: QueueDefaults): Effect.Effect<StoredJob, PayloadRejected> => {
  const o = job.options ?? {}
  const reject = (field: string, reason: string) => Effect.fail(new PayloadRejected({ task: job.task, field, reason }))
  if (job.task === "" || hasNul(job.task)) return reject("task", "must be a non-empty name without NUL characters")
  const unstorable = findUnstorable(job.payload)
  if (Option.isSome(unstorable)) return reject(unstorable.value.path, unstorable.value.reason)
  const queue = o.queue ?? "default"
  if (!isQueueName(queue)) return reject("queue", queueNameRule)
  const priority = o.priority ?? 5
  if (!isIntIn(priority, 1, 10)) return reject("priority", `must be an integer 1..10, got ${priority}`)
  const maxAttempts = o.maxAttempts ?? defaults.maxAttempts
  if (!isIntIn(maxAttempts, 1, 1_000_000)) return reject("maxAttempts", `must be a positive integer, got ${maxAttempts}`)
  const orgId = o.orgId ?? ""
  if (hasNul(orgId)) return reject("orgId", "contains a NUL character")
  const delay = o.delay === undefined ? Option.some(Duration.zero) : Duration.fromInput(o.delay)
  if (Option.isNone(delay) || Duration.toMillis(delay.value) < 0 || !Number.isFinite(Duration.toMillis(delay.value))) {
    return reject("delay", "must be a finite, non-negative duration")
  }
  if (o.batchIndex !== undefined && !isIntIn(o.batchIndex, 0, 2 ** 31 - 1)) {
    return reject("batchIndex", "must be a non-negative integer")
  }
  return Effect.succeed({
    queue,
    task: job.task,
    payload: job.payload,
    org_id: orgId,
    priority,
    delay_ms: Duration.toMillis(delay.value),
    max_attempts: maxAttempts,
    execution_id: o.executionId ?? null,
    batch_index: o.batchIndex ?? null
  })
}

/** The row shape sent to the database (one jsonb document for a whole batch). */
export interface StoredJob {
  readonly queue: string
  readonly task: string
  readonly payload: unknown
  readonly org_id: string
  readonly priority: number
  readonly delay_ms: number
  readonly max_attempts: number
  readonly execution_id: string | null
  readonly batch_index: number | null
}

/** One job of an insert batch as sent: see `insertRows`. */
const wireRow = (r: StoredJob) => ({
  q: r.queue,
  t: r.task,
  p: r.payload,
  m: r.max_attempts,
  ...(r.org_id === "" ? {} : { o: r.org_id }),
  ...(r.priority === 5 ? {} : { pr: r.priority }),
  ...(r.delay_ms > 0 ? { d: r.delay_ms } : {}),
  ...(r.execution_id === null ? {} : { e: r.execution_id }),
  ...(r.batch_index === null ? {} : { b: r.batch_index })
})

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

const fenceIds = (attempts: ReadonlyArray<Attempt>) => ({
  ids: attempts.map((a) => a.msgId),
  tokens: attempts.map((a) => a.token)
})

export const makeQueue = Effect.fnUntraced(function*(defaults: QueueDefaults) {
  const sql = yield* SqlClient.SqlClient
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
   * which redelivers those jobs, as any crash may; no job is lost. It roughly halves their latency.
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

  const announce = defaults.notify === false ? undefined : yield* Wakeup.makeAnnouncer(defaults.schema)

  // The batch travels as one compact `json` document (short keys, defaults left out: json_to_recordset
  // reads a missing key as NULL) and each payload is cast to jsonb once. json input is only validated,
  // while a jsonb document, or a jsonb column of the record set, costs 2-3x more per batch.
  const insertRows = (rows: ReadonlyArray<StoredJob>) =>
    sql<{ msg_id: string }>`
      INSERT INTO ${message} (queue, task, payload, org_id, priority, state, visible_at, max_attempts, execution_id, batch_index)
      SELECT r.q, r.t, coalesce(r.p::jsonb, 'null'::jsonb), coalesce(r.o, ''), coalesce(r.pr, 5),
             CASE WHEN r.d > 0 THEN 'scheduled' ELSE 'ready' END,
             now() + coalesce(r.d, 0) * interval '1 millisecond', r.m, r.e, r.b
      FROM json_to_recordset(${JSON.stringify(rows.map(wireRow))}::json)
        AS r(q text, t text, p json, o text, pr smallint, d float8, m int, e text, b int)
      RETURNING msg_id::text AS msg_id`.pipe(Effect.map((result) => result.map((r) => r.msg_id)))

  /**
   * Enqueue many jobs in one statement. Validates every job first: one bad job rejects the batch and
   * nothing is written. Inside the host's `sql.withTransaction`, the jobs exist iff it commits.
   */
  const enqueueMany = Effect.fn("Queue.enqueueMany")(function*(jobs: ReadonlyArray<JobSpec>) {
    if (jobs.length === 0) return []
    const rows = yield* Effect.forEach(jobs, (job) => validateJob(job, defaults))
    const ids = yield* insertRows(rows)
    const ready = new Set(rows.filter((r) => r.delay_ms <= 0).map((r) => r.queue))
    if (announce !== undefined && ready.size > 0) yield* sql.afterCommit(announce([...ready]))
    return ids
  })

  const enqueue = Effect.fn("Queue.enqueue")(function*(task: string, payload: unknown, options?: EnqueueOptions) {
    const ids = yield* enqueueMany([{ task, payload, ...(options === undefined ? {} : { options }) }])
    return ids[0]!
  })

  /** Enqueue through a task definition: the payload is encoded with the task's Schema. */
  const send = Effect.fn("Queue.send")(function*<P, R>(task: Task<P, R>, payload: P, options?: EnqueueOptions) {
    const encoded = yield* task.encode(payload).pipe(
      Effect.mapError((reason) => new PayloadRejected({ task: task.name, field: "payload", reason }))
    )
    return yield* enqueue(task.name, encoded, {
      ...(task.queue === undefined ? {} : { queue: task.queue }),
      ...(task.priority === undefined ? {} : { priority: task.priority }),
      ...(task.maxAttempts === undefined ? {} : { maxAttempts: task.maxAttempts }),
      ...options
    })
  })

  /** Delete (complete) the rows of still-current attempts, returning their msg_id: the ack. */
  const deleteAttempts = (attempts: ReadonlyArray<Attempt>) =>
    sql`DELETE FROM ${message} AS m USING ${attemptsOf(attempts)} WHERE ${fenced} RETURNING m.msg_id, m.claim_token`

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
    const rows = yield* sql<ClaimRow & { readonly kind: "job" | "ack" | "unregistered" }>`
      WITH acked AS (${deleteAttempts(acks)}), registered AS (SELECT ${registered} AS ok), locked AS (
        SELECT c.msg_id FROM unnest(${[...new Set(options.queues)]}::text[]) AS q(name)
        CROSS JOIN LATERAL (
          SELECT msg_id, priority FROM ${message}
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
        FROM locked WHERE m.msg_id = locked.msg_id
        RETURNING m.msg_id, m.claim_token, m.queue, m.task, m.payload, m.org_id, m.priority, m.read_ct, m.max_attempts,
                  m.enqueued_at, m.execution_id, m.batch_index,
                  (m.batch_index IS NULL OR EXISTS (
                    SELECT 1 FROM ${barrierTable} b WHERE b.execution_id = m.execution_id)) AS barrier_live
      ), answer AS (
        SELECT 'job' AS kind, msg_id, claim_token, queue, task, payload, org_id, priority, read_ct, max_attempts,
               enqueued_at, execution_id, batch_index, barrier_live
        FROM claimed
        UNION ALL
        SELECT 'ack', msg_id, claim_token, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM acked
        UNION ALL
        SELECT 'unregistered', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
        FROM registered WHERE NOT ok
      )
      SELECT kind, msg_id::text AS msg_id, claim_token::text AS claim_token, queue, task, payload, org_id, priority, read_ct, max_attempts,
             enqueued_at, execution_id, batch_index, barrier_live ${relaxed}
      FROM answer ORDER BY kind DESC, priority DESC, answer.msg_id`
    return {
      acked: new Set(rows.filter((r) => r.kind === "ack").map((r) => r.claim_token)),
      claimed: rows.filter((r) => r.kind === "job").map(toClaimed),
      unregistered: rows.some((r) => r.kind === "unregistered")
    }
  }, (effect) => bounded(effect))

  /** Claim up to `limit` ready jobs (see `ackAndClaim`). */
  const claim = (options: ClaimOptions) => ackAndClaim([], options).pipe(Effect.map((r) => r.claimed))

  /** Push the lease of still-held attempts forward; returns the claim tokens of the attempts still ours. */
  const extend = Effect.fn("Queue.extend")(function*(attempts: ReadonlyArray<Attempt>, leaseSeconds: number) {
    if (attempts.length === 0) return new Set<string>()
    const rows = yield* sql<{ token: string }>`
      WITH extended AS (
        UPDATE ${message} AS m SET vt = now() + ${leaseSeconds} * interval '1 second'
        FROM ${attemptsOf(attempts)} WHERE ${fenced}
        RETURNING m.claim_token
      )
      SELECT claim_token::text AS token ${yield* relaxedCommit} FROM extended`
    return new Set(rows.map((r) => r.token))
  }, (effect) => bounded(effect))

  /** Complete attempts (delete their rows); returns the claim tokens of the attempts actually acked. */
  const ackMany = Effect.fn("Queue.ackMany")(function*(attempts: ReadonlyArray<Attempt>) {
    if (attempts.length === 0) return new Set<string>()
    const rows = yield* sql<{ token: string }>`
      WITH acked AS (${deleteAttempts(attempts)})
      SELECT claim_token::text AS token ${yield* relaxedCommit} FROM acked`
    return new Set(rows.map((r) => r.token))
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
        SELECT m.msg_id, ${exhausted} AS exhausted FROM ${message} AS m, ${attemptsOf([attempt])}
        WHERE ${fenced}
        FOR UPDATE OF m
      ), dead AS (
        DELETE FROM ${message} AS m USING target t WHERE m.msg_id = t.msg_id AND t.exhausted
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
        FROM target t WHERE m.msg_id = t.msg_id AND NOT t.exhausted
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
        UPDATE ${message} AS m SET ${giveBack} FROM ${attemptsOf(attempts)} WHERE ${fenced}
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
        SELECT msg_id FROM ${message}
        WHERE ${where} AND ${scopeFilter(scope)}
        ORDER BY ${order} LIMIT ${scope.limit ?? MAINTENANCE_BATCH}
        FOR UPDATE SKIP LOCKED
      ), changed AS (
        UPDATE ${message} AS m SET ${set} FROM batch WHERE m.msg_id = batch.msg_id RETURNING 1
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
        SELECT msg_id FROM ${deadLetterTable} WHERE ${filter}
        ORDER BY msg_id LIMIT ${MAINTENANCE_BATCH} FOR UPDATE SKIP LOCKED
      ), revived AS (
        DELETE FROM ${deadLetterTable} AS d USING batch WHERE d.msg_id = batch.msg_id
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
        SELECT msg_id FROM ${deadLetterTable}
        WHERE failed_at < now() - ${retentionSeconds} * interval '1 second' AND ${scope?.fence ?? sql`TRUE`}
        ORDER BY failed_at LIMIT ${scope?.limit ?? MAINTENANCE_BATCH}
        FOR UPDATE SKIP LOCKED
      ), swept AS (
        DELETE FROM ${deadLetterTable} AS d USING batch WHERE d.msg_id = batch.msg_id RETURNING 1
      )
      SELECT count(*)::int AS n FROM swept`)
    return rows[0]!.n
  })

  return {
    enqueue,
    enqueueMany,
    send,
    claim,
    ackAndClaim,
    extend,
    ack,
    ackMany,
    fail,
    defer,
    deadLetter,
    release,
    releaseHeldBy,
    rearmExpired,
    promoteDue,
    stats,
    listDeadLetters,
    replayDeadLetters,
    sweepDeadLetters
  }
})

type QueueShape = Effect.Success<ReturnType<typeof makeQueue>>

export class Queue extends Context.Service<Queue, QueueShape>()("effect-pg-queue/Queue") {
  static readonly layer = (defaults: QueueDefaults) => Layer.effect(Queue, makeQueue(defaults))
  /** The queue as the validated settings configure it (PGQ_SCHEMA, PGQ_MAX_ATTEMPTS, PGQ_NOTIFY, PGQ_STATEMENT_TIMEOUT_MS). */
  static readonly fromSettings = (
    settings: Pick<PgqSettings, "schema" | "maxAttempts" | "notify" | "statementTimeoutMs">
  ) =>
    Queue.layer({
      schema: settings.schema,
      maxAttempts: settings.maxAttempts,
      notify: settings.notify,
      statementTimeoutMs: settings.statementTimeoutMs
    })
}

export type QueueError = SqlError.SqlError | PayloadRejected

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

