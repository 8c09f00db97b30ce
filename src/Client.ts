/**
 * A Promise facade for hosts not written with Effect:
 *
 *   const worker = await startWorker({ databaseUrl, tasks: Task.registry(sendEmail), queues: ["emails"] })
 *   await worker.send(sendEmail, { to: "ada@example.com" })
 *   await worker.stop()                       // drains as SIGTERM does for dist/worker.js
 *
 *   const client = await createClient({ databaseUrl })   // enqueue from a web process
 *   await client.send(sendEmail, { to: "ada@example.com" })
 *
 * Thin: each one owns a ManagedRuntime (its pools, its worker) and runs the Effect API on it. Options are the
 * settings of `PgqSettings` with plain values (`databaseUrl: "postgres://…"`), validated like the environment's
 * PGQ_* variables, which `env` can supply underneath. A failure rejects with the typed error itself
 * (`InvalidConfig`, `PayloadRejected`, `DatabaseUnavailable`, an `SqlError`, …).
 */
import { Effect, Layer, ManagedRuntime, Option, Redacted, References, Schema } from "effect"
import type { SqlClient } from "effect/sql"
import { type PgqSettings, settingsFrom } from "./Config.ts"
import { InvalidConfig } from "./Errors.ts"
import { databaseLayer, loggerLayer, workerDatabases } from "./Main.ts"
import { migrate } from "./Migrations.ts"
import { type EnqueueOptions, type JobSpec, Queue } from "./Queue.ts"
import type { PendingCount, PendingOptions, QueueStats } from "./QueueStats.ts"
import type { Task, TaskRegistry } from "./Task.ts"
import * as Worker from "./Worker.ts"

type OptionKey = { [K in keyof PgqSettings]: PgqSettings[K] extends Option.Option<unknown> ? K : never }[keyof PgqSettings]

/** How each optional setting is given in plain JavaScript: the value itself, or a secret string. */
const optionKinds: { readonly [K in OptionKey]: "plain" | "secret" } = {
  databaseUrl: "secret",
  tasks: "plain",
  maxJobsPerProcess: "plain",
  maxRssMb: "plain",
  healthPort: "plain",
  statusUrl: "plain",
  statusToken: "secret",
  dashboardPort: "plain",
  dashboardToken: "secret"
}

type Plain<A> = A extends Option.Option<infer B> ? (B extends Redacted.Redacted<infer S> ? S : B) : A

/**
 * Settings in code, with plain values; each is validated by the rule of its PGQ_* variable. What only
 * dist/worker.js does (a task module, forked processes and their recycling, its /health port) is left out.
 */
export type HostSettings = {
  readonly [K in Exclude<keyof PgqSettings, "tasks" | "processes" | "maxJobsPerProcess" | "maxRssMb" | "healthPort">]?:
    | Plain<PgqSettings[K]>
    | undefined
}

export interface ConnectOptions extends HostSettings {
  /** PGQ_* variables underneath the options (pass `process.env` to honour them); the options win. Default: none. */
  readonly env?: Readonly<Record<string, string | undefined>>
}

export interface ClientOptions extends ConnectOptions {
  /** The pool's size (default 4). */
  readonly maxConnections?: number
}

export interface StartWorkerOptions<R, ROut, E> extends ConnectOptions {
  /** The tasks this worker runs (on `queues`). */
  readonly tasks: TaskRegistry<R>
  /**
   * What the handlers need beyond the SqlClient (a mailer, an HTTP client): built once at start on the
   * handlers' pool, released after the drain. A handler needing a service nothing provides does not compile.
   */
  readonly layer?: Layer.Layer<ROut, E, SqlClient.SqlClient>
}

/** A call on a worker or client that was stopped or closed. */
export class Closed extends Schema.TaggedError<Closed>()("Closed", { what: Schema.String }) {
  override get message() {
    return `${this.what} is closed`
  }
}

/** Enqueue, count: what a worker handle and a client share. */
export interface Sender {
  /** Enqueue through a task definition (its payload Schema, queue, priority and attempts); resolves to the msg id. */
  readonly send: <P, R>(task: Task<P, R>, payload: P, options?: EnqueueOptions) => Promise<string>
  /** Enqueue by task name with a raw JSON payload. */
  readonly enqueue: (task: string, payload: unknown, options?: EnqueueOptions) => Promise<string>
  /** Many jobs in one statement: all or none. */
  readonly enqueueMany: (jobs: ReadonlyArray<JobSpec>) => Promise<ReadonlyArray<string>>
  /** Ready, scheduled and claimed jobs per queue (see `Queue.pending`). */
  readonly pending: (queues?: ReadonlyArray<string>, options?: PendingOptions) => Promise<ReadonlyArray<PendingCount>>
  /** The `cli status` counts per queue, dead letters included (heavier than `pending`). */
  readonly stats: () => Promise<ReadonlyArray<QueueStats>>
}

export interface WorkerHandle extends Sender, AsyncDisposable {
  readonly processId: string
  /** Poll age, jobs in flight and prefetched, jobs processed, and whether its LISTEN session is up. */
  readonly status: () => Promise<Worker.WorkerStatus>
  /**
   * Stop as SIGTERM stops dist/worker.js: claim nothing more, hand back prefetched jobs, let running jobs finish
   * within the drain grace (PGQ_SHUTDOWN_GRACE_SECONDS), release what is left, close the pools. Idempotent.
   */
  readonly stop: () => Promise<void>
}

