// graphile-worker in `npm run bench -- --peers`: the client side (install, enqueue, count) and its profiles.
// The types are bench/peers/driver.ts (PeerModule); the worker is bench/peers/graphile-worker.mjs.
import { makeWorkerUtils } from "graphile-worker"
import { readFileSync } from "node:fs"
import pg from "pg"

export const name = "graphile-worker"
export const version = JSON.parse(readFileSync(new URL("./node_modules/graphile-worker/package.json", import.meta.url), "utf8")).version
export const profiles = ["defaults", "best"]

/** Its performance page's configuration (https://worker.graphile.org/docs/performance): localQueue 500, delays 0. */
const LOCAL_QUEUE = Number(process.env.BENCH_GRAPHILE_LOCAL_QUEUE ?? 500)
const COMPLETE_BATCH_DELAY = Number(process.env.BENCH_GRAPHILE_COMPLETE_DELAY ?? 0)

/**
 * best is the configuration of graphile-worker's performance page: a `localQueue` of 500 jobs fetched and locked in
 * one statement and served to the job slots without a round trip, completions and failures batched
 * (`completeJobBatchDelay` / `failJobBatchDelay` 0: whatever completed meanwhile goes in one statement), the pool at
 * `concurrency + 2` (at least 10) as `maxPoolSize`'s docs advise, and a logger for warnings only (the default one
 * writes a line per completed job). Measured on the 1 × 10 drain (2 runs): localQueue 11 (its "starting point",
 * concurrency + 1) 11.5k jobs/s, 50 24.5k, 500 39k; a delay of 250 ms instead of 0 was slower at 500 (33k).
 * graphile-worker has no automatic rescue of a killed worker's jobs: they stay locked for 4 hours unless an
 * operator calls `forceUnlockWorkers`.
 */
const settingsOf = (profile, concurrency) =>
  profile === "defaults"
    ? { run: { concurrency }, preset: {}, quiet: false }
    : {
      run: { concurrency, maxPoolSize: Math.max(10, concurrency + 2) },
      preset: {
        localQueue: { size: LOCAL_QUEUE },
        completeJobBatchDelay: COMPLETE_BATCH_DELAY,
        failJobBatchDelay: COMPLETE_BATCH_DELAY
      },
      quiet: true
    }

export const make = async ({ profile, recordSchema, schema, url }) => {
  if (!profiles.includes(profile)) throw new Error(`graphile-worker: unknown profile ${profile}`)
  const admin = new pg.Pool({ connectionString: url, max: 2, application_name: "bench-graphile-admin" })
  const query = async (text, values) => (await admin.query(text, values)).rows
  let utils

  const release = async () => {
    if (utils !== undefined) await utils.release()
    utils = undefined
  }

  return {
    settings: () => JSON.stringify(settingsOf(profile, "c")),
    reset: async () => {
      await release()
      await query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
      utils = await makeWorkerUtils({ connectionString: url, schema })
      await utils.migrate()
    },
    send: async (task, i) => {
      await utils.addJob(task, { i })
    },
    sendMany: async (task, from, count) => {
      await utils.addJobs(Array.from({ length: count }, (_, k) => ({ identifier: task, payload: { i: from + k } })))
    },
    pending: async (task) =>
      (await query(
        `SELECT count(*)::int AS n FROM "${schema}"._private_jobs j
         JOIN "${schema}"._private_tasks t ON t.id = j.task_id WHERE t.identifier = $1`,
        [task]
      ))[0].n,
    analyze: async () => {
      await query(`ANALYZE "${schema}"._private_jobs, "${schema}"._private_tasks, "${schema}"._private_job_queues`)
    },
    gateTables: () => [`"${schema}"._private_jobs`],
    worker: (task, concurrency) => ({
      args: ["bench/peers/graphile-worker.mjs"],
      readyLine: "bench-worker ready",
      env: {
        DATABASE_URL: url,
        BENCH_SCHEMA: schema,
        BENCH_RECORD_SCHEMA: recordSchema,
        BENCH_TASK: task,
        BENCH_OPTIONS: JSON.stringify(settingsOf(profile, concurrency))
      }
    }),
    drop: async () => {
      await release()
      await query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`)
    },
    close: async () => {
      await release()
      await admin.end()
    }
  }
}
