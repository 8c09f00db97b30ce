/**
 * `node dist/worker.js`: runs the tasks of the module named by PGQ_TASKS on PGQ_QUEUES until SIGTERM or
 * SIGINT, then drains within PGQ_SHUTDOWN_GRACE_SECONDS and exits 0. With PGQ_PROCESSES > 1 it is the
 * supervisor of that many worker processes, each this same file started with PGQ_SUPERVISOR_SLOT set.
 */
import { Effect, Option } from "effect"
import { fileURLToPath } from "node:url"
import { parseSettings, type PgqSettings } from "../Config.ts"
import { InvalidConfig } from "../Errors.ts"
import { databaseLayer, loggerLayer, runMain, workerDatabases } from "../Main.ts"
import { migrate } from "../Migrations.ts"
import * as SupervisedWorker from "../SupervisedWorker.ts"
import * as SupervisorNode from "../SupervisorNode.ts"
import { loadModule } from "../Task.ts"
import * as Worker from "../Worker.ts"

const requireTasks = (settings: PgqSettings) =>
  Option.match(settings.tasks, {
    onNone: () => Effect.fail(new InvalidConfig({ variable: "PGQ_TASKS", reason: "is not set: name the module exporting your task registry" })),
    onSome: Effect.succeed
  })

/** The slot of a child forked by the supervisor: set in its environment, with an IPC channel to it. */
const supervisedSlot = (): Effect.Effect<Option.Option<number>, InvalidConfig> => {
  const raw = process.env[SupervisorNode.SLOT_VARIABLE]
  if (raw === undefined) return Effect.succeed(Option.none())
  const slot = Number(raw)
  return process.send !== undefined && Number.isInteger(slot) && slot >= 0
    ? Effect.succeed(Option.some(slot))
    : Effect.fail(new InvalidConfig({
      variable: SupervisorNode.SLOT_VARIABLE,
      reason: "is set by the supervisor for the worker processes it forks; unset it"
    }))
}

const handlersDatabase = (settings: PgqSettings) => workerDatabases(settings).handlers
const runtimeDatabase = (settings: PgqSettings) => workerDatabases(settings).runtime

const single = (settings: PgqSettings) =>
  Effect.gen(function*() {
    const tasks = yield* loadModule(yield* requireTasks(settings))
    if (Option.isSome(settings.maxJobsPerProcess) || Option.isSome(settings.maxRssMb)) {
      yield* Effect.logWarning("PGQ_MAX_JOBS_PER_PROCESS and PGQ_MAX_RSS_MB recycle supervised processes only (PGQ_PROCESSES > 1); ignored")
    }
    yield* Effect.gen(function*() {
      if (settings.autoMigrate) yield* migrate(settings.schema)
      // The module's layer is built after the migration, on the handlers' pool, and released after the drain.
      yield* Worker.serve(tasks.registry, settings, runtimeDatabase(settings)).pipe(Effect.provide(tasks.layer))
    }).pipe(Effect.provide(handlersDatabase(settings)))
  })

const child = (settings: PgqSettings, slot: number) =>
  Effect.gen(function*() {
    const tasks = yield* loadModule(yield* requireTasks(settings))
    yield* SupervisedWorker.run(tasks.registry, settings, runtimeDatabase(settings), slot, tasks.layer).pipe(
      Effect.provide(handlersDatabase(settings))
    )
    yield* SupervisedWorker.exit
  })

// The children load the task registry themselves: the supervisor only checks that one is named.
const supervisor = (settings: PgqSettings) =>
  Effect.gen(function*() {
    yield* requireTasks(settings)
    if (settings.autoMigrate) yield* migrate(settings.schema)
    yield* SupervisorNode.serve(settings, fileURLToPath(import.meta.url))
  }).pipe(Effect.provide(databaseLayer(settings, "pgq-supervisor", 3)))

const program = Effect.gen(function*() {
  const settings = yield* parseSettings(process.env)
  const slot = yield* supervisedSlot()
  const run = Option.isSome(slot)
    ? child(settings, slot.value)
    : settings.processes > 1
    ? supervisor(settings)
    : single(settings)
  yield* run.pipe(Effect.provide(loggerLayer(settings.logFormat)))
})

runMain(program)
