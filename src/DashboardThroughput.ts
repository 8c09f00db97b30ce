/**
 * Throughput over the last minutes without a history table: the dashboard samples counts on a schedule and
 * keeps the intervals between samples in memory (a ring; it starts empty when the server starts).
 *
 * An acked job is deleted, so "completed" is derived from a flow balance per queue between two samples:
 *
 *   completed = live before + arrivals − live after − dead-lettered
 *
 * - dead-lettered: dead letters whose `failed_at` falls in the interval (exact, database clock);
 * - arrivals seen: rows whose `msg_id` is above the identity sequence's value at the previous sample (still
 *   queued, or already dead-lettered);
 * - arrivals unseen (enqueued AND completed between two samples): the sequence's advance less every arrival
 *   seen. The sequence is one for all queues, so these are attributed to the queues in proportion to their
 *   arrivals seen (a queue with traffic usually has some of it queued or running at a sample), else to their
 *   running jobs, else to their completions seen, else equally among the queues registered workers serve.
 *   With one busy queue the figure is exact; with several it estimates the split, never the total.
 *
 * Other deletions (`execution stop`, `rerun`) count as completed; a rolled-back enqueue (a gap in the
 * sequence) counts as an unseen arrival. Counts are clamped at zero where a sample races a commit.
 */

/** One queue as a sample saw it. */
export interface QueueSample {
  /** Rows in `message` (ready, scheduled or claimed). */
  readonly live: number
  /** Rows in `message` whose id is above the previous sample's sequence value. */
  readonly arrived: number
  /** Dead letters failed since the previous sample. */
  readonly failed: number
  /** Of those, the ones whose id is above the previous sample's sequence value (they arrived in between). */
  readonly deadArrived: number
  readonly claimed: number
}

export interface Sample {
  /** Database clock, epoch milliseconds. */
  readonly at: number
  /** The database's own `now()`, as text: the next sample's "since" (no precision lost on the way). */
  readonly atText: string
  /** The identity sequence of `message.msg_id`: every id handed out so far. */
  readonly lastId: number
  readonly queues: Readonly<Record<string, QueueSample>>
  /** Queues that registered workers consume (the last resort of the attribution). */
  readonly served: ReadonlyArray<string>
}

export interface QueueFlow {
  readonly completed: number
  readonly failed: number
}

/** What happened between two samples. */
export interface Interval {
  /** End of the interval (database clock, epoch milliseconds). */
  readonly at: number
  readonly seconds: number
  readonly queues: Readonly<Record<string, QueueFlow>>
}

const none: QueueSample = { live: 0, arrived: 0, failed: 0, deadArrived: 0, claimed: 0 }

/** Split `total` by `weights` into integers that add up to `total` (largest remainders). */
export const apportion = (total: number, weights: ReadonlyArray<number>): ReadonlyArray<number> => {
  const sum = weights.reduce((a, b) => a + b, 0)
  if (total <= 0 || sum <= 0) return weights.map(() => 0)
  const exact = weights.map((w) => (total * w) / sum)
  const shares = exact.map(Math.floor)
  const order = exact.map((x, i) => ({ i, rest: x - Math.floor(x) })).sort((a, b) => b.rest - a.rest || a.i - b.i)
  let left = total - shares.reduce((a, b) => a + b, 0)
  const result = [...shares]
  for (const { i } of order) {
    if (left-- <= 0) break
    result[i] = result[i]! + 1
  }
  return result
}

/** The flows between `prev` and `next` (see the module comment). */
export const intervalOf = (prev: Sample, next: Sample): Interval => {
  const names = [...new Set([...Object.keys(prev.queues), ...Object.keys(next.queues), ...next.served])].sort()
  const before = (q: string) => prev.queues[q] ?? none
  const after = (q: string) => next.queues[q] ?? none
  const seen = names.map((q) => {
    const a = after(q)
    return Math.max(0, before(q).live + a.arrived + a.deadArrived - a.live - a.failed)
  })
  const arrivalsSeen = names.reduce((n, q) => n + after(q).arrived + after(q).deadArrived, 0)
  const unseen = Math.max(0, next.lastId - prev.lastId - arrivalsSeen)
  const arrivals = names.map((q) => after(q).arrived + after(q).deadArrived)
  const running = names.map((q) => after(q).claimed)
  const served = names.map((q) => (next.served.length === 0 || next.served.includes(q) ? 1 : 0))
  const weights = [arrivals, running, seen, served].find((w) => w.some((x) => x > 0)) ?? served
  const extra = apportion(unseen, weights)
  const queues = Object.fromEntries(
    names.map((q, i): [string, QueueFlow] => [q, { completed: seen[i]! + extra[i]!, failed: after(q).failed }])
  )
  return { at: next.at, seconds: Math.max(0, (next.at - prev.at) / 1000), queues }
}

/** The ring of intervals and the last sample: a pure value, replaced on every sample. */
export interface History {
  readonly last: Sample | null
  readonly intervals: ReadonlyArray<Interval>
}

export const emptyHistory: History = { last: null, intervals: [] }

/** Add a sample: the first only sets the baseline; the ring keeps the newest `capacity` intervals. */
export const record = (history: History, sample: Sample, capacity: number): History => ({
  last: sample,
  intervals: history.last === null
    ? history.intervals
    : [...history.intervals, intervalOf(history.last, sample)].slice(-capacity)
})
