/**
 * `node bench/commit-mode.ts`: what the asynchronous commit of claims and acks buys (`Queue.layer`'s
 * `asyncCommit`, see `relaxedCommit` in src/Queue.ts). Since claims carry a token, a claim undone by a crash
 * is harmless, and this measures the price of the alternative: durable claims and acks.
 *
 * For each mode, BENCH_RUNS (3) times, alternating the modes: a fresh schema with BENCH_JOBS (20,000) ready
 * jobs (enqueued durably, then ANALYZE and CHECKPOINT), drained by `claim` (limit 10) + `ackMany` in a loop
 * on one connection, timed from the first claim to the empty claim -> jobs/s, median and min..max. Also
 * shows the WAL flushes per job (pg_stat_wal.wal_sync, all processes), which tell the modes apart.
 *
 * Database: BENCH_DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test. The schema pgq_bench_commit is
 * dropped at the end. The server's synchronous_commit and fsync must be on for durable commits to cost
 * anything; they are printed.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Console, Duration, Effect, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import * as Database from "../src/Database.ts"
import { migrate } from "../src/Migrations.ts"
import { Queue } from "../src/Queue.ts"

const URL = process.env.BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const SCHEMA = "pgq_bench_commit"
const JOBS = Number(process.env.BENCH_JOBS ?? 20_000)
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const LIMIT = 10
const BATCH = 5_000

const queueLayer = (asyncCommit: boolean) => Queue.layer({ schema: SCHEMA, maxAttempts: 5, notify: false, asyncCommit })

/** A fresh schema holding JOBS ready jobs, settled so that no checkpoint or stale plan lands in the run. */
const load = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const queue = yield* Queue
  yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`)
  yield* migrate(SCHEMA)
  yield* Effect.forEach(
    Array.from({ length: Math.ceil(JOBS / BATCH) }, (_, b) => Math.min(BATCH, JOBS - b * BATCH)),
    (n) => queue.enqueueMany(Array.from({ length: n }, (_, i) => ({ task: "noop", payload: { i } }))),
    { discard: true }
  )
  yield* sql.unsafe(`ANALYZE "${SCHEMA}".message`)
  yield* sql.unsafe("CHECKPOINT").pipe(Effect.ignore) // superuser only; harmless without
}).pipe(Effect.provide(queueLayer(false)))

/** WAL flushes so far, by every process (this backend's counters flushed first). */
const walSyncs = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`SELECT pg_stat_force_next_flush()`
  const [row] = yield* sql<{ n: number }>`SELECT wal_sync::float8 AS n FROM pg_stat_wal`
  return row!.n
})

/** Claim 10 + ack them until the queue is empty: jobs/s and WAL flushes per job. */
const drain = (asyncCommit: boolean) =>
  Effect.gen(function*() {
    const queue = yield* Queue
    const step = queue.claim({ queues: ["default"], limit: LIMIT, leaseSeconds: 30, processId: "bench" }).pipe(
      Effect.tap((jobs) => queue.ackMany(jobs)),
      Effect.map((jobs) => jobs.length)
    )
    const syncsBefore = yield* walSyncs
    const [elapsed] = yield* step.pipe(Effect.repeat({ until: (n) => n === 0 }), Effect.timed)
    const syncs = (yield* walSyncs) - syncsBefore
    return { jobsPerSecond: JOBS / Duration.toSeconds(elapsed), flushesPerJob: syncs / JOBS }
  }).pipe(Effect.provide(queueLayer(asyncCommit)))

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const fmt = (n: number) => Math.round(n).toLocaleString("en-US")

const program = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [settings] = yield* sql<{ version: string; synchronous_commit: string; fsync: string }>`
    SELECT current_setting('server_version') AS version, current_setting('synchronous_commit') AS synchronous_commit,
           current_setting('fsync') AS fsync`
  yield* Console.log(
    `commit-mode: ${Database.describeTarget(Redacted.make(URL))}, Postgres ${settings!.version}, ` +
      `synchronous_commit=${settings!.synchronous_commit}, fsync=${settings!.fsync}; ${JOBS} jobs, claim(${LIMIT}) + ackMany, ${RUNS} runs`
  )
  const results = { async: [] as Array<number>, durable: [] as Array<number> }
  for (let run = 1; run <= RUNS; run++) {
    for (const asyncCommit of [true, false]) {
      yield* load
      const r = yield* drain(asyncCommit)
      results[asyncCommit ? "async" : "durable"].push(r.jobsPerSecond)
      yield* Console.log(
        `  run ${run} ${asyncCommit ? "asyncCommit: true " : "asyncCommit: false"}: ${fmt(r.jobsPerSecond)} jobs/s, ` +
          `${r.flushesPerJob.toFixed(3)} WAL flushes per job`
      )
    }
  }
  yield* sql.unsafe(`DROP SCHEMA IF EXISTS "${SCHEMA}" CASCADE`)
  for (const [mode, xs] of Object.entries(results)) {
    yield* Console.log(`${mode.padEnd(8)} median ${fmt(median(xs))} jobs/s (${fmt(Math.min(...xs))}..${fmt(Math.max(...xs))})`)
  }
  yield* Console.log(`async / durable: ${(median(results.async) / median(results.durable)).toFixed(2)}x`)
}).pipe(
  Effect.provide(Database.layer({ url: Redacted.make(URL), maxConnections: 1, applicationName: "pgq-bench-commit-mode" }))
)

NodeRuntime.runMain(program)
