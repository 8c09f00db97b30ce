/**
 * The PgClient layer (DATABASE_URL, prepared-statement switch) and the start-up probe. The embedded
 * development database behind `npm start` is in Embedded.ts.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { Duration, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { DatabaseUnavailable, InvalidConfig } from "./Errors.ts"

/** The embedded development database moved to Embedded.ts; re-exported for existing callers. */
export { embedded, type EmbeddedDatabase, type EmbeddedOptions, startEmbedded } from "./Embedded.ts"

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
