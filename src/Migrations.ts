/**
 * Brings a schema to schema.sql without freezing the queue (schema.sql's header gives the rules for
 * changing it).
 *
 * - A start against a schema whose recorded version is current reads the one row of `schema_version` and
 *   runs no DDL: it takes no lock on the queue tables at all. DDL that finds its object already there still
 *   locks the table first (CREATE INDEX IF NOT EXISTS takes a SHARE lock), and a lock request waiting behind
 *   a host's open transaction queues every claim, ack and enqueue behind itself.
 * - Otherwise schema.sql is compared with the catalog and only what is missing runs: new tables with their
 *   indexes, missing columns and statements of no recognised form, in one transaction under `lock_timeout`
 *   (retried with backoff, then MigrationFailed naming the lock); then the indexes missing from existing
 *   tables, built CONCURRENTLY (an INVALID leftover of an interrupted build is dropped first); then the
 *   version is recorded, last, so an interrupted migration is completed by the next start.
 * - Several processes may migrate at once: a lost catalog race retries and finds the winner's objects, and
 *   an index another process is building is waited for, never dropped.
 */
import { Duration, Effect, Option, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { readFileSync } from "node:fs"
import { reasonOf } from "./Database.ts"
import { InvalidConfig, MigrationFailed } from "./Errors.ts"
import { identifierProblem } from "./Names.ts"

/** The version of schema.sql. Bump it with every change of schema.sql (a test pins the two together). */
export const schemaVersion = 5

export interface MigrateOptions {
  /** How long one attempt's DDL may wait for a table lock (default 500 ms): writers queue behind it that long. */
  readonly lockTimeout?: Duration.Input
  /** Attempts, with backoff, before MigrationFailed (default 8). */
  readonly attempts?: number
}

export interface Migration {
  /** The version the schema is at now. */
  readonly version: number
  /** DDL statements this call ran; 0 when the schema was current. */
  readonly applied: number
}

const schemaFile = new URL("../schema.sql", import.meta.url)

/** Split SQL text on top-level `;`, keeping quoted strings, identifiers, dollar-quoted bodies and comments intact. */
export const splitStatements = (text: string): ReadonlyArray<string> => {
  const statements: Array<string> = []
  let current = ""
  let i = 0
  while (i < text.length) {
    const rest = text.slice(i)
    const token = /^(--[^\n]*|\/\*[\s\S]*?\*\/|'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$[A-Za-z_0-9]*\$)[\s\S]*?\2)/.exec(rest)
    if (token !== null) {
      if (!token[0].startsWith("--") && !token[0].startsWith("/*")) current += token[0]
      i += token[0].length
    } else if (text[i] === ";") {
      statements.push(current)
      current = ""
      i += 1
    } else {
      current += text[i]
      i += 1
    }
  }
  statements.push(current)
  return statements.map((s) => s.trim()).filter((s) => s !== "")
}

const canonicalStatements = () => splitStatements(readFileSync(schemaFile, "utf8"))

const qualify = (statement: string, schema: string) => statement.replace(/\bpgq\b/g, `"${schema}"`)

/** schema.sql with the `pgq` placeholder replaced by the configured schema. */
export const schemaStatements = (schema: string): ReadonlyArray<string> =>
  canonicalStatements().map((statement) => qualify(statement, schema))

// --- What each statement creates -------------------------------------------------------------------------

type Step =
  | { readonly kind: "schema"; readonly statement: string }
  | { readonly kind: "table"; readonly table: string; readonly statement: string }
  | { readonly kind: "index"; readonly table: string; readonly index: string; readonly statement: string }
  | { readonly kind: "column"; readonly table: string; readonly column: string; readonly statement: string }
  | { readonly kind: "other"; readonly statement: string }

type IndexStep = Extract<Step, { readonly kind: "index" }>

/** Reads the object a statement creates from its canonical text (`pgq` still in place). */
const classify = (canonical: string, schema: string): Step => {
  const text = canonical.replace(/\s+/g, " ").toLowerCase()
  const statement = qualify(canonical, schema)
  const table = /^create table if not exists pgq\.(\w+) \(/.exec(text)
  const index = /^create (?:unique )?index if not exists (\w+) on pgq\.(\w+) /.exec(text)
  const column = /^alter table pgq\.(\w+) add column if not exists (\w+) /.exec(text)
  if (text === "create schema if not exists pgq") return { kind: "schema", statement }
  if (table !== null) return { kind: "table", table: table[1], statement }
  if (index !== null) return { kind: "index", index: index[1], table: index[2], statement }
  // One column per ALTER: a statement adding several cannot be skipped because one of them exists.
  if (column !== null && text.match(/\badd\b/g)?.length === 1) {
    return { kind: "column", table: column[1], column: column[2], statement }
  }
  return { kind: "other", statement }
}

interface Catalog {
  readonly schemaExists: boolean
  /** Columns of each existing table. */
  readonly columns: ReadonlyMap<string, ReadonlySet<string>>
  /** Each existing index: valid or not. */
  readonly indexes: ReadonlyMap<string, boolean>
}

// Catalog reads only: no lock on any table of the schema.
const readCatalog = (sql: SqlClient.SqlClient, schema: string) =>
  sql<{ kind: string; name: string; detail: string | null; valid: boolean | null }>`
    SELECT 'schema' AS kind, nspname::text AS name, NULL::text AS detail, NULL::boolean AS valid
    FROM pg_namespace WHERE nspname = ${schema}
    UNION ALL
    SELECT 'column', c.relname::text, a.attname::text, NULL
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE n.nspname = ${schema} AND c.relkind IN ('r', 'p')
    UNION ALL
    SELECT 'index', c.relname::text, NULL, i.indisvalid
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ${schema}`.pipe(
    Effect.map((rows): Catalog => {
      const columns = new Map<string, Set<string>>()
      const indexes = new Map<string, boolean>()
      for (const row of rows) {
        if (row.kind === "column") columns.set(row.name, (columns.get(row.name) ?? new Set()).add(row.detail ?? ""))
        if (row.kind === "index") indexes.set(row.name, row.valid === true)
      }
      return { schemaExists: rows.some((row) => row.kind === "schema"), columns, indexes }
    })
  )

interface Plan {
  /** Run in the transaction. */
  readonly now: ReadonlyArray<Step>
  /** Indexes missing (or INVALID) on tables that existed before: built CONCURRENTLY afterwards. */
  readonly concurrently: ReadonlyArray<IndexStep>
}

/** What is missing from the catalog, in schema.sql's order. */
const plan = (steps: ReadonlyArray<Step>, catalog: Catalog): Plan => {
  const created = new Set<string>()
  const now: Array<Step> = []
  const concurrently: Array<IndexStep> = []
  for (const step of steps) {
    if (step.kind === "schema" && !catalog.schemaExists) now.push(step)
    if (step.kind === "table" && !catalog.columns.has(step.table)) {
      created.add(step.table)
      now.push(step)
    }
    if (step.kind === "index" && catalog.indexes.get(step.index) !== true) {
      // An index of a table created in this transaction costs nothing to build and blocks no one.
      if (created.has(step.table)) now.push(step)
      else concurrently.push(step)
    }
    if (step.kind === "column" && catalog.columns.get(step.table)?.has(step.column) !== true) now.push(step)
    if (step.kind === "other") now.push(step)
  }
  return { now, concurrently }
}

// --- Failures --------------------------------------------------------------------------------------------

type Failure =
  | { readonly _tag: "Sql"; readonly statement: string; readonly lock: string; readonly error: unknown }
  | { readonly _tag: "Building"; readonly step: IndexStep }

const sqlState = (error: unknown) =>
  String((error as { reason?: { cause?: { code?: unknown } } }).reason?.cause?.code ?? "")

const LOCK_TIMEOUT = "55P03"
// 23505 unique_violation (concurrent CREATE on the catalog), 40P01 deadlock, 40001 serialization, 42P07/42P06
// duplicate table/schema: another migrator won the race; the retry finds its objects.
const catalogRaces = ["23505", "40P01", "40001", "42P07", "42P06", LOCK_TIMEOUT]

const failed = (statement: string, lock: string) => (error: unknown): Failure => ({
  _tag: "Sql",
  statement,
  lock,
  error
})

const quoted = (schema: string, table: string) => `"${schema}".${table}`

/** The lock a step waits for, in words an operator can look up in pg_locks. */
const lockOf = (step: Step, schema: string): string => {
  switch (step.kind) {
    case "column":
      return `ACCESS EXCLUSIVE lock on ${quoted(schema, step.table)} (to add column ${step.column})`
    case "index":
      return `SHARE lock on ${quoted(schema, step.table)} (to build index ${step.index})`
    case "table":
      return `catalog lock to create ${quoted(schema, step.table)} (another process may be migrating)`
    case "schema":
      return `catalog lock to create schema "${schema}" (another process may be migrating)`
    case "other":
      return "lock this statement needs"
  }
}

interface Settings {
  readonly lockTimeoutMs: number
  readonly attempts: number
}

const toMigrationFailed = (settings: Settings, schema: string) => (failure: Failure): MigrationFailed => {
  if (failure._tag === "Building") {
    return new MigrationFailed({
      statement: failure.step.statement,
      reason: `index ${failure.step.index} on ${quoted(schema, failure.step.table)} is still being built by another ` +
        `process after ${settings.attempts} attempts; start again once it is valid (pg_index.indisvalid), or run ` +
        "`node dist/cli.js migrate` from a deploy step before starting workers"
    })
  }
  if (sqlState(failure.error) !== LOCK_TIMEOUT) {
    return new MigrationFailed({ statement: failure.statement, reason: reasonOf(failure.error) })
  }
  return new MigrationFailed({
    statement: failure.statement,
    reason: `could not get the ${failure.lock} within lock_timeout ${settings.lockTimeoutMs} ms, in ` +
      `${settings.attempts} attempts: a transaction holds a conflicting lock (see pg_locks and pg_stat_activity). ` +
      "Let it finish and start again, or run `node dist/cli.js migrate` at a quieter moment and start " +
      "processes with PGQ_AUTO_MIGRATE=false until then"
  })
}

const backoff = Schedule.min([Schedule.exponential("100 millis").pipe(Schedule.jittered), Schedule.spaced("5 seconds")])

// --- Steps -----------------------------------------------------------------------------------------------

const invalid = (variable: string, reason: string) => Effect.fail(new InvalidConfig({ variable, reason }))

const settingsOf = (schema: string, options: MigrateOptions): Effect.Effect<Settings, InvalidConfig> => {
  const lockTimeout = Duration.fromInput(options.lockTimeout ?? "500 millis")
  const attempts = options.attempts ?? 8
  const badSchema = identifierProblem(schema)
  if (Option.isSome(badSchema)) return invalid("schema", `${JSON.stringify(schema)} ${badSchema.value}`)
  if (Option.isNone(lockTimeout) || !Duration.isFinite(lockTimeout.value) || Duration.toMillis(lockTimeout.value) < 1) {
    return invalid("lockTimeout", `expected a finite duration of at least 1 ms, got ${String(options.lockTimeout)}`)
  }
  if (!Number.isInteger(attempts) || attempts < 1) {
    return invalid("attempts", `expected an integer >= 1, got ${attempts}`)
  }
  return Effect.succeed({ lockTimeoutMs: Math.ceil(Duration.toMillis(lockTimeout.value)), attempts })
}

/** The recorded version; 0 for a schema created before versions were recorded, or not created yet. */
const recordedVersion = (sql: SqlClient.SqlClient, schema: string) =>
  sql.unsafe<{ version: number }>(`SELECT version FROM "${schema}".schema_version`).pipe(
    Effect.map((rows) => rows[0]?.version ?? 0),
    // 42P01 undefined_table, 3F000 invalid_schema_name.
    Effect.catchIf((error) => ["42P01", "3F000"].includes(sqlState(error)), () => Effect.succeed(0)),
    Effect.mapError(failed("SELECT version", "ACCESS SHARE lock on schema_version"))
  )

/** Tables, columns and indexes of new tables, in one transaction whose lock waits end at lock_timeout. */
const applyInTransaction = (sql: SqlClient.SqlClient, schema: string, settings: Settings) => {
  const steps = canonicalStatements().map((statement) => classify(statement, schema))
  const attempt = Effect.gen(function*() {
    yield* sql`SELECT set_config('lock_timeout', ${`${settings.lockTimeoutMs}ms`}, true)`.pipe(
      Effect.mapError(failed("SET LOCAL lock_timeout", ""))
    )
    const todo = plan(steps, yield* readCatalog(sql, schema).pipe(Effect.mapError(failed("catalog read", ""))))
    yield* Effect.forEach(todo.now, (step) =>
      sql.unsafe(step.statement).pipe(Effect.mapError(failed(step.statement, lockOf(step, schema)))), { discard: true })
    return todo
  })
  return sql.withTransaction(attempt).pipe(
    Effect.mapError((error): Failure => error._tag === "SqlError" ? failed("BEGIN/COMMIT", "")(error) : error),
    Effect.retry({
      schedule: backoff,
      times: settings.attempts - 1,
      while: (failure) => failure._tag === "Sql" && catalogRaces.includes(sqlState(failure.error))
    })
  )
}

type IndexState = "valid" | "invalid" | "building" | "missing"

// Another backend's build shows in pg_stat_progress_create_index; one of another role shows with a NULL
// relid, which counts as building this index: waiting is safe, dropping its index is not.
const indexState = (sql: SqlClient.SqlClient, schema: string, step: IndexStep) =>
  sql<{ valid: boolean; building: boolean }>`
    SELECT i.indisvalid AS valid,
           EXISTS (SELECT 1 FROM pg_stat_progress_create_index p
                   WHERE p.pid <> pg_backend_pid()
                     AND p.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND (p.relid = i.indrelid OR p.relid IS NULL)) AS building
    FROM pg_index i WHERE i.indexrelid = to_regclass(${`"${schema}"."${step.index}"`})`.pipe(
    Effect.map((rows): IndexState =>
      rows.length === 0 ? "missing" : rows[0].valid ? "valid" : rows[0].building ? "building" : "invalid"
    ),
    Effect.mapError(failed("index state", ""))
  )

const concurrentForm = (statement: string) =>
  statement.replace(/^CREATE (UNIQUE )?INDEX /i, "CREATE $1INDEX CONCURRENTLY ")

/**
 * Builds one index on an existing table without blocking its writers (CONCURRENTLY, outside any transaction:
 * it waits for open writers to finish, without queueing new ones). Returns whether this call built it.
 */
const buildConcurrently = (sql: SqlClient.SqlClient, schema: string, settings: Settings) => (step: IndexStep) => {
  const run = (statement: string) =>
    sql.unsafe(statement).pipe(Effect.mapError(failed(statement, lockOf(step, schema))))
  const building = Effect.fail<Failure>({ _tag: "Building", step })
  const attempt = Effect.gen(function*() {
    const state = yield* indexState(sql, schema, step)
    if (state === "valid") return false
    if (state === "building") return yield* building
    // An INVALID index nobody is building is the leftover of an interrupted build: it slows writes, serves no reads.
    if (state === "invalid") yield* run(`DROP INDEX CONCURRENTLY IF EXISTS "${schema}"."${step.index}"`)
    yield* run(concurrentForm(step.statement))
    // IF NOT EXISTS skips an index another process started meanwhile: wait for that one.
    if ((yield* indexState(sql, schema, step)) !== "valid") return yield* building
    return true
  })
  return attempt.pipe(Effect.retry({
    schedule: backoff,
    times: settings.attempts - 1,
    while: (failure) => failure._tag === "Building" || ["40P01", LOCK_TIMEOUT].includes(sqlState(failure.error))
  }))
}

const recordVersion = (sql: SqlClient.SqlClient, schema: string) => {
  const statement = `INSERT INTO "${schema}".schema_version (version) VALUES ($1)
    ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, applied_at = now()
    WHERE schema_version.version < EXCLUDED.version`
  return sql.unsafe(statement, [schemaVersion]).pipe(Effect.mapError(failed(statement, "")))
}

/** Fresh statistics keep the claim on its partial index from the first poll on. Best effort, never waits long. */
const analyze = (sql: SqlClient.SqlClient, schema: string, tables: ReadonlySet<string>, settings: Settings) =>
  tables.size === 0 ? Effect.void : sql.withTransaction(
    sql`SELECT set_config('lock_timeout', ${`${settings.lockTimeoutMs}ms`}, true)`.pipe(
      Effect.andThen(sql.unsafe(`ANALYZE ${[...tables].map((table) => `"${schema}"."${table}"`).join(", ")}`))
    )
  ).pipe(Effect.ignore)

const tableOf = (step: Step): ReadonlyArray<string> =>
  step.kind === "schema" || step.kind === "other" ? [] : [step.table]

/**
 * Bring `schema` to schema.sql. Current already: one SELECT, no DDL. Fails with InvalidConfig for a bad
 * schema name or option, MigrationFailed when DDL failed or could not get its lock in time.
 */
export const migrate = Effect.fn("Migrations.migrate")(function*(schema: string, options: MigrateOptions = {}) {
  const settings = yield* settingsOf(schema, options)
  const sql = yield* SqlClient.SqlClient
  const fail = toMigrationFailed(settings, schema)
  const recorded = yield* recordedVersion(sql, schema).pipe(Effect.mapError(fail))
  if (recorded >= schemaVersion) return { version: recorded, applied: 0 } satisfies Migration
  const todo = yield* applyInTransaction(sql, schema, settings).pipe(Effect.mapError(fail))
  const built = yield* Effect.forEach(todo.concurrently, buildConcurrently(sql, schema, settings)).pipe(
    Effect.mapError(fail)
  )
  yield* recordVersion(sql, schema).pipe(Effect.mapError(fail))
  const changed = [...todo.now, ...todo.concurrently.filter((_, i) => built[i])]
  yield* analyze(sql, schema, new Set(changed.flatMap(tableOf)), settings)
  if (changed.length > 0) yield* Effect.logInfo("schema migrated").pipe(
    Effect.annotateLogs({ schema, version: schemaVersion, statements: changed.length })
  )
  return { version: schemaVersion, applied: changed.length } satisfies Migration
})
