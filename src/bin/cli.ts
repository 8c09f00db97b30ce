/**
 * `node dist/cli.js`: migrate, enqueue, status, dead-letter list/replay, execution show/stop, barrier list,
 * and `dev` (the demo behind `npm start`). Database layers are provided inside each handler, so `--help`
 * needs no DATABASE_URL.
 */
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Console, Effect, Layer, Option, Schema } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { Barrier } from "../Barrier.ts"
import { parseSettings } from "../Config.ts"
import { InvalidConfig, StatusWriteFailed } from "../Errors.ts"
import { ExecutionStatus } from "../ExecutionStatus.ts"
import * as Executions from "../Executions.ts"
import { databaseLayer, loggerLayer, runMain } from "../Main.ts"
import { migrate } from "../Migrations.ts"
import { formatStats, Queue } from "../Queue.ts"
import { runDemo } from "../demo/Demo.ts"

const settings = parseSettings(process.env)

/** Run `effect` with the Queue over DATABASE_URL. */
const withQueue = <A, E, R>(effect: Effect.Effect<A, E, R | Queue>) =>
  Effect.gen(function*() {
    const s = yield* settings
    return yield* effect.pipe(
      Effect.provide(Queue.fromSettings(s)),
      Effect.provide(databaseLayer(s, "pgq-cli", 4))
    )
  })

/** Run `effect` with the operator's view of executions (and the Barrier, for stop) over DATABASE_URL. */
const withExecutions = <A, E, R>(effect: Effect.Effect<A, E, R | Executions.Executions | Queue>) =>
  Effect.gen(function*() {
    const s = yield* settings
    const services = Executions.Executions.layer({ schema: s.schema, stuckTimeoutSeconds: s.stuckTimeoutSeconds }).pipe(
      Layer.provide(Barrier.layer({ schema: s.schema, ttlSeconds: s.barrierTtlSeconds })),
      Layer.provideMerge(Queue.fromSettings(s)),
      Layer.provideMerge(ExecutionStatus.fromSettings(s))
    )
    return yield* effect.pipe(Effect.provide(services), Effect.provide(databaseLayer(s, "pgq-cli", 4)))
  })

const migrateCommand = Command.make("migrate", {}, () =>
  Effect.gen(function*() {
    const s = yield* settings
    const { applied, version } = yield* migrate(s.schema).pipe(Effect.provide(databaseLayer(s, "pgq-cli", 2)))
    yield* Console.log(`schema "${s.schema}" is up to date at version ${version} (${applied} DDL statements applied)`)
  })).pipe(Command.withDescription("Bring PGQ_SCHEMA to schema.sql (idempotent, safe to run concurrently)"))

const Json = Schema.fromJsonString(Schema.Unknown)

const enqueueCommand = Command.make(
  "enqueue",
  {
    task: Flag.String("task").pipe(Flag.withDescription("Task name")),
    payload: Flag.String("payload").pipe(Flag.withDescription("JSON payload"), Flag.withDefault("{}")),
    queue: Flag.String("queue").pipe(Flag.withDefault("default")),
    priority: Flag.Int("priority").pipe(Flag.withDescription("1..10, higher first"), Flag.withDefault(5)),
    delay: Flag.Finite("delay").pipe(Flag.withDescription("Seconds before the job becomes visible"), Flag.withDefault(0)),
    count: Flag.Int("count").pipe(Flag.withDescription("Enqueue N copies in one statement"), Flag.withDefault(1)),
    org: Flag.String("org").pipe(Flag.withDefault(""))
  },
  (flags) =>
    Effect.gen(function*() {
      const payload = yield* Schema.decodeUnknownEffect(Json)(flags.payload).pipe(
        Effect.mapError(() => new InvalidConfig({ variable: "--payload", reason: `is not valid JSON: ${flags.payload}` }))
      )
      if (flags.count < 1) return yield* new InvalidConfig({ variable: "--count", reason: "must be at least 1" })
      const options = { queue: flags.queue, priority: flags.priority, delay: flags.delay * 1000, orgId: flags.org }
      const ids = yield* withQueue(
        Queue.use((q) => q.enqueueMany(Array.from({ length: flags.count }, () => ({ task: flags.task, payload, options }))))
      )
      yield* Console.log(ids.length === 1 ? `enqueued ${ids[0]}` : `enqueued ${ids.length} jobs (${ids[0]}..${ids.at(-1)})`)
    })
).pipe(Command.withDescription("Enqueue a job"))

