/**
 * The execution-status port: where an execution's status (PENDING, EXECUTING, COMPLETED, ERROR, STOPPED)
 * lives, read and written by barriers (`Barrier.start` marks EXECUTING, the callback COMPLETED or ERROR,
 * abort and stop ERROR or STOPPED) and by the reaper's recovery of stranded barriers.
 *
 * The contract both stores keep:
 * - **A terminal status is final.** `mark` on an execution that is already COMPLETED, ERROR or STOPPED
 *   changes nothing and answers `Marked` with the status it already has; marking any status on a live
 *   (PENDING or EXECUTING) one sets it. So there is one terminal transition per execution, and a caller
 *   learns whether its own mark won (`Marked.status` is the status it asked for) or lost a race to another
 *   (concurrent aborts and stops: exactly one wins, and every caller is told which).
 * - `read` answers `Found`, `Gone` (the execution does not exist: the reaper may drop its barrier without a
 *   mark) or `NoStatus` (the store answered but has no status for it: the reaper keeps the barrier). Any
 *   answer that is none of those (unreachable, refused, timed out, garbled) is `StatusReadFailed`, never
 *   `Gone`: an unconfirmed status must not cost the only recovery handle.
 *
 * Two stores:
 * - `layerSql(schema)`: the `<schema>.execution` table through the SqlClient in context, so inside a
 *   caller's `sql.withTransaction` its reads and writes join that transaction (Barrier.start marks
 *   EXECUTING atomically with the fan-out). `mark` is one upsert guarded by "the stored status is not
 *   terminal"; a refused update is followed by a read of the (final, hence stable) terminal status.
 *   Rows are keyed by execution id: `org_id` is recorded when the row is created, not used as a filter.
 *   A missing row reads as `Gone` (and `mark` of one creates it); the table never yields `NoStatus`.
 * - `layerHttp({ url, token, timeout })`: the host's own system over HTTP (REST contract in the README:
 *   `GET {url}/executions/{id}?org_id=`, `PUT {url}/executions/{id}/status`), with a bearer token, a
 *   per-request timeout, and retries with exponential backoff for transient failures (5xx, 408, 429,
 *   timeouts, transport errors). Writes are retried too: a PUT of a status is idempotent by the contract.
 */
import { Cause, Context, Duration, Effect, Layer, Option, Redacted, Schedule, Schema } from "effect"
import type { HttpClientError, HttpClientRequest, HttpClientResponse } from "effect/http"
import { SqlClient } from "effect/sql"
import { type PgqSettings, statusUrlProblem } from "./Config.ts"
import { describeFailure, safeLine } from "./ErrorText.ts"
import { InvalidConfig, StatusReadFailed, StatusWriteFailed } from "./Errors.ts"

export { StatusReadFailed, StatusWriteFailed }

/** Every status, in lifecycle order. */
export const statuses = ["PENDING", "EXECUTING", "COMPLETED", "ERROR", "STOPPED"] as const
export type Status = typeof statuses[number]
export const Status: Schema.Codec<Status> = Schema.Literals(statuses)

/** COMPLETED, ERROR and STOPPED: once stored, never overwritten. */
export const isTerminal = (status: Status): boolean =>
  status === "COMPLETED" || status === "ERROR" || status === "STOPPED"

export type ReadResult =
  | { readonly _tag: "Found"; readonly status: Status }
  /** The execution no longer exists. */
  | { readonly _tag: "Gone" }
  /** The store answered but has no status for it. */
  | { readonly _tag: "NoStatus" }

export type MarkResult =
  /** `status` is the status the execution has AFTER the call (the existing one if it was terminal). */
  | { readonly _tag: "Marked"; readonly status: Status }
  | { readonly _tag: "Gone" }

const found = (status: Status): ReadResult => ({ _tag: "Found", status })
const marked = (status: Status): MarkResult => ({ _tag: "Marked", status })
const gone = { _tag: "Gone" } as const
const noStatus = { _tag: "NoStatus" } as const

export interface ExecutionStatusShape {
  readonly read: (executionId: string, orgId: string) => Effect.Effect<ReadResult, StatusReadFailed>
  readonly mark: (
    executionId: string,
    orgId: string,
    status: Status,
    errorMessage?: string
  ) => Effect.Effect<MarkResult, StatusWriteFailed>
}

const isStatus = Schema.is(Status)
const notAStatus = (status: string) => `${JSON.stringify(status)} is not one of ${statuses.join(", ")}`

