/**
 * What every entrypoint shares: the logger chosen by PGQ_LOG_FORMAT, the database from DATABASE_URL,
 * and a runMain whose exit code is 0 after a clean, signal-driven shutdown and which reports an expected
 * failure as one line.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Effect, Exit, Layer, Logger, type LogLevel, Option, type Redacted, References, Runtime } from "effect"
import { basename } from "node:path"
import { logLevelFrom, type PgqSettings } from "./Config.ts"
import * as Database from "./Database.ts"
import { describeFailure, safeLine } from "./ErrorText.ts"
import * as Errors from "./Errors.ts"
import { InvalidConfig } from "./Errors.ts"

export const loggerLayer = (format: PgqSettings["logFormat"]) =>
  Logger.layer([format === "json" ? Logger.consoleJson : Logger.consolePretty()])

export const requireDatabaseUrl = (settings: PgqSettings): Effect.Effect<Redacted.Redacted<string>, InvalidConfig> =>
  Option.match(settings.databaseUrl, {
    onNone: () => Effect.fail(new InvalidConfig({ variable: "DATABASE_URL", reason: "is not set" })),
    onSome: Effect.succeed
  })

/** The database of DATABASE_URL, probed at start-up. */
export const databaseLayer = (settings: PgqSettings, applicationName: string, maxConnections?: number) =>
  Layer.unwrap(
    requireDatabaseUrl(settings).pipe(
      Effect.map((url) =>
        Database.layer({
          url,
          pgbouncer: settings.pgbouncer,
          applicationName,
          ...(maxConnections === undefined ? {} : { maxConnections })
        })
      )
    )
  )

/**
 * The two pools of a worker: the handlers' (one connection per slot, the LISTEN session, one spare), and a
 * small one of the worker's own statements, so handler queries never delay a renewal, an ack or a heartbeat
 * (six: one of them is held by the heartbeat, whose session witnesses that the process lives).
 */
export const workerDatabases = (settings: PgqSettings) => ({
  handlers: databaseLayer(settings, "pgq-worker", Math.min(50, settings.concurrency + 2)),
  runtime: databaseLayer(settings, "pgq-worker-runtime", 6)
})

/** Our own errors (Errors.ts): each message names the culprit, so it is the whole report. */
const isOurs = (error: unknown): error is Error =>
  Object.values(Errors).some((ErrorClass) => typeof ErrorClass === "function" && error instanceof ErrorClass)

/**
 * A failure (not a defect) as one line, `pgq-worker: DATABASE_URL: is not set`; none for a defect, whose
 * stack is the useful part.
 */
const oneLine = (program: string, cause: Cause.Cause<unknown>): Option.Option<string> =>
  Cause.hasDies(cause)
    ? Option.none()
    : Option.map(Cause.findErrorOption(cause), (error) =>
      safeLine(`${program}: ${isOurs(error) ? error.message : describeFailure(error)}`))

const report = (program: string, verbose: boolean, cause: Cause.Cause<unknown>) => {
  // effect/cli prints its own usage errors (with the help text) and marks them reported.
  if (!Runtime.getErrorReported(Cause.squash(cause))) return
  const line = verbose ? Option.none() : oneLine(program, cause)
  process.stderr.write(`${Option.getOrElse(line, () => Cause.pretty(cause))}\n`)
}

/** SIGTERM/SIGINT interrupt the program; a clean drain then exits 0 instead of 130. */
const teardown = (program: string, verbose: boolean): Runtime.Teardown => (exit, onExit) => {
  if (Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause)) return onExit(0)
  report(program, verbose, exit.cause)
  onExit(Runtime.getErrorExitCode(Cause.squash(exit.cause)))
}

/** PGQ_LOG_LEVEL on its own, so it applies even when the rest of the configuration is invalid. */
const logLevel = (): LogLevel.LogLevel =>
  Effect.runSync(logLevelFrom(process.env).pipe(Effect.orElseSucceed(() => "Info" as const)))

/**
 * Run an entrypoint; `name` starts its failure report (`pgq-worker` for dist/worker.js). An expected failure
 * prints one line and exits 1; at PGQ_LOG_LEVEL=debug or trace, and for defects, the whole cause is printed.
 */
export const runMain = <E>(
  program: Effect.Effect<void, E>,
  name: string = `pgq-${basename(process.argv[1] ?? "main", ".js")}`
) => {
  const level = logLevel()
  NodeRuntime.runMain(program.pipe(Effect.provideService(References.MinimumLogLevel, level)), {
    disableErrorReporting: true,
    teardown: teardown(name, level === "Debug" || level === "Trace")
  })
}