const statusCommand = Command.make(
  "status",
  { json: Flag.Boolean("json").pipe(Flag.withDefault(false)) },
  ({ json }) =>
    Effect.gen(function*() {
      const s = yield* settings
      const [queues, barriers] = yield* withExecutions(
        Effect.all([Queue.use((q) => q.stats()), Executions.Executions.use((e) => e.counts)])
      )
      yield* Console.log(
        json
          ? JSON.stringify({ queues, barriers }, null, 2)
          : `${formatStats(queues)}\n\n${Executions.formatCounts(barriers, s.stuckTimeoutSeconds)}`
      )
    })
).pipe(Command.withDescription(
  "Per-queue counts (ready, scheduled, claimed, dead-lettered, oldest ready age); live and stranded barriers"
))

const listDead = Command.make(
  "list",
  { limit: Flag.Int("limit").pipe(Flag.withDefault(50)), json: Flag.Boolean("json").pipe(Flag.withDefault(false)) },
  ({ limit, json }) =>
    withQueue(Queue.use((q) => q.listDeadLetters(limit))).pipe(
      Effect.flatMap((rows) =>
        Console.log(
          json
            ? JSON.stringify(rows, null, 2)
            : rows.length === 0
            ? "(no dead letters)"
            : rows.map((r) =>
              `${r.msgId}\t${r.queue}\t${r.task}\tattempts=${r.attempts}\t${r.failedAt.toISOString()}\t${r.lastError}`
            ).join("\n")
        )
      )
    )
).pipe(Command.withDescription("List dead letters, newest first"))

const replayDead = Command.make(
  "replay",
  {
    ids: Argument.String("id").pipe(Argument.variadic()),
    all: Flag.Boolean("all").pipe(Flag.withDefault(false))
  },
  ({ ids, all }) =>
    Effect.gen(function*() {
      if (!all && ids.length === 0) {
        return yield* new InvalidConfig({ variable: "replay", reason: "name dead-letter ids or pass --all" })
      }
      const bad = ids.find((id) => !/^\d+$/.test(id))
      if (bad !== undefined) return yield* new InvalidConfig({ variable: "id", reason: `${bad} is not a message id` })
      const count = yield* withQueue(Queue.use((q) => q.replayDeadLetters(all ? undefined : ids)))
      yield* Console.log(`replayed ${count} dead letter(s) as new jobs`)
    })
).pipe(Command.withDescription("Move dead letters back into their queues (by id, or --all)"))

const deadLetter = Command.make("dead-letter").pipe(
  Command.withDescription("Inspect and replay the dead-letter table"),
  Command.withSubcommands([listDead, replayDead])
)

const executionId = Argument.String("execution-id").pipe(Argument.withDescription("The execution's id"))
const jsonFlag = Flag.Boolean("json").pipe(Flag.withDescription("Print JSON"), Flag.withDefault(false))

const showExecution = Command.make("show", { id: executionId, json: jsonFlag }, ({ id, json }) =>
  Effect.gen(function*() {
    const s = yield* settings
    const view = yield* withExecutions(Executions.Executions.use((e) => e.show(id)))
    yield* Console.log(json ? JSON.stringify(view, null, 2) : Executions.formatExecution(view, s.stuckTimeoutSeconds))
  })).pipe(Command.withDescription(
    "Status, barrier progress, batches done / pending / dead-lettered, and the callback of one execution"
  ))

const stopExecution = Command.make("stop", { id: executionId }, ({ id }) =>
  Effect.gen(function*() {
    const result = yield* withExecutions(Executions.Executions.use((e) => e.stop(id)))
    if (result.outcome === "unconfirmed") {
      return yield* new StatusWriteFailed({
        executionId: id,
        status: "STOPPED",
        reason: "the status store did not confirm the mark; nothing was removed (try again)"
      })
    }
    yield* Console.log(Executions.formatStop(result))
  })).pipe(Command.withDescription(
    "Stop an execution: STOPPED, batches not started are removed, running ones are not counted"
  ))

const execution = Command.make("execution").pipe(
  Command.withDescription("Inspect or stop a fan-out execution"),
  Command.withSubcommands([showExecution, stopExecution])
)

