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
 *
 * `bench.cpu` burns CPU synchronously, blocking its process's thread: `rounds` SHA-256 digests of a 16 KiB buffer
 * (each chained to the previous digest), a fixed amount of work per job. bench/supervisor.ts calibrates `rounds`
 * once per bench run with `roundsFor` (about 5 ms on the machine that runs it) and puts it in every payload.
 */
import { Effect, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { createHash } from "node:crypto"
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

const block = Buffer.alloc(16 * 1024, 0x5a)

/** `rounds` chained SHA-256 digests of a 16 KiB block: the same work for the same `rounds`. */
export const burn = (rounds: number): Buffer => {
  let digest = createHash("sha256").digest()
  for (let r = 0; r < rounds; r++) digest = createHash("sha256").update(block).update(digest).digest()
  return digest
}

/**
 * The rounds that take `ms` milliseconds of CPU here: the median of 7 samples of 500 rounds (after 2,000 to warm
 * up), in this process's CPU time (`process.cpuUsage`, so a sample preempted by another process is not inflated).
 * The fastest of short wall-clock samples came out 10–20 % cheaper than a sustained burn, hence longer samples.
 */
export const roundsFor = (ms: number): number => {
  burn(2_000)
  const samples = Array.from({ length: 7 }, () => {
    const before = process.cpuUsage()
    burn(500)
    const { system, user } = process.cpuUsage(before)
    return (user + system) / 1000 / 500
  }).sort((a, b) => a - b)
  return Math.max(1, Math.round(ms / samples[3]!))
}

export const cpu = Task.define({
  name: "bench.cpu",
  payload: Schema.Struct({ i: Schema.Number, rounds: Schema.Number }),
  handler: ({ rounds }) => Effect.sync(() => void burn(rounds))
})

export default Task.registry(latency, long, noop, part, gather, cpu)