/** Untyped callers can pass anything: refuse a non-status before it reaches a store. */
const checkStatus = (executionId: string, status: Status): Effect.Effect<void, StatusWriteFailed> =>
  isStatus(status)
    ? Effect.void
    : Effect.fail(new StatusWriteFailed({ executionId, status: String(status), reason: notAStatus(String(status)) }))

// ---------------------------------------------------------------------------------------------------------
// SQL store
// ---------------------------------------------------------------------------------------------------------

export interface SqlStoreOptions {
  /** Client-side bound of each statement (none by default). */
  readonly statementTimeout?: Duration.Input | undefined
}

/** The stored text, checked: the table's CHECK allows only the five, but a host may have altered it. */
const storedStatus = (value: string): Option.Option<Status> => (isStatus(value) ? Option.some(value) : Option.none())

export const makeSqlStore = Effect.fnUntraced(function*(schema: string, options: SqlStoreOptions = {}) {
  const sql = yield* SqlClient.SqlClient
  const table = sql(`${schema}.execution`)
  const bounded = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Cause.TimeoutError, R> =>
    options.statementTimeout === undefined ? effect : Effect.timeout(effect, options.statementTimeout)
  const why = (error: unknown) =>
    Cause.isTimeoutError(error)
      ? `the statement timed out after ${Duration.toMillis(options.statementTimeout ?? 0)} ms`
      : describeFailure(error, 500)

  const select = (executionId: string) =>
    sql<{ status: string }>`SELECT status FROM ${table} WHERE execution_id = ${executionId}`

  const read = Effect.fn("ExecutionStatus.read")(function*(executionId: string, _orgId: string) {
    const rows = yield* bounded(select(executionId)).pipe(
      Effect.mapError((error) => new StatusReadFailed({ executionId, reason: why(error) }))
    )
    const row = rows[0]
    if (row === undefined) return gone
    return yield* Option.match(storedStatus(row.status), {
      onNone: () =>
        Effect.fail(new StatusReadFailed({ executionId, reason: `the stored status ${notAStatus(row.status)}` })),
      onSome: (status) => Effect.succeed(found(status))
    })
  })

  /**
   * One statement: create the row (with its org) or move a live one; the WHERE leaves a terminal row alone.
   * Concurrent marks serialise on the row (or on the primary key of a row being inserted), and each re-checks
   * the WHERE against the version the previous one committed, so only the first terminal mark lands.
   */
  const upsert = (executionId: string, orgId: string, status: Status, errorMessage: string | null) =>
    sql<{ status: string }>`
      INSERT INTO ${table} AS e (execution_id, org_id, status, error_message)
      VALUES (${executionId}, ${orgId}, ${status}, ${errorMessage})
      ON CONFLICT (execution_id) DO UPDATE
        SET status = EXCLUDED.status, error_message = EXCLUDED.error_message, updated_at = now()
        WHERE e.status NOT IN ('COMPLETED', 'ERROR', 'STOPPED')
      RETURNING status`

  const mark = Effect.fn("ExecutionStatus.mark")(
    function*(executionId: string, orgId: string, status: Status, errorMessage?: string) {
      yield* checkStatus(executionId, status)
      const fail = (reason: string) => new StatusWriteFailed({ executionId, status, reason })
      const written = yield* bounded(upsert(executionId, orgId, status, errorMessage ?? null)).pipe(
        Effect.mapError((error) => fail(why(error)))
      )
      // No row back: the update was refused because the stored status is terminal, so it can no longer
      // change and a second statement (seeing the committed row) reads the winner.
      const rows = written.length > 0
        ? written
        : yield* bounded(select(executionId)).pipe(Effect.mapError((error) => fail(why(error))))
      const row = rows[0]
      if (row === undefined) return gone
      return yield* Option.match(storedStatus(row.status), {
        onNone: () => Effect.fail(fail(`the stored status ${notAStatus(row.status)}`)),
        onSome: (after) => Effect.succeed(marked(after))
      })
    }
  )

  return { read, mark } satisfies ExecutionStatusShape
})

// ---------------------------------------------------------------------------------------------------------
// HTTP adapter
// ---------------------------------------------------------------------------------------------------------

export interface HttpOptions {
  /** Base URL, http(s), no query or fragment; paths are appended (`{url}/executions/{id}`). */
  readonly url: string
  /** Sent as `Authorization: Bearer <token>`; never logged. */
  readonly token?: Redacted.Redacted<string> | undefined
  /** Bound of one request, body included. */
  readonly timeout: Duration.Input
  /** Further tries after the first for a transient failure (5xx, 408, 429, timeout, transport). Default 2. */
  readonly retries?: number | undefined
  /** The first backoff, doubled on each retry (with jitter). Default 100 ms. */
  readonly retryBase?: Duration.Input | undefined
}

