/**
 * Fan-out / fan-in: N batch jobs, then exactly one callback with all their results, ordered by batch index.
 *
 * - `start` writes the barrier row, inserts the N batch messages (carrying `execution_id`, `batch_index`) and
 *   marks the execution EXECUTING in ONE transaction: inside a host's `sql.withTransaction` the fan-out exists
 *   iff the host commits. Starting an execution that is live or already ran is `AlreadyStarted`, never a
 *   second fan-out; `rerun: true` resets it.
 * - `complete` is a batch's ack: in the SAME transaction as the fenced delete of the batch's message it inserts
 *   the batch's marker with its result (a duplicate or redelivered batch finds the marker and only acks),
 *   decrements `remaining`, and when that reaches 0 enqueues the callback with the ordered results and
 *   deletes the barrier row. No crash can count a batch twice, lose a result, or leave "all batches done but
 *   no callback": it all commits together or not at all.
 * - `abort` (a batch failed for good) and `stop` (cancel) end the execution through the status port; late
 *   completions of other batches then find no barrier row and are acked as abandoned, never firing a callback.
 *
 * The barrier row's existence is the execution's liveness for the workers: a claimed batch whose barrier is
 * gone is not run (see `ClaimedJob.barrierLive`).
 */
import { Context, Effect, Exit, Layer, Option, Request, RequestResolver, Schema } from "effect"
import { SqlClient, type SqlError } from "effect/sql"
import * as ExecutionStatus from "./ExecutionStatus.ts"
import { findUnstorable, hasNul } from "./Json.ts"
import { type Attempt, attemptKey, type EnqueueOptions, Queue, type QueueError } from "./Queue.ts"
import { lockedClaims } from "./QueueStatements.ts"
import type { Task } from "./Task.ts"

/** A barrier cannot be started as asked: names the execution and the field. */
export class BarrierRejected extends Schema.TaggedError<BarrierRejected>()("BarrierRejected", {
  executionId: Schema.String,
  field: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `execution ${JSON.stringify(this.executionId)}: ${this.field} ${this.reason}`
  }
}

/** One batch of a fan-out: a task name and its (already encoded) payload. See `batch` for the typed form. */
export interface BatchSpec {
  readonly task: string
  readonly payload: unknown
  readonly queue?: string
  readonly priority?: number
  readonly maxAttempts?: number
}

/** The callback: a task that receives `{ executionId, results, context }` (see `callbackPayload`). */
export interface CallbackSpec {
  readonly task: string
  /** Anything the callback needs besides the results (JSON). */
  readonly context?: unknown
  readonly queue?: string
  readonly priority?: number
  readonly maxAttempts?: number
}

export interface StartOptions {
  readonly executionId: string
  readonly orgId?: string
  readonly batches: ReadonlyArray<BatchSpec>
  readonly callback: CallbackSpec
  /** Default: the layer's (PGQ_BARRIER_TTL_SECONDS). */
  readonly ttlSeconds?: number
  /** Reset a live or stranded execution (its barrier, markers and pending jobs) and fan out again. */
  readonly rerun?: boolean
}

export type StartResult =
  | { readonly _tag: "Started"; readonly executionId: string; readonly batches: number }
  | { readonly _tag: "AlreadyStarted"; readonly executionId: string; readonly reason: string }

/** What a batch's completion did. */
export type CompleteResult =
  /** Counted; other batches are still due. */
  | "pending"
  /** The last batch: the callback is enqueued and the barrier is gone. */
  | "complete"
  /** This batch was already counted (a redelivery): only acked. */
  | "duplicate"
  /** The barrier is gone (stopped, aborted, recovered): acked, not counted. */
  | "abandoned"
  /** The attempt's fence no longer matches (the job was re-claimed): nothing done. */
  | "stale"

export type EndResult = "ended" | "already-ended" | "unconfirmed"

/** One batch's completion, batched with the others requested meanwhile (see `completeMany`). */
interface CompleteRequest extends Request.Request<CompleteResult, SqlError.SqlError | QueueError> {
  readonly _tag: "CompleteRequest"
  readonly attempt: BatchAttempt
  readonly result: unknown
}
const CompleteRequest = Request.tagged<CompleteRequest>("CompleteRequest")

/** The callback's payload schema: the ordered batch results decoded with `result`, and the context. */
export const callbackPayload = <R extends Schema.Top, C extends Schema.Top>(result: R, context: C) =>
  Schema.Struct({ executionId: Schema.String, results: Schema.Array(result), context })

