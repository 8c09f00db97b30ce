/**
 * `node dist/cli.js`: migrate, enqueue, status, dead-letter list/replay, and `dev` (the demo behind
 * `npm start`). Database layers are provided inside each handler, so `--help` needs no DATABASE_URL.
 */
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Console, Effect, Schema } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { parseSettings } from "../Config.ts"
import { InvalidConfig } from "../Errors.ts"
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
    withQueue(Queue.use((q) => q.stats())).pipe(
      Effect.flatMap((stats) => Console.log(json ? JSON.stringify(stats, null, 2) : formatStats(stats)))
    )
).pipe(Command.withDescription("Per-queue counts: ready, scheduled, claimed, dead-lettered, oldest ready age"))

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

const devCommand = Command.make(
  "dev",
  { jobs: Flag.Int("jobs").pipe(Flag.withDescription("Demo jobs to enqueue"), Flag.withDefault(500)) },
  ({ jobs }) =>
    Effect.gen(function*() {
      const s = yield* settings
      yield* runDemo({ settings: s, jobs, dir: process.env.PGQ_DEV_DIR ?? ".pgq", port: Number(process.env.PGQ_DEV_PORT ?? 54329) })
    })
).pipe(Command.withDescription("Demo: embedded Postgres under .pgq/, a worker, a workload, live progress"))

const cli = Command.make("pgq").pipe(
  Command.withDescription("effect-pg-queue: a Postgres-native job runtime"),
  Command.withSubcommands([migrateCommand, enqueueCommand, statusCommand, deadLetter, devCommand])
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
