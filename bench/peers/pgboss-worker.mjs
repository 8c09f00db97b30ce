// A pg-boss worker process for `npm run bench -- --peers`: works one queue (BENCH_TASK) with the profile's
// options (BENCH_OPTIONS: { boss, work }), prints "bench-worker ready" once working, stops on SIGTERM.
// The handlers match bench/tasks.ts: noop; latency records clock_timestamp() - created_on on the server;
// long records its start and runs for an hour.
import { PgBoss } from "pg-boss"

const env = process.env
const schema = env.BENCH_SCHEMA
const record = env.BENCH_RECORD_SCHEMA
const task = env.BENCH_TASK
const options = JSON.parse(env.BENCH_OPTIONS)

const boss = new PgBoss({ connectionString: env.DATABASE_URL, schema, ...options.boss })
boss.on("error", (error) => console.error(`pg-boss error: ${error.message}`))
await boss.start()
const db = boss.getDb()

const handlers = {
  noop: async () => {},
  latency: async (job) => {
    await db.executeSql(
      `INSERT INTO "${record}".latency (i, seconds)
       SELECT $1, extract(epoch FROM clock_timestamp() - created_on)::float8
       FROM "${schema}".job WHERE name = 'latency' AND id = $2
       ON CONFLICT (i) DO NOTHING`,
      [job.data.i, job.id]
    )
  },
  long: async (job) => {
    await db.executeSql(`INSERT INTO "${record}".started (i, pid) VALUES ($1, $2)`, [job.data.i, process.pid])
    await new Promise((resolve) => setTimeout(resolve, 3_600_000))
  }
}
const handler = handlers[task]
// A fetched batch runs at once (batchSize 1 unless the profile sets it); pg-boss completes it when this resolves.
await boss.work(task, options.work, (jobs) => Promise.all(jobs.map(handler)))
console.log(`bench-worker ready: pg-boss ${task} ${JSON.stringify(options)}`)

process.once("SIGTERM", () => {
  boss.stop({ graceful: true, timeout: 5_000 }).then(() => process.exit(0), () => process.exit(1))
})
