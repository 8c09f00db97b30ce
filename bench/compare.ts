/**
 * `npm run bench -- --peers`: effect-pg-queue, pg-boss and graphile-worker through the same scenarios, on the same
 * server, in the same run, each at its defaults and at its best documented settings (ours: the settings we
 * recommend), reported as ratios ours / best peer profile. The peers are pinned in bench/peers/package.json and
 * installed there (`npm ci --prefix bench/peers`) when missing; they are never dependencies of the library.
 *
 *   single   5,000 jobs from 8 concurrent callers, one job per call of the public enqueue API   -> jobs/s
 *   bulk     50,000 jobs, one caller, the batch API in batches of 500                           -> jobs/s
 *   drain    20,000 pre-loaded no-op jobs, 1 × 10 and 2 × 10 (processes × concurrency): the worker processes are
 *            started and connected before the clock, held at a start gate (the bench holds an EXCLUSIVE lock
 *            on the peer's job table, so every claim waits), and the clock runs from the gate's release until
 *            no job is left                                                                      -> jobs/s
 *            (start-up, spawn -> ready, is reported on its own row)
 *   latency  50 jobs/s for 20 s (+2 s warm-up, not counted), 1 × 10; each task records, on the server clock,
 *            clock_timestamp() at handler start minus its job row's enqueue time                  -> p50/p95/p99 ms
 *   rescue   a worker (concurrency 50) holding 50 hour-long jobs is SIGKILLed; a fresh worker started before the
 *            kill takes them over; seconds from the kill until all 50 have started again there (server clock),
 *            bounded by BENCH_RESCUE_LIMIT_SECONDS (30): a profile that does not rescue within it is run once
 *
 * Every run: fresh schemas (the runtime's own and the `pgq_bench_rec` record tables), ANALYZE after bulk loads, a
 * CHECKPOINT before the timed part. Runs are interleaved (run 1 of every profile, then run 2, …) and each row
 * shows the median of BENCH_RUNS (3). Results: bench/results/peers-<timestamp>.json and peers-latest.json;
 * `--readme` also rewrites the table in README.md and keeps the result as bench/peers/last-run.json
 * (bench/readme-table.ts does the same from a saved JSON).
 *
 * BENCH_ONLY=single,bulk,drain,latency,rescue picks scenarios; BENCH_PROFILES=ours,ours-recommended,pg-boss,
 * pg-boss-best,graphile-worker,graphile-worker-best picks profiles; BENCH_FLEETS=1x10,2x10 the drain fleets;
 * BENCH_RECOMMENDED=PGQ_PREFETCH=1000 our recommended settings (for a fleet of short jobs only).
 */
