/**
 * Every PGQ_* knob, parsed and validated in one place. A bad value fails with `InvalidConfig`
 * naming the variable, so entrypoints can exit non-zero with a message an operator can act on.
 *
 * Settings given in code (`settingsWith`, the Promise facade) go through the same rules: the environment's
 * text is only read into typed values, and one validation checks the whole record, wherever each value came
 * from. A value from code is named by its field and its variable: `concurrency (PGQ_CONCURRENCY): …`.
 */
import { Array as Arr, Context, Effect, Formatter, Layer, LogLevel, Option, Redacted } from "effect"
import { InvalidConfig } from "./Errors.ts"
import { Identifier, isIdentifier, isQueueName, queueNameRule } from "./Names.ts"

export type LogFormat = "json" | "pretty"

export interface PgqSettings {
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
  readonly schema: string
  readonly pgbouncer: boolean
  readonly queues: ReadonlyArray<string>
  readonly tasks: Option.Option<string>
  readonly concurrency: number
  /**
   * Jobs claimed ahead of free slots, held locally (leases renewed) so the next claim overlaps running jobs:
   * a fixed number, or "auto" (the default) for what this process will start within a short horizon at its
   * recent pace (none for long jobs, hundreds for short ones; see Prefetch.ts).
   */
  readonly prefetch: number | "auto"
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

/** A lower-case SQL identifier: PGQ_SCHEMA, and the schema `migrate` accepts (safe to double-quote into SQL). */
export { Identifier }

/**
 * One setting: the variable that sets it, how that variable's text reads as the setting's type, and the rule
 * every value must pass, whether it was read from the environment or given in code.
 */
interface Field<A> {
  readonly variable: string
  /** What a valid value is, for messages. */
  readonly expected: string
  /** The variable's text as a value of the setting's type; undefined when it is not even that. */
  readonly read: (text: string) => A | undefined
  /**
   * Why a value breaks the rule; undefined when it is valid. `got` shows a value as the operator wrote it
   * (the variable's text, quoted, for a value from the environment).
   */
  readonly problem: (value: A, got: (value: unknown) => string) => string | undefined
  /** Never echoed in a message. */
  readonly secret?: boolean
}

const show = (value: unknown) => (typeof value === "string" ? JSON.stringify(value) : Formatter.format(value))

const field = <A>(
  variable: string,
  expected: string,
  read: (text: string) => A | undefined,
  valid: (value: unknown) => boolean
): Field<A> => ({
  variable,
  expected,
  read,
  problem: (value, got) => (valid(value) ? undefined : `expected ${expected}, got ${got(value)}`)
})

const numberOf = (text: string): number | undefined => {
  const n = Number(text)
  return Number.isNaN(n) ? undefined : n
}

const isInt = (value: unknown): value is number => typeof value === "number" && Number.isInteger(value)

const positiveInt = (variable: string) => field(variable, "a positive integer", numberOf, (v) => isInt(v) && v > 0)

const positiveNumber = (variable: string) =>
  field(variable, "a positive number", numberOf, (v) => typeof v === "number" && Number.isFinite(v) && v > 0)

const prefetchField = field<number | "auto">(
  "PGQ_PREFETCH",
  "auto or an integer >= 0",
  (t) => (t.toLowerCase() === "auto" ? "auto" : numberOf(t)),
  (v) => v === "auto" || (isInt(v) && v >= 0)
)

const port = (variable: string) => field(variable, "a port 0..65535", numberOf, (v) => isInt(v) && v >= 0 && v <= 65535)

const readBoolean = (text: string): boolean | undefined => {
  const lowered = text.toLowerCase()
  if (["true", "1", "yes", "on"].includes(lowered)) return true
  if (["false", "0", "no", "off"].includes(lowered)) return false
  return undefined
}

const boolean = (variable: string) => field(variable, "true or false", readBoolean, (v) => typeof v === "boolean")

const text = (variable: string, expected: string) =>
  field(variable, expected, (t) => t, (v) => typeof v === "string" && v.trim() !== "")

const optional = <A>(inner: Field<A>): Field<Option.Option<A>> => ({
  ...inner,
  read: (t) => {
    const value = inner.read(t)
    return value === undefined ? undefined : Option.some(value)
  },
  problem: (value, got) => {
    if (!Option.isOption(value)) {
      const shown = inner.secret === true ? "" : `, got ${show(value)}`
      return `expected Option.some(${inner.expected}) or Option.none()${shown}`
    }
    return Option.isNone(value) ? undefined : inner.problem(value.value, got)
  }
})

const secret = (variable: string): Field<Option.Option<Redacted.Redacted<string>>> =>
  optional({
    variable,
    expected: "a Redacted string",
    read: (t) => Redacted.make(t),
    problem: (value) => (Redacted.isRedacted(value) ? undefined : "expected a Redacted string (Redacted.make(value))"),
    secret: true
  })

const queueList: Field<ReadonlyArray<string>> = {
  variable: "PGQ_QUEUES",
  expected: "a comma-separated list of queue names",
  read: (t) => [...new Set(t.split(",").map((q) => q.trim()).filter((q) => q !== ""))],
  problem: (queues, got) => {
    if (!Array.isArray(queues)) return `expected a list of queue names, got ${got(queues)}`
    const bad = queues.find((q: unknown) => typeof q !== "string" || !isQueueName(q))
    if (bad !== undefined) return `queue name ${show(bad)} ${queueNameRule}`
    return queues.length === 0 ? "lists no queue" : undefined
  }
}

const logLevels: ReadonlyMap<string, LogLevel.LogLevel> = new Map([
  ["trace", "Trace"],
  ["debug", "Debug"],
  ["info", "Info"],
  ["warn", "Warn"],
  ["error", "Error"]
])

const logLevel: Field<LogLevel.LogLevel> = {
  variable: "PGQ_LOG_LEVEL",
  expected: "trace, debug, info, warn or error",
  read: (t) => logLevels.get(t.toLowerCase()),
  problem: (value) =>
    LogLevel.values.includes(value) ? undefined : `expected a LogLevel (${LogLevel.values.join(", ")}), got ${show(value)}`
}

const logFormat: Field<LogFormat> = field(
  "PGQ_LOG_FORMAT",
  "json or pretty",
  (t) => (t === "json" || t === "pretty" ? t : undefined),
  (v) => v === "json" || v === "pretty"
)

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

const statusUrl: Field<string> = {
  variable: "PGQ_STATUS_URL",
  expected: "an http(s) URL",
  read: (t) => t,
  problem: (value) => (typeof value === "string" ? statusUrlProblem(value) : `expected an http(s) URL, got ${show(value)}`)
}

/** Every setting, in the order they are checked. */
const fields: { readonly [K in keyof PgqSettings]: Field<PgqSettings[K]> } = {
  databaseUrl: secret("DATABASE_URL"),
  schema: field("PGQ_SCHEMA", "a lower-case SQL identifier", (t) => t, (v) => typeof v === "string" && isIdentifier(v)),
  pgbouncer: boolean("PGQ_PGBOUNCER"),
  notify: boolean("PGQ_NOTIFY"),
  queues: queueList,
  tasks: optional(text("PGQ_TASKS", "a module specifier")),
  concurrency: positiveInt("PGQ_CONCURRENCY"),
  prefetch: prefetchField,
  processes: positiveInt("PGQ_PROCESSES"),
  maxJobsPerProcess: optional(positiveInt("PGQ_MAX_JOBS_PER_PROCESS")),
  maxRssMb: optional(positiveNumber("PGQ_MAX_RSS_MB")),
  vtSeconds: positiveInt("PGQ_VT_SECONDS"),
  maxAttempts: positiveInt("PGQ_MAX_ATTEMPTS"),
  pollIntervalMs: positiveInt("PGQ_POLL_INTERVAL_MS"),
  pollMaxMs: positiveInt("PGQ_POLL_MAX_MS"),
  shutdownGraceSeconds: positiveNumber("PGQ_SHUTDOWN_GRACE_SECONDS"),
  leaseSeconds: positiveInt("PGQ_LEASE_SECONDS"),
  reaperIntervalSeconds: positiveNumber("PGQ_REAPER_INTERVAL_SECONDS"),
  barrierTtlSeconds: positiveInt("PGQ_BARRIER_TTL_SECONDS"),
  stuckTimeoutSeconds: positiveInt("PGQ_STUCK_TIMEOUT_SECONDS"),
  heartbeatSeconds: positiveNumber("PGQ_HEARTBEAT_SECONDS"),
  processStaleSeconds: positiveNumber("PGQ_PROCESS_STALE_SECONDS"),
  statementTimeoutMs: positiveInt("PGQ_STATEMENT_TIMEOUT_MS"),
  unknownTaskGraceSeconds: positiveNumber("PGQ_UNKNOWN_TASK_GRACE_SECONDS"),
  deadLetterRetentionDays: positiveNumber("PGQ_DEAD_LETTER_RETENTION_DAYS"),
  markerRetentionSeconds: positiveInt("PGQ_MARKER_RETENTION_SECONDS"),
  executionRetentionDays: positiveNumber("PGQ_EXECUTION_RETENTION_DAYS"),
  healthPort: optional(port("PGQ_HEALTH_PORT")),
  healthStaleSeconds: positiveNumber("PGQ_HEALTH_STALE_SECONDS"),
  statusUrl: optional(statusUrl),
  statusToken: secret("PGQ_STATUS_TOKEN"),
  statusTimeoutMs: positiveInt("PGQ_STATUS_TIMEOUT_MS"),
  logFormat,
  logLevel,
  autoMigrate: boolean("PGQ_AUTO_MIGRATE"),
  dashboardPort: optional(port("PGQ_DASHBOARD_PORT")),
  dashboardHost: text("PGQ_DASHBOARD_HOST", "a host name or address"),
  dashboardActions: boolean("PGQ_DASHBOARD_ACTIONS"),
  dashboardToken: secret("PGQ_DASHBOARD_TOKEN")
}

const keys = Object.keys(fields) as ReadonlyArray<keyof PgqSettings>

/** The defaults; the drain grace follows the visibility timeout (at least 30 s), as it does from the environment. */
const withDefaults = (given: Partial<PgqSettings>): PgqSettings => ({
  databaseUrl: Option.none(),
  schema: "pgq",
  pgbouncer: false,
  notify: true,
  queues: ["default"],
  tasks: Option.none(),
  concurrency: 10,
  prefetch: "auto",
  processes: 1,
  maxJobsPerProcess: Option.none(),
  maxRssMb: Option.none(),
  vtSeconds: 30,
  maxAttempts: 5,
  pollIntervalMs: 100,
  pollMaxMs: 2000,
  shutdownGraceSeconds: Math.max(30, given.vtSeconds ?? 30),
  leaseSeconds: 10,
  reaperIntervalSeconds: 5,
  barrierTtlSeconds: 21600,
  stuckTimeoutSeconds: 9000,
  heartbeatSeconds: 1,
  processStaleSeconds: 10,
  statementTimeoutMs: 10_000,
  unknownTaskGraceSeconds: 3600,
  deadLetterRetentionDays: 14,
  markerRetentionSeconds: 86_400,
  executionRetentionDays: 30,
  healthPort: Option.none(),
  healthStaleSeconds: 60,
  statusUrl: Option.none(),
  statusToken: Option.none(),
  statusTimeoutMs: 5000,
  logFormat: "json",
  logLevel: "Info",
  autoMigrate: true,
  dashboardPort: Option.none(),
  dashboardHost: "127.0.0.1",
  dashboardActions: false,
  dashboardToken: Option.none(),
  ...given
})

/** One variable read into its setting's type (not yet validated); none when it is unset. */
const readVariable = <K extends keyof PgqSettings>(env: Env, key: K): Effect.Effect<Option.Option<PgqSettings[K]>, InvalidConfig> => {
  const { variable, expected, read, secret } = fields[key]
  return Option.match(raw(env, variable), {
    onNone: () => Effect.succeed(Option.none()),
    onSome: (t) => {
      const value = read(t)
      return value === undefined
        ? Effect.fail(new InvalidConfig({ variable, reason: `expected ${expected}${secret === true ? "" : `, got ${JSON.stringify(t)}`}` }))
        : Effect.succeed(Option.some(value))
    }
  })
}

/** The settings the environment sets, typed, and the text of each variable that set one. */
const fromEnv = (env: Env) =>
  Effect.forEach(keys, (key) => readVariable(env, key).pipe(Effect.map(Option.map((value) => [key, value] as const)))).pipe(
    Effect.map((entries) => {
      const set = Arr.getSomes(entries)
      return {
        given: Object.fromEntries(set) as Partial<PgqSettings>,
        texts: new Map(set.map(([key]) => [key, Option.getOrElse(raw(env, fields[key].variable), () => "")]))
      }
    })
  )

/** A setting in a message: its variable, and its field too when the value came from code. */
const namer = (fromCode: ReadonlySet<string>) => (key: keyof PgqSettings) =>
  fromCode.has(key) ? `${key} (${fields[key].variable})` : fields[key].variable

const problemOf = <K extends keyof PgqSettings>(settings: PgqSettings, key: K, text: string | undefined) =>
  fields[key].problem(settings[key], (value) => (text === undefined ? show(value) : JSON.stringify(text)))

const ensure = (condition: boolean, variable: string, reason: string) =>
  condition ? Effect.void : Effect.fail(new InvalidConfig({ variable, reason }))

/** The most worker processes one supervisor runs; more is clamped (with a warning), as in the reference. */
export const MAX_PROCESSES = 64

/** Every field by its rule, then the rules between fields, then the normalisations (de-duplicated queues, clamped processes). */
const validate = Effect.fnUntraced(function*(
  settings: PgqSettings,
  fromCode: ReadonlySet<string>,
  texts: ReadonlyMap<keyof PgqSettings, string>
) {
  const name = namer(fromCode)
  for (const key of keys) {
    const problem = problemOf(settings, key, fromCode.has(key) ? undefined : texts.get(key))
    if (problem !== undefined) return yield* Effect.fail(new InvalidConfig({ variable: name(key), reason: problem }))
  }
  const { pollIntervalMs, leaseSeconds, heartbeatSeconds, processes } = settings
  yield* ensure(settings.pollMaxMs >= pollIntervalMs, name("pollMaxMs"), `must be >= ${name("pollIntervalMs")} (${pollIntervalMs})`)
  yield* ensure(
    settings.reaperIntervalSeconds < leaseSeconds,
    name("reaperIntervalSeconds"),
    `must be shorter than ${name("leaseSeconds")} (${leaseSeconds})`
  )
  // Two missed heartbeats (a GC pause, a slow query) must not get a live process pruned.
  yield* ensure(
    settings.processStaleSeconds >= 3 * heartbeatSeconds,
    name("processStaleSeconds"),
    `must be at least 3 × ${name("heartbeatSeconds")} (${3 * heartbeatSeconds})`
  )
  yield* dashboardTokenCheck(settings, name)
  if (processes > MAX_PROCESSES) {
    yield* Effect.logWarning(`${name("processes")} is ${processes}, above ${MAX_PROCESSES}: running ${MAX_PROCESSES} processes`)
  }
  return { ...settings, queues: [...new Set(settings.queues)], processes: Math.min(processes, MAX_PROCESSES) }
})

/** Actions need a token an attacker cannot guess; without actions a token is not needed. */
export const DASHBOARD_TOKEN_MIN_LENGTH = 16

const dashboardTokenCheck = (settings: PgqSettings, name: (key: keyof PgqSettings) => string) =>
  Option.match(settings.dashboardToken, {
    onNone: () =>
      ensure(!settings.dashboardActions, name("dashboardToken"), `must be set when ${name("dashboardActions")}=true`),
    onSome: (token) =>
      ensure(
        Redacted.value(token).length >= DASHBOARD_TOKEN_MIN_LENGTH,
        name("dashboardToken"),
        `must be at least ${DASHBOARD_TOKEN_MIN_LENGTH} characters`
      )
  })

const unknownSetting = (overrides: object) => Object.keys(overrides).find((key) => !(key in fields))

/**
 * The settings of the environment `env` with `overrides` given in code on top, validated as one record: every
 * value, from either side, by the rule of its variable. An override left `undefined` is unset.
 */
export const settingsFrom = Effect.fnUntraced(function*(env: Env, overrides: Partial<PgqSettings> = {}) {
  const unknown = unknownSetting(overrides)
  if (unknown !== undefined) {
    return yield* Effect.fail(new InvalidConfig({ variable: unknown, reason: "is not a setting (see PgqSettings)" }))
  }
  const given = Object.fromEntries(Object.entries(overrides).filter(([, value]) => value !== undefined)) as Partial<PgqSettings>
  const fromEnvironment = yield* fromEnv(env)
  const settings = withDefaults({ ...fromEnvironment.given, ...given })
  return yield* validate(settings, new Set(Object.keys(given)), fromEnvironment.texts)
})

/** Parse and validate the whole configuration from an environment record. */
export const parseSettings = (env: Env): Effect.Effect<PgqSettings, InvalidConfig> => settingsFrom(env)

/** Defaults with overrides given in code (hosts and tests), validated exactly like the environment's. */
export const settingsWith = (overrides: Partial<PgqSettings>): Effect.Effect<PgqSettings, InvalidConfig> =>
  settingsFrom({}, overrides)

/** PGQ_LOG_LEVEL alone: the entrypoints need it even when the rest of the configuration is invalid. */
export const logLevelFrom = (env: Env): Effect.Effect<LogLevel.LogLevel, InvalidConfig> =>
  readVariable(env, "logLevel").pipe(Effect.map(Option.getOrElse((): LogLevel.LogLevel => "Info")))

/** The validated settings as a service, so layers read configuration from one place. */
export class PgqConfig extends Context.Service<PgqConfig, PgqSettings>()("effect-pg-queue/Config") {
  /** Settings from `process.env` (or another record). */
  static readonly fromEnv = (env: Env = process.env) => Layer.effect(PgqConfig, parseSettings(env))
  /** Defaults with explicit overrides, for hosts that configure in code. */
  static readonly layer = (overrides: Env = {}) => PgqConfig.fromEnv(overrides)
  /** Settings given in code, validated like the environment's. */
  static readonly make = (overrides: Partial<PgqSettings>) => Layer.effect(PgqConfig, settingsWith(overrides))
}
