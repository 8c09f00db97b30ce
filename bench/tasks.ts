/**
 * Bench task module: `PGQ_TASKS=./bench/tasks.ts` (Node 24 imports .ts directly).
 *
 * `bench.latency` records, on the server clock, how long the job waited between its enqueue
 * (`message.enqueued_at`, the enqueueing transaction's now()) and the moment its handler started
 * (`clock_timestamp()` of this statement), into `<record schema>.latency` under its payload's `i`. The row is
 * still in `message` while the handler runs (it is deleted by the ack), so one INSERT … SELECT reads and
 * records it. The record schema is `BENCH_RECORD_SCHEMA`, else `PGQ_SCHEMA`; the peers' tasks
 * (bench/peers/*-worker.mjs) record the same way from their own job tables.
 *
 * `bench.long` records its start (`i`, this process's pid) into `<record schema>.started` and then runs for an
 * hour: the rescue scenario SIGKILLs a worker holding such jobs and waits for them to start again elsewhere.
 *
 * `bench.part` and `bench.gather` are the fan-in scenario's batch and callback: the batch does nothing and
 * returns `{ i }` (its index, a small result to store and gather); the callback records how many results it
 * received into `<schema>.fanin`, so the bench can check that every execution got all its batches' results.
 */
import { Effect, Schema } from "effect"
import { SqlClient } from "effect/sql"
import * as Task from "../src/Task.ts"

const schema = process.env.PGQ_SCHEMA ?? "pgq_bench"
const record = process.env.BENCH_RECORD_SCHEMA ?? schema

const Indexed = Schema.Struct({ i: Schema.Number })

export const latency = Task.define({
  name: "bench.latency",
  payload: Indexed,
  handler: ({ i }, job) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`
        INSERT INTO ${sql(`${record}.latency`)} (i, seconds)
        SELECT ${i}, extract(epoch FROM clock_timestamp() - enqueued_at)::float8
        FROM ${sql(`${schema}.message`)} WHERE msg_id = ${job.msgId}::bigint
        ON CONFLICT (i) DO NOTHING`
    })
})

export const long = Task.define({
  name: "bench.long",
  payload: Indexed,
  handler: ({ i }) =>
    SqlClient.SqlClient.use((sql) => sql`INSERT INTO ${sql(`${record}.started`)} (i, pid) VALUES (${i}, ${process.pid})`).pipe(
      Effect.andThen(Effect.sleep("1 hour"))
    )
})

export const noop = Task.define({ name: "noop", payload: Schema.Unknown, handler: () => Effect.void })

const PartResult = Schema.Struct({ i: Schema.Number })

/** A fan-in batch: no work, its index as its result. */
export const part = Task.define({
  name: "bench.part",
  payload: Schema.Struct({ i: Schema.Number }),
  result: PartResult,
  handler: ({ i }) => Effect.succeed({ i })
})

/**
 * A fan-in callback: records the number of results it was given (a redelivered callback overwrites its row).
 * Its payload is `Barrier.callbackPayload(PartResult, Schema.Unknown)`, spelled out so that this module,
 * which workers import from source, loads as few src/ modules as it can.
 */
export const gather = Task.define({
  name: "bench.gather",
  payload: Schema.Struct({ executionId: Schema.String, results: Schema.Array(PartResult), context: Schema.Unknown }),
  handler: ({ executionId, results }) =>
    SqlClient.SqlClient.use((sql) =>
      sql`INSERT INTO ${sql(`${schema}.fanin`)} (execution_id, results) VALUES (${executionId}, ${results.length})
          ON CONFLICT (execution_id) DO UPDATE SET results = EXCLUDED.results`
    )
})

export default Task.registry(latency, long, noop, part, gather)