import { Console, Deferred, Duration, Effect, Fiber, Layer, Redacted, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import * as Database from "../src/Database.ts"
import { migrate } from "../src/Migrations.ts"
import { Queue } from "../src/Queue.ts"
import { type BenchTask, isPeerModule, type PeerClient, type PeerModule } from "./peers/driver.ts"
import { type ComparisonResult, rewriteReadme, type RowResult, type RuntimeInfo, toJson } from "./ratios.ts"
import {
  cpuSnapshot,
  environmentOf,
  fmt,
  freePort,
  gitState,
  now,
  percentile,
  pollUntil,
  postgresDelta,
  processCpu,
  type ProcessSpec,
  range,
  resolveTarget,
  root,
  sorted,
  spawnProcess,
  summarize,
  type Summary,
  type Target,
  terminate,
  type WorkerProcess
} from "./support.ts"

const OURS_SCHEMA = "pgq_bench"
const RECORD = "pgq_bench_rec"
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const SCENARIOS = ["single", "bulk", "drain", "latency", "rescue"] as const
type Scenario = (typeof SCENARIOS)[number]
const ONLY: ReadonlySet<string> = new Set(
  (process.env.BENCH_ONLY ?? SCENARIOS.join(",")).split(",").map((s) => s.trim())
)
const SINGLE_JOBS = 5_000
const SINGLE_CALLERS = 8
const BULK_JOBS = 50_000
const BULK_BATCH = 500
const DRAIN_JOBS = 20_000
const DRAIN_CONCURRENCY = 10
/** A drain that has not finished by then is stopped and reported as a partial rate (pg-boss's defaults poll every 2 s per slot). */
const DRAIN_LIMIT_SECONDS = Number(process.env.BENCH_DRAIN_LIMIT_SECONDS ?? 20)
const FLEETS: ReadonlyArray<number> = (process.env.BENCH_FLEETS ?? "1x10,2x10").split(",").map((f) => {
  const [, processes, concurrency] = /^(\d+)x(\d+)$/.exec(f.trim()) ?? []
  if (processes === undefined || Number(concurrency) !== DRAIN_CONCURRENCY) {
    throw new Error(`BENCH_FLEETS: ${JSON.stringify(f)} is not <processes>x${DRAIN_CONCURRENCY}`)
  }
  return Number(processes)
})
const LATENCY_RATE = 50
const LATENCY_SECONDS = 20
const LATENCY_WARMUP_SECONDS = 2
const RESCUE_JOBS = 50
const RESCUE_LIMIT_SECONDS = Number(process.env.BENCH_RESCUE_LIMIT_SECONDS ?? 30)
/** The settings we recommend (README: PGQ_PREFETCH at 2–3 × PGQ_CONCURRENCY for many short jobs). */
const RECOMMENDED: Record<string, string> = Object.fromEntries(
  (process.env.BENCH_RECOMMENDED ?? "PGQ_PREFETCH=1000").split(",").filter((kv) => kv.includes("=")).map((kv) => {
    const i = kv.indexOf("=")
    return [kv.slice(0, i).trim(), kv.slice(i + 1).trim()]
  })
)
const PEERS_DIR = join(root, "bench", "peers")

// ---------------------------------------------------------------------------------------------------------------
// Runtimes: ours and the peers behind one shape

type Needs = SqlClient.SqlClient | Queue

interface Runtime {
  /** e.g. "pg-boss-best"; BENCH_PROFILES names these. */
  readonly id: string
  readonly library: string
  readonly version: string
  readonly profile: string
  readonly ours: boolean
  readonly settings: (task: BenchTask) => string
  readonly reset: Effect.Effect<void, unknown, Needs>
  readonly send: (task: BenchTask, i: number) => Effect.Effect<void, unknown, Needs>
  readonly sendMany: (task: BenchTask, from: number, count: number) => Effect.Effect<void, unknown, Needs>
  readonly pending: (task: BenchTask) => Effect.Effect<number, unknown, Needs>
  readonly analyze: Effect.Effect<void, unknown, Needs>
  readonly gateTables: ReadonlyArray<string>
  readonly worker: (task: BenchTask, concurrency: number) => Effect.Effect<ProcessSpec>
  readonly drop: Effect.Effect<void, unknown, Needs>
}

const oursTask: Record<BenchTask, string> = { noop: "noop", latency: "bench.latency", long: "bench.long" }

const oursRuntime = (url: string, profile: "defaults" | "recommended"): Runtime => {
  const env: Record<string, string> = profile === "defaults" ? {} : RECOMMENDED
  const version = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version
  return {
    id: profile === "defaults" ? "ours" : "ours-recommended",
    library: "effect-pg-queue",
    version: `${version} (${gitState().commit}${gitState().dirty ? ", uncommitted changes" : ""})`,
    profile,
    ours: true,
    settings: () => Object.entries(env).map(([k, v]) => `${k}=${v}`).join(" ") || "(defaults)",
    reset: Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${OURS_SCHEMA}" CASCADE`)
      yield* migrate(OURS_SCHEMA)
    }),
    send: (task, i) => Queue.use((queue) => queue.enqueue(oursTask[task], { i })).pipe(Effect.asVoid),
    sendMany: (task, from, count) =>
      Queue.use((queue) => queue.enqueueMany(range(count).map((k) => ({ task: oursTask[task], payload: { i: from + k } }))))
        .pipe(Effect.asVoid),
    pending: (task) =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ n: number }>`
          SELECT count(*)::int AS n FROM ${sql(`${OURS_SCHEMA}.message`)} WHERE task = ${oursTask[task]}`
        return row!.n
      }),
    analyze: SqlClient.SqlClient.use((sql) => sql.unsafe(`ANALYZE "${OURS_SCHEMA}".message`)).pipe(Effect.asVoid),
    gateTables: [`"${OURS_SCHEMA}".message`],
    drop: SqlClient.SqlClient.use((sql) => sql.unsafe(`DROP SCHEMA IF EXISTS "${OURS_SCHEMA}" CASCADE`)).pipe(Effect.asVoid),
    worker: (_task, concurrency) =>
      Effect.map(freePort, (healthPort) => ({
        args: ["dist/worker.js"],
        readyLine: "started: queues=",
        healthPort,
        env: {
          DATABASE_URL: url,
          PGQ_SCHEMA: OURS_SCHEMA,
          PGQ_TASKS: "./bench/tasks.ts",
          PGQ_AUTO_MIGRATE: "false",
          PGQ_HEALTH_PORT: String(healthPort),
          PGQ_SHUTDOWN_GRACE_SECONDS: "5",
          PGQ_CONCURRENCY: String(concurrency),
          BENCH_RECORD_SCHEMA: RECORD,
          ...env
        }
      }))
  }
}

