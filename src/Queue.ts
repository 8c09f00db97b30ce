/**
 * The job queue: enqueue / enqueueMany / claim / extend / ack / fail / deadLetter / release, plus the
 * maintenance operations (re-arm expired claims, promote due jobs) that the reaper and idle workers run.
 *
 * Every statement is schema-qualified (PgBouncer does not keep search_path), every time comparison uses
 * the server's now(), and every per-attempt operation is fenced on (msg_id, read_ct, state = 'claimed'),
 * so an attempt that lost its lease can never ack, extend or fail a newer attempt.
 */
import { Context, Duration, Effect, Layer, Option } from "effect"
import { SqlClient, type SqlError, type Statement } from "effect/sql"
import type { PgqSettings } from "./Config.ts"
import { PayloadRejected } from "./Errors.ts"
import { findUnstorable, hasNul } from "./Json.ts"
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

/** A claimed job. `(msgId, attempt)` is the fence every later operation carries. */
export interface ClaimedJob {
  readonly msgId: string
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
}

export interface ClaimOptions {
  readonly queues: ReadonlyArray<string>
  readonly limit: number
  readonly leaseSeconds: number
  /** Recorded as `claimed_by`, so a dead process's claims can be freed. */
  readonly processId: string
}

/** The fence of one attempt. */
export interface Attempt {
  readonly msgId: string
  readonly attempt: number
}

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

/** Limits of a maintenance statement: only these queues (default all), only while `fence` holds. */
export interface MaintenanceScope {
  readonly queues?: ReadonlyArray<string>
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
  if (queue === "" || hasNul(queue)) return reject("queue", "must be a non-empty name without NUL characters")
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
}

const toClaimed = (row: ClaimRow): ClaimedJob => ({
  msgId: row.msg_id,
  queue: row.queue,
  task: row.task,
  payload: row.payload,
  orgId: row.org_id,
  priority: row.priority,
  attempt: row.read_ct,
  maxAttempts: row.max_attempts,
  enqueuedAt: row.enqueued_at,
  executionId: row.execution_id,
  batchIndex: row.batch_index
})

const fenceIds = (attempts: ReadonlyArray<Attempt>) => ({
  ids: attempts.map((a) => a.msgId),
  readCts: attempts.map((a) => a.attempt)
})

