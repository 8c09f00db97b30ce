import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import * as Database from "../src/Database.ts"
import { migrate, schemaStatements, splitStatements } from "../src/Migrations.ts"
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
})

layer(Database.layer({ url: Redacted.make(databaseUrl()), maxConnections: 8 }), { excludeTestServices: true })(
  "migrate",
  (it) => {
    it.effect("is idempotent and safe when several processes migrate at once", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const schema = uniqueSchema("migrate")
        yield* Effect.addFinalizer(() => sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).pipe(Effect.ignore))
        const counts = yield* Effect.all(Array.from({ length: 6 }, () => migrate(schema)), { concurrency: "unbounded" })
        expect(new Set(counts).size).toBe(1)
        yield* migrate(schema)
        const tables = yield* sql<{ table_name: string }>`
          SELECT table_name FROM information_schema.tables WHERE table_schema = ${schema} ORDER BY table_name`
        expect(tables.map((t) => t.table_name)).toEqual([
          "barrier",
          "barrier_batch",
          "dead_letter",
          "execution",
          "lease",
          "message",
          "process"
        ])
      }))
  }
)