const peerRuntime = (module: PeerModule, profile: string, client: PeerClient): Runtime => {
  const call = <A>(f: () => Promise<A>) => Effect.promise(f)
  return {
    id: profile === "defaults" ? module.name : `${module.name}-${profile}`,
    library: module.name,
    version: module.version,
    profile,
    ours: false,
    settings: client.settings,
    reset: call(client.reset),
    send: (task, i) => call(() => client.send(task, i)),
    sendMany: (task, from, count) => call(() => client.sendMany(task, from, count)),
    pending: (task) => call(() => client.pending(task)),
    analyze: call(client.analyze),
    gateTables: client.gateTables(),
    worker: (task, concurrency) => Effect.succeed(client.worker(task, concurrency)),
    drop: call(client.drop)
  }
}

/** Installs bench/peers/node_modules from its lock when a pinned version is missing. */
const ensurePeersInstalled = Effect.sync(() => {
  const manifest: { dependencies: Record<string, string> } = JSON.parse(readFileSync(join(PEERS_DIR, "package.json"), "utf8"))
  const installed = (name: string) => {
    const file = join(PEERS_DIR, "node_modules", name, "package.json")
    return existsSync(file) ? JSON.parse(readFileSync(file, "utf8")).version : undefined
  }
  const missing = Object.entries(manifest.dependencies).filter(([name, version]) => installed(name) !== version)
  if (missing.length > 0) {
    console.log(`installing the peers (${missing.map(([n, v]) => `${n}@${v}`).join(", ")}): npm ci --prefix bench/peers`)
    execFileSync("npm", ["ci", "--prefix", PEERS_DIR, "--no-audit", "--no-fund"], { stdio: "inherit" })
  }
})

const loadPeer = (file: string) =>
  Effect.promise((): Promise<unknown> => import(join(PEERS_DIR, file))).pipe(
    Effect.flatMap((module) =>
      isPeerModule(module) ? Effect.succeed(module) : Effect.die(new Error(`bench/peers/${file} is not a peer module`))
    )
  )

const peerRuntimes = (url: string, module: PeerModule) =>
  Effect.forEach(module.profiles, (profile) =>
    Effect.acquireRelease(
      Effect.promise(() =>
        module.make({ url, profile, schema: `pgq_bench_${module.name.replace(/\W/g, "")}_${profile}`, recordSchema: RECORD })
      ),
      (client) => Effect.promise(client.close)
    ).pipe(Effect.map((client) => peerRuntime(module, profile, client))))

// ---------------------------------------------------------------------------------------------------------------
// Shared steps

const resetRecords = SqlClient.SqlClient.use((sql) =>
  Effect.gen(function*() {
    yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${RECORD}" CASCADE`)
    yield* sql.unsafe(`CREATE SCHEMA "${RECORD}"`)
    yield* sql.unsafe(`CREATE TABLE "${RECORD}".latency (i int PRIMARY KEY, seconds float8 NOT NULL)`)
    yield* sql.unsafe(
      `CREATE TABLE "${RECORD}".started (i int NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`
    )
  })
)

const fresh = (rt: Runtime) => Effect.andThen(resetRecords, rt.reset)

/** So that a checkpoint does not land inside the measurement. */
const checkpoint = SqlClient.SqlClient.use((sql) => sql.unsafe("CHECKPOINT")).pipe(Effect.ignore)

const startWorker = (rt: Runtime, task: BenchTask, concurrency: number) =>
  Effect.flatMap(rt.worker(task, concurrency), spawnProcess)

/** A worker that exits during a measurement ends the run at once, with its output. */
const anyExit = (workers: ReadonlyArray<WorkerProcess>) =>
  Effect.raceAll(workers.map((w) => w.exited.pipe(Effect.map((exit) => ({ exit, w }))))).pipe(
    Effect.flatMap(({ exit, w }) => Effect.die(new Error(`a worker exited (${JSON.stringify(exit)}):\n${w.output()}`)))
  )

const kill = (worker: WorkerProcess) =>
  Effect.gen(function*() {
    if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill("SIGKILL")
    yield* worker.exited
  })

// ---------------------------------------------------------------------------------------------------------------
// Scenarios

const single = (rt: Runtime) =>
  Effect.gen(function*() {
    yield* fresh(rt)
    // Warm-up: one pooled connection per caller.
    yield* Effect.forEach(range(SINGLE_CALLERS), (c) => rt.send("noop", -1 - c), { concurrency: SINGLE_CALLERS })
    const perCaller = SINGLE_JOBS / SINGLE_CALLERS
    const [elapsed] = yield* Effect.forEach(
      range(SINGLE_CALLERS),
      (c) => Effect.forEach(range(perCaller), (i) => rt.send("noop", c * perCaller + i), { discard: true }),
      { concurrency: SINGLE_CALLERS, discard: true }
    ).pipe(Effect.timed)
    return SINGLE_JOBS / Duration.toSeconds(elapsed)
  })

