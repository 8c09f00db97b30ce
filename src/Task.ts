/**
 * Task definitions: a name, a payload Schema, a handler and a failure policy, defined once and used
 * both to enqueue (encode) and to run (decode, execute, classify the outcome).
 */
import { Cause, Effect, Exit, Formatter, Layer, Option, Result, Schema } from "effect"
import type { SqlClient } from "effect/sql"
import { resolve } from "node:path"
import { pathToFileURL } from "node:url"
import * as ErrorText from "./ErrorText.ts"
import { InvalidConfig } from "./Errors.ts"

/** What to do with a job whose handler failed with a typed error. */
export type FailureAction = "retry" | "dead-letter" | "discard"

/** What a handler knows about the job it runs. */
export interface JobContext {
  readonly msgId: string
  readonly task: string
  readonly queue: string
  /** 1 on the first run; the attempt fence used by ack/extend/fail. */
  readonly attempt: number
  readonly maxAttempts: number
  readonly orgId: string
  readonly enqueuedAt: Date
  readonly executionId: string | null
  readonly batchIndex: number | null
}

export interface Backoff {
  readonly baseSeconds: number
  readonly maxSeconds: number
}

export const defaultBackoff: Backoff = { baseSeconds: 1, maxSeconds: 3600 }

/** Seconds to wait before attempt `attempt + 1`: exponential with ±25% jitter, capped. */
export const backoffSeconds = (backoff: Backoff, attempt: number, random: number = Math.random()): number => {
  const exponential = Math.min(backoff.maxSeconds, backoff.baseSeconds * 2 ** Math.max(0, attempt - 1))
  return Math.min(backoff.maxSeconds, exponential * (0.75 + random * 0.5))
}

/** The classified result of running one job. */
export type Outcome =
  | { readonly _tag: "Succeeded"; readonly result: unknown }
  | { readonly _tag: "Failed"; readonly action: FailureAction; readonly error: string }
  | { readonly _tag: "Rejected"; readonly reason: string }

export interface TaskOptions<S extends Schema.Top, E, R> {
  readonly name: string
  readonly payload: S
  readonly handler: (payload: S["Type"], job: JobContext) => Effect.Effect<unknown, E, R>
  /** Typed failures retry with backoff unless this says otherwise. Defects always retry. */
  readonly onFailure?: (error: E) => FailureAction
  readonly maxAttempts?: number
  readonly backoff?: Backoff
  /** Defaults for enqueue. */
  readonly queue?: string
  readonly priority?: number
  /**
   * The Schema of the handler's result, for a task that runs as a barrier batch: the result is encoded with
   * it before it is stored, and the callback decodes the ordered results with the same Schema
   * (`Barrier.callbackPayload(result, context)`).
   */
  readonly result?: Schema.Top & Schema.Codec<unknown, unknown, never, never>
}

/** A task, with its types erased behind `execute` so a registry can hold many. */
export interface Task<P = unknown, R = never> {
  readonly name: string
  readonly maxAttempts: number | undefined
  readonly backoff: Backoff
  readonly queue: string | undefined
  readonly priority: number | undefined
  /** Encode a typed payload to its JSON form (for enqueue). */
  readonly encode: (payload: P) => Effect.Effect<unknown, string>
  /** Decode the stored payload, run the handler and classify the result. Never fails; interruption propagates. */
  readonly execute: (payload: unknown, job: JobContext) => Effect.Effect<Outcome, never, R>
}

const isAction = (value: unknown): value is FailureAction =>
  value === "retry" || value === "dead-letter" || value === "discard"

/** Room left in `last_error` for a note on a policy that misbehaved. */
const noteLength = 300

/**
 * Classify a typed failure. A policy that throws or answers something else must not lose the job's outcome:
 * the job retries, and the error text says why.
 */
const classify = <E>(onFailure: (error: E) => FailureAction, error: E): Outcome => {
  const verdict = Result.try(() => onFailure(error))
  if (Result.isSuccess(verdict) && isAction(verdict.success)) {
    return { _tag: "Failed", action: verdict.success, error: ErrorText.describeFailure(error) }
  }
  const note = Result.isFailure(verdict)
    ? `onFailure threw ${ErrorText.describeFailure(verdict.failure, noteLength)}`
    : `onFailure returned ${ErrorText.describeFailure(Formatter.format(verdict.success), noteLength)}, not an action`
  const described = ErrorText.describeFailure(error, ErrorText.maxLength - noteLength - 60)
  return { _tag: "Failed", action: "retry", error: ErrorText.safeLine(`${described} (${note}; retrying)`) }
}

const serviceNotFound = /^Service not found: (.+)$/

