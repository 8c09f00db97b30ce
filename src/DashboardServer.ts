/**
 * The dashboard over HTTP (effect/http): the page (DashboardAssets.ts, no CDN, nothing fetched from
 * elsewhere), and the JSON it polls, which is also an API for scripts:
 *
 *   GET  /api/overview                      queue counts and throughput, leases, fleet and barrier counts
 *   GET  /api/processes?offset&limit        the fleet, a page at a time
 *   GET  /api/barriers?stranded&offset&limit
 *   GET  /api/executions/finished?offset&limit
 *   GET  /api/executions/:id                `execution show`
 *   GET  /api/dead-letters?offset&limit     newest first; GET /api/dead-letters/:id with its payload
 *   POST /api/dead-letters/:id/replay       only with actions on and the token (`Authorization: Bearer …`)
 *   POST /api/executions/:id/stop           likewise
 *
 * Bound to 127.0.0.1 by default; bound to loopback it answers only requests addressed to a loopback name (a
 * DNS-rebinding page cannot read it). Every response forbids framing and sniffing, and the page's policy lets
 * it load nothing but its own script and style.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "effect/http"
import { timingSafeEqual } from "node:crypto"
import { createServer } from "node:http"
import type { PgqSettings } from "./Config.ts"
import { Dashboard, MAX_PAGE, type Page, type ReaperView } from "./Dashboard.ts"
import { page, script, style } from "./DashboardAssets.ts"
import { describeFailure } from "./ErrorText.ts"

export interface ServeOptions {
  /** 0 picks a free port. */
  readonly port: number
  readonly host: string
  /** Some: actions are on, and every action request must carry this token. */
  readonly actionToken: Option.Option<Redacted.Redacted<string>>
  /** How often the page polls. Default 2000 ms. */
  readonly refreshMs?: number
}

/** A request the dashboard refuses, with the HTTP status and the reason it answers. */
export class DashboardRefused extends Schema.TaggedError<DashboardRefused>()("DashboardRefused", {
  status: Schema.Number,
  reason: Schema.String
}) {
  override get message() {
    return `${this.status}: ${this.reason}`
  }
}

const MAX_OFFSET = 1_000_000

const securityHeaders = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store"
}

const json = (body: unknown, status = 200) =>
  HttpServerResponse.jsonUnsafe(body, { status, headers: securityHeaders })

const asset = (body: string, contentType: string) =>
  HttpServerResponse.text(body, { contentType, headers: securityHeaders })

const loopbackNames = new Set(["127.0.0.1", "localhost", "[::1]", "::1"])
const isLoopback = (host: string) => loopbackNames.has(host) || host.startsWith("127.")

/** The name a request was addressed to (its Host header without the port). */
const hostName = (header: string | undefined) =>
  header === undefined ? "" : header.startsWith("[") ? header.slice(0, header.indexOf("]") + 1) : header.split(":")[0]!

const Offset = Schema.NumberFromString.check(Schema.isInt(), Schema.isBetween({ minimum: 0, maximum: MAX_OFFSET }))
const Limit = Schema.NumberFromString.check(Schema.isInt(), Schema.isBetween({ minimum: 1, maximum: MAX_PAGE }))
const PageParams = Schema.Struct({ offset: Schema.optional(Offset), limit: Schema.optional(Limit) })
const BarrierParams = Schema.Struct({ ...PageParams.fields, stranded: Schema.optional(Schema.Literals(["true", "false"])) })

const refused = (status: number, reason: string) => new DashboardRefused({ status, reason })

const pageOf = (params: { readonly offset?: number | undefined; readonly limit?: number | undefined }): Page => ({
  offset: params.offset ?? 0,
  limit: params.limit ?? 20
})

const pageParams = HttpServerRequest.schemaSearchParams(PageParams).pipe(
  Effect.mapError(() =>
    refused(400, `offset must be an integer 0..${MAX_OFFSET} and limit an integer 1..${MAX_PAGE}`)
  ),
  Effect.map(pageOf)
)

const pathId = (name: string) =>
  HttpRouter.params.pipe(Effect.map((params) => params[name] ?? ""))

const messageId = pathId("id").pipe(
  Effect.filterOrFail((id) => /^\d{1,19}$/.test(id), (id) => refused(400, `${JSON.stringify(id)} is not a message id`))
)

/** Constant-time comparison of the bearer token. */
const tokenMatches = (header: string | undefined, token: Redacted.Redacted<string>) => {
  const expected = Buffer.from(`Bearer ${Redacted.value(token)}`)
  const given = Buffer.from(header ?? "")
  return given.length === expected.length && timingSafeEqual(given, expected)
}

