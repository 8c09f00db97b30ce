/**
 * `node bench/startup.ts` (after `npm run build`): how long a worker process takes from spawn to its first
 * poll, and how much memory it holds once idle; for `node dist/worker.js` on its own, for a child forked by the
 * supervisor (PGQ_PROCESSES=2) and for the supervisor itself. Each row is the median (min..max) of
 * STARTUP_RUNS (5) runs, after one warm-up run of that row that is not counted.
 *
 * - first poll: spawn → the worker's "started" log line, written right after its poll loop is forked (its first
 *   claim goes out then). For the supervised children: their fork → the later of their Ready messages, as
 *   the supervisor logs it ("2 of 2 worker processes ready in N ms"); for the supervisor: spawn → that line.
 * - first job: spawn → the handler of a job enqueued before the spawn has run (its debug log line).
 * - CPU: user + system time of the process at its first poll (from /proc; 10 ms ticks). The machine is
 *   shared: wall times move with its load, CPU time much less.
 * - RSS and PSS after STARTUP_IDLE_SECONDS (5) of idling (from /proc). RSS counts the pages of the node
 *   binary every Node process shares (about 45 MB of it); PSS divides shared pages among their users.
 *
 * Also timed in-process: the schema check of auto-migrate on a current schema (Migrations.migrate), next to a
 * `SELECT 1` on the same pool.
 *
 * Environment: STARTUP_DATABASE_URL, else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres;
 * schema pgq_startup (dropped and migrated). STARTUP_ROOT: the checkout whose dist/ is measured (default this
 * one; point it at a built checkout of an older commit for a before/after). STARTUP_TASKS: the task module
 * (default ./dist/demo/tasks.js, which imports effect and our Task and Barrier modules). STARTUP_ONLY: rows by
 * name (single,cold,nocache,health,semispace,fleet,reaper,cli).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Console, Deferred, Duration, Effect, Layer, Option, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import * as Database from "../src/Database.ts"
import { migrate } from "../src/Migrations.ts"
import { Queue } from "../src/Queue.ts"

const SCHEMA = "pgq_startup"
const RUNS = Number(process.env.STARTUP_RUNS ?? 5)
const IDLE = Duration.seconds(Number(process.env.STARTUP_IDLE_SECONDS ?? 5))
const DATABASE_URL = process.env.STARTUP_DATABASE_URL ?? process.env.DATABASE_URL ??
  "postgres://postgres@127.0.0.1:5432/postgres"
const ROOT = resolve(process.env.STARTUP_ROOT ?? new URL("..", import.meta.url).pathname)
const TASKS = process.env.STARTUP_TASKS ?? "./dist/demo/tasks.js"
const ONLY = new Set((process.env.STARTUP_ONLY ?? "single,cold,nocache,health,semispace,fleet,reaper,cli").split(","))

// --- /proc readings (Linux; NaN elsewhere) -----------------------------------------------------------------

const readOr = (path: string) => Effect.sync(() => readFileSync(path, "utf8")).pipe(Effect.orElseSucceed(() => ""))

/** User + system CPU milliseconds of a process (clock ticks of 10 ms). */
const cpuMs = (pid: number) =>
  readOr(`/proc/${pid}/stat`).pipe(Effect.map((stat) => {
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10
  }))

const kbField = (text: string, field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)?.[1]) / 1024

interface Memory {
  readonly rssMb: number
  readonly pssMb: number
}

const memory = (pid: number): Effect.Effect<Memory> =>
  Effect.all([readOr(`/proc/${pid}/status`), readOr(`/proc/${pid}/smaps_rollup`)]).pipe(
    Effect.map(([status, smaps]) => ({ rssMb: kbField(status, "VmRSS"), pssMb: kbField(smaps, "Pss") }))
  )

const childPids = (pid: number) =>
  readOr(`/proc/${pid}/task/${pid}/children`).pipe(
    Effect.map((text) => text.split(/\s+/).filter((s) => s !== "").map(Number))
  )

// --- One run -----------------------------------------------------------------------------------------------

interface Run {
  /** Spawn → the row's ready line (or, for the CLI, its exit), ms. */
  readonly firstPollMs: number
  /** Spawn → the pre-enqueued job's handler ran, ms (single workers only). */
  readonly firstJobMs: number
  /** CPU ms of the process at that ready line. */
  readonly cpuMs: number
  readonly memory: Memory
  /** Supervisor rows: the memory of each child; the first carries the fleet's fork → every child Ready (ms). */
  readonly children: ReadonlyArray<{ readonly readyMs: number; readonly memory: Memory }>
}

type Ready = "poll" | "fleet" | "reaper" | "exit"

interface Row {
  readonly name: string
  readonly label: string
  readonly script: string
  readonly args?: ReadonlyArray<string>
  readonly env: Readonly<Record<string, string>>
  readonly ready: Ready
  /** A fresh, empty compile cache for each run: the first start after a deploy. */
  readonly coldCache?: boolean
}

