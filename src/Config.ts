/**
 * Every PGQ_* knob, parsed and validated in one place. A bad value fails with `InvalidConfig`
 * naming the variable, so entrypoints can exit non-zero with a message an operator can act on.
 */
import { Context, Effect, Layer, type LogLevel, Option, Redacted, Schema } from "effect"
import { InvalidConfig } from "./Errors.ts"
import { Identifier, isQueueName, queueNameRule } from "./Names.ts"

export type LogFormat = "json" | "pretty"

export interface PgqSettings {
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
  readonly schema: string
  readonly pgbouncer: boolean
  readonly queues: ReadonlyArray<string>
  readonly tasks: Option.Option<string>
  readonly concurrency: number
  /** Jobs claimed ahead of free slots, held locally (leases renewed) so the next claim overlaps running jobs. */
  readonly prefetch: number
  /** Enqueues NOTIFY after commit; workers LISTEN (not behind PgBouncer) and wake at once. */
  readonly notify: boolean
  /** Worker processes under one supervisor; 1 = no supervisor. Clamped to `MAX_PROCESSES`. */
  readonly processes: number
  /** A supervised child drains and is replaced after this many jobs (unset: never). */
  readonly maxJobsPerProcess: Option.Option<number>
  /** A supervised child drains and is replaced once its resident memory passes this many MiB (unset: never). */
  readonly maxRssMb: Option.Option<number>
  readonly vtSeconds: number
  readonly maxAttempts: number
  readonly pollIntervalMs: number
  readonly pollMaxMs: number
  readonly shutdownGraceSeconds: number
  readonly leaseSeconds: number
  readonly reaperIntervalSeconds: number
  readonly barrierTtlSeconds: number
  readonly stuckTimeoutSeconds: number
  readonly heartbeatSeconds: number
  readonly processStaleSeconds: number
  /** Bound of every runtime statement (claim, renew, ack, heartbeat, maintenance), client-side. */
  readonly statementTimeoutMs: number
  /** How long after its enqueue a job of an unknown task is put off before it is dead-lettered. */
  readonly unknownTaskGraceSeconds: number
  readonly deadLetterRetentionDays: number
  /** Batch markers of ended executions (no barrier row any more) are swept after this long. */
  readonly markerRetentionSeconds: number
  /** Finished executions in the `execution` table (SQL status store) are swept after this many days. */
  readonly executionRetentionDays: number
  readonly healthPort: Option.Option<number>
  readonly healthStaleSeconds: number
  readonly statusUrl: Option.Option<string>
  /** Bearer token for the HTTP execution-status adapter (never logged). */
  readonly statusToken: Option.Option<Redacted.Redacted<string>>
  /** Bound of one HTTP execution-status request. */
  readonly statusTimeoutMs: number
  readonly logFormat: LogFormat
  /** Minimum level logged; at debug and trace a failed start also prints its whole cause (stack included). */
  readonly logLevel: LogLevel.LogLevel
  /** Apply schema.sql at start-up (idempotent); off for roles without DDL rights. */
  readonly autoMigrate: boolean
  /** Serve the operator's dashboard from dist/reaper.js on this port (unset: no dashboard there). */
  readonly dashboardPort: Option.Option<number>
  /** Address the dashboard binds; loopback unless an operator opens it up. */
  readonly dashboardHost: string
  /** Dashboard actions (replay a dead letter, stop an execution); each request must carry the token. */
  readonly dashboardActions: boolean
  readonly dashboardToken: Option.Option<Redacted.Redacted<string>>
}

type Env = Readonly<Record<string, string | undefined>>

/** One variable's value, trimmed; empty counts as unset (as in the reference system). */
const raw = (env: Env, variable: string): Option.Option<string> => {
  const value = env[variable]?.trim()
  return value === undefined || value === "" ? Option.none() : Option.some(value)
}

const decodeVar = <A>(variable: string, expected: string, codec: Schema.Codec<A, string>) =>
  (value: string): Effect.Effect<A, InvalidConfig> =>
    Schema.decodeUnknownEffect(codec)(value).pipe(
      Effect.mapError(() => new InvalidConfig({ variable, reason: `expected ${expected}, got ${JSON.stringify(value)}` }))
    )