const listBarriers = Command.make(
  "list",
  {
    stranded: Flag.Boolean("stranded").pipe(
      Flag.withDescription("Only barriers the reaper would recover: expired, or no progress for PGQ_STUCK_TIMEOUT_SECONDS"),
      Flag.withDefault(false)
    ),
    limit: Flag.Int("limit").pipe(Flag.withDefault(50)),
    json: jsonFlag
  },
  ({ json, limit, stranded }) =>
    Effect.gen(function*() {
      if (limit < 1) return yield* new InvalidConfig({ variable: "--limit", reason: `must be at least 1, got ${limit}` })
      const barriers = yield* withExecutions(Executions.Executions.use((e) => e.list({ stranded, limit })))
      yield* Console.log(json ? JSON.stringify(barriers, null, 2) : Executions.formatBarriers(barriers, stranded))
    })
).pipe(Command.withDescription("Live barriers with their progress and age, the first to expire first"))

const barrier = Command.make("barrier").pipe(
  Command.withDescription("Inspect fan-in barriers"),
  Command.withSubcommands([listBarriers])
)

const devCommand = Command.make(
  "dev",
  { jobs: Flag.Int("jobs").pipe(Flag.withDescription("Demo jobs to enqueue"), Flag.withDefault(500)) },
  ({ jobs }) =>
    Effect.gen(function*() {
      const s = yield* settings
      yield* runDemo({
        settings: s,
        jobs,
        dir: process.env.PGQ_DEV_DIR ?? ".pgq",
        port: Number(process.env.PGQ_DEV_PORT ?? 54329),
        // Lines for a person unless JSON logs were asked for explicitly.
        humanLogs: process.env.PGQ_LOG_FORMAT?.trim().toLowerCase() !== "json"
      })
    })
).pipe(Command.withDescription(
  "Demo: embedded Postgres under .pgq/, a worker and a reaper, a workload, two fan-outs (one lost), live progress"
))

const dashboardCommand = Command.make(
  "dashboard",
  {
    port: Flag.Int("port").pipe(Flag.withDescription("Port (0: any free one); default PGQ_DASHBOARD_PORT or 8089"), Flag.optional),
    host: Flag.String("host").pipe(Flag.withDescription("Address to bind; default PGQ_DASHBOARD_HOST or 127.0.0.1"), Flag.optional),
    sampleSeconds: Flag.Finite("sample-seconds").pipe(
      Flag.withDescription("Throughput chart interval (the page keeps 60 of them)"),
      Flag.withDefault(10)
    )
  },
  (flags) =>
    Effect.gen(function*() {
      const s = yield* settings
      const port = Option.getOrElse(flags.port, () => Option.getOrElse(s.dashboardPort, () => 8089))
      if (port < 0 || port > 65535) return yield* new InvalidConfig({ variable: "--port", reason: `expected 0..65535, got ${port}` })
      if (!(flags.sampleSeconds >= 0.1)) {
        return yield* new InvalidConfig({ variable: "--sample-seconds", reason: `expected at least 0.1, got ${flags.sampleSeconds}` })
      }
      const { start } = yield* Effect.promise(() => import("../DashboardServer.ts"))
      yield* Effect.gen(function*() {
        const url = yield* start(s, {
          port,
          host: Option.getOrElse(flags.host, () => s.dashboardHost),
          sampleSeconds: flags.sampleSeconds
        })
        yield* Console.log(`dashboard: ${url} (${s.dashboardActions ? "actions on" : "read-only"}; Ctrl-C stops it)`)
        return yield* Effect.never
      }).pipe(Effect.scoped, Effect.provide(databaseLayer(s, "pgq-dashboard", 4)))
    })
).pipe(Command.withDescription(
  "Serve the operator's dashboard: queues, leadership, fleet, executions and dead letters, live (read-only by default)"
))

const cli = Command.make("pgq").pipe(
  Command.withDescription("effect-pg-queue: a Postgres-native job runtime"),
  Command.withSubcommands([
    migrateCommand,
    enqueueCommand,
    statusCommand,
    deadLetter,
    execution,
    barrier,
    dashboardCommand,
    devCommand
  ])
)

const program = Effect.gen(function*() {
  const s = yield* settings
  yield* cli.pipe(
    Command.run({ version: "0.1.0" }),
    Effect.provide(NodeServices.layer),
    Effect.provide(loggerLayer(s.logFormat))
  )
})

runMain(program)