const bulk = (rt: Runtime) =>
  Effect.gen(function*() {
    yield* fresh(rt)
    yield* rt.sendMany("noop", -10, 10) // warm-up: connection and statement
    const [elapsed] = yield* Effect.forEach(range(BULK_JOBS / BULK_BATCH), (b) => rt.sendMany("noop", b * BULK_BATCH, BULK_BATCH), {
      discard: true
    }).pipe(Effect.timed)
    return BULK_JOBS / Duration.toSeconds(elapsed)
  })

/**
 * The start gate: an EXCLUSIVE lock on the runtime's job tables, held in an open transaction on one of the
 * bench's connections until `open`. Claims (row locks, updates, deletes) wait behind it; counting does not.
 */
const holdGate = (tables: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const locked = yield* Deferred.make<void>()
    const release = yield* Deferred.make<void>()
    const fiber = yield* sql.withTransaction(Effect.gen(function*() {
      yield* sql.unsafe(`LOCK TABLE ${tables.join(", ")} IN EXCLUSIVE MODE`)
      yield* Deferred.succeed(locked, undefined)
      yield* Deferred.await(release)
    })).pipe(Effect.forkScoped)
    yield* Deferred.await(locked)
    return Deferred.succeed(release, undefined).pipe(Effect.andThen(Fiber.join(fiber)))
  })

/** Sessions waiting for a relation lock: the gated workers' claims. */
const gateWaiters = SqlClient.SqlClient.use((sql) =>
  sql<{ n: number }>`SELECT count(DISTINCT pid)::int AS n FROM pg_locks WHERE NOT granted AND locktype = 'relation'`
).pipe(Effect.map(([row]) => row!.n))

interface DrainRun {
  readonly jobsPerSecond: number
  readonly seconds: number
  /** Stopped at BENCH_DRAIN_LIMIT_SECONDS: the rate counts the jobs done by then. */
  readonly partial: boolean
  readonly done: number
  /** Spawn -> the last worker's ready line (module loading, connecting). */
  readonly startupSeconds: number
  /** Sessions waiting at the gate when it opened. */
  readonly waiting: number
  readonly cpu: { readonly workers: number; readonly postgres: number; readonly machineBusyPercent: number }
}

const drain = (rt: Runtime, processes: number) =>
  Effect.scoped(Effect.gen(function*() {
    yield* fresh(rt)
    yield* Effect.forEach(range(DRAIN_JOBS / 5_000), (b) => rt.sendMany("noop", b * 5_000, 5_000), { discard: true })
    yield* rt.analyze
    yield* checkpoint
    const open = yield* holdGate(rt.gateTables)
    const spawnedAt = yield* now
    const workers = yield* Effect.forEach(range(processes), () => startWorker(rt, "noop", DRAIN_CONCURRENCY))
    const ready = yield* Effect.forEach(workers, (w) => w.started)
    // Each process's first claim is waiting at the gate (or 5 s have passed).
    yield* pollUntil(Effect.map(gateWaiters, (n) => n >= processes), "5 seconds", "the workers to reach the gate", "20 millis")
      .pipe(Effect.catchDefect(() => Effect.void))
    const waiting = yield* gateWaiters
    const cpu0 = yield* cpuSnapshot
    const workerCpu0 = workers.map((w) => processCpu(w.child.pid ?? 0).seconds)
    const t0 = yield* now
    yield* open
    const left = yield* Effect.raceFirst(
      rt.pending("noop").pipe(
        Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (n) => n === 0 }),
        Effect.timeoutOption(Duration.seconds(DRAIN_LIMIT_SECONDS)),
        Effect.flatMap((o) => (o._tag === "Some" ? Effect.succeed(0) : rt.pending("noop")))
      ),
      anyExit(workers)
    )
    const t1 = yield* now
    const cpu1 = yield* cpuSnapshot
    const workerCpu = workers.reduce((a, w, k) => a + processCpu(w.child.pid ?? 0).seconds - workerCpu0[k]!, 0)
    yield* Effect.forEach(workers, terminate, { concurrency: "unbounded", discard: true })
    const seconds = (t1 - t0) / 1000
    const run: DrainRun = {
      jobsPerSecond: (DRAIN_JOBS - left) / seconds,
      seconds,
      partial: left > 0,
      done: DRAIN_JOBS - left,
      startupSeconds: (Math.max(...ready) - spawnedAt) / 1000,
      waiting,
      cpu: {
        workers: workerCpu,
        postgres: postgresDelta(cpu0, cpu1),
        machineBusyPercent: (100 * (cpu1.machine.busy - cpu0.machine.busy)) / (cpu1.machine.total - cpu0.machine.total)
      }
    }
    return run
  }))

