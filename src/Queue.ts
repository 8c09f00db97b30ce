/**
 * The job queue as one service: enqueue (here), and the statement families it composes — the life of an
 * attempt (Attempts.ts: claim, extend, ack, fail, defer, release), maintenance in bounded batches
 * (QueueMaintenance.ts), dead letters (DeadLetters.ts) and counts (QueueStats.ts), all on the shared
 * statement kit (QueueStatements.ts).
 *
 * Every statement is schema-qualified (PgBouncer does not keep search_path), every time comparison uses
 * the server's now(), and every per-attempt operation is fenced by the attempt's claim token.
 */
import { Context, Duration, Effect, Layer, Option } from "effect"
import { SqlClient, type SqlError } from "effect/sql"
import type { PgqSettings } from "./Config.ts"
import { PayloadRejected } from "./Errors.ts"
import { findUnstorable, hasNul } from "./Json.ts"
import { isQueueName, queueNameRule } from "./Names.ts"
import type { Task } from "./Task.ts"
import { makeAttempts } from "./Attempts.ts"
import { makeDeadLetters } from "./DeadLetters.ts"
import { makeQueueMaintenance } from "./QueueMaintenance.ts"
import { makeQueueStats } from "./QueueStats.ts"
import { makeStatements } from "./QueueStatements.ts"
import * as Wakeup from "./Wakeup.ts"

export * from "./Attempts.ts"
export * from "./DeadLetters.ts"
export * from "./QueueMaintenance.ts"
export * from "./QueueStats.ts"

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

export const makeQueue = Effect.fnUntraced(function*(defaults: QueueDefaults) {
  const sql = yield* SqlClient.SqlClient
  const statements = makeStatements(sql, defaults)
  const { message } = statements

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

  /**
   * Tell listening workers that jobs of `queues` became ready outside an enqueue (freed from a dead
   * process, promoted, re-armed), so idle ones claim them now instead of at their next poll.
   */
  const announceReady = (queues: ReadonlyArray<string>): Effect.Effect<void> =>
    announce === undefined || queues.length === 0 ? Effect.void : announce(queues)

  return {
    enqueue,
    enqueueMany,
    send,
    announceReady,
    ...makeAttempts(statements),
    ...makeQueueMaintenance(statements),
    ...makeDeadLetters(statements),
    ...makeQueueStats(statements)
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

