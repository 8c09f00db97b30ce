/**
 * `npm start`: an embedded Postgres under .pgq/ (as root in a private folder: under /var/tmp), the schema,
 * a worker running the demo tasks, a mixed workload (priorities, delays, a task that fails then succeeds,
 * one that dead-letters) and live progress until the queue drains. Ctrl-C interrupts: the worker drains and
 * the server stops.
 */
import { Console, Effect, Schedule } from "effect"
import { dirname, resolve } from "node:path"
import type { PgqSettings } from "../Config.ts"
import * as Database from "../Database.ts"
import * as Embedded from "../Embedded.ts"
import { migrate } from "../Migrations.ts"
import { formatStats, type JobSpec, Queue } from "../Queue.ts"
import * as Worker from "../Worker.ts"
import registry from "./tasks.ts"

export interface DemoOptions {
  readonly settings: PgqSettings
  readonly jobs: number
  readonly dir: string
  readonly port: number
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

const progress = Effect.fnUntraced(function*(started: number) {
  const stats = yield* Queue.use((q) => q.stats())
  const sum = (f: (s: (typeof stats)[number]) => number) => stats.reduce((acc, s) => acc + f(s), 0)
  const pending = sum((s) => s.ready + s.scheduled + s.claimed)
  yield* Console.log(
    `[${((Date.now() - started) / 1000).toFixed(1)}s] ready=${sum((s) => s.ready)} scheduled=${sum((s) => s.scheduled)} ` +
      `running=${sum((s) => s.claimed)} dead-lettered=${sum((s) => s.deadLettered)}`
  )
  return pending
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
    const settings: PgqSettings = { ...options.settings, queues: ["default"], pollMaxMs: 250 }
    yield* Effect.gen(function*() {
      yield* migrate(settings.schema)
      yield* Console.log(`schema "${settings.schema}" migrated; starting a worker (concurrency ${settings.concurrency})`)
      yield* Effect.gen(function*() {
        const ids = yield* Queue.use((q) => q.enqueueMany(workload(options.jobs)))
        yield* Console.log(`enqueued ${ids.length} demo jobs: echo, sleep, delayed, flaky (fails twice), poison`)
        const started = Date.now()
        yield* progress(started).pipe(Effect.repeat({ schedule: Schedule.spaced("500 millis"), until: (pending) => pending === 0 }))
        yield* Console.log(`\ndrained in ${((Date.now() - started) / 1000).toFixed(1)}s. Final status:\n`)
        yield* Console.log(formatStats(yield* Queue.use((q) => q.stats())))
        yield* Console.log("\ninspect the dead letters with: DATABASE_URL=" + "postgres://postgres:postgres@127.0.0.1:" +
          `${options.port}/pgq node dist/cli.js dead-letter list`)
      }).pipe(Effect.provide(Worker.layerFromSettings(registry, settings)))
    }).pipe(
      Effect.provide(Queue.fromSettings(settings)),
      Effect.provide(Database.layer({ url, applicationName: "pgq-demo" }))
    )
  }).pipe(Effect.scoped)

