/**
 * What every entrypoint shares: the logger chosen by PGQ_LOG_FORMAT, the database from DATABASE_URL,
 * and a runMain whose exit code is 0 after a clean, signal-driven shutdown.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Effect, Exit, Layer, Logger, Option, type Redacted, Runtime } from "effect"
import type { PgqSettings } from "./Config.ts"
import * as Database from "./Database.ts"
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

/** SIGTERM/SIGINT interrupt the program; a clean drain then exits 0 instead of 130. */
const teardown: Runtime.Teardown = (exit, onExit) =>
  Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : Runtime.defaultTeardown(exit, onExit)

export const runMain = <E>(program: Effect.Effect<void, E>) => NodeRuntime.runMain(program, { teardown })