interface LatencyRun {
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
  readonly samples: number
  /** Counted jobs that had not started LATENCY_GRACE_SECONDS after the last enqueue (their latency is +Infinity). */
  readonly notStarted: number
}

/** How long after the last enqueue the latency scenario waits for stragglers (a runtime that falls behind the rate). */
const LATENCY_GRACE_SECONDS = 10

const latency = (rt: Runtime) =>
  Effect.scoped(Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* fresh(rt)
    const worker = yield* startWorker(rt, "latency", 10)
    yield* worker.started
    const total = LATENCY_RATE * (LATENCY_WARMUP_SECONDS + LATENCY_SECONDS)
    const warmup = LATENCY_RATE * LATENCY_WARMUP_SECONDS
    const everyMs = 1000 / LATENCY_RATE
    const t0 = yield* now
    // Open loop: job i is enqueued at t0 + i × 20 ms, whatever the worker does.
    const load = Effect.forEach(range(total), (i) =>
      Effect.gen(function*() {
        const wait = t0 + i * everyMs - (yield* now)
        if (wait > 0) yield* Effect.sleep(Duration.millis(wait))
        yield* rt.send("latency", i)
      }), { discard: true })
    const recorded = sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${RECORD}.latency`)}`.pipe(
      Effect.map(([r]) => r!.n >= total)
    )
    const stragglers = pollUntil(recorded, Duration.seconds(LATENCY_GRACE_SECONDS), "every latency job to start").pipe(
      Effect.catchDefect(() => Effect.void)
    )
    yield* Effect.raceFirst(load.pipe(Effect.andThen(stragglers)), anyExit([worker]))
    yield* kill(worker)
    const rows = yield* sql<{ seconds: number }>`SELECT seconds FROM ${sql(`${RECORD}.latency`)} WHERE i >= ${warmup}`
    const counted = total - warmup
    const ms = sorted([
      ...rows.map((r) => r.seconds * 1000),
      ...range(counted - rows.length).map(() => Number.POSITIVE_INFINITY)
    ])
    const run: LatencyRun = {
      p50: percentile(ms, 50),
      p95: percentile(ms, 95),
      p99: percentile(ms, 99),
      max: ms[ms.length - 1] ?? Number.NaN,
      samples: rows.length,
      notStarted: counted - rows.length
    }
    return run
  }))

interface RescueRun {
  /** Kill -> the 50th start on the fresh worker, server clock; Infinity when not within the limit. */
  readonly seconds: number
  readonly rescued: number
  /** Spawn -> ready of the fresh worker. */
  readonly startupSeconds: number
}

const startedOn = (pid: number) =>
  SqlClient.SqlClient.use((sql) =>
    sql<{ n: number; last: number | null }>`
      SELECT count(DISTINCT i)::int AS n, extract(epoch FROM max(at))::float8 AS last
      FROM ${sql(`${RECORD}.started`)} WHERE pid = ${pid}`
  ).pipe(Effect.map(([row]) => row!))

/**
 * How long the doomed worker holds its jobs before the kill, by run: spread over the phases of pg-boss's heartbeat
 * refresh (every heartbeatSeconds / 2 = 5 s) and ours (every 2 s), since a kill just after a refresh is rescued
 * later than one just before.
 */
const RESCUE_HOLD_SECONDS = [1, 4.3, 7.6]

const rescue = (rt: Runtime, index: number) =>
  Effect.scoped(Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* fresh(rt)
    const doomed = yield* startWorker(rt, "long", RESCUE_JOBS)
    yield* doomed.started
    yield* rt.sendMany("long", 0, RESCUE_JOBS)
    const doomedPid = doomed.child.pid ?? 0
    yield* Effect.raceFirst(
      pollUntil(Effect.map(startedOn(doomedPid), (s) => s.n === RESCUE_JOBS), "30 seconds", `all ${RESCUE_JOBS} long jobs to start`),
      anyExit([doomed])
    )
    const spawnedAt = yield* now // all 50 are running on the doomed worker
    const rescuer = yield* startWorker(rt, "long", RESCUE_JOBS)
    const readyAt = yield* rescuer.started
    const freshPid = rescuer.child.pid ?? 0
    const hold = RESCUE_HOLD_SECONDS[index % RESCUE_HOLD_SECONDS.length]!
    const heldFor = (yield* now) - spawnedAt
    if (hold * 1000 > heldFor) yield* Effect.sleep(Duration.millis(hold * 1000 - heldFor))
    const [killedAt] = yield* sql<{ at: number }>`SELECT extract(epoch FROM clock_timestamp())::float8 AS at`
    yield* kill(doomed)
    const done = yield* pollUntil(
      Effect.map(startedOn(freshPid), (s) => s.n === RESCUE_JOBS),
      Duration.seconds(RESCUE_LIMIT_SECONDS),
      "the rescue",
      "20 millis"
    ).pipe(Effect.as(true), Effect.catchDefect(() => Effect.succeed(false)))
    const after = yield* startedOn(freshPid)
    yield* kill(rescuer)
    const run: RescueRun = {
      seconds: done && after.last !== null ? after.last - killedAt!.at : Number.POSITIVE_INFINITY,
      rescued: after.n,
      startupSeconds: (readyAt - spawnedAt) / 1000
    }
    return run
  }))

