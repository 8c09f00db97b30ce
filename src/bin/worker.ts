/**
 * `node dist/worker.js`: runs the tasks of the module named by PGQ_TASKS on PGQ_QUEUES until SIGTERM or
 * SIGINT, then drains within PGQ_SHUTDOWN_GRACE_SECONDS and exits 0.
 */
import { Effect, Option } from "effect"
import { parseSettings } from "../Config.ts"
import { InvalidConfig } from "../Errors.ts"
import { databaseLayer, loggerLayer, runMain } from "../Main.ts"
import { migrate } from "../Migrations.ts"
import { loadRegistry } from "../Task.ts"
import * as Worker from "../Worker.ts"

const program = Effect.gen(function*() {
  const settings = yield* parseSettings(process.env)
  const tasks = yield* Option.match(settings.tasks, {
    onNone: () => Effect.fail(new InvalidConfig({ variable: "PGQ_TASKS", reason: "is not set: name the module exporting your task registry" })),
    onSome: loadRegistry
  })
  if (settings.processes > 1) {
    return yield* new InvalidConfig({
      variable: "PGQ_PROCESSES",
      reason: "values above 1 need the prefork supervisor, which is not built yet; run one worker per process"
    })
  }
  // Two pools: the handlers' (one connection per slot, plus the LISTEN session), and a small one of the
  // worker's own statements, so handler queries never delay a renewal, an ack or a heartbeat.
  const runtime = databaseLayer(settings, "pgq-worker-runtime", 5)
  yield* Effect.gen(function*() {
    if (settings.autoMigrate) yield* migrate(settings.schema)
    yield* Worker.serve(tasks, settings, runtime)
  }).pipe(
    Effect.provide(databaseLayer(settings, "pgq-worker", Math.min(50, settings.concurrency + 2))),
    Effect.provide(loggerLayer(settings.logFormat))
  )
})

runMain(program)
