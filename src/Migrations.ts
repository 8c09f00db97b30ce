/**
 * Applies schema.sql idempotently: splits it into statements (the driver speaks only the extended
 * protocol, one statement per query), substitutes the schema name, and runs them in one transaction.
 * Several processes may migrate at once: a lost catalog race is retried, and the statements are
 * all IF NOT EXISTS, so the loser finds the winner's tables.
 */
import { Effect, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { readFileSync } from "node:fs"
import { reasonOf } from "./Database.ts"
import { MigrationFailed } from "./Errors.ts"

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

/** schema.sql with the `pgq` placeholder replaced by the configured schema. */
export const schemaStatements = (schema: string): ReadonlyArray<string> =>
  splitStatements(readFileSync(schemaFile, "utf8")).map((statement) =>
    statement.replace(/\bpgq\b/g, `"${schema}"`)
  )

// 23505 unique_violation (concurrent CREATE on the catalog), 40P01 deadlock, 40001 serialization.
const isCatalogRace = (error: unknown) =>
  ["23505", "40P01", "40001", "42P07", "42P06"].includes(
    String((error as { reason?: { cause?: { code?: unknown } } }).reason?.cause?.code ?? "")
  )

/** Apply schema.sql to `schema`; returns the number of statements run. */
export const migrate = Effect.fn("Migrations.migrate")(function*(schema: string) {
  const sql = yield* SqlClient.SqlClient
  const statements = schemaStatements(schema)
  const runAll = Effect.forEach(statements, (statement) =>
    sql.unsafe(statement).pipe(Effect.mapError((error) => ({ statement, error }))), { discard: true })
  yield* sql.withTransaction(runAll).pipe(
    Effect.retry({
      schedule: Schedule.exponential("20 millis"),
      times: 8,
      while: (failure) => "statement" in failure && isCatalogRace(failure.error)
    }),
    Effect.mapError((failure) =>
      "statement" in failure
        ? new MigrationFailed({ statement: failure.statement, reason: reasonOf(failure.error) })
        : new MigrationFailed({ statement: "BEGIN/COMMIT", reason: reasonOf(failure) })
    )
  )
  // Fresh statistics keep the claim on its partial index from the first poll on.
  yield* sql.unsafe(`ANALYZE "${schema}".message`).pipe(Effect.ignore)
  return statements.length
})