export const makeQueue = Effect.fnUntraced(function*(defaults: QueueDefaults) {
  const sql = yield* SqlClient.SqlClient
  const message = sql(`${defaults.schema}.message`)
  const deadLetterTable = sql(`${defaults.schema}.dead_letter`)

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
  const deleteAttempts = (attempts: ReadonlyArray<Attempt>) => {
    const { ids, readCts } = fenceIds(attempts)
    return sql`
      DELETE FROM ${message} AS m
      USING unnest(${ids}::bigint[], ${readCts}::int[]) AS a(msg_id, read_ct)
      WHERE m.msg_id = a.msg_id AND m.read_ct = a.read_ct AND m.state = 'claimed'
      RETURNING m.msg_id`
  }

  /**
   * Ack finished attempts and claim up to `limit` ready jobs in one statement (one round trip and one
   * commit where a worker would otherwise spend two). The claim is the CTE join form, so it never
   * over-claims. Each queue is read through its own ordered, LIMITed walk of the claim index (the LATERAL
   * join), so the cost of a claim does not grow with the backlog and the plan does not depend on fresh
   * statistics; `queue = ANY(...)` would sort every ready row of the queues on each claim.
   */
  const ackAndClaim = Effect.fn("Queue.ackAndClaim")(function*(acks: ReadonlyArray<Attempt>, options: ClaimOptions) {
    if (options.limit <= 0 || options.queues.length === 0) return { acked: yield* ackMany(acks), claimed: [] }
    const relaxed = yield* relaxedCommit
    const rows = yield* sql<ClaimRow & { readonly kind: "job" | "ack" }>`
      WITH acked AS (${deleteAttempts(acks)}), locked AS (
        SELECT c.msg_id FROM unnest(${[...new Set(options.queues)]}::text[]) AS q(name)
        CROSS JOIN LATERAL (
          SELECT msg_id, priority FROM ${message}
          WHERE queue = q.name AND state = 'ready'
          ORDER BY priority DESC, msg_id
          LIMIT ${options.limit}
          FOR UPDATE SKIP LOCKED
        ) AS c
        ORDER BY c.priority DESC, c.msg_id
        LIMIT ${options.limit}
      ), claimed AS (
        UPDATE ${message} AS m
        SET state = 'claimed', vt = now() + ${options.leaseSeconds} * interval '1 second',
            read_ct = m.read_ct + 1, claimed_by = ${options.processId}
        FROM locked WHERE m.msg_id = locked.msg_id
        RETURNING m.msg_id, m.queue, m.task, m.payload, m.org_id, m.priority, m.read_ct, m.max_attempts,
                  m.enqueued_at, m.execution_id, m.batch_index
      ), answer AS (
        SELECT 'job' AS kind, msg_id, queue, task, payload, org_id, priority, read_ct, max_attempts,
               enqueued_at, execution_id, batch_index
        FROM claimed
        UNION ALL
        SELECT 'ack', msg_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM acked
      )
      SELECT kind, msg_id::text AS msg_id, queue, task, payload, org_id, priority, read_ct, max_attempts,
             enqueued_at, execution_id, batch_index ${relaxed}
      FROM answer ORDER BY kind DESC, priority DESC, answer.msg_id`
    return {
      acked: new Set(rows.filter((r) => r.kind === "ack").map((r) => r.msg_id)),
      claimed: rows.filter((r) => r.kind === "job").map(toClaimed)
    }
  })

  /** Claim up to `limit` ready jobs (see `ackAndClaim`). */
  const claim = (options: ClaimOptions) => ackAndClaim([], options).pipe(Effect.map((r) => r.claimed))

  /** Push the lease of still-held attempts forward; returns the msg ids that are still ours. */
  const extend = Effect.fn("Queue.extend")(function*(attempts: ReadonlyArray<Attempt>, leaseSeconds: number) {
    if (attempts.length === 0) return new Set<string>()
    const { ids, readCts } = fenceIds(attempts)
    const rows = yield* sql<{ msg_id: string }>`
      WITH extended AS (
        UPDATE ${message} AS m SET vt = now() + ${leaseSeconds} * interval '1 second'
        FROM unnest(${ids}::bigint[], ${readCts}::int[]) AS a(msg_id, read_ct)
        WHERE m.msg_id = a.msg_id AND m.read_ct = a.read_ct AND m.state = 'claimed'
        RETURNING m.msg_id
      )
      SELECT msg_id::text AS msg_id ${yield* relaxedCommit} FROM extended`
    return new Set(rows.map((r) => r.msg_id))
  })

  /** Complete attempts (delete their rows); returns the msg ids actually acked. */
  const ackMany = Effect.fn("Queue.ackMany")(function*(attempts: ReadonlyArray<Attempt>) {
    if (attempts.length === 0) return new Set<string>()
    const rows = yield* sql<{ msg_id: string }>`
      WITH acked AS (${deleteAttempts(attempts)})
      SELECT msg_id::text AS msg_id ${yield* relaxedCommit} FROM acked`
    return new Set(rows.map((r) => r.msg_id))
  })

  const ack = (attempt: Attempt) => ackMany([attempt]).pipe(Effect.map((acked) => acked.has(attempt.msgId)))

  /**
   * A failed attempt: retry after `retryInSeconds` (state scheduled), or move to dead_letter when the
   * attempts are exhausted or `deadLetter` is forced. One statement; "stale" if the fence did not match.
   */
  const fail = Effect.fn("Queue.fail")(function*(
    attempt: Attempt,
    options: { readonly error: string; readonly retryInSeconds: number; readonly deadLetter?: boolean }
  ) {
    const force = options.deadLetter ?? false
    const [row] = yield* sql<{ dead: number; retried: number }>`
      WITH target AS (
        SELECT msg_id, (read_ct >= max_attempts OR ${force}) AS exhausted FROM ${message}
        WHERE msg_id = ${attempt.msgId}::bigint AND read_ct = ${attempt.attempt} AND state = 'claimed'
        FOR UPDATE
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
            vt = NULL, claimed_by = NULL, last_error = ${options.error}
        FROM target t WHERE m.msg_id = t.msg_id AND NOT t.exhausted
        RETURNING m.msg_id
      )
      SELECT (SELECT count(*) FROM buried)::int AS dead, (SELECT count(*) FROM retried)::int AS retried`
    const result: FailResult = row!.dead > 0 ? "dead-lettered" : row!.retried > 0 ? "retried" : "stale"
    return result
  })

  /** Move an attempt to dead_letter now, with the reason. */
  const deadLetter = (attempt: Attempt, reason: string) =>
    fail(attempt, { error: reason, retryInSeconds: 0, deadLetter: true }).pipe(Effect.map((r) => r === "dead-lettered"))

  /**
   * Give attempts back (graceful shutdown): ready now. The attempt does not count against the
   * job's budget (max_attempts grows with read_ct), and read_ct never goes back, so fences stay unique.
   */
  const release = Effect.fn("Queue.release")(function*(attempts: ReadonlyArray<Attempt>) {
    if (attempts.length === 0) return 0
    const { ids, readCts } = fenceIds(attempts)
    const rows = yield* sql<{ msg_id: string }>`
      WITH released AS (
        UPDATE ${message} AS m
        SET state = 'ready', vt = NULL, claimed_by = NULL, visible_at = now(), max_attempts = m.max_attempts + 1
        FROM unnest(${ids}::bigint[], ${readCts}::int[]) AS a(msg_id, read_ct)
        WHERE m.msg_id = a.msg_id AND m.read_ct = a.read_ct AND m.state = 'claimed'
        RETURNING m.msg_id
      )
      SELECT msg_id::text AS msg_id ${yield* relaxedCommit} FROM released`
    return rows.length
  })

  /** Which rows a maintenance statement may touch: some queues, and only while a leader fence holds. */
  const scopeFilter = (scope: MaintenanceScope) =>
    sql.and([
      scope.queues === undefined ? sql`TRUE` : sql`queue = ANY(${scope.queues}::text[])`,
      scope.fence ?? sql`TRUE`
    ])

  /** Claims whose lease expired (their worker died or stalled) become ready again. */
  const rearmExpired = Effect.fn("Queue.rearmExpired")(function*(scope: MaintenanceScope = {}) {
    const rows = yield* sql`
      UPDATE ${message} SET state = 'ready', vt = NULL, claimed_by = NULL
      WHERE state = 'claimed' AND vt <= now() AND ${scopeFilter(scope)}
      RETURNING msg_id`
    return rows.length
  })

  /** Delayed and backed-off jobs whose time has come become ready. */
  const promoteDue = Effect.fn("Queue.promoteDue")(function*(scope: MaintenanceScope = {}) {
    const rows = yield* sql`
      UPDATE ${message} SET state = 'ready'
      WHERE state = 'scheduled' AND visible_at <= now() AND ${scopeFilter(scope)}
      RETURNING msg_id`
    return rows.length
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
    const rows = yield* sql`
      WITH revived AS (
        DELETE FROM ${deadLetterTable} WHERE ${filter}
        RETURNING queue, task, payload, org_id, priority, max_attempts, enqueued_at, execution_id, batch_index, last_error
      )
      INSERT INTO ${message} (queue, task, payload, org_id, priority, state, visible_at, max_attempts,
                              enqueued_at, execution_id, batch_index, last_error)
      SELECT queue, task, payload, org_id, priority, 'ready', now(), max_attempts, now(), execution_id,
             batch_index, last_error FROM revived
      RETURNING msg_id`
    return rows.length
  })

  /** Dead letters older than the retention window are deleted. */
  const sweepDeadLetters = Effect.fn("Queue.sweepDeadLetters")(function*(retentionSeconds: number, fence?: Statement.Fragment) {
    const rows = yield* sql`
      DELETE FROM ${deadLetterTable}
      WHERE failed_at < now() - ${retentionSeconds} * interval '1 second' AND ${fence ?? sql`TRUE`}
      RETURNING msg_id`
    return rows.length
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
    deadLetter,
    release,
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
  /** The queue as the validated settings configure it (PGQ_SCHEMA, PGQ_MAX_ATTEMPTS, PGQ_NOTIFY). */
  static readonly fromSettings = (settings: Pick<PgqSettings, "schema" | "maxAttempts" | "notify">) =>
    Queue.layer({ schema: settings.schema, maxAttempts: settings.maxAttempts, notify: settings.notify })
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

