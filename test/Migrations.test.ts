import { describe, expect, it, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Redacted, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { createHash } from "node:crypto"
import { readFileSync } from "node:fs"
import * as Database from "../src/Database.ts"
import { migrate, schemaStatements, schemaVersion, splitStatements } from "../src/Migrations.ts"
import { databaseUrl, uniqueSchema } from "./support.ts"

describe("splitStatements", () => {
  it("splits on top-level semicolons only", () => {
    const text = `
      -- a comment; with a semicolon
      CREATE TABLE a (x text DEFAULT 'a;b');
      /* block; comment */ CREATE TABLE "we;ird" (y int);
      CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
      SELECT 'it''s; fine'`
    expect(splitStatements(text)).toEqual([
      "CREATE TABLE a (x text DEFAULT 'a;b')",
      `CREATE TABLE "we;ird" (y int)`,
      "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
      "SELECT 'it''s; fine'"
    ])
  })

  it("qualifies every table with the configured schema", () => {
    const statements = schemaStatements("tenant_a")
    expect(statements[0]).toBe(`CREATE SCHEMA IF NOT EXISTS "tenant_a"`)
    for (const statement of statements) expect(statement).not.toMatch(/\bpgq\b/)
    expect(statements.filter((s) => s.startsWith("CREATE TABLE")).every((s) => s.includes(`"tenant_a".`))).toBe(true)
  })

  it("pins schema.sql to schemaVersion: a changed schema.sql needs a new version", () => {
    // Comments and layout do not count; any statement change does.
    const pinned: Record<number, string> = {
      1: "2da13184f14fd1d53fbc01877b9a712e0b98c75a7d504daa564d4e6f70ed7555",
      2: "8a2f31d1273fa903a5c3ed25029e4f9955c92a0f69c08f3645b99b5540f80017",
      3: "ca0d7303ab5e5cabd8b53709505e895d2cf47bb4d83699cae2bbf76677b91e6d",
      4: "077ab9be20a3eb20d417a778fa71fa05dd73a9596e33f6b14bd3b6ed3493da64",
      5: "82c7828da3357c6e3e6cd51d385d600c62d478bd34ee2978c02e80d3a2c1dbbf"
    }
    const digest = createHash("sha256").update(schemaStatements("pgq").join(";\n")).digest("hex")
    expect(digest, "schema.sql changed: bump schemaVersion in src/Migrations.ts, pin the new digest here")
      .toBe(pinned[schemaVersion])
  })
})

type Sql = SqlClient.SqlClient

/** Every column, default, constraint and index of `schema`, with the schema name written as `S`. */
const describeSchema = (sql: Sql, schema: string) =>
  Effect.gen(function*() {
    const columns = yield* sql<{ table: string; column: string; type: string; dflt: string | null; notnull: boolean }>`
      SELECT c.relname::text AS table, a.attname::text AS column, format_type(a.atttypid, a.atttypmod) AS type,
             pg_get_expr(d.adbin, d.adrelid) AS dflt, a.attnotnull AS notnull
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE n.nspname = ${schema} AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY 1, 2`
    const constraints = yield* sql<{ name: string; def: string }>`
      SELECT conname::text AS name, pg_get_constraintdef(c.oid) AS def
      FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
      WHERE n.nspname = ${schema} ORDER BY 1`
    const indexes = yield* indexStates(sql, schema)
    return JSON.parse(JSON.stringify({ columns, constraints, indexes }).replaceAll(schema, "S"))
  })

const indexStates = (sql: Sql, schema: string) =>
  sql<{ name: string; def: string; valid: boolean }>`
    SELECT c.relname::text AS name, pg_get_indexdef(i.indexrelid) AS def, i.indisvalid AS valid
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ${schema} ORDER BY 1`

const recordedVersion = (sql: Sql, schema: string) =>
  sql<{ version: number }>`SELECT version FROM ${sql(`${schema}.schema_version`)}`.pipe(
    Effect.map((rows) => rows[0]?.version)
  )

/** A fresh schema, dropped when the test ends. */
const freshSchema = (prefix: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const schema = uniqueSchema(prefix)
    yield* Effect.addFinalizer(() => sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).pipe(Effect.ignore))
    return schema
  })

/**
 * Runs `work` in a transaction on a connection of its own and keeps it open (as a host application's
 * transaction that enqueued and has not committed yet) until `release`.
 */