const worker = { script: "dist/worker.js", ready: "poll" } as const

const allRows: ReadonlyArray<Row> = [
  { ...worker, name: "single", label: "worker.js (compile cache, no health port)", env: {} },
  { ...worker, name: "cold", label: "worker.js, empty compile cache (first start)", env: {}, coldCache: true },
  { ...worker, name: "nocache", label: "worker.js, NODE_DISABLE_COMPILE_CACHE=1", env: { NODE_DISABLE_COMPILE_CACHE: "1" } },
  { ...worker, name: "health", label: "worker.js with PGQ_HEALTH_PORT", env: { PGQ_HEALTH_PORT: "0" } },
  {
    ...worker,
    name: "semispace",
    label: "worker.js, NODE_OPTIONS=--max-semi-space-size=1",
    env: { NODE_OPTIONS: "--max-semi-space-size=1" }
  },
  { name: "fleet", label: "worker.js, PGQ_PROCESSES=2", script: "dist/worker.js", env: { PGQ_PROCESSES: "2" }, ready: "fleet" },
  { name: "reaper", label: "reaper.js (to \"reaper started\")", script: "dist/reaper.js", env: {}, ready: "reaper" },
  { name: "cli", label: "cli.js status (to its exit)", script: "dist/cli.js", args: ["status"], env: {}, ready: "exit" }
]
const rows = allRows.filter((row) => ONLY.has(row.name))

const baseEnv = (): Record<string, string> => {
  const keep = ["PATH", "HOME", "TMPDIR"].flatMap((k) => (process.env[k] === undefined ? [] : [[k, process.env[k]!]]))
  return {
    ...Object.fromEntries(keep),
    DATABASE_URL,
    PGQ_SCHEMA: SCHEMA,
    PGQ_TASKS: TASKS,
    PGQ_LOG_FORMAT: "json",
    PGQ_LOG_LEVEL: "debug"
  }
}

const READY_LINE: Record<Exclude<Ready, "exit">, string> = {
  poll: "started: queues=",
  fleet: "worker processes ready in",
  reaper: "reaper started"
}
const FIRST_JOB = /echo #\d+: startup/
const FLEET_READY = /worker processes ready in (\d+) ms/

/** Spawn the row's process, wait for its marks, let it idle, read its memory; SIGTERM when done. */
const measure = (row: Row, cacheDir: Option.Option<string>) =>
  Effect.acquireUseRelease(
    Effect.gen(function*() {
      const exited = yield* Deferred.make<number | null>()
      // Done when the marks this row needs are in (or the process exited).
      const marked = yield* Deferred.make<void>()
      const output = { text: "" }
      const marks = { ready: NaN, firstJob: NaN, cpu: NaN }
      const cache = Option.match(cacheDir, { onNone: () => ({}), onSome: (dir) => ({ NODE_COMPILE_CACHE: dir }) })
      const t0 = performance.now()
      const child = spawn(process.execPath, [row.script, ...(row.args ?? [])], {
        cwd: ROOT,
        env: { ...baseEnv(), ...row.env, ...cache },
        stdio: ["ignore", "pipe", "pipe"]
      })
      const onData = (chunk: Buffer) => {
        output.text += chunk.toString()
        const now = performance.now() - t0
        if (row.ready !== "exit" && Number.isNaN(marks.ready) && output.text.includes(READY_LINE[row.ready])) {
          marks.ready = now
          marks.cpu = Effect.runSync(cpuMs(child.pid!))
        }
        if (Number.isNaN(marks.firstJob) && FIRST_JOB.test(output.text)) marks.firstJob = now
        if (!Number.isNaN(row.ready === "poll" ? marks.firstJob : marks.ready)) Deferred.doneUnsafe(marked, Effect.void)
      }
      child.stdout.on("data", onData)
      child.stderr.on("data", onData)
      child.once("exit", (code) => {
        if (row.ready === "exit" && code === 0) marks.ready = performance.now() - t0
        Deferred.doneUnsafe(exited, Effect.succeed(code))
        Deferred.doneUnsafe(marked, Effect.void)
      })
      return { child, exited, marked, output, marks }
    }),
    ({ child, marked, output, marks }) =>
      Effect.gen(function*() {
        yield* Deferred.await(marked).pipe(Effect.timeoutOrElse({
          duration: "30 seconds",
          orElse: () => Effect.die(new Error(`${row.label}: not ready within 30 s:\n${output.text}`))
        }))
        const nothing = { rssMb: NaN, pssMb: NaN }
        if (row.ready === "exit" && child.exitCode === 0) {
          return { firstPollMs: marks.ready, firstJobMs: NaN, cpuMs: NaN, memory: nothing, children: [] } satisfies Run
        }
        if (child.exitCode !== null) return yield* Effect.die(new Error(`${row.label}: exited ${child.exitCode}:\n${output.text}`))
        yield* Effect.sleep(IDLE)
        const pids = yield* childPids(child.pid!)
        const forkToReady = Number(FLEET_READY.exec(output.text)?.[1])
        return {
          firstPollMs: marks.ready,
          firstJobMs: marks.firstJob,
          cpuMs: marks.cpu,
          memory: yield* memory(child.pid!),
          children: yield* Effect.forEach(pids, (pid, i) =>
            memory(pid).pipe(Effect.map((m) => ({ readyMs: i === 0 ? forkToReady : NaN, memory: m }))))
        } satisfies Run
      }),
    ({ child, exited }) =>
      Effect.sync(() => child.kill("SIGTERM")).pipe(
        Effect.andThen(Deferred.await(exited)),
        Effect.timeoutOrElse({ duration: "30 seconds", orElse: () => Effect.sync(() => child.kill("SIGKILL")) })
      )
  )