const IntFromString = Schema.NumberFromString.check(Schema.isInt())
const PositiveInt = IntFromString.check(Schema.isGreaterThan(0))
const PositiveNumber = Schema.NumberFromString.check(Schema.isFinite(), Schema.isGreaterThan(0))
const NonNegativeInt = IntFromString.check(Schema.isGreaterThanOrEqualTo(0))
const PortNumber = IntFromString.check(Schema.isBetween({ minimum: 0, maximum: 65535 }))
/** A lower-case SQL identifier: PGQ_SCHEMA, and the schema `migrate` accepts (safe to double-quote into SQL). */
export { Identifier }

const optional = <A>(env: Env, variable: string, decode: (value: string) => Effect.Effect<A, InvalidConfig>) =>
  Effect.transposeOption(Option.map(raw(env, variable), decode))

const withDefault = <A>(
  env: Env,
  variable: string,
  fallback: A,
  decode: (value: string) => Effect.Effect<A, InvalidConfig>
) => optional(env, variable, decode).pipe(Effect.map(Option.getOrElse(() => fallback)))

const positiveInt = (env: Env, variable: string, fallback: number) =>
  withDefault(env, variable, fallback, decodeVar(variable, "a positive integer", PositiveInt))

const positiveNumber = (env: Env, variable: string, fallback: number) =>
  withDefault(env, variable, fallback, decodeVar(variable, "a positive number", PositiveNumber))

const boolean = (variable: string) => (value: string): Effect.Effect<boolean, InvalidConfig> => {
  const lowered = value.toLowerCase()
  if (["true", "1", "yes", "on"].includes(lowered)) return Effect.succeed(true)
  if (["false", "0", "no", "off"].includes(lowered)) return Effect.succeed(false)
  return Effect.fail(new InvalidConfig({ variable, reason: `expected true or false, got ${JSON.stringify(value)}` }))
}

const queueList = (variable: string) => (value: string): Effect.Effect<ReadonlyArray<string>, InvalidConfig> => {
  const queues = [...new Set(value.split(",").map((q) => q.trim()).filter((q) => q !== ""))]
  const bad = queues.find((q) => !isQueueName(q))
  if (bad !== undefined) {
    return Effect.fail(new InvalidConfig({ variable, reason: `queue name ${JSON.stringify(bad)} ${queueNameRule}` }))
  }
  return queues.length === 0
    ? Effect.fail(new InvalidConfig({ variable, reason: "lists no queue" }))
    : Effect.succeed(queues)
}

const logLevels: ReadonlyMap<string, LogLevel.LogLevel> = new Map([
  ["trace", "Trace"],
  ["debug", "Debug"],
  ["info", "Info"],
  ["warn", "Warn"],
  ["error", "Error"]
])

/** PGQ_LOG_LEVEL alone: the entrypoints need it even when the rest of the configuration is invalid. */
export const logLevelFrom = (env: Env): Effect.Effect<LogLevel.LogLevel, InvalidConfig> =>
  withDefault(env, "PGQ_LOG_LEVEL", "Info", (value) => {
    const level = logLevels.get(value.toLowerCase())
    return level === undefined
      ? Effect.fail(new InvalidConfig({
        variable: "PGQ_LOG_LEVEL",
        reason: `expected trace, debug, info, warn or error, got ${JSON.stringify(value)}`
      }))
      : Effect.succeed(level)
  })

/** Why `value` cannot be the HTTP execution-status base URL, or undefined when it can. */
export const statusUrlProblem = (value: string): string | undefined => {
  if (!URL.canParse(value)) return `expected an http(s) URL, got ${JSON.stringify(value)}`
  const url = new URL(value)
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return `expected an http(s) URL, got the scheme ${JSON.stringify(url.protocol)}`
  }
  // Paths are appended to the base: a query or fragment on it would swallow them.
  return url.search !== "" || url.hash !== "" ? "must not carry a query or a fragment" : undefined
}

const statusUrl = (value: string): Effect.Effect<string, InvalidConfig> => {
  const problem = statusUrlProblem(value)
  return problem === undefined
    ? Effect.succeed(value)
    : Effect.fail(new InvalidConfig({ variable: "PGQ_STATUS_URL", reason: problem }))
}

/** The most worker processes one supervisor runs; more is clamped (with a warning), as in the reference. */
export const MAX_PROCESSES = 64

