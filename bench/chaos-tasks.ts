/**
 * Task module of `npm run chaos` (bench/chaos.ts): `PGQ_TASKS=./bench/chaos-tasks.ts`.
 *
 * `chaos.job` records every run in `<schema>.chaos_run`: a row (msg_id, attempt, pid) when the handler starts,
 * then it sleeps the payload's `ms` (so SIGKILLs land mid-job), then it stamps `finished_at`. Each statement
 * commits on its own, so a run cut short by a SIGKILL stays visible as a started, unfinished row: the harness
 * reads lost jobs, same-attempt double runs and re-runs from this table alone.
 */
import { Duration, Effect, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { pathToFileURL } from "node:url"
import type { JobContext } from "../src/Task.ts"

// The harness points CHAOS_TASK_LIB at the Task.js of the dist/ copy its workers run, so that the tasks are
// defined by the code under test even when src/ changes during a run.
const lib = process.env.CHAOS_TASK_LIB
const Task: typeof import("../src/Task.ts") = await import(lib === undefined ? "../src/Task.ts" : pathToFileURL(lib).href)

const schema = process.env.PGQ_SCHEMA ?? "pgq_chaos"

/**
 * The side tables (the harness's, and the tests' that reuse these tasks). `alongside` counts the runs of the
 * same job already running in the same process when this run started: it must always be 0.
 */
export const chaosTables = (schema: string): ReadonlyArray<string> => [
  `CREATE TABLE "${schema}".chaos_job (msg_id bigint PRIMARY KEY)`,
  `CREATE TABLE "${schema}".chaos_run (
    run_id      integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id      bigint      NOT NULL,
    attempt     integer     NOT NULL,
    pid         integer     NOT NULL,
    alongside   integer     NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
  )`,
  `CREATE INDEX ON "${schema}".chaos_run (msg_id, attempt)`,
  `CREATE TABLE "${schema}".chaos_callback (
    msg_id       bigint      NOT NULL,
    execution_id text        NOT NULL,
    results      jsonb       NOT NULL,
    ran_at       timestamptz NOT NULL DEFAULT clock_timestamp()
  )`
]

/** Runs of each job in this process right now. */
const runningHere = new Map<string, number>()
const track = (msgId: string, delta: number) =>
  Effect.sync(() => {
    const now = (runningHere.get(msgId) ?? 0) + delta
    if (now === 0) runningHere.delete(msgId)
    else runningHere.set(msgId, now)
    return now - delta
  })

/** Record a run in `chaos_run`, sleep `ms` (so kills land mid-job), then stamp its end. */
const recordRun = (ms: number, job: JobContext) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const runs = sql(`${schema}.chaos_run`)
    const alongside = yield* track(job.msgId, 1)
    const [run] = yield* sql<{ run_id: number }>`
      INSERT INTO ${runs} (msg_id, attempt, pid, alongside)
      VALUES (${job.msgId}::bigint, ${job.attempt}, ${process.pid}, ${alongside})
      RETURNING run_id`
    yield* Effect.sleep(Duration.millis(ms))
    yield* sql`UPDATE ${runs} SET finished_at = clock_timestamp() WHERE run_id = ${run!.run_id}`
  }).pipe(Effect.ensuring(track(job.msgId, -1)))

export const chaosJob = Task.define({
  name: "chaos.job",
  payload: Schema.Struct({ i: Schema.Number, ms: Schema.Number }),
  handler: ({ ms }, job) => recordRun(ms, job)
})

/** A batch of a fan-out: recorded like `chaos.job`, and its result is its index. */
export const chaosPart = Task.define({
  name: "chaos.part",
  payload: Schema.Struct({ i: Schema.Number, ms: Schema.Number }),
  result: Schema.Struct({ i: Schema.Number }),
  handler: ({ i, ms }, job) => recordRun(ms, job).pipe(Effect.as({ i }))
})

/** The fan-out's callback: records the results it received (`chaos_callback`). */
export const chaosGather = Task.define({
  name: "chaos.gather",
  payload: Schema.Struct({ executionId: Schema.String, results: Schema.Array(Schema.Struct({ i: Schema.Number })), context: Schema.Unknown }),
  handler: ({ executionId, results }, job) =>
    SqlClient.SqlClient.use((sql) =>
      sql`INSERT INTO ${sql(`${schema}.chaos_callback`)} (msg_id, execution_id, results)
          VALUES (${job.msgId}::bigint, ${executionId}, ${JSON.stringify(results.map((r) => r.i))}::jsonb)`
    )
})

export default Task.registry(chaosJob, chaosPart, chaosGather)