/** One job for the worker to find at its first claim. */
const enqueueProbe = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe(`DELETE FROM "${SCHEMA}".message`)
  yield* (yield* Queue).enqueue("echo", { message: "startup" })
})

const runOnce = (row: Row) =>
  Effect.gen(function*() {
    yield* enqueueProbe
    if (row.coldCache !== true) return yield* measure(row, Option.none())
    const dir = mkdtempSync(join(tmpdir(), "pgq-startup-cache-"))
    return yield* measure(row, Option.some(dir)).pipe(Effect.ensuring(Effect.sync(() => rmSync(dir, { recursive: true, force: true }))))
  })

// --- Report ------------------------------------------------------------------------------------------------

const stats = (values: ReadonlyArray<number>) => {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return "–"
  const median = sorted[Math.floor((sorted.length - 1) / 2)]!
  return `${median.toFixed(0)} (${sorted[0]!.toFixed(0)}..${sorted[sorted.length - 1]!.toFixed(0)})`
}

const report = (row: Row, runs: ReadonlyArray<Run>): ReadonlyArray<string> => {
  const line = (label: string, poll: string, job: string, cpu: string, mem: ReadonlyArray<Memory>) =>
    `| ${label} | ${poll} | ${job} | ${cpu} | ${stats(mem.map((m) => m.rssMb))} | ${stats(mem.map((m) => m.pssMb))} |`
  if (row.ready !== "fleet") {
    return [line(row.label, stats(runs.map((r) => r.firstPollMs)), stats(runs.map((r) => r.firstJobMs)), stats(runs.map((r) => r.cpuMs)), runs.map((r) => r.memory))]
  }
  const children = runs.flatMap((r) => r.children)
  return [
    line(`${row.label}: supervisor (spawn → every child ready)`, stats(runs.map((r) => r.firstPollMs)), "–", stats(runs.map((r) => r.cpuMs)), runs.map((r) => r.memory)),
    line(`${row.label}: each child (fork → Ready, the later of the two)`, stats(children.map((c) => c.readyMs)), "–", "–", children.map((c) => c.memory))
  ]
}

/** Auto-migrate's check on a current schema, next to a round trip of `SELECT 1`, medians of 20 (ms). */
const schemaCheck = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const time = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient>) =>
    Effect.forEach(Array.from({ length: 20 }), () => Effect.timed(effect).pipe(Effect.map(([d]) => Duration.toMillis(d))))
  const check = yield* time(migrate(SCHEMA))
  const ping = yield* time(sql`SELECT 1`)
  const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[9]!.toFixed(2)
  return `auto-migrate on a current schema: ${median(check)} ms (a SELECT 1 on the same pool: ${median(ping)} ms)`
})

const program = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`)
  yield* migrate(SCHEMA)
  yield* Console.log(`dist of ${ROOT}, tasks ${TASKS}, ${RUNS} runs per row (after a warm-up), memory after ${Duration.format(IDLE)} idle`)
  yield* Console.log("\n| process | ready, ms | first job, ms | CPU when ready, ms | idle RSS, MB | idle PSS, MB |")
  yield* Console.log("|---|---|---|---|---|---|")
  for (const row of rows) {
    yield* runOnce(row)
    const runs = yield* Effect.forEach(Array.from({ length: RUNS }), () => runOnce(row))
    for (const line of report(row, runs)) yield* Console.log(line)
  }
  yield* Console.log(`\n${yield* schemaCheck}`)
  yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`)
})

const services = Queue.layer({ schema: SCHEMA, maxAttempts: 1, notify: false }).pipe(
  Layer.provideMerge(Database.layer({ url: Redacted.make(DATABASE_URL), maxConnections: 2, applicationName: "pgq-bench-startup" }))
)

NodeRuntime.runMain(program.pipe(Effect.provide(services)))
