/**
 * `npm start`: an embedded Postgres under .pgq/ (as root in a private folder: under /var/tmp), the schema,
 * a worker running the demo tasks, a reaper (short lease and tick), a mixed workload (priorities, delays, a
 * task that fails then succeeds, one that dead-letters), two fan-outs (20 batches and a callback that sums
 * their results; one whose batch is lost, which the reaper recovers) and live progress until everything has
 * settled. Ctrl-C interrupts: the worker drains, the reaper lets go of its lease and the server stops.
 */
import { Array as Arr, Console, Deferred, Duration, Effect, Formatter, Layer, Logger, Option, Ref, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { dirname, resolve } from "node:path"
import * as Barrier from "../Barrier.ts"
import type { PgqSettings } from "../Config.ts"
import * as Database from "../Database.ts"
import * as Embedded from "../Embedded.ts"
import { describeCause } from "../ErrorText.ts"
import * as ExecutionStatus from "../ExecutionStatus.ts"
import { Executions, formatExecution } from "../Executions.ts"
import { workerId } from "../LeaderLease.ts"
import { migrate } from "../Migrations.ts"
import { ProcessRegistry } from "../ProcessRegistry.ts"
import { formatStats, type JobSpec, Queue } from "../Queue.ts"
import * as Reaper from "../Reaper.ts"
import * as Worker from "../Worker.ts"
import registry, { square } from "./tasks.ts"

export interface DemoOptions {
  readonly settings: PgqSettings
  readonly jobs: number
  readonly dir: string
  readonly port: number
  /** One short line per log entry (default); false keeps the logger PGQ_LOG_FORMAT chose. */
  readonly humanLogs?: boolean
}

/** A deterministic mixed workload of `n` jobs. */
export const workload = (n: number): ReadonlyArray<JobSpec> =>
  Array.from({ length: n }, (_, i): JobSpec => {
    const priority = 1 + (i % 10)
    if (i % 50 === 7) return { task: "poison", payload: { reason: `demo job ${i} is poison` }, options: { priority } }
    if (i % 20 === 3) return { task: "flaky", payload: { failures: 2 }, options: { priority } }
    if (i % 10 === 5) return { task: "sleep", payload: { ms: 50 + (i % 7) * 40 }, options: { priority } }
    if (i % 10 === 9) return { task: "echo", payload: { message: `delayed ${i}` }, options: { priority, delay: 1000 + (i % 3) * 500 } }
    return { task: "echo", payload: { message: `hello ${i}` }, options: { priority } }
  })

/** The queue of the lost batch: no worker of the demo consumes it (until the very end). */
const LOST_QUEUE = "demo-lost"
/** The lost execution's barrier TTL: the reaper recovers it soon after. */
const LOST_TTL_SECONDS = 5
/** How long the demo waits for an execution to end before it says so and moves on. */
const SETTLE_TIMEOUT = Duration.seconds(30)

/** One line per log entry, for a person watching the demo (JSON stays the default of the entrypoints). */
const humanLogger = Logger.make(({ cause, logLevel, message }) => {
  const text = Arr.ensure(message).map((m) => (typeof m === "string" ? m : Formatter.format(m))).join(" ")
  const why = cause.reasons.length > 0 ? ` (${describeCause(cause)})` : ""
  globalThis.console.log(`  ${logLevel.toLowerCase()}: ${text}${why}`)
})

const seconds = (since: number) => ((Date.now() - since) / 1000).toFixed(1)

/** A new run number each time, so the demo's execution ids (squares-N, lost-N) never collide with a past run. */
const nextRun = (schema: string) =>
  SqlClient.SqlClient.use((sql) =>
    sql<{ n: number }>`SELECT count(*)::int + 1 AS n FROM ${sql(`${schema}.execution`)}
                       WHERE execution_id LIKE 'squares-%'`
  ).pipe(Effect.map((rows) => rows[0]!.n))

/** The execution's status if it is terminal (through the status port). */
const endedAs = (executionId: string) =>
  ExecutionStatus.ExecutionStatus.use((s) => s.read(executionId, "demo")).pipe(
    Effect.map((r) => (r._tag === "Found" && ExecutionStatus.isTerminal(r.status) ? Option.some(r.status) : Option.none()))
  )

/** The execution's status once it is terminal, or none after SETTLE_TIMEOUT. */
const terminalStatus = (executionId: string) =>
  endedAs(executionId).pipe(
    Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: Option.isSome }),
    Effect.timeoutOption(SETTLE_TIMEOUT),
    Effect.map(Option.flatten)
  )

const errorMessage = (schema: string, executionId: string) =>
  SqlClient.SqlClient.use((sql) =>
    sql<{ error_message: string | null }>`
      SELECT error_message FROM ${sql(`${schema}.execution`)} WHERE execution_id = ${executionId}`
  ).pipe(Effect.map((rows) => rows[0]?.error_message ?? ""))