/** The key of a service the effect asked for and nothing provided (Effect dies with "Service not found: key"). */
export const missingService = (cause: Cause.Cause<unknown>): Option.Option<string> => {
  for (const reason of cause.reasons) {
    if (!Cause.isDieReason(reason)) continue
    const { defect } = reason
    // The message of a hostile defect may throw when read.
    const message = Result.try(() => (defect instanceof Error ? defect.message : undefined))
    const match = Result.isSuccess(message) && typeof message.success === "string" ? serviceNotFound.exec(message.success) : null
    if (match !== null) return Option.some(match[1]!)
  }
  return Option.none()
}

/**
 * A handler that needs a service nothing provides fails the same way on every attempt: its job is
 * dead-lettered at once, with the service's name, instead of retried as a defect.
 */
const unprovided = (task: string, service: string): Outcome => ({
  _tag: "Failed",
  action: "dead-letter",
  error: ErrorText.safeLine(
    `task ${task} needs the service ${JSON.stringify(service)}, which nothing provides: export its Layer from the ` +
      `task module as "layer" (Task.forWorker), or provide it to Worker.layer`
  )
})

/** A handler's exit as an outcome; interruption alone propagates (the job is released, not failed). */
const outcomeOf = <E>(task: string, onFailure: (error: E) => FailureAction, exit: Exit.Exit<unknown, E>): Effect.Effect<Outcome> => {
  if (Exit.isSuccess(exit)) return Effect.succeed({ _tag: "Succeeded", result: exit.value })
  if (Cause.hasInterruptsOnly(exit.cause)) return Effect.interrupt
  const failure = Cause.findErrorOption(exit.cause)
  if (Option.isSome(failure)) return Effect.succeed(classify(onFailure, failure.value))
  return Effect.succeed(Option.match(missingService(exit.cause), {
    onSome: (service) => unprovided(task, service),
    onNone: (): Outcome => ({ _tag: "Failed", action: "retry", error: ErrorText.describeCause(exit.cause) })
  }))
}

/** Define a task once: the same value enqueues typed payloads and runs them. */
export const define = <S extends Schema.Top & Schema.Codec<S["Type"], S["Encoded"], never, never>, E = never, R = never>(
  options: TaskOptions<S, E, R>
): Task<S["Type"], R> => {
  const decode = Schema.decodeUnknownEffect(options.payload)
  const encode = Schema.encodeUnknownEffect(options.payload)
  const onFailure = options.onFailure ?? (() => "retry" as const)
  const resultSchema = options.result
  const encodeResult = (outcome: Outcome): Effect.Effect<Outcome> =>
    outcome._tag !== "Succeeded" || resultSchema === undefined
      ? Effect.succeed(outcome)
      : Schema.encodeUnknownEffect(resultSchema)(outcome.result).pipe(
        Effect.match({
          onSuccess: (result): Outcome => ({ _tag: "Succeeded", result }),
          onFailure: (error): Outcome => ({
            _tag: "Rejected",
            reason: ErrorText.safeLine(`result does not match the result schema of task ${options.name}: ${error.message}`)
          })
        })
      )
  return {
    name: options.name,
    maxAttempts: options.maxAttempts,
    backoff: options.backoff ?? defaultBackoff,
    queue: options.queue,
    priority: options.priority,
    encode: (payload) => encode(payload).pipe(Effect.mapError((error) => error.message)),
    execute: (payload, job) =>
      decode(payload).pipe(
        Effect.matchEffect({
          onFailure: (error) =>
            Effect.succeed<Outcome>({
              _tag: "Rejected",
              reason: ErrorText.safeLine(`payload does not match the schema of task ${options.name}: ${error.message}`)
            }),
          // suspend: a handler that throws instead of returning an Effect is a defect like any other.
          onSuccess: (decoded) =>
            Effect.suspend(() => options.handler(decoded, job)).pipe(
              Effect.exit,
              Effect.flatMap((exit) => outcomeOf(options.name, onFailure, exit)),
              Effect.flatMap((outcome) => encodeResult(outcome))
            )
        }),
        // Whatever else goes wrong (a Schema transformation that throws, say) retries rather than strand the job.
        Effect.catchCause((cause) =>
          Cause.hasInterruptsOnly(cause)
            ? Effect.failCause(cause)
            : Effect.succeed<Outcome>({ _tag: "Failed", action: "retry", error: ErrorText.describeCause(cause) })
        )
      )
  }
}

/** A set of tasks keyed by name; what `PGQ_TASKS` modules export. */
export interface TaskRegistry<R = never> {
  readonly tasks: ReadonlyMap<string, Task<never, R>>
}

/**
 * Build a registry. Duplicate names are a programming error caught when the registry is built.
 * `Task<P, R>` is contravariant in P, so any task fits `Task<never, R>`.
 */