export const routes = (options: ServeOptions) =>
  HttpRouter.use(Effect.fnUntraced(function*(router) {
    const dashboard = yield* Dashboard
    const loopbackOnly = isLoopback(options.host)
    const refreshMs = options.refreshMs ?? 2000
    const actions = Option.isSome(options.actionToken)

    /** Host check, refusals as JSON, and any other failure as a 500 that names it (never a stack). */
    const guarded = <E, R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        if (loopbackOnly && !isLoopback(hostName(request.headers["host"]))) {
          return yield* refused(421, "this dashboard answers only requests addressed to a loopback name")
        }
        return yield* handler
      }).pipe(
        Effect.catchCause((cause) => {
          const error = cause.reasons.find((r) => r._tag === "Fail")
          return Effect.succeed(
            error !== undefined && error.error instanceof DashboardRefused
              ? json({ error: error.error.reason }, error.error.status)
              : json({ error: describeFailure(error?._tag === "Fail" ? error.error : cause) }, 500)
          )
        })
      )

    const authorized = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      if (Option.isNone(options.actionToken)) {
        return yield* refused(403, "actions are off (PGQ_DASHBOARD_ACTIONS=true and PGQ_DASHBOARD_TOKEN turn them on)")
      }
      if (!tokenMatches(request.headers["authorization"], options.actionToken.value)) {
        return yield* refused(401, "missing or wrong token (Authorization: Bearer <PGQ_DASHBOARD_TOKEN>)")
      }
    })

    const get = <E, R>(path: HttpRouter.PathInput, handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
      router.add("GET", path, guarded(handler))
    const post = <E, R>(path: HttpRouter.PathInput, handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
      router.add("POST", path, guarded(authorized.pipe(Effect.andThen(handler))))

    yield* get("/", Effect.succeed(asset(page, "text/html; charset=utf-8")))
    yield* get("/app.js", Effect.succeed(asset(script, "text/javascript; charset=utf-8")))
    yield* get("/app.css", Effect.succeed(asset(style, "text/css; charset=utf-8")))
    yield* get("/favicon.ico", Effect.succeed(HttpServerResponse.empty({ status: 204, headers: securityHeaders })))

    yield* get(
      "/api/overview",
      dashboard.overview.pipe(Effect.map((overview) => json({ ...overview, server: { actions, refreshMs } })))
    )
    yield* get(
      "/api/processes",
      pageParams.pipe(Effect.flatMap((p) => dashboard.processes(p).pipe(Effect.map((rows) => json({ ...p, rows })))))
    )
    yield* get(
      "/api/barriers",
      HttpServerRequest.schemaSearchParams(BarrierParams).pipe(
        Effect.mapError(() => refused(400, `stranded must be true or false, offset 0..${MAX_OFFSET}, limit 1..${MAX_PAGE}`)),
        Effect.flatMap((params) => {
          const p = pageOf(params)
          const stranded = params.stranded === "true"
          return dashboard.barriers({ stranded, ...p }).pipe(Effect.map((rows) => json({ ...p, stranded, rows })))
        })
      )
    )
    yield* get(
      "/api/executions/finished",
      pageParams.pipe(
        Effect.flatMap((p) =>
          dashboard.finishedExecutions(p).pipe(
            Effect.map((rows) =>
              json({ ...p, rows: rows ?? [], note: rows === null ? "the status store is HTTP (PGQ_STATUS_URL)" : null })
            )
          )
        )
      )
    )
    yield* get(
      "/api/executions/:id",
      pathId("id").pipe(
        Effect.flatMap(dashboard.execution),
        Effect.map((view) => json(view)),
        Effect.catchTag("ExecutionNotFound", (e) => Effect.fail(refused(404, e.message)))
      )
    )
    yield* get(
      "/api/dead-letters",
      pageParams.pipe(Effect.flatMap((p) => dashboard.deadLetters(p).pipe(Effect.map((rows) => json({ ...p, rows })))))
    )
    yield* get(
      "/api/dead-letters/:id",
      messageId.pipe(
        Effect.flatMap((id) =>
          dashboard.deadLetter(id).pipe(
            Effect.flatMap(Option.match({
              onNone: () => Effect.fail(refused(404, `no dead letter ${id}`)),
              onSome: (row) => Effect.succeed(json(row))
            }))
          )
        )
      )
    )
    yield* post(
      "/api/dead-letters/:id/replay",
      messageId.pipe(
        Effect.flatMap((id) => dashboard.replayDeadLetter(id)),
        Effect.map((replayed) => json({ replayed }, replayed === 0 ? 404 : 200))
      )
    )
    yield* post(
      "/api/executions/:id/stop",
      pathId("id").pipe(
        Effect.flatMap(dashboard.stopExecution),
        Effect.map((result) => json(result, result.outcome === "unconfirmed" ? 503 : 200)),
        Effect.catchTag("ExecutionNotFound", (e) => Effect.fail(refused(404, e.message)))
      )
    )
  }))

/** Serve the dashboard for the life of the layer (port 0 picks a free one; `HttpServer` gives the address). */
export const layer = (options: ServeOptions) =>
  HttpRouter.serve(routes(options), { disableLogger: true, disableListenLog: true }).pipe(
    Layer.provideMerge(
      NodeHttpServer.layer(createServer, { port: options.port, host: options.host, gracefulShutdownTimeout: "1 second" })
    )
  )

/**
 * The dashboard of `settings` (actions only with PGQ_DASHBOARD_ACTIONS and its token) on `port` and `host`,
 * for the life of the enclosing scope; returns its URL. `reaper`: served from inside dist/reaper.js.
 */
export const start = Effect.fnUntraced(function*(
  settings: PgqSettings,
  where: {
    readonly port: number
    readonly host: string
    readonly reaper?: ReaperView
    /** Throughput sample period (default 10 s). */
    readonly sampleSeconds?: number
  }
) {
  const actionToken = settings.dashboardActions ? settings.dashboardToken : Option.none()
  const context = yield* Layer.build(
    layer({ port: where.port, host: where.host, actionToken }).pipe(
      Layer.provide(Dashboard.fromSettings(settings, { reaper: where.reaper, sampleSeconds: where.sampleSeconds }))
    )
  )
  return `${HttpServer.formatAddress(Context.get(context, HttpServer.HttpServer).address)}/`
})