const processesFrom = (env: Env) =>
  positiveInt(env, "PGQ_PROCESSES", 1).pipe(
    Effect.tap((n) =>
      n > MAX_PROCESSES
        ? Effect.logWarning(`PGQ_PROCESSES=${n} is above ${MAX_PROCESSES}: running ${MAX_PROCESSES} processes`)
        : Effect.void
    ),
    Effect.map((n) => Math.min(n, MAX_PROCESSES))
  )

const ensure = (condition: boolean, variable: string, reason: string) =>
  condition ? Effect.void : Effect.fail(new InvalidConfig({ variable, reason }))

/** Parse and validate the whole configuration from an environment record. */
export const parseSettings = Effect.fnUntraced(function*(env: Env) {
  const vtSeconds = yield* positiveInt(env, "PGQ_VT_SECONDS", 30)
  const pollIntervalMs = yield* positiveInt(env, "PGQ_POLL_INTERVAL_MS", 100)
  const pollMaxMs = yield* positiveInt(env, "PGQ_POLL_MAX_MS", 2000)
  const leaseSeconds = yield* positiveInt(env, "PGQ_LEASE_SECONDS", 10)
  const reaperIntervalSeconds = yield* positiveNumber(env, "PGQ_REAPER_INTERVAL_SECONDS", 5)
  const heartbeatSeconds = yield* positiveNumber(env, "PGQ_HEARTBEAT_SECONDS", 2)
  const settings: PgqSettings = {
    databaseUrl: raw(env, "DATABASE_URL").pipe(Option.map(Redacted.make)),
    schema: yield* withDefault(env, "PGQ_SCHEMA", "pgq", decodeVar("PGQ_SCHEMA", "a lower-case SQL identifier", Identifier)),
    pgbouncer: yield* withDefault(env, "PGQ_PGBOUNCER", false, boolean("PGQ_PGBOUNCER")),
    notify: yield* withDefault(env, "PGQ_NOTIFY", true, boolean("PGQ_NOTIFY")),
    queues: yield* withDefault(env, "PGQ_QUEUES", ["default"], queueList("PGQ_QUEUES")),
    tasks: raw(env, "PGQ_TASKS"),
    concurrency: yield* positiveInt(env, "PGQ_CONCURRENCY", 10),
    prefetch: yield* withDefault(env, "PGQ_PREFETCH", 0, decodeVar("PGQ_PREFETCH", "an integer >= 0", NonNegativeInt)),
    processes: yield* processesFrom(env),
    maxJobsPerProcess: yield* optional(
      env,
      "PGQ_MAX_JOBS_PER_PROCESS",
      decodeVar("PGQ_MAX_JOBS_PER_PROCESS", "a positive integer", PositiveInt)
    ),
    maxRssMb: yield* optional(env, "PGQ_MAX_RSS_MB", decodeVar("PGQ_MAX_RSS_MB", "a positive number", PositiveNumber)),
    vtSeconds,
    maxAttempts: yield* positiveInt(env, "PGQ_MAX_ATTEMPTS", 5),
    pollIntervalMs,
    pollMaxMs,
    shutdownGraceSeconds: yield* positiveNumber(env, "PGQ_SHUTDOWN_GRACE_SECONDS", Math.max(30, vtSeconds)),
    leaseSeconds,
    reaperIntervalSeconds,
    barrierTtlSeconds: yield* positiveInt(env, "PGQ_BARRIER_TTL_SECONDS", 21600),
    stuckTimeoutSeconds: yield* positiveInt(env, "PGQ_STUCK_TIMEOUT_SECONDS", 9000),
    heartbeatSeconds,
    processStaleSeconds: yield* positiveNumber(env, "PGQ_PROCESS_STALE_SECONDS", 10),
    statementTimeoutMs: yield* positiveInt(env, "PGQ_STATEMENT_TIMEOUT_MS", 10_000),
    unknownTaskGraceSeconds: yield* positiveNumber(env, "PGQ_UNKNOWN_TASK_GRACE_SECONDS", 3600),
    deadLetterRetentionDays: yield* positiveNumber(env, "PGQ_DEAD_LETTER_RETENTION_DAYS", 14),
    markerRetentionSeconds: yield* positiveInt(env, "PGQ_MARKER_RETENTION_SECONDS", 86_400),
    executionRetentionDays: yield* positiveNumber(env, "PGQ_EXECUTION_RETENTION_DAYS", 30),
    healthPort: yield* optional(env, "PGQ_HEALTH_PORT", decodeVar("PGQ_HEALTH_PORT", "a port 0..65535", PortNumber)),
    healthStaleSeconds: yield* positiveNumber(env, "PGQ_HEALTH_STALE_SECONDS", 60),
    statusUrl: yield* optional(env, "PGQ_STATUS_URL", statusUrl),
    statusToken: raw(env, "PGQ_STATUS_TOKEN").pipe(Option.map(Redacted.make)),
    statusTimeoutMs: yield* positiveInt(env, "PGQ_STATUS_TIMEOUT_MS", 5000),
    logFormat: yield* withDefault(
      env,
      "PGQ_LOG_FORMAT",
      "json",
      decodeVar("PGQ_LOG_FORMAT", "json or pretty", Schema.Literals(["json", "pretty"]))
    ),
    logLevel: yield* logLevelFrom(env),
    autoMigrate: yield* withDefault(env, "PGQ_AUTO_MIGRATE", true, boolean("PGQ_AUTO_MIGRATE")),
    dashboardPort: yield* optional(
      env,
      "PGQ_DASHBOARD_PORT",
      decodeVar("PGQ_DASHBOARD_PORT", "a port 0..65535", PortNumber)
    ),
    dashboardHost: raw(env, "PGQ_DASHBOARD_HOST").pipe(Option.getOrElse(() => "127.0.0.1")),
    dashboardActions: yield* withDefault(env, "PGQ_DASHBOARD_ACTIONS", false, boolean("PGQ_DASHBOARD_ACTIONS")),
    dashboardToken: raw(env, "PGQ_DASHBOARD_TOKEN").pipe(Option.map(Redacted.make))
  }
  yield* ensure(pollMaxMs >= pollIntervalMs, "PGQ_POLL_MAX_MS", `must be >= PGQ_POLL_INTERVAL_MS (${pollIntervalMs})`)
  yield* ensure(
    reaperIntervalSeconds < leaseSeconds,
    "PGQ_REAPER_INTERVAL_SECONDS",
    `must be shorter than PGQ_LEASE_SECONDS (${leaseSeconds})`
  )
  // Two missed heartbeats (a GC pause, a slow query) must not get a live process pruned.
  yield* ensure(
    settings.processStaleSeconds >= 3 * heartbeatSeconds,
    "PGQ_PROCESS_STALE_SECONDS",
    `must be at least 3 × PGQ_HEARTBEAT_SECONDS (${3 * heartbeatSeconds})`
  )
  yield* dashboardTokenCheck(settings)
  return settings
})

