// A graphile-worker process for `npm run bench -- --peers`: runs the bench's three tasks with the profile's
// options (BENCH_OPTIONS: { run, preset, quiet }), prints "bench-worker ready" once running; graphile-worker
// handles SIGTERM itself (graceful shutdown). The handlers match bench/tasks.ts: noop; latency records
// clock_timestamp() - created_at on the server; long records its start and runs for an hour.
import { Logger, run } from "graphile-worker"

const env = process.env
const schema = env.BENCH_SCHEMA
const record = env.BENCH_RECORD_SCHEMA
const options = JSON.parse(env.BENCH_OPTIONS)

const quietLogger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`${level}: ${message}`)
})

const taskList = {
  noop: async () => {},
  latency: async (payload, helpers) => {
    await helpers.query(
      `INSERT INTO "${record}".latency (i, seconds)
       SELECT $1, extract(epoch FROM clock_timestamp() - created_at)::float8
       FROM "${schema}"._private_jobs WHERE id = $2
       ON CONFLICT (i) DO NOTHING`,
      [payload.i, helpers.job.id]
    )
  },
  long: async (payload, helpers) => {
    await helpers.query(`INSERT INTO "${record}".started (i, pid) VALUES ($1, $2)`, [payload.i, process.pid])
    await new Promise((resolve) => setTimeout(resolve, 3_600_000))
  }
}

const runner = await run({
  connectionString: env.DATABASE_URL,
  schema,
  taskList,
  ...options.run,
  ...(options.quiet ? { logger: quietLogger } : {}),
  preset: { worker: options.preset }
})
console.log(`bench-worker ready: graphile-worker ${env.BENCH_TASK} ${JSON.stringify(options)}`)
await runner.promise