/** A typed batch: the payload is encoded with the task's Schema (like `Queue.send`). */
export const batch = <P, R>(task: Task<P, R>, payload: P, options: Omit<BatchSpec, "task" | "payload"> = {}) =>
  task.encode(payload).pipe(
    Effect.mapError((reason) => new BarrierRejected({ executionId: "", field: `batch ${task.name}`, reason })),
    Effect.map((encoded): BatchSpec => ({
      task: task.name,
      payload: encoded,
      ...(task.queue === undefined ? {} : { queue: task.queue }),
      ...(task.priority === undefined ? {} : { priority: task.priority }),
      ...(task.maxAttempts === undefined ? {} : { maxAttempts: task.maxAttempts }),
      ...options
    }))
  )

/** A batch job as the worker holds it: its fence and its place in the fan-out. */
export interface BatchAttempt extends Attempt {
  readonly executionId: string
  readonly batchIndex: number
}

/** Rows one statement of `stop` / `rerun` removes at most (a fan-out may have tens of thousands). */
const CLEANUP_BATCH = 1000

export interface BarrierOptions {
  readonly schema: string
  /** Default TTL of a barrier (PGQ_BARRIER_TTL_SECONDS). */
  readonly ttlSeconds: number
}

export const makeBarrier = Effect.fnUntraced(function*(options: BarrierOptions) {
  const sql = yield* SqlClient.SqlClient
  const queue = yield* Queue
  const status = yield* ExecutionStatus.ExecutionStatus
  const t = (name: string) => sql(`${options.schema}.${name}`)
  const barrierTable = t("barrier")
  const markers = t("barrier_batch")
  const message = t("message")

  const validate = (spec: StartOptions): Effect.Effect<number, BarrierRejected> => {
    const reject = (field: string, reason: string) =>
      Effect.fail(new BarrierRejected({ executionId: spec.executionId, field, reason }))
    if (spec.executionId.trim() === "" || hasNul(spec.executionId)) return reject("executionId", "must be a non-empty id")
    if (spec.batches.length === 0) return reject("batches", "is empty: a fan-out needs at least one batch")
    const ttl = spec.ttlSeconds ?? options.ttlSeconds
    if (!Number.isFinite(ttl) || ttl <= 0) return reject("ttlSeconds", `must be a positive number, got ${ttl}`)
    if (spec.callback.task === "") return reject("callback.task", "must name a task")
    const context = findUnstorable(spec.callback.context ?? null, "callback.context")
    if (Option.isSome(context)) return reject(context.value.path, context.value.reason)
    return Effect.succeed(ttl)
  }

  /** Why `executionId` must not fan out again, if it must not: live, or already ran (markers, status). */
  const alreadyStarted = (executionId: string, orgId: string) =>
    Effect.gen(function*() {
      const [row] = yield* sql<{ live: boolean; ran: boolean; jobs: boolean }>`
        SELECT EXISTS (SELECT 1 FROM ${barrierTable} WHERE execution_id = ${executionId}) AS live,
               EXISTS (SELECT 1 FROM ${markers} WHERE execution_id = ${executionId}) AS ran,
               EXISTS (SELECT 1 FROM ${message} WHERE execution_id = ${executionId}) AS jobs`
      if (row!.live) return Option.some("its barrier is live")
      if (row!.ran || row!.jobs) return Option.some("it already ran (its batches or callback exist)")
      const current = yield* status.read(executionId, orgId)
      return current._tag === "Found" && current.status !== "PENDING"
        ? Option.some(`its status is ${current.status}`)
        : Option.none()
    })

  /** Remove what an execution left: barrier row, markers, jobs not claimed right now (bounded batches). */
  /**
   * Remove everything a previous run left: barrier row, markers, and every job — claimed ones too, so an old
   * batch still running completes as "stale" (its fence gone) and can never count toward the new run.
   */
  const clear = (executionId: string) =>
    Effect.gen(function*() {
      yield* sql`DELETE FROM ${barrierTable} WHERE execution_id = ${executionId}`
      yield* sql`DELETE FROM ${markers} WHERE execution_id = ${executionId}`
      yield* removeJobs(executionId, "every job")
    })

  /**
   * Delete an execution's jobs in bounded statements; returns how many. "unclaimed batches" leaves what a
   * worker runs right now (its completion is then abandoned) and skips rows being claimed.
   */
  const removeJobs = (executionId: string, which: "unclaimed batches" | "every job") =>
    Effect.gen(function*() {
      const only = which === "unclaimed batches"
        ? sql`AND batch_index IS NOT NULL AND state <> 'claimed'`
        : sql``
      const lock = which === "unclaimed batches" ? sql`FOR UPDATE SKIP LOCKED` : sql`FOR UPDATE`
      const once = sql<{ n: number }>`
        WITH doomed AS (
          SELECT ctid FROM ${message} WHERE execution_id = ${executionId} ${only}
          LIMIT ${CLEANUP_BATCH} ${lock}
        ), gone AS (DELETE FROM ${message} m WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM doomed)) RETURNING 1)
        SELECT count(*)::int AS n FROM gone`.pipe(Effect.map((rows) => rows[0]!.n))
      let total = 0
      for (let n = CLEANUP_BATCH; n === CLEANUP_BATCH; total += n) n = yield* once
      return total
    })

  /**
   * Fan out: the barrier row, the N batch messages and the EXECUTING mark in one transaction (joining the
   * caller's, if any).
   */
  const start = Effect.fn("Barrier.start")(function*(spec: StartOptions) {
    const ttl = yield* validate(spec)
    const orgId = spec.orgId ?? ""
    return yield* sql.withTransaction(Effect.gen(function*() {
      if (spec.rerun === true) {
        yield* clear(spec.executionId)
      } else {
        const why = yield* alreadyStarted(spec.executionId, orgId)
        if (Option.isSome(why)) {
          return { _tag: "AlreadyStarted", executionId: spec.executionId, reason: why.value } satisfies StartResult
        }
      }
      const callback = {
        task: spec.callback.task,
        context: spec.callback.context ?? null,
        queue: spec.callback.queue ?? "default",
        priority: spec.callback.priority ?? 5,
        ...(spec.callback.maxAttempts === undefined ? {} : { maxAttempts: spec.callback.maxAttempts })
      }
      // ON CONFLICT: a concurrent start of the same id (two orchestrator deliveries at once) loses here.
      const inserted = yield* sql`
        INSERT INTO ${barrierTable} (execution_id, org_id, total, remaining, callback, expires_at)
        VALUES (${spec.executionId}, ${orgId}, ${spec.batches.length}, ${spec.batches.length},
                ${JSON.stringify(callback)}::jsonb, now() + ${ttl} * interval '1 second')
        ON CONFLICT (execution_id) DO NOTHING
        RETURNING 1`
      if (inserted.length === 0) {
        return { _tag: "AlreadyStarted", executionId: spec.executionId, reason: "its barrier is live" } satisfies StartResult
      }
      const jobs = spec.batches.map((b, batchIndex) => ({
        task: b.task,
        payload: b.payload,
        options: {
          executionId: spec.executionId,
          batchIndex,
          orgId,
          ...(b.queue === undefined ? {} : { queue: b.queue }),
          ...(b.priority === undefined ? {} : { priority: b.priority }),
          ...(b.maxAttempts === undefined ? {} : { maxAttempts: b.maxAttempts })
        } satisfies EnqueueOptions
      }))
      for (let i = 0; i < jobs.length; i += CLEANUP_BATCH) yield* queue.enqueueMany(jobs.slice(i, i + CLEANUP_BATCH))
      const marked = yield* status.mark(spec.executionId, orgId, "EXECUTING")
      if (marked._tag === "Marked" && marked.status !== "EXECUTING") {
        return yield* new BarrierRejected({
          executionId: spec.executionId,
          field: "executionId",
          reason: `is ${marked.status}: a finished execution is final; start a new execution id`
        })
      }
      return { _tag: "Started", executionId: spec.executionId, batches: jobs.length } satisfies StartResult
    }))
  })

  /** The last batch: the callback with every result in batch order, then the barrier row goes. */
  const fireCallback = (executionId: string, orgId: string, descriptor: CallbackDescriptor) =>
    enqueueCallback({ sql, queue, schema: options.schema }, executionId, orgId, descriptor).pipe(
      Effect.andThen(sql`DELETE FROM ${barrierTable} WHERE execution_id = ${executionId}`)
    )

  /**
   * A batch succeeded with `result` (already encoded, JSON-storable): ack it, count it, and fire the
   * callback if it was the last — one transaction.
   */
  /**
   * The common case — not the last batch — without a transaction, and many completions in one statement: one
   * round trip for all the batches a worker finished meanwhile, and the barrier rows are never locked across
   * a round trip to the worker (measured: BEGIN/COMMIT round trips with the row locked serialised the
   * completions of one execution). The statement locks the barrier rows of its executions first (in
   * execution id order, so workers cannot deadlock), then acks, marks and decrements only the completions
   * that cannot finish their execution (fewer than `remaining` of it in this statement), committing
   * asynchronously. The others change nothing here and take the transaction below, one by one.
   */
  const completeMany = (requests: ReadonlyArray<CompleteRequest>) =>
    sql<{ msg_id: string; token: string; fast: boolean; acked: boolean; counted: boolean }>`
      WITH input AS (
        SELECT * FROM unnest(
          ${requests.map((r) => r.attempt.msgId)}::bigint[], ${requests.map((r) => r.attempt.token)}::uuid[],
          ${requests.map((r) => r.attempt.executionId)}::text[], ${requests.map((r) => r.attempt.batchIndex)}::int[],
          ${requests.map((r) => JSON.stringify(r.result ?? null))}::jsonb[]
        ) AS i(msg_id, token, execution_id, batch_index, result)
      ), locked AS (
        SELECT b.execution_id, b.remaining FROM ${barrierTable} AS b
        WHERE b.execution_id IN (SELECT execution_id FROM input)
        ORDER BY b.execution_id FOR UPDATE
      ), eligible AS (
        SELECT r.msg_id FROM (
          SELECT i.msg_id, i.execution_id,
                 row_number() OVER (PARTITION BY i.execution_id ORDER BY i.batch_index) AS rn
          FROM input AS i
        ) AS r JOIN locked AS l ON l.execution_id = r.execution_id
        WHERE r.rn < l.remaining
      ), deleted AS (
        DELETE FROM ${message} AS m
        WHERE m.ctid = ANY(ARRAY(${lockedClaims(sql, message, sql`(
          SELECT msg_id, token FROM input WHERE msg_id IN (SELECT msg_id FROM eligible) ORDER BY msg_id
        ) AS a`)}))
        RETURNING m.msg_id, m.claim_token
      ), acked AS (
        SELECT i.msg_id, i.token, i.execution_id, i.batch_index, i.result
        FROM input AS i JOIN deleted AS d ON d.msg_id = i.msg_id AND d.claim_token = i.token
      ), chosen AS (
        -- Two messages of one batch in one statement (duplicates): one of them counts, the other is a duplicate.
        SELECT DISTINCT ON (execution_id, batch_index) msg_id, token, execution_id, batch_index, result
        FROM acked ORDER BY execution_id, batch_index, msg_id
      ), counted AS (
        INSERT INTO ${markers} (execution_id, batch_index, result)
        SELECT execution_id, batch_index, result FROM chosen
        ON CONFLICT (execution_id, batch_index) DO NOTHING
        RETURNING execution_id, batch_index
      ), decremented AS (
        UPDATE ${barrierTable} AS b SET remaining = b.remaining - c.n, last_progress_at = now()
        FROM (SELECT execution_id, count(*)::int AS n FROM counted GROUP BY execution_id) AS c
        WHERE b.execution_id = c.execution_id
        RETURNING b.execution_id
      )
      SELECT i.msg_id::text AS msg_id, i.token::text AS token,
             i.msg_id IN (SELECT msg_id FROM eligible) AS fast,
             EXISTS (SELECT 1 FROM acked AS a WHERE a.msg_id = i.msg_id AND a.token = i.token) AS acked,
             EXISTS (
               SELECT 1 FROM counted AS c JOIN chosen AS ch USING (execution_id, batch_index)
               WHERE ch.msg_id = i.msg_id AND ch.token = i.token
             ) AS counted,
             (SELECT count(*) FROM decremented) AS decremented,
             set_config('synchronous_commit', 'off', true) AS relaxed
      FROM input AS i`

  /** Completions requested meanwhile (by the worker's concurrent jobs) share one `completeMany`. */
  const resolver = RequestResolver.make<CompleteRequest>((entries) =>
    Effect.gen(function*() {
      const rows = yield* completeMany(entries.map((e) => e.request))
      // Keyed by attempt: a zombie attempt and the current one of the same job may share a statement.
      const byAttempt = new Map(rows.map((r) => [`${r.msg_id}/${r.token}`, r]))
      const slow: Array<Request.Entry<CompleteRequest>> = []
      for (const entry of entries) {
        const row = byAttempt.get(attemptKey(entry.request.attempt))
        if (row === undefined || !row.fast) {
          slow.push(entry)
          continue
        }
        entry.completeUnsafe(Exit.succeed<CompleteResult>(!row.acked ? "stale" : row.counted ? "pending" : "duplicate"))
      }
      yield* Effect.forEach(slow, (entry) =>
        completeLast(entry.request.attempt, entry.request.result).pipe(
          Effect.exit,
          Effect.map((exit) => entry.completeUnsafe(exit))
        ), { discard: true })
    }).pipe(
      Effect.catchCause((cause) =>
        Effect.sync(() => {
          for (const entry of entries) entry.completeUnsafe(Exit.failCause(cause))
        })
      )
    )
  )

  const complete = Effect.fn("Barrier.complete")(function*(attempt: BatchAttempt, result: unknown) {
    return yield* Effect.request(CompleteRequest({ attempt, result }), resolver)
  })

  const completeLast = (attempt: BatchAttempt, result: unknown) =>
    Effect.gen(function*() {
    // The last batch, a barrier that is gone, or one already torn down: the transaction decides.
    return yield* sql.withTransaction(Effect.gen(function*() {
      // One statement: the fenced ack, the marker with the result, the decrement. The
      // transaction commits asynchronously (a crash undoes all three together: the batch is redelivered and
      // counted then). The barrier row's lock serialises the decrements, so exactly one caller sees 0.
      const [row] = yield* sql<{ acked: boolean; counted: boolean; remaining: number | null; org_id: string | null; callback: CallbackDescriptor | null }>`
        WITH acked AS (
          DELETE FROM ${message} AS m
          WHERE m.msg_id = ${attempt.msgId}::bigint AND m.claim_token = ${attempt.token}::uuid AND m.state = 'claimed'
          RETURNING 1
        ), counted AS (
          INSERT INTO ${markers} (execution_id, batch_index, result)
          SELECT ${attempt.executionId}, ${attempt.batchIndex}, ${JSON.stringify(result ?? null)}::jsonb FROM acked
          ON CONFLICT (execution_id, batch_index) DO NOTHING
          RETURNING 1
        ), left_over AS (
          UPDATE ${barrierTable} SET remaining = remaining - 1, last_progress_at = now()
          WHERE execution_id = ${attempt.executionId} AND EXISTS (SELECT 1 FROM counted)
          RETURNING remaining, org_id, callback
        )
        SELECT EXISTS (SELECT 1 FROM acked) AS acked, EXISTS (SELECT 1 FROM counted) AS counted,
               l.remaining, l.org_id, l.callback, set_config('synchronous_commit', 'off', true) AS relaxed
        FROM (SELECT 1) AS one LEFT JOIN left_over AS l ON TRUE`
      if (!row!.acked) return "stale" satisfies CompleteResult
      if (!row!.counted) return "duplicate" satisfies CompleteResult
      if (row!.remaining === null) return "abandoned" satisfies CompleteResult
      if (row!.remaining > 0) return "pending" satisfies CompleteResult
      if (row!.remaining < 0) {
        yield* Effect.logError(
          `barrier ${attempt.executionId}: remaining went below 0 (${row!.remaining}); tearing it down, no callback`
        )
        yield* sql`DELETE FROM ${barrierTable} WHERE execution_id = ${attempt.executionId}`
        return "abandoned" satisfies CompleteResult
      }
      // A new statement, so a new snapshot: every other batch's marker committed before we got the row lock.
      yield* fireCallback(attempt.executionId, row!.org_id ?? "", row!.callback!)
      return "complete" satisfies CompleteResult
    }))
  })

  /**
   * End a live execution through the status port (ERROR for an abort, STOPPED for a stop), holding its barrier
   * row locked meanwhile: a batch completing at that moment waits and then finds no barrier, so an execution
   * ends either with its callback or ended here, never both. Only a confirmed mark deletes the row: when the
   * port cannot be reached the transaction rolls back and the row stays for the reaper. An execution whose
   * barrier is already gone (ended, or its callback fired) is left alone: "already-ended". `unless` names a
   * batch whose being counted already makes this end pointless (a failing duplicate of a counted batch).
   */
  const end = (
    executionId: string,
    orgId: string,
    target: "ERROR" | "STOPPED",
    reason: string,
    unless?: number
  ) =>
    sql.withTransaction(Effect.gen(function*() {
      const [live] = yield* sql`SELECT 1 FROM ${barrierTable} WHERE execution_id = ${executionId} FOR UPDATE`
      if (live === undefined) return "already-ended" satisfies EndResult
      // A statement of its own, so a snapshot taken after the lock: a completion of this batch that held the
      // row while we waited has committed its marker by now (in the locking statement it would be invisible).
      if (unless !== undefined) {
        const [batch] = yield* sql<{ counted: boolean }>`
          SELECT EXISTS (SELECT 1 FROM ${markers} WHERE execution_id = ${executionId} AND batch_index = ${unless}) AS counted`
        if (batch!.counted) return "already-ended" satisfies EndResult
      }
      yield* status.mark(executionId, orgId, target, reason)
      yield* sql`DELETE FROM ${barrierTable} WHERE execution_id = ${executionId}`
      yield* removeJobs(executionId, "unclaimed batches")
      return "ended" satisfies EndResult
    })).pipe(Effect.catchTag("StatusWriteFailed", () => Effect.succeed<EndResult>("unconfirmed")))

  /** A batch failed for good: mark the execution ERROR and tear the barrier down (markers stay). */
  const abort = Effect.fn("Barrier.abort")(function*(
    executionId: string,
    orgId: string,
    batchIndex: number,
    reason: string
  ) {
    return yield* end(executionId, orgId, "ERROR", `[barrier-abort] batch ${batchIndex} failed: ${reason}`, batchIndex)
  })

  /** Cancel: mark STOPPED, remove the batches not started yet; late completions are abandoned. */
  const stop = Effect.fn("Barrier.stop")(function*(executionId: string, orgId?: string) {
    const org = orgId ?? (yield* orgOf(executionId))
    return yield* end(executionId, org, "STOPPED", "stopped by request")
  })

  /** The callback finished: COMPLETED on success, ERROR when it failed for good. */
  const finish = Effect.fn("Barrier.finish")(function*(
    executionId: string,
    orgId: string,
    outcome: { readonly _tag: "Succeeded" } | { readonly _tag: "Failed"; readonly reason: string }
  ) {
    return yield* outcome._tag === "Succeeded"
      ? status.mark(executionId, orgId, "COMPLETED")
      : status.mark(executionId, orgId, "ERROR", `[barrier-callback] the callback failed: ${outcome.reason}`)
  })

  const orgOf = (executionId: string) =>
    sql<{ org_id: string }>`SELECT org_id FROM ${barrierTable} WHERE execution_id = ${executionId}`.pipe(
      Effect.map((rows) => rows[0]?.org_id ?? "")
    )

  return { start, complete, abort, stop, finish }
})

