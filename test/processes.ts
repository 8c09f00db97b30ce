/**
 * Spawning the real entrypoints (dist/*.js) from tests: scoped child processes that are killed when
 * the test's scope closes, plus small helpers to await their exit and query their HTTP endpoints.
 */
import { Deferred, Effect, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { type ChildProcess, spawn } from "node:child_process"
import { chaosTables } from "../bench/chaos-tasks.ts"
/** A port free on 127.0.0.1 right now (the bench's helper). */
import { freePort } from "../bench/support.ts"

export interface Spawned {
  readonly child: ChildProcess
  readonly exit: Effect.Effect<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  readonly output: () => string
}

const root = new URL("..", import.meta.url).pathname

/** Run `node dist/<script> args…` with `env` on top of a minimal environment; SIGKILLed when the scope closes. */
export const spawnNode = (
  script: string,
  env: Readonly<Record<string, string>>,
  args: ReadonlyArray<string> = []
) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const exited = yield* Deferred.make<{ code: number | null; signal: NodeJS.Signals | null }>()
      let output = ""
      const child = spawn(process.execPath, [`dist/${script}`, ...args], {
        cwd: root,
        env: { PATH: process.env.PATH ?? "", PGQ_LOG_FORMAT: "json", ...env },
        stdio: ["ignore", "pipe", "pipe"]
      })
      child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()))
      child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()))
      child.once("exit", (code, signal) => Deferred.doneUnsafe(exited, Effect.succeed({ code, signal })))
      return { child, exit: Deferred.await(exited), output: () => output } satisfies Spawned
    }),
    ({ child, exit }) =>
      child.exitCode === null && child.signalCode === null
        ? Effect.sync(() => child.kill("SIGKILL")).pipe(Effect.andThen(exit))
        : Effect.void
  )

export { freePort }

/** A `dist/reaper.js` replica and the port of its /health. */
export interface Replica {
  readonly process: Spawned
  readonly port: number
}

/** Start a `dist/reaper.js` replica on the test's schema, serving /health on a free port; killed with the scope. */
export const startReaper = (db: { readonly url: string; readonly schema: string }, env: Readonly<Record<string, string>>) =>
  Effect.gen(function*() {
    const port = yield* freePort
    const process = yield* spawnNode("reaper.js", {
      DATABASE_URL: db.url,
      PGQ_SCHEMA: db.schema,
      PGQ_HEALTH_PORT: String(port),
      ...env
    })
    return { process, port } satisfies Replica
  })

export interface HttpReply {
  readonly status: number
  readonly body: string
}

export const httpGet = (url: string) =>
  Effect.tryPromise(async (): Promise<HttpReply> => {
    const response = await fetch(url)
    return { status: response.status, body: await response.text() }
  })

/** Poll until `check` succeeds with a value satisfying `until` (the test's timeout bounds it). */
export const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, until: (a: A) => boolean) =>
  check.pipe(
    Effect.option,
    Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: (a) => a._tag === "Some" && until(a.value) }),
    Effect.map((a) => (a._tag === "Some" ? a.value : undefined as never))
  )

/**
 * Processes that run the recording tasks of bench/chaos-tasks.ts (every run lands in `<schema>.chaos_run`):
 * creates the side tables in `schema` and returns the environment for dist/worker.js or dist/reaper.js, with a
 * short heartbeat (0.5 s) and stale timeout (2 s) so rescues happen within a test.
 */
export const recordingTasks = (schema: string, url: string, extra: Readonly<Record<string, string>> = {}) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    for (const statement of chaosTables(schema)) yield* sql.unsafe(statement)
    return {
      DATABASE_URL: url,
      PGQ_SCHEMA: schema,
      PGQ_TASKS: "./bench/chaos-tasks.ts",
      PGQ_HEARTBEAT_SECONDS: "0.5",
      PGQ_PROCESS_STALE_SECONDS: "2",
      ...extra
    }
  })