/** Actions need a token an attacker cannot guess; without actions a token is not needed. */
export const DASHBOARD_TOKEN_MIN_LENGTH = 16

const dashboardTokenCheck = (settings: PgqSettings) =>
  Option.match(settings.dashboardToken, {
    onNone: () =>
      ensure(!settings.dashboardActions, "PGQ_DASHBOARD_TOKEN", "must be set when PGQ_DASHBOARD_ACTIONS=true"),
    onSome: (token) =>
      ensure(
        Redacted.value(token).length >= DASHBOARD_TOKEN_MIN_LENGTH,
        "PGQ_DASHBOARD_TOKEN",
        `must be at least ${DASHBOARD_TOKEN_MIN_LENGTH} characters`
      )
  })

/** The validated settings as a service, so layers read configuration from one place. */
export class PgqConfig extends Context.Service<PgqConfig, PgqSettings>()("effect-pg-queue/Config") {
  /** Settings from `process.env` (or another record). */
  static readonly fromEnv = (env: Env = process.env) => Layer.effect(PgqConfig, parseSettings(env))
  /** Defaults with explicit overrides, for hosts that configure in code. */
  static readonly layer = (overrides: Env = {}) => PgqConfig.fromEnv(overrides)
}

/** Defaults with overrides (hosts and tests). */
export const settingsWith = (overrides: Partial<PgqSettings>): Effect.Effect<PgqSettings, InvalidConfig> =>
  parseSettings({}).pipe(Effect.map((defaults) => ({ ...defaults, ...overrides })))