/** Fan out 20 squares; the callback prints their sum. Returns the execution id. */
const fanOutSquares = (run: number) =>
  Effect.gen(function*() {
    const executionId = `squares-${run}`
    const batches = yield* Effect.forEach(Array.from({ length: 20 }, (_, n) => n), (n) => Barrier.batch(square, { n }))
    yield* Barrier.Barrier.use((b) =>
      b.start({
        executionId,
        orgId: "demo",
        batches,
        callback: { task: "sum-squares", context: { label: "0² + 1² + … + 19²" } }
      })
    )
    yield* Console.log(`fan-out ${executionId}: 20 batches of square(n), n = 0..19; their callback sums the results`)
    return executionId
  })

/** Fan out 3 batches, one of them to a queue nobody consumes, with a 5 s TTL: the reaper's case. */
const fanOutLost = (run: number) =>
  Effect.gen(function*() {
    const executionId = `lost-${run}`
    const batches = yield* Effect.forEach([0, 1, 2], (n) => Barrier.batch(square, { n }, n === 2 ? { queue: LOST_QUEUE } : {}))
    yield* Barrier.Barrier.use((b) =>
      b.start({
        executionId,
        orgId: "demo",
        batches,
        ttlSeconds: LOST_TTL_SECONDS,
        callback: { task: "sum-squares", context: { label: "never summed" } }
      })
    )
    yield* Console.log(
      `fan-out ${executionId}: 3 batches, batch 2 on queue ${LOST_QUEUE} that no worker consumes; ` +
        `barrier TTL ${LOST_TTL_SECONDS} s`
    )
    return executionId
  })

/** Print how `executionId` ended, `started` (local clock) being when it was fanned out. */
const report = (schema: string, executionId: string, started: number, lost: boolean) =>
  Effect.gen(function*() {
    const ended = yield* terminalStatus(executionId)
    const elapsed = seconds(started)
    if (Option.isNone(ended)) {
      return yield* Console.log(
        lost
          ? `execution ${executionId} is still stranded after ${elapsed} s: this reaper does not recover barriers`
          : `execution ${executionId} has not finished after ${elapsed} s`
      )
    }
    if (!lost) return yield* Console.log(`fan-out ${executionId}: ${ended.value} after ${elapsed} s`)
    const why = yield* errorMessage(schema, executionId)
    yield* Console.log(
      `execution ${executionId} stranded → reaper marked it ${ended.value} after ${elapsed} s${why === "" ? "" : `: ${why}`}`
    )
  })

/** One progress line, printed when something changed since the last one. */
const progress = Effect.fnUntraced(function*(started: number, queues: ReadonlyArray<string>, last: Ref.Ref<string>) {
  const stats = (yield* Queue.use((q) => q.stats())).filter((s) => queues.includes(s.queue))
  const barriers = yield* Executions.use((e) => e.counts)
  const sum = (f: (s: (typeof stats)[number]) => number) => stats.reduce((acc, s) => acc + f(s), 0)
  const line = `ready=${sum((s) => s.ready)} scheduled=${sum((s) => s.scheduled)} running=${sum((s) => s.claimed)} ` +
    `dead-lettered=${sum((s) => s.deadLettered)} barriers=${barriers.live} (stranded ${barriers.stranded})`
  if (line !== (yield* Ref.getAndSet(last, line))) yield* Console.log(`[${seconds(started)}s] ${line}`)
  return sum((s) => s.ready + s.scheduled + s.claimed)
})

/**
 * The demo's workers and its reaper share one process, hence one default process id (`workerId()`); each
 * worker registers under its own, so one closing never deletes the process row (or frees the claims) of
 * another.
 */
const registeredAs = (schema: string, name: string) =>
  Layer.effect(
    ProcessRegistry,
    ProcessRegistry.use((registry) =>
      Effect.succeed(ProcessRegistry.of({
        ...registry,
        register: (registration) => registry.register({ ...registration, processId: `${workerId()}:${name}` })
      }))
    )
  ).pipe(Layer.provide(ProcessRegistry.layer(schema)))

/** A worker of the demo tasks on `settings.queues`, on the Queue and Barrier of the context. */
const demoWorker = (settings: PgqSettings, name: string) =>
  Worker.Worker.layer(registry, Worker.optionsFromSettings(settings)).pipe(
    Layer.provide(registeredAs(settings.schema, name))
  )

/**
 * The lost batch is still in its queue. A worker for that queue now claims it and, its execution having
 * ended, acks it without running it (without a recovery, it runs it late and the execution completes).
 */
