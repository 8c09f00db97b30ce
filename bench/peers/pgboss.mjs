// pg-boss in `npm run bench -- --peers`: the client side (install, enqueue, count) and its profiles.
// The types are bench/peers/driver.ts (PeerModule); the worker is bench/peers/pgboss-worker.mjs.
import { readFileSync } from "node:fs"
import pg from "pg"
import { PgBoss } from "pg-boss"

export const name = "pg-boss"
export const version = JSON.parse(readFileSync(new URL("./node_modules/pg-boss/package.json", import.meta.url), "utf8")).version
export const profiles = ["defaults", "best"]

/**
 * Jobs per fetch in the best profile's drain (pg-boss runs a fetched batch in one handler call and completes it in
 * one statement). Its docs name no value; 50 per slot × 10 slots holds 500 jobs per process, as many as
 * graphile-worker's documented local queue. Measured on the 1 × 10 drain (2 runs): 10 → 8.2k jobs/s, 50 → 19.6k,
 * 100 → 23.5k, 200 → 24.6k (2,000 jobs held per process).
 */
const BATCH_SIZE = Number(process.env.BENCH_PGBOSS_BATCH_SIZE ?? 50)

/**
 * The documented knobs, per task (each task is one scenario's queue).
 * best: LISTEN/NOTIFY (`useListenNotify` + the queue's `notify`), the minimum polling intervals (0.5 s, also while
 * NOTIFY is active: `notifyPollingIntervalSeconds` is 30 s by default, and a job freed by the heartbeat monitor
 * is announced by no NOTIFY), and
 *  - drain: `batchSize` with `burstWhenBatchFull` (fetch again at once while batches come back full);
 *  - rescue: the minimum job heartbeat (`heartbeatSeconds: 10`) checked by the monitor every second (the
 *    minimum `monitorIntervalSeconds` / `superviseIntervalSeconds`); without a heartbeat a job is retried only
 *    after `expireInSeconds` (15 minutes by default).
 */
const settingsOf = (profile, task, concurrency) => {
  if (profile === "defaults") return { boss: {}, queue: {}, work: { localConcurrency: concurrency } }
  const poll = { pollingIntervalSeconds: 0.5, notifyPollingIntervalSeconds: 0.5 }
  switch (task) {
    case "noop":
      return {
        boss: { useListenNotify: true },
        queue: { notify: true },
        work: { localConcurrency: concurrency, batchSize: BATCH_SIZE, burstWhenBatchFull: true, ...poll }
      }
    case "latency":
      return { boss: { useListenNotify: true }, queue: { notify: true }, work: { localConcurrency: concurrency, ...poll } }
    case "long":
      return {
        boss: { useListenNotify: true, monitorIntervalSeconds: 1, superviseIntervalSeconds: 1 },
        queue: { notify: true, heartbeatSeconds: 10 },
        work: { localConcurrency: concurrency, ...poll }
      }
  }
  throw new Error(`pg-boss: unknown task ${task}`)
}

const TASKS = ["noop", "latency", "long"]

export const make = async ({ profile, recordSchema, schema, url }) => {
  if (!profiles.includes(profile)) throw new Error(`pg-boss: unknown profile ${profile}`)
  let boss
  const admin = new pg.Pool({ connectionString: url, max: 2, application_name: "bench-pgboss-admin" })
  const query = async (text, values) => (await admin.query(text, values)).rows

  const stopBoss = async () => {
    if (boss !== undefined) await boss.stop({ graceful: false, close: true })
    boss = undefined
  }

  return {
    settings: (task) => JSON.stringify(settingsOf(profile, task, "c")),
    reset: async () => {
      await stopBoss()
      await query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
      // The bench's client: it enqueues; maintenance and scheduling belong to the workers.
      boss = new PgBoss({ connectionString: url, schema, supervise: false, schedule: false, application_name: "bench-pgboss" })
      boss.on("error", (error) => console.error(`pg-boss client: ${error.message}`))
      await boss.start()
      for (const task of TASKS) await boss.createQueue(task, settingsOf(profile, task, 1).queue)
    },
    send: async (task, i) => {
      await boss.send(task, { i })
    },
    sendMany: async (task, from, count) => {
      await boss.insert(task, Array.from({ length: count }, (_, k) => ({ data: { i: from + k } })))
    },
    pending: async (task) =>
      (await query(`SELECT count(*)::int AS n FROM "${schema}".job WHERE name = $1 AND state < 'completed'`, [task]))[0].n,
    analyze: async () => {
      await query(`ANALYZE "${schema}".job, "${schema}".queue`)
    },
    gateTables: () => [`"${schema}".job`],
    worker: (task, concurrency) => {
      const { boss: bossOptions, work } = settingsOf(profile, task, concurrency)
      return {
        args: ["bench/peers/pgboss-worker.mjs"],
        readyLine: "bench-worker ready",
        env: {
          DATABASE_URL: url,
          BENCH_SCHEMA: schema,
          BENCH_RECORD_SCHEMA: recordSchema,
          BENCH_TASK: task,
          BENCH_OPTIONS: JSON.stringify({ boss: bossOptions, work })
        }
      }
    },
    drop: async () => {
      await stopBoss()
      await query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
    },
    close: async () => {
      await stopBoss()
      await admin.end()
    }
  }
}