// ---------------------------------------------------------------------------------------------------------------
// Running, rows, ratios

/** Run i of every runtime, then run i + 1: neighbours in time. `once` ends a runtime's runs early. */
const interleaved = <A>(
  label: string,
  runtimes: ReadonlyArray<Runtime>,
  run: (rt: Runtime, i: number) => Effect.Effect<A, unknown, Needs>,
  show: (a: A) => string,
  once: (a: A) => boolean = () => false
) =>
  Effect.gen(function*() {
    const results = new Map<string, Array<A>>(runtimes.map((rt) => [rt.id, []]))
    for (const i of range(RUNS)) {
      for (const rt of runtimes) {
        const previous = results.get(rt.id)!
        if (previous.length > 0 && once(previous[0]!)) continue
        const a = yield* run(rt, i)
        previous.push(a)
        yield* Console.log(`  ${label} ${rt.id} run ${i + 1}/${RUNS}: ${show(a)}`)
      }
    }
    return results
  })

const summaries = <A>(results: Map<string, Array<A>>, pick: (a: A) => number): Record<string, Summary> =>
  Object.fromEntries([...results].map(([id, runs]) => [id, summarize(runs.map(pick))]))

const row = (
  key: string,
  label: string,
  unit: string,
  better: "higher" | "lower",
  values: Record<string, Summary>,
  runtimes: ReadonlyArray<Runtime>,
  target = true,
  notes: Record<string, string> = {}
): RowResult => {
  const peers = runtimes.filter((rt) => !rt.ours && values[rt.id] !== undefined)
  const score = (x: number) => (better === "higher" ? x : -x)
  const best = peers.reduce<Runtime | undefined>(
    (b, rt) => (b === undefined || score(values[rt.id]!.median) > score(values[b.id]!.median) ? rt : b),
    undefined
  )
  const ratio = (id: string) => {
    const ours = values[id]?.median
    const peer = best === undefined ? undefined : values[best.id]!.median
    if (ours === undefined || peer === undefined) return null
    return better === "higher" ? ours / peer : peer / ours
  }
  return {
    key,
    label,
    unit,
    better,
    target,
    values,
    bestPeer: best?.id ?? null,
    ratios: Object.fromEntries(runtimes.filter((rt) => rt.ours).map((rt) => [rt.id, ratio(rt.id)])),
    notes
  }
}

const showCell = (row: RowResult, s: Summary | undefined) =>
  s === undefined
    ? "-"
    : !Number.isFinite(s.median)
    ? row.key === "rescue" ? `> ${RESCUE_LIMIT_SECONDS} s` : "fell behind"
    : fmt(s.median)

const showRatio = (r: number | null | undefined) =>
  r === null || r === undefined ? "-" : Number.isFinite(r) ? r.toFixed(2) : "∞"

