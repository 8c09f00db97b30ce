/**
 * What the scenarios of `bench/bench.ts` and `bench/supervisor.ts` share: the `pgq_bench` schema and its pre-load,
 * `node dist/worker.js` processes (plain workers and supervisors of `PGQ_PROCESSES` children), the drain timed from
 * their spawn until a condition holds, runs and table rows.
 */
import { Console, Effect, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { migrate } from "../src/Migrations.ts"
import { type JobSpec, Queue } from "../src/Queue.ts"
import {
  cpuSnapshot,
  fmt,
  freePort,
  now,
  pollUntil,
  postgresDelta,
  processCpu,
  range,
  spawnProcess,
  summarize,
  type Summary,
  terminate,
  type WorkerProcess
} from "./support.ts"

export const SCHEMA = "pgq_bench"
export const RUNS = Number(process.env.BENCH_RUNS ?? 3)
export const DRAIN_JOBS = 20_000
/** The drains' poll settings (PGQ_POLL_INTERVAL_MS / PGQ_POLL_MAX_MS). */
export const DRAIN_POLL = { intervalMs: 10, maxMs: 50 }
/** Extra worker environment, e.g. BENCH_WORKER_ENV="PGQ_VT_SECONDS=10,PGQ_PGBOUNCER=true" (applied last). */
const WORKER_ENV: Record<string, string> = Object.fromEntries(
  (process.env.BENCH_WORKER_ENV ?? "").split(",").filter((kv) => kv.includes("=")).map((kv) => {
    const i = kv.indexOf("=")
    return [kv.slice(0, i).trim(), kv.slice(i + 1).trim()]
  })
)

// ---------------------------------------------------------------------------------------------------------------
// Schema per run

export const resetSchema = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`)
  yield* migrate(SCHEMA)
  yield* sql.unsafe(
    `CREATE TABLE "${SCHEMA}".latency (i int PRIMARY KEY, seconds float8 NOT NULL, recorded_at timestamptz NOT NULL DEFAULT clock_timestamp())`
  )
  yield* sql.unsafe(`CREATE TABLE "${SCHEMA}".fanin (execution_id text PRIMARY KEY, results int NOT NULL)`)
})

/** After a bulk load: fresh statistics, and a checkpoint so that one does not land inside the measurement. */
export const settle = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe(`ANALYZE "${SCHEMA}".message, "${SCHEMA}".barrier, "${SCHEMA}".execution`)
  yield* sql.unsafe("CHECKPOINT").pipe(Effect.ignore) // superuser only; harmless without
})

export const countMessages = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [row] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${SCHEMA}.message`)}`
  return row!.n
})

/** What a drain pre-loads: `jobs` jobs, the i-th being `job(i)`, and the workers' extra environment (their tasks). */
export interface Load {
  readonly jobs: number
  readonly job: (i: number) => JobSpec
  readonly env?: Readonly<Record<string, string>>
}

export const noopJob = (i: number): JobSpec => ({ task: "noop", payload: { i } })
export const noopJobs = (n: number, offset = 0): ReadonlyArray<JobSpec> => range(n).map((i) => noopJob(offset + i))
export const noopLoad: Load = { jobs: DRAIN_JOBS, job: noopJob }

export const preload = ({ job, jobs }: Load) =>
  Effect.gen(function*() {
    const queue = yield* Queue
    yield* Effect.forEach(range(Math.ceil(jobs / 5_000)), (b) =>
      queue.enqueueMany(range(Math.min(5_000, jobs - b * 5_000)).map((i) => job(b * 5_000 + i))), { discard: true })
    yield* settle
  })

// ---------------------------------------------------------------------------------------------------------------
// Worker processes

/**
 * A fleet: `processes` × `node dist/worker.js`, each a plain worker of `concurrency` slots (`forks` 1) or a
 * supervisor of `forks` such worker processes (`PGQ_PROCESSES`).
 */
export interface DrainConfig {
  readonly processes: number
  readonly forks: number
  readonly concurrency: number
  /** PGQ_PREFETCH: "auto" (the library's default) unless the fleet says `p<n>`. */
  readonly prefetch: number | "auto"
}

/** A fleet of plain workers: processes × concurrency [p prefetch, default auto], e.g. 1x10, 2x10, 1x10p0, 1x50p50. */
export const parseFleet = (variable: string, c: string): DrainConfig => {
  const [, processes, concurrency, prefetch] = /^(\d+)x(\d+)(?:p(\d+))?$/.exec(c.trim()) ?? []
  if (processes === undefined || concurrency === undefined) throw new Error(`${variable}: cannot parse ${JSON.stringify(c)}`)
  return { processes: Number(processes), forks: 1, concurrency: Number(concurrency), prefetch: prefetch === undefined ? "auto" : Number(prefetch) }
}

/** "2×10", "supervisor 2×10" (one worker.js at PGQ_PROCESSES=2), ", prefetch 30" (nothing for auto). */
export const fleetLabel = ({ concurrency, forks, prefetch, processes }: DrainConfig) =>
  (forks === 1 ? `${processes}×${concurrency}` : `${processes === 1 ? "" : `${processes} × `}supervisor ${forks}×${concurrency}`) +
  (prefetch === "auto" ? "" : `, prefetch ${prefetch}`)

/**
 * `node dist/worker.js` with the given settings; terminated when the scope closes. Started at its "started" line,
 * or with `forks` > 1 (a supervisor) at the line it logs once every child has said Ready (its poll loop runs).
 */
export const spawnWorker = (databaseUrl: string, env: Readonly<Record<string, string>>, forks = 1) =>
  Effect.flatMap(freePort, (healthPort) =>
    spawnProcess({
      args: ["dist/worker.js"],
      readyLine: forks === 1 ? "started: queues=" : "worker processes ready in",
      healthPort,
      env: {
        DATABASE_URL: databaseUrl,
        PGQ_SCHEMA: SCHEMA,
        PGQ_TASKS: "./dist/demo/tasks.js",
        PGQ_LOG_FORMAT: "json",
        PGQ_AUTO_MIGRATE: "false",
        PGQ_HEALTH_PORT: String(healthPort),
        PGQ_SHUTDOWN_GRACE_SECONDS: "5",
        PGQ_PROCESSES: String(forks),
        ...env,
        ...WORKER_ENV
      }
    }))

/**
 * A few numbers from the worker's Prometheus endpoint (claim round trips as the worker saw them). A supervisor's
 * sums only the children's job counters: its claims are NaN.
 */
const scrapeMetrics = (port: number) =>
  Effect.tryPromise(async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).pipe(
    Effect.map((text) => {
      const value = (name: string) => {
        const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"))
        return line === undefined ? Number.NaN : Number(line.slice(line.lastIndexOf(" ") + 1))
      }
      const claims = value("pgq_claim_latency_seconds_count")
      return {
        processed: value("pgq_jobs_processed_total"),
        claims,
        meanClaimMs: (value("pgq_claim_latency_seconds_sum") / claims) * 1000
      }
    }),
    Effect.orElseSucceed(() => ({ processed: Number.NaN, claims: Number.NaN, meanClaimMs: Number.NaN }))
  )

/** The part of a supervisor's /health the bench reads: its live children (README "Running N processes"). */
const FleetHealth = Schema.Struct({
  alive_children: Schema.Number,
  slots: Schema.Array(Schema.Struct({ pid: Schema.NullOr(Schema.Number), restarts: Schema.Number }))
})

/**
 * The pids whose CPU a process of the fleet spent: its own, and a supervisor's children from its /health. A
 * supervisor that lost or re-forked a child during the drain ends the run, as a plain worker's exit does.
 */
const fleetPids = (worker: WorkerProcess, forks: number) =>
  Effect.gen(function*() {
    const own = worker.child.pid === undefined ? [] : [worker.child.pid]
    if (forks === 1) return own
    const body = yield* Effect.tryPromise(async () => (await fetch(`http://127.0.0.1:${worker.healthPort}/health`)).json())
    const health = yield* Schema.decodeUnknownEffect(FleetHealth)(body)
    const restarts = health.slots.reduce((a, s) => a + s.restarts, 0)
    if (health.alive_children !== forks || restarts > 0) {
      return yield* Effect.die(new Error(`the supervisor lost a child during the drain: ${JSON.stringify(health)}`))
    }
    return [...own, ...health.slots.flatMap((s) => (s.pid === null ? [] : [s.pid]))]
  }).pipe(Effect.orDie)