/** One attempt's failure: only transient ones are retried. */
interface AttemptFailure {
  readonly transient: boolean
  readonly reason: string
}

const permanent = (reason: string): AttemptFailure => ({ transient: false, reason })
const transient = (reason: string): AttemptFailure => ({ transient: true, reason })

const ReadBody = Schema.fromJsonString(Schema.Struct({ status: Schema.NullOr(Status) }))
const MarkBody = Schema.fromJsonString(Schema.Struct({ status: Status }))
const NotFoundBody = Schema.fromJsonString(Schema.Struct({ error: Schema.Literal("not_found") }))

const isTransientStatus = (status: number) => status >= 500 || status === 408 || status === 429

/**
 * `id` as one path segment. "." and ".." would be resolved away by URL normalisation (so would their
 * percent-encoded forms), and "" would address the collection: none can name an execution.
 */
const pathSegment = (id: string): Option.Option<string> =>
  id === "" || id === "." || id === ".." ? Option.none() : Option.some(encodeURIComponent(id))

const transportReason = (error: HttpClientError.HttpClientError): AttemptFailure => {
  const reason = error.reason
  return reason._tag === "TransportError"
    ? transient(`transport error: ${describeFailure(reason.cause ?? reason.description ?? "unknown", 300)}`)
    : permanent(`${reason._tag}: ${describeFailure(reason.cause ?? reason.description ?? reason._tag, 300)}`)
}

/** The body as text (also read on failures, so the connection is released), then classified. */
const classify = <A>(
  response: HttpClientResponse.HttpClientResponse,
  onOk: (text: string) => Effect.Effect<A, AttemptFailure>
): Effect.Effect<A | typeof gone, AttemptFailure> =>
  response.text.pipe(
    Effect.mapError(transportReason),
    Effect.flatMap((text): Effect.Effect<A | typeof gone, AttemptFailure> => {
      const status = response.status
      if (status >= 200 && status < 300) return onOk(text)
      if (status === 404) {
        return Schema.decodeUnknownEffect(NotFoundBody)(text).pipe(
          Effect.as(gone),
          Effect.mapError(() => permanent("HTTP 404 without the not_found marker (not proof that the execution is gone)"))
        )
      }
      return Effect.fail(isTransientStatus(status) ? transient(`HTTP ${status}`) : permanent(`HTTP ${status}`))
    })
  )

const decodeBody = <A>(codec: Schema.Codec<A, string>, status: number) => (text: string) =>
  Schema.decodeUnknownEffect(codec)(text).pipe(
    Effect.mapError((error) => permanent(`undecodable body (HTTP ${status}): ${safeLine(error.message, 300)}`))
  )

const positiveDuration = (input: Duration.Input, variable: string): Effect.Effect<Duration.Duration, InvalidConfig> =>
  Option.match(Option.filter(Duration.fromInput(input), (d) => Duration.isFinite(d) && Duration.toMillis(d) > 0), {
    onNone: () => Effect.fail(new InvalidConfig({ variable, reason: `must be a positive, finite duration, got ${String(input)}` })),
    onSome: Effect.succeed
  })