export const registry = <R>(...tasks: ReadonlyArray<Task<never, R>>): TaskRegistry<R> => {
  const byName = new Map<string, Task<never, R>>()
  for (const task of tasks) {
    if (byName.has(task.name)) throw new Error(`duplicate task name ${JSON.stringify(task.name)} in registry`)
    byName.set(task.name, task)
  }
  return { tasks: byName }
}

export const isRegistry = (value: unknown): value is TaskRegistry<unknown> =>
  typeof value === "object" && value !== null && "tasks" in value && value.tasks instanceof Map

/**
 * The exports of a PGQ_TASKS module whose handlers need services beyond the worker's SqlClient (a mailer, an
 * HTTP client, a repository): `export const { tasks, layer } = Task.forWorker(Task.registry(sendEmail), MailerLive)`,
 * or `export default Task.forWorker(...)`. It does not compile unless every service a handler needs comes from
 * `layer` or is the SqlClient. `layer` may itself need the SqlClient: the worker builds it once at start-up, on
 * its handlers' pool, and releases it after the drain.
 */
export const forWorker = <ROut, E, R extends ROut | SqlClient.SqlClient>(
  tasks: TaskRegistry<R>,
  layer: Layer.Layer<ROut, E, SqlClient.SqlClient>
): { readonly tasks: TaskRegistry<R>; readonly layer: Layer.Layer<ROut, E, SqlClient.SqlClient> } => ({ tasks, layer })

/** A PGQ_TASKS module as the worker runs it. */
export interface TaskModule {
  readonly specifier: string
  /**
   * Its handlers, run with the worker's SqlClient and what `layer` provides. Types cannot cross a dynamic
   * import (`forWorker` checks them in the module); a service still missing fails its job with the service's name.
   */
  readonly registry: TaskRegistry<SqlClient.SqlClient>
  /** The module's `layer` (empty when it exports none); a failure to build it names PGQ_TASKS. */
  readonly layer: Layer.Layer<never, InvalidConfig, SqlClient.SqlClient>
}

const invalidModule = (reason: string) => new InvalidConfig({ variable: "PGQ_TASKS", reason })

/** Why a module's layer could not be built, in one line. */
const layerProblem = (specifier: string, cause: Cause.Cause<unknown>) =>
  Option.match(missingService(cause), {
    onSome: (service) =>
      `the layer exported by ${specifier} needs the service ${JSON.stringify(service)}, which the worker does not ` +
      `provide (it provides its SqlClient)`,
    onNone: () => `the layer exported by ${specifier} failed to build: ${ErrorText.describeCause(cause)}`
  })

const moduleLayer = (specifier: string, layer: Layer.Layer<unknown, unknown, unknown>) =>
  Layer.catchCause(layer as Layer.Layer<never, unknown, SqlClient.SqlClient>, (cause) =>
    Layer.effectDiscard(
      Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause) : Effect.fail(invalidModule(layerProblem(specifier, cause)))
    )) as Layer.Layer<never, InvalidConfig, SqlClient.SqlClient>

const isExports = (value: unknown): value is Readonly<Record<string, unknown>> => typeof value === "object" && value !== null

/**
 * What the worker accepts from a module's exports: a registry as `default` or `tasks`, and optionally the Layer
 * of its handlers' services as `layer` (or both as the `default` export of `forWorker`).
 */
export const fromExports = (specifier: string, exports: Readonly<Record<string, unknown>>): Effect.Effect<TaskModule, InvalidConfig> => {
  const named = isExports(exports.default) && isRegistry(exports.default.tasks) ? exports.default : exports
  const candidate = isRegistry(named.default) ? named.default : named.tasks
  if (!isRegistry(candidate)) {
    return Effect.fail(invalidModule(`${specifier} must export a task registry (Task.registry(...)) as default or as "tasks"`))
  }
  if (candidate.tasks.size === 0) return Effect.fail(invalidModule(`${specifier} registers no task`))
  const layer = named.layer
  if (layer !== undefined && !Layer.isLayer(layer)) {
    return Effect.fail(invalidModule(`${specifier} exports "layer", which is not a Layer: export the Layer of the services its handlers need, or nothing`))
  }
  return Effect.succeed({
    specifier,
    registry: candidate as TaskRegistry<SqlClient.SqlClient>,
    layer: layer === undefined ? Layer.empty : moduleLayer(specifier, layer)
  })
}

/** Import the module `PGQ_TASKS` names (a path is resolved against the working directory) and check its exports. */
export const loadModule = (specifier: string): Effect.Effect<TaskModule, InvalidConfig> =>
  Effect.tryPromise({
    try: () => import(/^\.{0,2}\//.test(specifier) ? pathToFileURL(resolve(specifier)).href : specifier),
    catch: (error) => invalidModule(`cannot import ${specifier}: ${String(error)}`)
  }).pipe(Effect.flatMap((exports: Record<string, unknown>) => fromExports(specifier, exports)))