/**
 * Enqueue an execution's callback with every stored result in batch order: `{ executionId, results, context }`
 * on the descriptor's queue, priority and attempts, carrying the org and execution id. The last batch's
 * completion does this; so does the reaper when it heals a stranded barrier whose batches all completed.
 */
export const enqueueCallback = (
  deps: { readonly sql: SqlClient.SqlClient; readonly queue: Queue["Service"]; readonly schema: string },
  executionId: string,
  orgId: string,
  descriptor: CallbackDescriptor
) =>
  Effect.gen(function*() {
    const { queue, sql } = deps
    const [gathered] = yield* sql<{ results: ReadonlyArray<unknown> }>`
      SELECT coalesce(jsonb_agg(coalesce(result, 'null'::jsonb) ORDER BY batch_index), '[]'::jsonb) AS results
      FROM ${sql(`${deps.schema}.barrier_batch`)} WHERE execution_id = ${executionId}`
    return yield* queue.enqueue(descriptor.task, { executionId, results: gathered!.results, context: descriptor.context }, {
      queue: descriptor.queue,
      priority: descriptor.priority,
      orgId,
      executionId,
      ...(descriptor.maxAttempts === undefined ? {} : { maxAttempts: descriptor.maxAttempts })
    })
  })

/** What the barrier row's `callback` column holds: enough to fire the callback again. */
export interface CallbackDescriptor {
  readonly task: string
  readonly context: unknown
  readonly queue: string
  readonly priority: number
  readonly maxAttempts?: number
}

export type BarrierError = BarrierRejected | QueueError | SqlError.SqlError

export class Barrier extends Context.Service<Barrier, Effect.Success<ReturnType<typeof makeBarrier>>>()(
  "effect-pg-queue/Barrier"
) {
  static readonly layer = (options: BarrierOptions) => Layer.effect(Barrier, makeBarrier(options))
}