export interface ClientHandle extends Sender, AsyncDisposable {
  /** Send what is still to be announced and close the pool. Idempotent. */
  readonly close: () => Promise<void>
}

const facadeOnly: ReadonlySet<string> = new Set(["env", "tasks", "layer", "maxConnections"])

const isOptionKey = (key: string): key is OptionKey => key in optionKinds

/** The options as settings overrides: plain values of optional settings wrapped (secrets redacted), unset left out. */
const toOverrides = (options: object): Partial<PgqSettings> =>
  Object.fromEntries(
    Object.entries(options)
      .filter(([key, value]) => value !== undefined && !facadeOnly.has(key))
      .map(([key, value]) => [
        key,
        isOptionKey(key) ? Option.some(optionKinds[key] === "secret" ? Redacted.make(value) : value) : value
      ])
  ) as Partial<PgqSettings>

/** The settings, validated; what only dist/worker.js does is refused when the environment asks for it. */
const settingsOf = (options: ConnectOptions) =>
  settingsFrom(options.env ?? {}, toOverrides(options)).pipe(
    Effect.tap((settings) =>
      Option.isSome(settings.healthPort)
        ? Effect.fail(new InvalidConfig({
          variable: "PGQ_HEALTH_PORT",
          reason: "is served by dist/worker.js; in your own process, report `await worker.status()` from your server"
        }))
        : settings.processes > 1
        ? Effect.fail(new InvalidConfig({
          variable: "PGQ_PROCESSES",
          reason: "forks processes in dist/worker.js; startWorker runs one worker in this process"
        }))
        : Effect.void
    )
  )

/** The logger and level of the settings, for everything the runtime builds and runs. */
const logging = (settings: PgqSettings) =>
  Layer.mergeAll(loggerLayer(settings.logFormat), Layer.succeed(References.MinimumLogLevel, settings.logLevel))

const migrated = (settings: PgqSettings) =>
  settings.autoMigrate ? Layer.effectDiscard(migrate(settings.schema)) : Layer.empty


const workerLayer = <R, ROut, E>(
  settings: PgqSettings,
  registry: TaskRegistry<R>,
  services: Layer.Layer<ROut, E, SqlClient.SqlClient>
) =>
  Layer.mergeAll(
    Worker.layerWithRuntime(registry, settings, workerDatabases(settings).runtime),
    Queue.fromSettings(settings)
  ).pipe(
    Layer.provide(services),
    Layer.provide(migrated(settings)),
    Layer.provide(workerDatabases(settings).handlers),
    Layer.provide(logging(settings))
    // startWorker's signature has checked that `services` and the SqlClient cover the handlers' requirements.
  ) as Layer.Layer<Worker.Worker | Queue, unknown>

const makeSender = (run: <A, E>(effect: Effect.Effect<A, E, Queue>) => Promise<A>): Sender => ({
  send: (task, payload, options) => run(Queue.use((q) => q.send(task, payload, options))),
  enqueue: (task, payload, options) => run(Queue.use((q) => q.enqueue(task, payload, options))),
  enqueueMany: (jobs) => run(Queue.use((q) => q.enqueueMany(jobs))),
  pending: (queues, options) => run(Queue.use((q) => q.pending(queues, options))),
  stats: () => run(Queue.use((q) => q.stats()))
})

/**
 * A runtime that refuses calls once closed (a ManagedRuntime would quietly build its layers again), and whose
 * close runs once.
 */
const guarded = <R, ER>(runtime: ManagedRuntime.ManagedRuntime<R, ER>, what: string) => {
  let closing: Promise<void> | undefined
  return {
    run: <A, E>(effect: Effect.Effect<A, E, R>): Promise<A> =>
      closing === undefined ? runtime.runPromise(effect) : Promise.reject(new Closed({ what })),
    close: (): Promise<void> => (closing ??= runtime.dispose())
  }
}

/** Build the runtime's layers now, so a bad setting or an unreachable database rejects here; clean up if not. */
const started = <R, ER>(runtime: ManagedRuntime.ManagedRuntime<R, ER>) =>
  runtime.context().catch((error: unknown) => runtime.dispose().then(() => Promise.reject(error)))

/** Run `tasks` on `queues` in this process until `stop()`. */
export const startWorker = async <R extends ROut | SqlClient.SqlClient, ROut = never, E = never>(
  options: StartWorkerOptions<R, ROut, E>
): Promise<WorkerHandle> => {
  const settings = await Effect.runPromise(settingsOf(options))
  const runtime = ManagedRuntime.make(workerLayer(settings, options.tasks, options.layer ?? Layer.empty))
  await started(runtime)
  const { run, close } = guarded(runtime, "this worker")
  const processId = await run(Worker.Worker.use((w) => Effect.succeed(w.processId)))
  return {
    ...makeSender(run),
    processId,
    status: () => run(Worker.Worker.use((w) => w.status)),
    stop: close,
    [Symbol.asyncDispose]: close
  }
}

/** Enqueue and count from a process that runs no worker. */
export const createClient = async (options: ClientOptions): Promise<ClientHandle> => {
  const settings = await Effect.runPromise(settingsOf(options))
  const layer = Queue.fromSettings(settings).pipe(
    Layer.provide(migrated(settings)),
    Layer.provide(databaseLayer(settings, "pgq-client", options.maxConnections ?? 4)),
    Layer.provide(logging(settings))
  )
  const runtime = ManagedRuntime.make(layer)
  await started(runtime)
  const { run, close } = guarded(runtime, "this client")
  return { ...makeSender(run), close, [Symbol.asyncDispose]: close }
}
