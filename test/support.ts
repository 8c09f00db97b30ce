/**
 * Per-file isolation: every test file migrates its own schema on the shared test server and drops it
 * afterwards, so files run in parallel without seeing each other's rows.
 */
import { inject } from "@effect/vitest"
import { Context, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { Barrier } from "../src/Barrier.ts"
import * as Database from "../src/Database.ts"
import * as ExecutionStatus from "../src/ExecutionStatus.ts"
import { makeLeaderLease } from "../src/LeaderLease.ts"
import { migrate } from "../src/Migrations.ts"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import { Queue } from "../src/Queue.ts"
import type * as Task from "../src/Task.ts"
import { Worker, type WorkerOptions } from "../src/Worker.ts"

export class TestSchema extends Context.Service<TestSchema, { readonly schema: string; readonly url: string }>()(
  "test/TestSchema"
) {}

export const databaseUrl = (): string => inject("databaseUrl")

export const uniqueSchema = (prefix: string) =>
  `t_${prefix.replace(/[^a-z0-9_]/g, "_")}_${Math.random().toString(36).slice(2, 8)}`

/** A migrated schema of its own, dropped when the layer is released. */
export const schemaLayer = (prefix: string) =>
  Layer.effect(
    TestSchema,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const schema = uniqueSchema(prefix)
      yield* Effect.acquireRelease(migrate(schema), () =>
        sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).pipe(Effect.ignore))
      return { schema, url: databaseUrl() }
    })
  )

export interface TestDbOptions {
  readonly pgbouncer?: boolean
  readonly maxConnections?: number
  readonly maxAttempts?: number
}

/**
 * SqlClient + PgClient + TestSchema + Queue over a fresh schema, and the Barrier with the SQL execution-status
 * store (what a worker needs besides its process registration).
 */
export const testDb = (prefix: string, options: TestDbOptions = {}) => {
  const db = Database.layer({
    url: Redacted.make(databaseUrl()),
    pgbouncer: options.pgbouncer ?? false,
    maxConnections: options.maxConnections ?? 8,
    applicationName: `pgq-test-${prefix}`
  })
  const schema = schemaLayer(prefix).pipe(Layer.provideMerge(db))
  const services = Layer.unwrap(
    TestSchema.use(({ schema }) =>
      Effect.succeed(
        Barrier.layer({ schema, ttlSeconds: 3600 }).pipe(
          Layer.provideMerge(ExecutionStatus.ExecutionStatus.layerSql(schema)),
          Layer.provideMerge(Queue.layer({ schema, maxAttempts: options.maxAttempts ?? 5 }))
        )
      )
    )
  )
  return services.pipe(Layer.provideMerge(schema))
}

/**
 * The lease SQL on this file's schema, its table, and `age`: pretend `seconds` passed on the server clock for
 * a lease row (the server clock cannot move, the data can).
 */
export const leaseFixture = Effect.gen(function*() {
  const { schema } = yield* TestSchema
  const sql = yield* SqlClient.SqlClient
  const leases = yield* makeLeaderLease({ schema })
  const table = sql(`${schema}.lease`)
  const age = (name: string, seconds: number) =>
    sql`UPDATE ${table}
        SET expires_at = expires_at - ${seconds}::float8 * interval '1 second',
            acquired_at = acquired_at - ${seconds}::float8 * interval '1 second'
        WHERE name = ${name}`
  return { schema, sql, leases, table, age }
})

/** Worker options for tests: fast polls, short heartbeats, a 30 s lease. */
export const options = (schema: string, queue: string, overrides: Partial<WorkerOptions> = {}): WorkerOptions => ({
  schema,
  queues: [queue],
  concurrency: 4,
  leaseSeconds: 30,
  maxAttempts: 5,
  pollIntervalMs: 10,
  pollMaxMs: 50,
  shutdownGraceSeconds: 5,
  heartbeatSeconds: 1,
  processStaleSeconds: 5,
  ...overrides
})

/** What a handler is told about its job, for tests that run `Task.execute` directly. */
export const jobContext: Task.JobContext = {
  msgId: "1",
  task: "t",
  queue: "q",
  attempt: 1,
  maxAttempts: 5,
  orgId: "",
  enqueuedAt: new Date(0),
  executionId: null,
  batchIndex: null
}

/** Run a worker for the duration of `body`, in a scope of its own. */
export const withWorker = <R, A, E, R2>(
  registry: Task.TaskRegistry<R>,
  opts: (schema: string) => WorkerOptions,
  body: Effect.Effect<A, E, R2>
) =>
  Effect.gen(function*() {
    const { schema } = yield* TestSchema
    return yield* body.pipe(
      Effect.provide(Worker.layer(registry, opts(schema)).pipe(Layer.provide(ProcessRegistry.layer(schema))))
    )
  })