const openTransaction = <E>(work: Effect.Effect<unknown, E, SqlClient.SqlClient>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const opened = yield* Deferred.make<number>()
    const close = yield* Deferred.make<void>()
    const fiber = yield* sql.withTransaction(Effect.gen(function*() {
      yield* work
      const [{ pid }] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
      yield* Deferred.succeed(opened, pid)
      yield* Deferred.await(close)
    })).pipe(Effect.forkScoped)
    const pid = yield* Deferred.await(opened).pipe(
      Effect.raceFirst(Fiber.join(fiber).pipe(Effect.andThen(Effect.die("the transaction ended before it opened"))))
    )
    const state = sql<{ state: string }>`SELECT state FROM pg_stat_activity WHERE pid = ${pid}`.pipe(
      Effect.map((rows) => rows[0]?.state)
    )
    return { pid, state, release: Deferred.succeed(close, undefined).pipe(Effect.andThen(Fiber.join(fiber))) }
  })

const insertMessage = (sql: Sql, schema: string, queue = "q") =>
  sql`INSERT INTO ${sql(`${schema}.message`)} (queue, task, payload) VALUES (${queue}, 't', '{}'::jsonb)`

/** Bounds a step that hangs on today's lock queue: a hang becomes a failure, not a stuck test run. */
const hangGuard = "15 seconds"

/** Waits until another backend runs a statement matching `pattern` and is waiting for a lock; its wait event. */
const awaitLockWait = (sql: Sql, pattern: string) =>
  sql<{ wait_event: string }>`
    SELECT wait_event FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query LIKE ${pattern}`.pipe(
    Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (rows) => rows.length > 0 }),
    Effect.timeout(hangGuard),
    Effect.map((rows) => rows[0].wait_event)
  )

const queueTables = ["message", "dead_letter", "barrier", "barrier_batch", "lease", "execution", "process"]