const drainLostQueue = (settings: PgqSettings, executionId: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const left = sql<{ n: number }>`
      SELECT count(*)::int AS n FROM ${sql(`${settings.schema}.message`)} WHERE execution_id = ${executionId}`.pipe(
      Effect.map((rows) => rows[0]!.n)
    )
    if ((yield* left) === 0) return
    yield* Console.log(
      Option.isSome(yield* endedAs(executionId))
        ? `starting a worker for ${LOST_QUEUE}: it acks the lost batch of ${executionId} without running it (the execution has ended)`
        : `starting a worker for ${LOST_QUEUE}: the lost batch of ${executionId} runs late and the execution completes`
    )
    yield* left.pipe(
      Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (n) => n === 0 }),
      Effect.timeoutOption(SETTLE_TIMEOUT),
      Effect.provide(demoWorker({ ...settings, queues: [LOST_QUEUE] }, "late"))
    )
  })

export const runDemo = (options: DemoOptions) =>
  Effect.gen(function*() {
    yield* Console.log(`starting embedded Postgres on port ${options.port} ...`)
    const { dataDir, url } = yield* Embedded.embedded({ dir: options.dir, port: options.port })
    yield* Console.log(
      dirname(dataDir) === resolve(options.dir)
        ? `embedded Postgres is up; its data is in ${dataDir}`
        : `embedded Postgres is up; its data is in ${dataDir} (the postgres user it runs as cannot enter ${options.dir}/)`
    )
    // Self-contained: statuses in our own table, a reaper that leads within a second and ticks twice a second.
    const settings: PgqSettings = {
      ...options.settings,
      queues: ["default"],
      pollMaxMs: 250,
      statusUrl: Option.none(),
      leaseSeconds: 2,
      reaperIntervalSeconds: 0.5
    }
    const status = ExecutionStatus.ExecutionStatus.layerSql(settings.schema)
    const barriers = Executions.layer({ schema: settings.schema, stuckTimeoutSeconds: settings.stuckTimeoutSeconds }).pipe(
      Layer.provideMerge(Barrier.Barrier.layer({ schema: settings.schema, ttlSeconds: settings.barrierTtlSeconds })),
      Layer.provideMerge(status)
    )
    yield* Effect.gen(function*() {
      yield* migrate(settings.schema)
      yield* Console.log(
        `schema "${settings.schema}" migrated; starting a worker (concurrency ${settings.concurrency}) and a reaper ` +
          `(lease ${settings.leaseSeconds} s, tick ${settings.reaperIntervalSeconds} s)`
      )
      const run = yield* nextRun(settings.schema)
      yield* Effect.gen(function*() {
        const ids = yield* Queue.use((q) => q.enqueueMany(workload(options.jobs)))
        yield* Console.log(`enqueued ${ids.length} demo jobs: echo, sleep, delayed, flaky (fails twice), poison`)
        const started = Date.now()
        const squares = yield* fanOutSquares(run)
        const lost = yield* fanOutLost(run)
        const settled = yield* Deferred.make<void>()
        yield* Effect.all([
          report(settings.schema, squares, started, false),
          report(settings.schema, lost, started, true)
        ], { concurrency: "unbounded", discard: true }).pipe(
          Effect.andThen(Deferred.succeed(settled, undefined)),
          Effect.forkScoped
        )
        const last = yield* Ref.make("")
        yield* progress(started, settings.queues, last).pipe(
          Effect.repeat({
            schedule: Schedule.spaced("500 millis"),
            while: (pending) => pending > 0 ? Effect.succeed(true) : Effect.map(Deferred.isDone(settled), (done) => !done)
          })
        )
        yield* Console.log(`\ndrained in ${seconds(started)}s. Final status:\n`)
        yield* Console.log(formatStats(yield* Queue.use((q) => q.stats())))
        const view = yield* Executions.use((e) => e.show(lost))
        yield* Console.log(`\n$ node dist/cli.js execution show ${lost}\n${formatExecution(view, settings.stuckTimeoutSeconds)}\n`)
        yield* drainLostQueue(settings, lost)
        // The server stops with the demo: these work while a demo runs (or against any database).
        const cli = `DATABASE_URL=postgres://postgres:postgres@127.0.0.1:${options.port}/pgq node dist/cli.js`
        yield* Console.log(
          `\nwhile a demo runs, inspect its database with: ${cli} status | dead-letter list | barrier list | ` +
            "execution show <id>"
        )
      }).pipe(
        Effect.provide(demoWorker(settings, "worker")),
        Effect.provide(Reaper.layerFromOptions(Reaper.optionsFromSettings(settings)))
      )
    }).pipe(
      Effect.provide(barriers),
      Effect.provide(Queue.fromSettings(settings)),
      Effect.provide(Database.layer({ url, applicationName: "pgq-demo" }))
    )
  }).pipe(
    Effect.scoped,
    options.humanLogs === false ? (effect) => effect : Effect.provide(Logger.layer([humanLogger]))
  )