// ---------------------------------------------------------------------------------------------------------------
// Timed drains

export interface DrainRun {
  readonly jobsPerSecond: number
  readonly seconds: number
  /** From spawn until the last worker logged "started" (a supervisor: all its children ready). */
  readonly startupSeconds: number
  /** Jobs/s counted from the last "started" log line (excludes Node start-up and connecting). */
  readonly jobsPerSecondAfterStart: number
  /** NaN for a supervisor (its /metrics has no claim latencies). */
  readonly meanClaimMs: number
  readonly claims: number
  readonly exitCodes: ReadonlyArray<number | null>
  /** CPU seconds spent during the drain window (spawn -> empty), and the machine's busy share. */
  readonly cpu: {
    /** Every worker process, a supervisor and its children included. */
    readonly workers: number
    /** The same by process: each worker.js, a supervisor followed by its children. */
    readonly byProcess: ReadonlyArray<number>
    readonly postgres: number
    readonly bench: number
    readonly machineBusy: number
    readonly machineBusyPercent: number
  }
}

/**
 * The clock starts, `config`'s worker processes are spawned, and it stops when `done` holds (polled every
 * 50 ms): `items` per second from spawn and from the last worker's "started" line, claims, CPU.
 */
export const timedDrain = <E, R>(
  databaseUrl: string,
  { concurrency, forks, prefetch, processes }: DrainConfig,
  options: {
    readonly items: number
    readonly done: Effect.Effect<boolean, E, R>
    readonly what: string
    readonly env?: Readonly<Record<string, string>>
  }
) =>
  Effect.scoped(Effect.gen(function*() {
    const cpu0 = yield* cpuSnapshot
    const t0 = yield* now
    const workers = yield* Effect.forEach(range(processes), () =>
      spawnWorker(databaseUrl, {
        PGQ_CONCURRENCY: String(concurrency),
        PGQ_PREFETCH: String(prefetch),
        PGQ_POLL_INTERVAL_MS: String(DRAIN_POLL.intervalMs),
        PGQ_POLL_MAX_MS: String(DRAIN_POLL.maxMs),
        ...options.env
      }, forks))
    // A worker that dies (a task module that does not load, a crash) ends the run now, not at the timeout.
    const died = Effect.raceAll(workers.map((w) => w.exited.pipe(Effect.map((exit) => ({ exit, w }))))).pipe(
      Effect.flatMap(({ exit, w }) =>
        Effect.die(new Error(`a worker exited during the drain (${JSON.stringify(exit)}):\n${w.output()}`))
      )
    )
    yield* Effect.raceFirst(pollUntil(options.done, "180 seconds", options.what), died)
    const t1 = yield* now
    const cpu1 = yield* cpuSnapshot
    const pids = (yield* Effect.forEach(workers, (w) => fleetPids(w, forks))).flat()
    const byProcess = pids.map((pid) => processCpu(pid).seconds)
    const startedAt = Math.max(...(yield* Effect.forEach(workers, (w) => w.started)))
    const metrics = yield* Effect.forEach(workers, (w) => scrapeMetrics(w.healthPort))
    const exits = yield* Effect.forEach(workers, terminate, { concurrency: "unbounded" })
    const claims = metrics.reduce((a, m) => a + m.claims, 0)
    const run: DrainRun = {
      jobsPerSecond: options.items / ((t1 - t0) / 1000),
      seconds: (t1 - t0) / 1000,
      startupSeconds: (startedAt - t0) / 1000,
      jobsPerSecondAfterStart: options.items / ((t1 - startedAt) / 1000),
      meanClaimMs: metrics.reduce((a, m) => a + m.meanClaimMs * m.claims, 0) / claims,
      claims,
      exitCodes: exits.map((e) => e.code),
      cpu: {
        workers: byProcess.reduce((a, b) => a + b, 0),
        byProcess,
        postgres: postgresDelta(cpu0, cpu1),
        bench: cpu1.bench - cpu0.bench,
        machineBusy: cpu1.machine.busy - cpu0.machine.busy,
        machineBusyPercent: (100 * (cpu1.machine.busy - cpu0.machine.busy)) / (cpu1.machine.total - cpu0.machine.total)
      }
    }
    return run
  }))

