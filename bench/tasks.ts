/**
 * Bench task module for the latency scenario: `PGQ_TASKS=./bench/tasks.ts` (Node 24 imports .ts directly).
 *
 * `bench.latency` records, on the server clock, how long the job waited between its enqueue
 * (`message.enqueued_at`, the enqueueing transaction's now()) and the moment its handler started
 * (`clock_timestamp()` of this statement), into `<schema>.latency`. The row is still in `message`
 * while the handler runs (it is deleted by the ack), so one INSERT … SELECT reads and records it.
 */
import { Effect, Schema } from "effect"
import { SqlClient } from "effect/sql"
import * as Task from "../src/Task.ts"

const schema = process.env.PGQ_SCHEMA ?? "pgq_bench"

export const latency = Task.define({
  name: "bench.latency",
  payload: Schema.Unknown,
  handler: (_payload, job) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`
        INSERT INTO ${sql(`${schema}.latency`)} (msg_id, seconds)
        SELECT msg_id, extract(epoch FROM clock_timestamp() - enqueued_at)::float8
        FROM ${sql(`${schema}.message`)} WHERE msg_id = ${job.msgId}::bigint
        ON CONFLICT (msg_id) DO NOTHING`
    })
})

export const noop = Task.define({ name: "noop", payload: Schema.Unknown, handler: () => Effect.void })

export default Task.registry(latency, noop)