export const makeHttpStore = Effect.fnUntraced(function*(options: HttpOptions, urlVariable = "url") {
  const problem = statusUrlProblem(options.url)
  if (problem !== undefined) return yield* new InvalidConfig({ variable: urlVariable, reason: problem })
  const timeout = yield* positiveDuration(options.timeout, "timeout")
  const retryBase = yield* positiveDuration(options.retryBase ?? "100 millis", "retryBase")
  const retries = options.retries ?? 2
  if (!Number.isInteger(retries) || retries < 0) {
    return yield* new InvalidConfig({ variable: "retries", reason: `must be an integer >= 0, got ${retries}` })
  }
  // Imported here: a process on the SQL store (the default) never loads the HTTP client stack.
  const http = yield* Effect.promise(() => import("effect/http"))
  const client = yield* http.HttpClient.HttpClient
  const base = options.url.replace(/\/+$/, "")
  const token = options.token
  const authorize = (request: HttpClientRequest.HttpClientRequest) =>
    token === undefined ? request : http.HttpClientRequest.bearerToken(request, token)

  /** One request with its timeout, retried while transient; the last reason says how many tries it took. */
  const send = <A>(
    request: HttpClientRequest.HttpClientRequest,
    onOk: (status: number) => (text: string) => Effect.Effect<A, AttemptFailure>
  ): Effect.Effect<A | typeof gone, string> =>
    client.execute(authorize(http.HttpClientRequest.acceptJson(request))).pipe(
      Effect.mapError(transportReason),
      Effect.flatMap((response) => classify(response, onOk(response.status))),
      Effect.timeout(timeout),
      Effect.mapError((error) =>
        Cause.isTimeoutError(error) ? transient(`timed out after ${Duration.toMillis(timeout)} ms`) : error
      ),
      Effect.retry({
        schedule: Schedule.jittered(Schedule.exponential(retryBase)),
        times: retries,
        while: (failure) => failure.transient
      }),
      Effect.mapError((failure) =>
        failure.transient && retries > 0 ? `${failure.reason} (gave up after ${retries + 1} tries)` : failure.reason
      )
    )

  const badId = (executionId: string) => `${JSON.stringify(executionId)} cannot be a URL path segment`

  const read = Effect.fn("ExecutionStatus.read")(function*(executionId: string, orgId: string) {
    const segment = pathSegment(executionId)
    if (Option.isNone(segment)) return yield* new StatusReadFailed({ executionId, reason: badId(executionId) })
    const request = http.HttpClientRequest.get(`${base}/executions/${segment.value}`).pipe(
      http.HttpClientRequest.setUrlParam("org_id", orgId)
    )
    const result = yield* send(request, (status) => (text) =>
      decodeBody(ReadBody, status)(text).pipe(
        Effect.map((body): ReadResult => (body.status === null ? noStatus : found(body.status)))
      )).pipe(Effect.mapError((reason) => new StatusReadFailed({ executionId, reason })))
    return result
  })

  const mark = Effect.fn("ExecutionStatus.mark")(
    function*(executionId: string, orgId: string, status: Status, errorMessage?: string) {
      yield* checkStatus(executionId, status)
      const segment = pathSegment(executionId)
      if (Option.isNone(segment)) {
        return yield* new StatusWriteFailed({ executionId, status, reason: badId(executionId) })
      }
      const request = http.HttpClientRequest.put(`${base}/executions/${segment.value}/status`).pipe(
        http.HttpClientRequest.bodyJsonUnsafe({ org_id: orgId, status, error_message: errorMessage ?? null })
      )
      return yield* send(request, (code) => (text) =>
        decodeBody(MarkBody, code)(text).pipe(Effect.map((body) => marked(body.status)))).pipe(
          Effect.mapError((reason) => new StatusWriteFailed({ executionId, status, reason }))
        )
    }
  )

  return { read, mark } satisfies ExecutionStatusShape
})

// ---------------------------------------------------------------------------------------------------------

export class ExecutionStatus extends Context.Service<ExecutionStatus, ExecutionStatusShape>()(
  "effect-pg-queue/ExecutionStatus"
) {
  /** The `<schema>.execution` table, through the SqlClient in context (joins the caller's transaction). */
  static readonly layerSql = (schema: string, options: SqlStoreOptions = {}) =>
    Layer.effect(ExecutionStatus, makeSqlStore(schema, options))

  /** The host's system over HTTP, on the HttpClient in context. Fails with InvalidConfig on bad options. */
  static readonly layerHttpClient = (options: HttpOptions, urlVariable = "url") =>
    Layer.effect(ExecutionStatus, makeHttpStore(options, urlVariable))

  /** The host's system over HTTP, on its own Undici client (closed with the layer). */
  static readonly layerHttp = (options: HttpOptions, urlVariable = "url") =>
    ExecutionStatus.layerHttpClient(options, urlVariable).pipe(Layer.provide(Layer.unwrap(
      Effect.promise(() => import("@effect/platform-node/NodeHttpClient")).pipe(Effect.map((client) => client.layerUndici))
    )))

  /**
   * PGQ_STATUS_URL set: the HTTP adapter (PGQ_STATUS_TOKEN, PGQ_STATUS_TIMEOUT_MS); unset: the SQL store on
   * PGQ_SCHEMA, its statements bounded by PGQ_STATEMENT_TIMEOUT_MS.
   */
  static readonly fromSettings = (
    settings: Pick<PgqSettings, "schema" | "statusUrl" | "statusToken" | "statusTimeoutMs" | "statementTimeoutMs">
  ): Layer.Layer<ExecutionStatus, InvalidConfig, SqlClient.SqlClient> =>
    Option.match(settings.statusUrl, {
      onNone: () =>
        ExecutionStatus.layerSql(settings.schema, { statementTimeout: Duration.millis(settings.statementTimeoutMs) }),
      onSome: (url) =>
        ExecutionStatus.layerHttp(
          {
            url,
            token: Option.getOrUndefined(settings.statusToken),
            timeout: Duration.millis(settings.statusTimeoutMs)
          },
          "PGQ_STATUS_URL"
        )
    })
}
