/**
 * Database outages under real processes: every connection of two dist/worker.js and a dist/reaper.js is
 * killed (pg_terminate_backend) again and again while they drain jobs that record each run. They must log,
 * reconnect and carry on: no job lost, no attempt run twice, no job finished twice.
 *
 * The test works in a database of its own, so killing "every connection" touches no other test file.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Redacted, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import * as Database from "../src/Database.ts"
import { migrate } from "../src/Migrations.ts"
import { Queue } from "../src/Queue.ts"
import { eventually, recordingTasks, spawnNode } from "./processes.ts"
import { databaseUrl } from "./support.ts"

const SCHEMA = "pgq_outage"

/** The test server's URL with another database name. */
const urlOf = (database: string) => {
  const url = new URL(databaseUrl())
  url.pathname = `/${database}`
  return url.toString()
}

const admin = Database.layer({ url: Redacted.make(databaseUrl()), maxConnections: 2, applicationName: "pgq-test-outage-admin" })

layer(admin, { excludeTestServices: true })("database outages", (it) => {
  it.effect("killing every connection again and again: workers and reaper reconnect; nothing lost, nothing run twice", () =>
    Effect.gen(function*() {
      const adminSql = yield* SqlClient.SqlClient
      const database = `pgq_outage_${Math.random().toString(36).slice(2, 8)}`
      yield* Effect.acquireRelease(adminSql.unsafe(`CREATE DATABASE ${database}`), () =>
        adminSql.unsafe(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).pipe(Effect.ignore))
      const url = urlOf(database)

      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* migrate(SCHEMA)
        // The default heartbeat and stale timeout: the outages are short, nobody is pruned.
        const env = yield* recordingTasks(SCHEMA, url, {
          PGQ_HEARTBEAT_SECONDS: "2",
          PGQ_PROCESS_STALE_SECONDS: "10",
          PGQ_CONCURRENCY: "5",
          PGQ_VT_SECONDS: "5",
          PGQ_POLL_INTERVAL_MS: "20",
          PGQ_POLL_MAX_MS: "200",
          PGQ_LEASE_SECONDS: "2",
          PGQ_REAPER_INTERVAL_SECONDS: "0.5"
        })
        const workers = [yield* spawnNode("worker.js", env), yield* spawnNode("worker.js", env)]
        const reaper = yield* spawnNode("reaper.js", env)
        const queue = yield* Queue
        const ids = yield* queue.enqueueMany(
          Array.from({ length: 300 }, (_, i) => ({ task: "chaos.job", payload: { i, ms: 20 + (i % 5) * 15 } }))
        )
        const started = sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${SCHEMA}.chaos_run`)}`
        yield* eventually(started, (rows) => rows[0]!.n > 20)

        // Kill every other session of the database six times, 400 ms apart, while the jobs drain.
        const killAll = sql<{ killed: number }>`
          SELECT count(pg_terminate_backend(pid))::int AS killed FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()`
        const kills = yield* killAll.pipe(
          Effect.map((rows) => rows[0]!.killed),
          Effect.repeat({ schedule: Schedule.spaced("400 millis"), times: 5 }),
          Effect.andThen(Effect.succeed(6))
        )
        expect(kills).toBe(6)

        const left = sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${SCHEMA}.message`)}`
        yield* eventually(left, (rows) => rows[0]!.n === 0)
        const [report] = yield* sql<{ lost: number; twice: number; finishedTwice: number; dead: number }>`
          WITH runs AS (
            SELECT msg_id, attempt, count(*) AS starts, count(finished_at) AS finished
            FROM ${sql(`${SCHEMA}.chaos_run`)} GROUP BY msg_id, attempt
          ), jobs AS (
            SELECT j.id, coalesce(sum(r.finished), 0) AS finished
            FROM unnest(${ids}::bigint[]) AS j(id) LEFT JOIN runs r ON r.msg_id = j.id GROUP BY j.id
          )
          SELECT (SELECT count(*) FROM jobs WHERE finished = 0)::int AS lost,
                 (SELECT count(*) FROM runs WHERE starts > 1)::int AS twice,
                 (SELECT count(*) FROM jobs WHERE finished > 1)::int AS "finishedTwice",
                 (SELECT count(*) FROM ${sql(`${SCHEMA}.dead_letter`)})::int AS dead`
        console.log(`[measure] after 6 rounds of killed connections: ${JSON.stringify(report)}`)
        expect(report).toEqual({ lost: 0, twice: 0, finishedTwice: 0, dead: 0 })
        // All three processes rode it out.
        for (const child of [...workers, reaper]) expect(child.child.exitCode).toBeNull()
      }).pipe(
        Effect.provide(Queue.layer({ schema: SCHEMA, maxAttempts: 5 })),
        // One connection: the one that kills the others is never among them.
        Effect.provide(Database.layer({ url: Redacted.make(url), maxConnections: 1, applicationName: "pgq-test-outage" }))
      )
    }), { timeout: 90_000 })
})