layer(Database.layer({ url: Redacted.make(databaseUrl()), maxConnections: 8 }), { excludeTestServices: true })(
  "migrate",
  (it) => {
    it.effect("is idempotent and safe when several processes migrate at once", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate")
        const results = yield* Effect.all(Array.from({ length: 6 }, () => migrate(schema)), {
          concurrency: "unbounded"
        })
        expect(new Set(results.map((r) => r.version))).toEqual(new Set([schemaVersion]))
        expect(results.some((r) => r.applied > 0)).toBe(true)
        expect(yield* migrate(schema)).toEqual({ version: schemaVersion, applied: 0 })
        expect(yield* recordedVersion(sql, schema)).toBe(schemaVersion)
        const tables = yield* sql<{ table_name: string }>`
          SELECT table_name FROM information_schema.tables WHERE table_schema = ${schema} ORDER BY table_name`
        expect(tables.map((t) => t.table_name)).toEqual([...queueTables, "schema_version"].sort())
        expect((yield* indexStates(sql, schema)).every((index) => index.valid)).toBe(true)
      }))

    it.effect("an up-to-date schema migrates while a host transaction that enqueued is still open", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate_busy")
        yield* migrate(schema)
        const host = yield* openTransaction(insertMessage(sql, schema))
        yield* migrate(schema).pipe(Effect.timeout(hangGuard))
        // It finished while the enqueue was uncommitted, and nothing waits on a lock of this schema.
        expect(yield* host.state).toBe("idle in transaction")
        const waiting = yield* sql<{ n: number }>`
          SELECT count(*)::int AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ${schema} AND NOT l.granted`
        expect(waiting[0].n).toBe(0)
        yield* host.release
      }))

    it.effect("an up-to-date schema takes no lock stronger than ACCESS SHARE on the queue tables", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate_locks")
        yield* migrate(schema)
        // EXCLUSIVE conflicts with every mode but ACCESS SHARE: any stronger request by migrate would wait.
        const tables = queueTables.map((table) => `"${schema}".${table}`).join(", ")
        const host = yield* openTransaction(sql.unsafe(`LOCK TABLE ${tables} IN EXCLUSIVE MODE`))
        expect(yield* migrate(schema).pipe(Effect.timeout(hangGuard))).toEqual({ version: schemaVersion, applied: 0 })
        expect(yield* host.state).toBe("idle in transaction")
        yield* host.release
      }))

    it.effect("a missing index is built CONCURRENTLY: writers keep working while it waits", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate_index")
        yield* migrate(schema)
        yield* sql.unsafe(`DROP INDEX "${schema}".message_claim_idx`)
        yield* sql.unsafe(`DROP TABLE IF EXISTS "${schema}".schema_version`)
        const host = yield* openTransaction(insertMessage(sql, schema))
        const migration = yield* migrate(schema).pipe(Effect.forkScoped)
        // The build waits for the open writer to finish (as any index build must) without queueing writers
        // behind it: CONCURRENTLY waits on the writer's transaction id, not on a lock of the table.
        const waitEvent = yield* awaitLockWait(sql, `%message_claim_idx ON "${schema}"%`)
        yield* insertMessage(sql, schema, "during-build").pipe(Effect.timeout(hangGuard))
        expect(waitEvent).toBe("virtualxid")
        yield* host.release
        yield* Fiber.join(migration).pipe(Effect.timeout(hangGuard))
        const claim = (yield* indexStates(sql, schema)).find((index) => index.name === "message_claim_idx")
        expect(claim?.valid).toBe(true)
        expect(claim?.def).toContain("(queue, priority DESC, msg_id) WHERE (state = 'ready'::text)")
        expect(yield* recordedVersion(sql, schema)).toBe(schemaVersion)
      }))

    it.effect("an invalid index left by an interrupted build is dropped and rebuilt", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate_invalid")
        yield* migrate(schema)
        yield* insertMessage(sql, schema)
        yield* insertMessage(sql, schema)
        yield* sql.unsafe(`DROP INDEX "${schema}".message_claim_idx`)
        // A failed CONCURRENTLY build leaves its index behind, INVALID: here a unique one over duplicates.
        yield* sql.unsafe(
          `CREATE UNIQUE INDEX CONCURRENTLY message_claim_idx ON "${schema}".message (queue) WHERE state = 'ready'`
        ).pipe(Effect.flip)
        expect((yield* indexStates(sql, schema)).find((i) => i.name === "message_claim_idx")?.valid).toBe(false)
        yield* sql.unsafe(`DROP TABLE IF EXISTS "${schema}".schema_version`)
        yield* migrate(schema)
        const claim = (yield* indexStates(sql, schema)).find((index) => index.name === "message_claim_idx")
        expect(claim?.valid).toBe(true)
        expect(claim?.def).toContain("(queue, priority DESC, msg_id) WHERE (state = 'ready'::text)")
        expect(claim?.def).not.toContain("UNIQUE")
      }))

    it.effect("an index another process is building is waited for, never dropped", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate_building")
        yield* migrate(schema)
        yield* sql.unsafe(`DROP INDEX "${schema}".message_claim_idx`)
        yield* sql.unsafe(`UPDATE "${schema}".schema_version SET version = 0`)
        const host = yield* openTransaction(insertMessage(sql, schema))
        // Another process's build: INVALID until the host's transaction ends.
        const other = yield* sql.unsafe(
          `CREATE INDEX CONCURRENTLY message_claim_idx ON "${schema}".message (queue, priority DESC, msg_id)
           WHERE state = 'ready'`
        ).pipe(Effect.forkScoped)
        yield* awaitLockWait(sql, `%message_claim_idx ON "${schema}"%`)
        const failure = yield* migrate(schema, { attempts: 2 }).pipe(Effect.flip)
        expect(failure.message).toContain("still being built by another process")
        yield* host.release
        yield* Fiber.join(other).pipe(Effect.timeout(hangGuard))
        expect((yield* indexStates(sql, schema)).find((index) => index.name === "message_claim_idx")?.valid).toBe(true)
        expect(yield* migrate(schema)).toEqual({ version: schemaVersion, applied: 0 })
        expect(yield* recordedVersion(sql, schema)).toBe(schemaVersion)
      }))

    it.effect("several processes upgrading at once build each missing index once", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate_race")
        yield* migrate(schema)
        for (const index of ["message_claim_idx", "message_claimed_vt_idx", "dead_letter_queue_idx"]) {
          yield* sql.unsafe(`DROP INDEX "${schema}".${index}`)
        }
        yield* sql.unsafe(`UPDATE "${schema}".schema_version SET version = 0`)
        const results = yield* Effect.all(Array.from({ length: 4 }, () => migrate(schema)), {
          concurrency: "unbounded"
        })
        expect(results.every((result) => result.version === schemaVersion)).toBe(true)
        const indexes = yield* indexStates(sql, schema)
        expect(indexes.every((index) => index.valid)).toBe(true)
        expect(indexes.map((index) => index.name)).toEqual(
          expect.arrayContaining(["message_claim_idx", "message_claimed_vt_idx", "dead_letter_queue_idx"])
        )
        expect(yield* recordedVersion(sql, schema)).toBe(schemaVersion)
      }))

    it.effect("an older recorded version gets the missing column, within lock_timeout", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = yield* freshSchema("migrate_column")
        yield* migrate(schema)
        yield* sql.unsafe(`ALTER TABLE "${schema}".process DROP COLUMN stale_seconds`)
        yield* sql.unsafe(`UPDATE "${schema}".schema_version SET version = 0`)
        // A host transaction writes to process: ADD COLUMN needs ACCESS EXCLUSIVE and gives up after lock_timeout.
        const host = yield* openTransaction(
          sql`INSERT INTO ${sql(`${schema}.process`)} (process_id, kind, host, pid) VALUES ('p', 'worker', 'h', 1)`
        )
        const failure = yield* migrate(schema, { lockTimeout: "50 millis", attempts: 2 }).pipe(Effect.flip)
        expect(failure._tag).toBe("MigrationFailed")
        expect(failure.message).toContain(`ACCESS EXCLUSIVE lock on "${schema}".process`)
        expect(failure.message).toContain("2 attempts")
        expect(yield* host.state).toBe("idle in transaction")
        expect(yield* recordedVersion(sql, schema)).toBe(0)
        yield* host.release
        const result = yield* migrate(schema)
        expect(result).toEqual({ version: schemaVersion, applied: 1 })
        const columns = yield* sql<{ column_name: string }>`
          SELECT column_name FROM information_schema.columns
          WHERE table_schema = ${schema} AND table_name = 'process' AND column_name = 'stale_seconds'`
        expect(columns.length).toBe(1)
        expect(yield* recordedVersion(sql, schema)).toBe(schemaVersion)
      }))

    it.effect("upgrades a database created before versions were recorded to what a fresh migrate creates", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const legacy = yield* freshSchema("migrate_legacy")
        const fresh = yield* freshSchema("migrate_fresh")
        const before = readFileSync(new URL("fixtures/schema-before-versioning.sql", import.meta.url), "utf8")
        for (const statement of splitStatements(before)) yield* sql.unsafe(statement.replace(/\bpgq\b/g, `"${legacy}"`))
        yield* insertMessage(sql, legacy, "kept")
        yield* sql`INSERT INTO ${sql(`${legacy}.process`)} (process_id, kind, host, pid) VALUES ('p', 'worker', 'h', 1)`
        yield* migrate(legacy)
        yield* migrate(fresh)
        expect(yield* describeSchema(sql, legacy)).toEqual(yield* describeSchema(sql, fresh))
        expect(yield* recordedVersion(sql, legacy)).toBe(schemaVersion)
        const kept = yield* sql<{ n: number }>`
          SELECT count(*)::int AS n FROM ${sql(`${legacy}.message`)} WHERE queue = 'kept'`
        expect(kept[0].n).toBe(1)
        const process = yield* sql<{ heartbeat_seconds: number; stale_seconds: number }>`
          SELECT heartbeat_seconds, stale_seconds FROM ${sql(`${legacy}.process`)}`
        expect(process).toEqual([{ heartbeat_seconds: 2, stale_seconds: 10 }])
      }))

    it.effect("rejects a schema name that is not a lower-case SQL identifier, naming `schema`", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const upper = uniqueSchema("Migrate").toUpperCase()
        yield* Effect.addFinalizer(() => sql.unsafe(`DROP SCHEMA IF EXISTS "${upper}" CASCADE`).pipe(Effect.ignore))
        for (const bad of [upper, "has-dash", `x"."y`, "", "a".repeat(64), "1digit", "white space"]) {
          const failure = yield* migrate(bad).pipe(Effect.flip)
          expect(failure._tag, bad).toBe("InvalidConfig")
          expect(failure.message, bad).toMatch(/^schema: /)
        }
        const options = yield* migrate("fine", { attempts: 0 }).pipe(Effect.flip)
        expect(options.message).toMatch(/^attempts: /)
      }))
  }
)

layer(Database.layer({ url: Redacted.make(databaseUrl()), maxConnections: 4, pgbouncer: true }), {
  excludeTestServices: true
})("migrate without prepared statements (PgBouncer)", (it) => {
  it.effect("creates, upgrades and builds CONCURRENTLY", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const schema = yield* freshSchema("migrate_bouncer")
      yield* migrate(schema)
      yield* sql.unsafe(`DROP INDEX "${schema}".message_claim_idx`)
      yield* sql.unsafe(`ALTER TABLE "${schema}".message DROP COLUMN claim_token`)
      yield* sql.unsafe(`DROP TABLE "${schema}".schema_version`)
      expect(yield* migrate(schema)).toEqual({ version: schemaVersion, applied: 3 })
      expect((yield* indexStates(sql, schema)).every((index) => index.valid)).toBe(true)
      expect(yield* migrate(schema)).toEqual({ version: schemaVersion, applied: 0 })
    }))
})
