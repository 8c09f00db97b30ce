/**
 * How many jobs a worker claims beyond its free slots. A prefetched job waits in this process while other
 * workers may be idle, so a fixed buffer is a trade: throughput for short jobs, unfairness (and a stranded
 * wait) for long ones. `auto` sizes it from the pace this process actually has: the jobs its slots will
 * start within `HORIZON_MS`, from the mean handler time so far. Long jobs get none (a 1 s job at
 * concurrency 10 starts 0.5 jobs per 50 ms), no-op jobs get `MAX_AUTO`; until a job has finished, none.
 */

/** A prefetched job should start within about this long at the recent pace. */
export const HORIZON_MS = 50

/**
 * The most `auto` holds ahead: about what one process starts within `HORIZON_MS` when its jobs take no time at
 * all (~20,000 no-op jobs/s on 2 cores). Measured against 500, in paired real-process drains of 20,000
 * no-op jobs: 1 x 10 +12 %, 2 x 10 within the noise.
 */
export const MAX_AUTO = 1000

/** Weight of the newest handler time in the running mean. */
const WEIGHT = 0.1

export interface Prefetch {
  /** Jobs to hold beyond the slots now. */
  readonly ahead: () => number
  /** A handler ran for `ms`. */
  readonly record: (ms: number) => void
}

export const makePrefetch = (setting: number | "auto", concurrency: number): Prefetch => {
  if (setting !== "auto") return { ahead: () => setting, record: () => {} }
  let meanMs: number | undefined
  return {
    ahead: () =>
      meanMs === undefined ? 0 : Math.min(MAX_AUTO, Math.floor((HORIZON_MS * concurrency) / Math.max(meanMs, 0.01))),
    record: (ms) => {
      meanMs = meanMs === undefined ? ms : meanMs + WEIGHT * (ms - meanMs)
    }
  }
}
