/**
 * Gauges only the leader publishes, refreshed on their own cadence (not every tick) and zeroed when it steps
 * down, so a scrape of a standby never shows stale numbers:
 *
 * - `pgq_queue_depth{queue}`: ready jobs per queue, and `pgq_queue_oldest_age_seconds{queue}`: how long ago
 *   the queue's first ready job (lowest msg_id) was enqueued. One GROUP BY over the claim index, plus one
 *   primary-key look-up per queue;
 * - `pgq_barrier_live` (barriers still waiting, `remaining > 0`) and `pgq_barrier_stranded` (the recovery's
 *   stranded predicate): one pass over the barrier table, which holds only live executions.
 *
 * A queue that has no ready job any more reads 0 (a gauge cannot be removed from the registry).
 */
import { Effect, Metric, Ref } from "effect"
import { SqlClient } from "effect/sql"
import { boundedBy } from "./MaintenanceJob.ts"

export const QueueGauges = {
  barrierLive: Metric.gauge("pgq_barrier_live", { description: "Barriers still waiting for batches (remaining > 0)" }),
  barrierStranded: Metric.gauge("pgq_barrier_stranded", {
    description: "Barriers past their expiry or without progress for the stuck timeout (the reaper recovers them)"
  }),
  /** Tagged `queue`. */
  queueDepth: Metric.gauge("pgq_queue_depth", { description: "Ready jobs, by queue" }),
  /** Tagged `queue`. */
  queueOldestAge: Metric.gauge("pgq_queue_oldest_age_seconds", {
    description: "Seconds since the oldest ready job of the queue was enqueued"
  })
}

export interface QueueGaugesOptions {
  readonly schema: string
  readonly stuckTimeoutSeconds: number
  readonly statementTimeoutMs?: number | undefined
}

export interface GaugeSnapshot {
  readonly barrierLive: number
  readonly barrierStranded: number
  readonly queues: ReadonlyArray<{ readonly queue: string; readonly depth: number; readonly oldestSeconds: number }>
}

const ofQueue = (queue: string) => ({
  depth: Metric.withAttributes(QueueGauges.queueDepth, { queue }),
  oldest: Metric.withAttributes(QueueGauges.queueOldestAge, { queue })
})

const setQueue = (queue: string, depth: number, oldestSeconds: number) =>
  Effect.all([Metric.update(ofQueue(queue).depth, depth), Metric.update(ofQueue(queue).oldest, oldestSeconds)], {
    discard: true
  })

export const makeQueueGauges = Effect.fnUntraced(function*(options: QueueGaugesOptions) {
  const sql = yield* SqlClient.SqlClient
  const bounded = boundedBy(options.statementTimeoutMs)
  const t = (name: string) => sql(`${options.schema}.${name}`)
  /** Queues this process has published, so the ones that emptied (or all, on step-down) are zeroed. */
  const published = yield* Ref.make<ReadonlySet<string>>(new Set())

  const queues = bounded(sql<{ queue: string; depth: number; oldest: number }>`
    WITH q AS (
      SELECT queue, count(*)::int AS depth, min(msg_id) AS first FROM ${t("message")}
      WHERE state = 'ready' GROUP BY queue
    )
    SELECT q.queue, q.depth, greatest(0, coalesce(extract(epoch FROM now() - m.enqueued_at), 0))::float8 AS oldest
    FROM q LEFT JOIN ${t("message")} AS m ON m.msg_id = q.first`)

  const barriers = bounded(sql<{ live: number; stranded: number }>`
    SELECT count(*) FILTER (WHERE remaining > 0)::int AS live,
           count(*) FILTER (WHERE expires_at < now()
                              OR last_progress_at < now() - ${options.stuckTimeoutSeconds} * interval '1 second')::int AS stranded
    FROM ${t("barrier")}`).pipe(Effect.map((rows) => rows[0]!))

  const refresh = Effect.gen(function*() {
    const rows = yield* queues
    const counts = yield* barriers
    const current = new Set(rows.map((r) => r.queue))
    const emptied = [...(yield* Ref.get(published))].filter((queue) => !current.has(queue))
    yield* Effect.forEach(rows, (r) => setQueue(r.queue, r.depth, r.oldest), { discard: true })
    yield* Effect.forEach(emptied, (queue) => setQueue(queue, 0, 0), { discard: true })
    yield* Ref.set(published, current)
    yield* Metric.update(QueueGauges.barrierLive, counts.live)
    yield* Metric.update(QueueGauges.barrierStranded, counts.stranded)
    return {
      barrierLive: counts.live,
      barrierStranded: counts.stranded,
      queues: rows.map((r) => ({ queue: r.queue, depth: r.depth, oldestSeconds: r.oldest }))
    } satisfies GaugeSnapshot
  })

  /** Zero everything this process published (a step-down). */
  const clear = Effect.gen(function*() {
    const queues = yield* Ref.getAndSet(published, new Set())
    yield* Effect.forEach(queues, (queue) => setQueue(queue, 0, 0), { discard: true })
    yield* Metric.update(QueueGauges.barrierLive, 0)
    yield* Metric.update(QueueGauges.barrierStranded, 0)
  })

  return { name: "queue gauges", refresh, clear }
})