const renderText = (rows: ReadonlyArray<RowResult>, runtimes: ReadonlyArray<Runtime>) => {
  const ours = runtimes.filter((rt) => rt.ours)
  const header = ["row", "unit", ...runtimes.map((rt) => rt.id), "best peer", ...ours.map((rt) => `${rt.id} ÷ best`)]
  const body = rows.map((r) => [
    r.label,
    r.unit,
    ...runtimes.map((rt) => showCell(r, r.values[rt.id])),
    r.bestPeer ?? "-",
    ...ours.map((rt) => showRatio(r.ratios[rt.id]))
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n")
}

const showDrain = (r: DrainRun) =>
  `${fmt(r.jobsPerSecond)} jobs/s${r.partial ? ` (PARTIAL: ${r.done} done in ${r.seconds.toFixed(1)} s)` : ` (${r.seconds.toFixed(2)} s)`}; ` +
  `start-up ${r.startupSeconds.toFixed(2)} s, ${r.waiting} waiting at the gate; cpu s: workers ${r.cpu.workers.toFixed(2)}, ` +
  `postgres ${r.cpu.postgres.toFixed(2)}, machine busy ${r.cpu.machineBusyPercent.toFixed(0)}%`

// ---------------------------------------------------------------------------------------------------------------
// Main

/** The bench's own connections (8 callers, the gate, counting) and our Queue for enqueueing. */
const benchLayer = (url: string) =>
  Queue.layer({ schema: OURS_SCHEMA, maxAttempts: 5, notify: true }).pipe(
    Layer.provideMerge(
      Database.layer({ url: Redacted.make(url), maxConnections: SINGLE_CALLERS + 4, applicationName: "pgq-bench" })
    )
  )

const body = (target: Target, runtimes: ReadonlyArray<Runtime>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [info] = yield* sql<{ version: string; synchronous_commit: string; fsync: string; shared_buffers: string }>`
      SELECT version() AS version, current_setting('synchronous_commit') AS synchronous_commit,
             current_setting('fsync') AS fsync, current_setting('shared_buffers') AS shared_buffers`
    const rows: Array<RowResult> = []
    const details: Record<string, unknown> = {}
    const has = (s: Scenario) => ONLY.has(s)

    if (has("single")) {
      yield* Console.log(`single enqueue: ${SINGLE_JOBS} jobs from ${SINGLE_CALLERS} concurrent callers`)
      const results = yield* interleaved("single", runtimes, (rt) => single(rt), (r) => `${fmt(r)} jobs/s`)
      details.single = Object.fromEntries(results)
      rows.push(row("single", `single enqueue, ${SINGLE_CALLERS} concurrent callers`, "jobs/s", "higher", summaries(results, (r) => r), runtimes))
    }
    if (has("bulk")) {
      yield* Console.log(`bulk enqueue: ${BULK_JOBS} jobs in batches of ${BULK_BATCH}`)
      const results = yield* interleaved("bulk", runtimes, (rt) => bulk(rt), (r) => `${fmt(r)} jobs/s`)
      details.bulk = Object.fromEntries(results)
      rows.push(row("bulk", `bulk enqueue, batches of ${BULK_BATCH}`, "jobs/s", "higher", summaries(results, (r) => r), runtimes))
    }
    if (has("drain")) {
      for (const processes of FLEETS) {
        yield* Console.log(
          `drain: ${DRAIN_JOBS} no-op jobs, ${processes} × ${DRAIN_CONCURRENCY}, workers started before the clock (limit ${DRAIN_LIMIT_SECONDS} s)`
        )
        const results = yield* interleaved(`drain ${processes}×${DRAIN_CONCURRENCY}`, runtimes, (rt) => drain(rt, processes), showDrain)
        details[`drain${processes}x${DRAIN_CONCURRENCY}`] = Object.fromEntries(results)
        rows.push(row(
          `drain${processes}x${DRAIN_CONCURRENCY}`,
          `drain ${DRAIN_JOBS.toLocaleString("en-US")} no-op, ${processes} × ${DRAIN_CONCURRENCY}`,
          "jobs/s",
          "higher",
          summaries(results, (r) => r.jobsPerSecond),
          runtimes,
          true,
          Object.fromEntries(
            [...results].filter(([, runs]) => runs.some((r) => r.partial)).map((
              [id, runs]
            ) => [id, `stopped at ${DRAIN_LIMIT_SECONDS} s, ${Math.min(...runs.map((r) => r.done))}–${Math.max(...runs.map((r) => r.done))} done`])
          )
        ))
        if (processes === FLEETS[0]) {
          rows.push(row(
            "startup",
            `worker start-up, spawn to ready (${processes} × ${DRAIN_CONCURRENCY})`,
            "s",
            "lower",
            summaries(results, (r) => r.startupSeconds),
            runtimes,
            false
          ))
        }
      }
    }
    if (has("latency")) {
      yield* Console.log(
        `latency: ${LATENCY_RATE} jobs/s for ${LATENCY_SECONDS} s (+${LATENCY_WARMUP_SECONDS} s warm-up), 1 × 10`
      )
      const results = yield* interleaved(
        "latency",
        runtimes,
        (rt) => latency(rt),
        (r) =>
          `p50 ${fmt(r.p50)} ms, p95 ${fmt(r.p95)} ms, p99 ${fmt(r.p99)} ms, max ${fmt(r.max)} ms (${r.samples} samples` +
          `${r.notStarted > 0 ? `; ${r.notStarted} not started ${LATENCY_GRACE_SECONDS} s after the last enqueue: fell behind` : ""})`
      )
      details.latency = Object.fromEntries(results)
      for (const p of ["p50", "p95", "p99"] as const) {
        rows.push(row(`latency${p}`, `enqueue-to-start ${p}, 50 jobs/s`, "ms", "lower", summaries(results, (r) => r[p]), runtimes))
      }
    }
    if (has("rescue")) {
      yield* Console.log(
        `rescue: SIGKILL of a worker holding ${RESCUE_JOBS} long jobs, until all run again on a fresh worker (limit ${RESCUE_LIMIT_SECONDS} s)`
      )
      const results = yield* interleaved(
        "rescue",
        runtimes,
        rescue,
        (r) =>
          Number.isFinite(r.seconds)
            ? `${r.seconds.toFixed(2)} s (fresh worker start-up ${r.startupSeconds.toFixed(2)} s)`
            : `not rescued within ${RESCUE_LIMIT_SECONDS} s (${r.rescued}/${RESCUE_JOBS} started again); not repeated`,
        (r) => !Number.isFinite(r.seconds)
      )
      details.rescue = Object.fromEntries(results)
      rows.push(row("rescue", `rescue after SIGKILL, ${RESCUE_JOBS} jobs`, "s", "lower", summaries(results, (r) => r.seconds), runtimes))
    }

    yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${RECORD}" CASCADE`)
    yield* Effect.forEach(runtimes, (rt) => rt.drop, { discard: true })
    const table = renderText(rows, runtimes)
    yield* Console.log(`\nratio = ours ÷ best peer profile, oriented so that > 1 means effect-pg-queue is ahead\n${table}\n`)
    const result: ComparisonResult = {
      mode: "peers",
      startedAt: "",
      finishedAt: new Date().toISOString(),
      environment: environmentOf(target.source, info!),
      parameters: {
        runs: RUNS,
        singleJobs: SINGLE_JOBS,
        singleCallers: SINGLE_CALLERS,
        bulkJobs: BULK_JOBS,
        bulkBatch: BULK_BATCH,
        drainJobs: DRAIN_JOBS,
        drainFleets: FLEETS.map((p) => `${p}x${DRAIN_CONCURRENCY}`),
        drainLimitSeconds: DRAIN_LIMIT_SECONDS,
        latencyRate: LATENCY_RATE,
        latencySeconds: LATENCY_SECONDS,
        latencyWarmupSeconds: LATENCY_WARMUP_SECONDS,
        rescueJobs: RESCUE_JOBS,
        rescueLimitSeconds: RESCUE_LIMIT_SECONDS
      },
      runtimes: runtimes.map((rt): RuntimeInfo => ({
        id: rt.id,
        library: rt.library,
        version: rt.version,
        profile: rt.profile,
        ours: rt.ours,
        settings: Object.fromEntries((["noop", "latency", "long"] as const).map((t) => [t, rt.settings(t)]))
      })),
      rows,
      details,
      table
    }
    return result
  })

const write = (result: ComparisonResult, startedAt: Date) =>
  Effect.sync(() => {
    const dir = join(root, "bench", "results")
    mkdirSync(dir, { recursive: true })
    const file = join(dir, `peers-${startedAt.toISOString().replace(/[:.]/g, "-")}.json`)
    const json = toJson({ ...result, startedAt: startedAt.toISOString() })
    writeFileSync(file, json)
    writeFileSync(join(dir, "peers-latest.json"), json)
    return file
  })

export const comparePeers = Effect.gen(function*() {
  const startedAt = new Date()
  yield* ensurePeersInstalled
  const target: Target = yield* resolveTarget
  const modules = yield* Effect.forEach(["pgboss.mjs", "graphile.mjs"], loadPeer)
  const all: ReadonlyArray<Runtime> = [
    oursRuntime(target.url, "defaults"),
    oursRuntime(target.url, "recommended"),
    ...(yield* Effect.forEach(modules, (m) => peerRuntimes(target.url, m))).flat()
  ]
  const wanted = process.env.BENCH_PROFILES?.split(",").map((s) => s.trim())
  const runtimes = wanted === undefined ? all : all.filter((rt) => wanted.includes(rt.id))
  yield* Console.log(
    `bench --peers: ${target.source}, ${RUNS} runs per scenario; ` +
      runtimes.map((rt) => `${rt.id} (${rt.library} ${rt.version})`).join(", ")
  )
  const result = yield* body(target, runtimes).pipe(Effect.provide(benchLayer(target.url)))
  const file = yield* write(result, startedAt)
  yield* Console.log(`results: ${file} (and bench/results/peers-latest.json)`)
  if (process.argv.includes("--readme")) {
    yield* Effect.sync(() => rewriteReadme(join(root, "README.md"), { ...result, startedAt: startedAt.toISOString() }))
    yield* Console.log("README.md: benchmark table rewritten")
  }
}).pipe(Effect.scoped)