/** Pre-loaded jobs (20,000 no-ops unless told) drained by real worker processes; from spawn until the table is empty. */
export const drain = (databaseUrl: string, config: DrainConfig, load: Load = noopLoad) =>
  Effect.gen(function*() {
    yield* resetSchema
    yield* preload(load)
    return yield* timedDrain(databaseUrl, config, {
      items: load.jobs,
      done: countMessages.pipe(Effect.map((n) => n === 0)),
      what: "the queue to drain",
      ...(load.env === undefined ? {} : { env: load.env })
    })
  })

const byProcess = (r: DrainRun) =>
  r.cpu.byProcess.length > 1 ? ` (${r.cpu.byProcess.map((s) => s.toFixed(2)).join(" + ")})` : ""

export const showDrain = (r: DrainRun, unit: string) =>
  `${fmt(r.jobsPerSecond)} ${unit}/s (${r.seconds.toFixed(2)} s; start-up ${r.startupSeconds.toFixed(2)} s, ` +
  `${fmt(r.jobsPerSecondAfterStart)} ${unit}/s after start; ${fmt(r.claims)} claims, mean claim ${fmt(r.meanClaimMs)} ms; ` +
  `exit ${r.exitCodes.join(",")}; cpu s: workers ${r.cpu.workers.toFixed(2)}${byProcess(r)}, postgres ${r.cpu.postgres.toFixed(2)}, ` +
  `bench ${r.cpu.bench.toFixed(2)}, machine busy ${r.cpu.machineBusyPercent.toFixed(0)}%)`

// ---------------------------------------------------------------------------------------------------------------
// Runs and rows

export interface Row {
  readonly scenario: string
  readonly unit: string
  readonly summary: Summary
}

/** A drain's two rows: jobs/s from spawn, and from the last worker's start. */
export const drainRows = (scenario: string, runs: ReadonlyArray<DrainRun>): Array<Row> => [
  { scenario, unit: "jobs/s", summary: summarize(runs.map((r) => r.jobsPerSecond)) },
  { scenario: `  …after worker start-up`, unit: "jobs/s", summary: summarize(runs.map((r) => r.jobsPerSecondAfterStart)) }
]

export const repeatRuns = <A, E, R>(label: string, run: Effect.Effect<A, E, R>, show: (a: A) => string) =>
  Effect.forEach(range(RUNS), (i) =>
    run.pipe(Effect.tap((a) => Console.log(`  ${label} run ${i + 1}/${RUNS}: ${show(a)}`))))
