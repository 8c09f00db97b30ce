/**
 * The reaper's retention sweeps, on their own cadence (they need not run every tick): dead letters past
 * their retention, batch markers of executions that have no barrier any more (their results were gathered
 * into the callback, or the execution ended without one), and finished executions in the `execution` table
 * (only with the SQL status store; an HTTP store keeps statuses elsewhere).
 *
 * Each sweep is bounded (batches of deletes under the leader fence, see MaintenanceJob) and independent: one
 * failing is logged with its table's consecutive-failure streak ("retention sweep of <table> failed (<n>
 * consecutive)") and counted, and the others still run; a clean run resets its streak.
 *
 * Neither `barrier_batch.created_at` nor `execution.updated_at` is indexed, so the sweeps do not order their
 * batches: a sequential scan stops at the first batch of matches instead of sorting every old row.
 */
import { Effect, Ref } from "effect"
import { SqlClient, type Statement } from "effect/sql"
import { type BatchBounds, boundedBy, inBatches } from "./MaintenanceJob.ts"
import { MAINTENANCE_BATCH, Queue } from "./Queue.ts"

export interface RetentionOptions {
  readonly schema: string
  readonly deadLetterRetentionSeconds: number
  /** Markers of executions without a barrier row are kept this long after their creation. */
  readonly markerRetentionSeconds: number
  /** Finished executions are kept this long after their last update; undefined: the table is not swept. */
  readonly executionRetentionSeconds?: number | undefined
  /** Client-side bound of each statement (PGQ_STATEMENT_TIMEOUT_MS). */
  readonly statementTimeoutMs?: number | undefined
  readonly bounds?: BatchBounds | undefined
}

export type SweptTable = "dead_letter" | "barrier_batch" | "execution"

/** Rows deleted per table; `failed` names the tables whose sweep failed (counted as 0). */
export interface SweepOutcome {
  readonly deadLetters: number
  readonly markers: number
  readonly executions: number
  readonly failed: ReadonlyArray<SweptTable>
}

export const makeRetentionSweep = Effect.fnUntraced(function*(options: RetentionOptions) {
  const sql = yield* SqlClient.SqlClient
  const queue = yield* Queue
  const bounded = boundedBy(options.statementTimeoutMs)
  const limit = options.bounds?.batchSize ?? MAINTENANCE_BATCH
  const t = (name: string) => sql(`${options.schema}.${name}`)
  const streaks = yield* Ref.make<ReadonlyMap<SweptTable, number>>(new Map())
  const ago = (seconds: number) => sql`now() - ${seconds} * interval '1 second'`

  const count = (statement: Statement.Statement<{ n: number }>) =>
    bounded(statement).pipe(Effect.map((rows) => rows[0]!.n))

  const markerBatch = (fence: Statement.Fragment) =>
    count(sql<{ n: number }>`
      WITH batch AS (
        SELECT b.ctid FROM ${t("barrier_batch")} AS b
        WHERE b.created_at < ${ago(options.markerRetentionSeconds)}
          AND NOT EXISTS (SELECT 1 FROM ${t("barrier")} AS r WHERE r.execution_id = b.execution_id)
          AND ${fence}
        LIMIT ${limit} FOR UPDATE OF b SKIP LOCKED
      ), swept AS (
        DELETE FROM ${t("barrier_batch")} AS m WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM batch)) RETURNING 1
      )
      SELECT count(*)::int AS n FROM swept`)

  const executionBatch = (retentionSeconds: number, fence: Statement.Fragment) =>
    count(sql<{ n: number }>`
      WITH batch AS (
        SELECT e.ctid FROM ${t("execution")} AS e
        WHERE e.status IN ('COMPLETED', 'ERROR', 'STOPPED') AND e.updated_at < ${ago(retentionSeconds)}
          AND NOT EXISTS (SELECT 1 FROM ${t("barrier")} AS r WHERE r.execution_id = e.execution_id)
          AND ${fence}
        LIMIT ${limit} FOR UPDATE OF e SKIP LOCKED
      ), swept AS (
        DELETE FROM ${t("execution")} AS x WHERE x.ctid = ANY(ARRAY(SELECT ctid FROM batch)) RETURNING 1
      )
      SELECT count(*)::int AS n FROM swept`)

  /** One table's sweep: its rows deleted, or its failure logged with the table's streak. */
  const sweep = <E>(table: SweptTable, batch: Effect.Effect<number, E>) =>
    inBatches(batch, options.bounds).pipe(
      Effect.tap(() => Ref.update(streaks, (m) => new Map(m).set(table, 0))),
      Effect.map((n) => ({ n, failed: [] as ReadonlyArray<SweptTable> })),
      Effect.catchCause((cause) =>
        Ref.modify(streaks, (m): [number, ReadonlyMap<SweptTable, number>] => {
          const streak = (m.get(table) ?? 0) + 1
          return [streak, new Map(m).set(table, streak)]
        }).pipe(
          Effect.flatMap((streak) => Effect.logWarning(`retention sweep of ${table} failed (${streak} consecutive)`, cause)),
          Effect.as({ n: 0, failed: [table] })
        )
      )
    )

  /** Every sweep once, each bounded and fenced; never fails. */
  const run = Effect.fn("RetentionSweep.run")(function*(term: { readonly fence: Statement.Fragment }) {
    const deadLetters = yield* sweep(
      "dead_letter",
      queue.sweepDeadLetters(options.deadLetterRetentionSeconds, { fence: term.fence, limit })
    )
    const markers = yield* sweep("barrier_batch", markerBatch(term.fence))
    const retention = options.executionRetentionSeconds
    const executions = retention === undefined
      ? { n: 0, failed: [] }
      : yield* sweep("execution", executionBatch(retention, term.fence))
    return {
      deadLetters: deadLetters.n,
      markers: markers.n,
      executions: executions.n,
      failed: [...deadLetters.failed, ...markers.failed, ...executions.failed]
    } satisfies SweepOutcome
  })

  return { name: "retention sweep", run }
})
