/**
 * Scenarios 7 and 8 of `npm run bench`: the prefork supervisor (`PGQ_PROCESSES`, src/Supervisor.ts).
 *
 *   7. supervisor   20,000 pre-loaded no-op jobs drained by ONE `node dist/worker.js` at PGQ_PROCESSES=2 and by TWO
 *                   plain `node dist/worker.js` (10 slots per worker process either way), the drain's clock
 *                   -> jobs/s of each, and the ratio supervisor / two workers
 *   8. cpu          2,000 pre-loaded `bench.cpu` jobs (a fixed ~5 ms of SHA-256 each, bench/tasks.ts) drained by one
 *                   `node dist/worker.js` at PGQ_PROCESSES=1 and at PGQ_PROCESSES=2 (10 slots per process)
 *                   -> jobs/s of each, and the speed-up 2 ÷ 1
 *
 * Both run as harness.ts's `drain` (fresh schema, pre-load, clock from spawn until `message` is empty). A
 * supervisor has started when it logs that all its children are Ready (each child says so once its worker's poll
 * loop runs); its CPU counts its children (pids from its /health). Run i of one fleet follows run i of the other,
 * and each ratio row is the median of those paired ratios.
 *
 * BENCH_CPU_MS (5) sets the work per job, calibrated once in this process; BENCH_CPU_ROUNDS fixes the SHA-256
 * rounds per job instead (to compare runs on one machine).
 */
import { Console, Effect } from "effect"
import {
  drain,
  DRAIN_JOBS,
  type DrainConfig,
  type DrainRun,
  drainRows,
  fleetLabel,
  type Load,
  noopLoad,
  type Row,
  RUNS,
  showDrain
} from "./harness.ts"
import { fmt, range, summarize } from "./support.ts"
import { roundsFor } from "./tasks.ts"

const SUPERVISOR: DrainConfig = { processes: 1, forks: 2, concurrency: 10, prefetch: "auto" }
const TWO_WORKERS: DrainConfig = { processes: 2, forks: 1, concurrency: 10, prefetch: "auto" }
const ONE_PROCESS: DrainConfig = { processes: 1, forks: 1, concurrency: 10, prefetch: "auto" }
const CPU_JOBS = 2_000
const CPU_MS = Number(process.env.BENCH_CPU_MS ?? 5)

export const supervisorParameters = {
  supervisorFleets: { supervisor: SUPERVISOR, twoWorkers: TWO_WORKERS },
  cpuFleets: { one: ONE_PROCESS, two: SUPERVISOR },
  cpuJobs: CPU_JOBS,
  cpuMs: CPU_MS
}

export interface ScenarioResult {
  readonly rows: ReadonlyArray<Row>
  readonly details: Readonly<Record<string, unknown>>
}

/** Run i of `first`, then run i of `second`, RUNS times, each on a fresh schema loaded with `load`. */
const pairedRuns = (databaseUrl: string, label: string, first: DrainConfig, second: DrainConfig, load: Load) =>
  Effect.forEach(range(RUNS), (i) =>
    Effect.forEach([first, second], (fleet) =>
      drain(databaseUrl, fleet, load).pipe(
        Effect.tap((run) => Console.log(`  ${label} ${fleetLabel(fleet)} run ${i + 1}/${RUNS}: ${showDrain(run, "jobs")}`))
      )).pipe(Effect.map(([a, b]) => [a!, b!] as const)))

/** `second` ÷ `first` per pair, from spawn and after start-up. */
const ratioRows = (scenario: string, pairs: ReadonlyArray<readonly [DrainRun, DrainRun]>): Array<Row> => [
  { scenario, unit: "ratio", summary: summarize(pairs.map(([a, b]) => b.jobsPerSecond / a.jobsPerSecond)) },
  {
    scenario: `  …after worker start-up`,
    unit: "ratio",
    summary: summarize(pairs.map(([a, b]) => b.jobsPerSecondAfterStart / a.jobsPerSecondAfterStart))
  }
]

const startupRow = (runs: ReadonlyArray<DrainRun>): Row => ({
  scenario: `  start-up (spawn → polling)`,
  unit: "s",
  summary: summarize(runs.map((r) => r.startupSeconds))
})

/** 7. One worker.js supervising 2 × 10 next to two plain worker.js × 10, on 20,000 no-op jobs. */
export const supervisorDrain = (databaseUrl: string) =>
  Effect.gen(function*() {
    yield* Console.log(
      `7. supervisor: ${DRAIN_JOBS} no-op jobs, ${fleetLabel(TWO_WORKERS)} (two worker.js) then ${fleetLabel(SUPERVISOR)} (one worker.js, PGQ_PROCESSES=2)`
    )
    const pairs = yield* pairedRuns(databaseUrl, "drain", TWO_WORKERS, SUPERVISOR, noopLoad)
    const [two, supervised] = [pairs.map(([a]) => a), pairs.map(([, b]) => b)]
    const rows: ReadonlyArray<Row> = [
      ...drainRows(`drain two worker.js ${fleetLabel(TWO_WORKERS)} (${DRAIN_JOBS} no-op)`, two),
      startupRow(two),
      ...drainRows(`drain one worker.js, PGQ_PROCESSES=2, ${fleetLabel(SUPERVISOR)}`, supervised),
      startupRow(supervised),
      ...ratioRows(`  supervisor / two worker.js`, pairs)
    ]
    return { rows, details: { supervisorTwoWorkers: two, supervisor: supervised } } satisfies ScenarioResult
  })

/** The CPU-bound jobs: `rounds` SHA-256 rounds each, calibrated here unless BENCH_CPU_ROUNDS says. */
const cpuLoad = (rounds: number): Load => ({
  jobs: CPU_JOBS,
  job: (i) => ({ task: "bench.cpu", payload: { i, rounds } }),
  env: { PGQ_TASKS: "./bench/tasks.ts" }
})

/** 8. `bench.cpu` jobs drained by one worker.js at PGQ_PROCESSES=1 and at PGQ_PROCESSES=2: the speed-up 2 ÷ 1. */
export const cpuBound = (databaseUrl: string) =>
  Effect.gen(function*() {
    const rounds = process.env.BENCH_CPU_ROUNDS === undefined
      ? yield* Effect.sync(() => roundsFor(CPU_MS))
      : Number(process.env.BENCH_CPU_ROUNDS)
    yield* Console.log(
      `8. cpu: ${CPU_JOBS} bench.cpu jobs (${rounds} SHA-256 rounds of 16 KiB, ~${CPU_MS} ms each here: one process ≤ ~${
        fmt(1000 / CPU_MS)
      } jobs/s), one worker.js at PGQ_PROCESSES=1 then 2, 10 slots per process`
    )
    const pairs = yield* pairedRuns(databaseUrl, "cpu", ONE_PROCESS, SUPERVISOR, cpuLoad(rounds))
    const [one, two] = [pairs.map(([a]) => a), pairs.map(([, b]) => b)]
    const label = `${CPU_JOBS} × ~${CPU_MS} ms CPU`
    const rows: ReadonlyArray<Row> = [
      ...drainRows(`cpu PGQ_PROCESSES=1, ${fleetLabel(ONE_PROCESS)} (${label})`, one),
      ...drainRows(`cpu PGQ_PROCESSES=2, ${fleetLabel(SUPERVISOR)} (${label})`, two),
      ...ratioRows(`  speed-up PGQ_PROCESSES 2 ÷ 1`, pairs)
    ]
    return { rows, details: { cpu: { rounds, one, two } } } satisfies ScenarioResult
  })
