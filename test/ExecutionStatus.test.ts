/**
 * The execution-status port against its two stores: the SQL store on a real Postgres (terminal-is-final,
 * 16 concurrent terminal marks with one winner, joining a caller's transaction), and the HTTP adapter
 * against a real HTTP server started here that implements the REST contract with an in-memory map, plus
 * endpoints that misbehave (404 with/without the marker, 403, 500, flaky 503, slow, garbage bodies) and a
 * closed port. The reference's §15.7 / §15.10 catalogue maps onto these: a found status, GONE only on a 404
 * that carries the marker, every other failure typed and never mistaken for GONE.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { assert, describe, expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import { HttpRouter, HttpServer, type HttpServerRequest, HttpServerResponse } from "effect/http"
import { SqlClient } from "effect/sql"
import { createServer } from "node:http"
import { createServer as createNetServer } from "node:net"
import { settingsWith } from "../src/Config.ts"
import * as ExecutionStatus from "../src/ExecutionStatus.ts"
import { TestSchema, testDb } from "./support.ts"

type Status = ExecutionStatus.Status
const TOKEN = "s3cret-token-value"

// ---------------------------------------------------------------------------------------------------------
// The host's status service, as a test double speaking the REST contract over real HTTP.
// ---------------------------------------------------------------------------------------------------------

interface Hit {
  readonly mode: string
  readonly method: string
  /** The raw request target, exactly as sent (path and query still encoded). */
  readonly target: string
  readonly id: string
  readonly org: string | null
  readonly authorization: string | undefined
  readonly body: unknown
}

interface Stored {
  org: string
  status: Status | null
  errorMessage: string | null
}

class StatusServer extends Context.Service<StatusServer, {
  /** Base URL of one behaviour, e.g. `http://127.0.0.1:1234/ok`. */
  readonly base: (mode: string) => string
  /** A base URL on which nothing listens. */
  readonly closed: string
  readonly store: Map<string, Stored>
  readonly hits: (id: string) => ReadonlyArray<Hit>
}>()("test/StatusServer") {}

const terminal: ReadonlySet<string> = new Set(["COMPLETED", "ERROR", "STOPPED"])
const notFound = () => HttpServerResponse.jsonUnsafe({ error: "not_found" }, { status: 404 })

const PutBody = Schema.Struct({
  org_id: Schema.String,
  status: Schema.Literals(["PENDING", "EXECUTING", "COMPLETED", "ERROR", "STOPPED"]),
  error_message: Schema.NullOr(Schema.String)
})

/** The contract, honestly: org-scoped look-ups, terminal statuses are final, PUT answers the status after it. */
const contract = (store: Map<string, Stored>, request: HttpServerRequest.HttpServerRequest, id: string, org: string | null, body: unknown) => {
  const row = store.get(id)
  if (request.method === "GET") {
    if (row === undefined || row.org !== org) return Effect.succeed(notFound())
    return Effect.succeed(HttpServerResponse.jsonUnsafe({ status: row.status }))
  }
  return Schema.decodeUnknownEffect(PutBody)(body).pipe(
    Effect.map((put) => {
      if (row === undefined || row.org !== put.org_id) return notFound()
      if (row.status === null || !terminal.has(row.status)) {
        row.status = put.status
        row.errorMessage = put.error_message
      }
      return HttpServerResponse.jsonUnsafe({ status: row.status })
    }),
    Effect.orElseSucceed(() => HttpServerResponse.jsonUnsafe({ error: "bad_request" }, { status: 400 }))
  )
}

const garbage: Record<string, string> = {
  text: "<html>oops</html>",
  "unknown-status": JSON.stringify({ status: "FINISHED" }),
  shape: JSON.stringify([1, 2, 3]),
  empty: ""
}

const serverLayer = Layer.effect(
  StatusServer,
  Effect.gen(function*() {
    const store = new Map<string, Stored>()
    const log: Array<Hit> = []
    const flakyCount = new Map<string, number>()
    const handle = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.gen(function*() {
        const url = new URL(request.url, "http://local")
        const [, mode = "", , encodedId = ""] = url.pathname.split("/")
        const id = decodeURIComponent(encodedId)
        const text = request.method === "PUT" ? yield* request.text.pipe(Effect.orElseSucceed(() => "")) : ""
        const body: unknown = text === "" ? undefined : JSON.parse(text)
        log.push({
          mode,
          method: request.method,
          target: request.url,
          id,
          org: url.searchParams.get("org_id"),
          authorization: request.headers["authorization"],
          body
        })
        switch (mode) {
          case "ok":
            return yield* contract(store, request, id, url.searchParams.get("org_id"), body)
          case "flaky": {
            const seen = (flakyCount.get(id) ?? 0) + 1
            flakyCount.set(id, seen)
            return seen <= 2
              ? HttpServerResponse.jsonUnsafe({ error: "unavailable" }, { status: 503 })
              : yield* contract(store, request, id, url.searchParams.get("org_id"), body)
          }
          case "plain404":
            return HttpServerResponse.text("Not Found", { status: 404 })
          case "other404":
            return HttpServerResponse.jsonUnsafe({ error: "no_such_route" }, { status: 404 })
          case "forbidden":
            return HttpServerResponse.jsonUnsafe({ error: "forbidden" }, { status: 403 })
          case "broken":
            return HttpServerResponse.jsonUnsafe({ error: "boom" }, { status: 500 })
          case "slow":
            return yield* Effect.never
          case "garbage":
            return HttpServerResponse.text(garbage[id] ?? "?", { contentType: "application/json" })
          default:
            return HttpServerResponse.text("unknown mode", { status: 400 })
        }
      })
    const routes = HttpRouter.use(Effect.fnUntraced(function*(router) {
      yield* router.add("*", "/*", handle)
    }))
    const serverScope = yield* Layer.build(
      HttpRouter.serve(routes, { disableLogger: true }).pipe(
        Layer.provideMerge(NodeHttpServer.layer(createServer, { port: 0, host: "127.0.0.1", gracefulShutdownTimeout: "100 millis" }))
      )
    )
    const origin = HttpServer.formatAddress(Context.get(serverScope, HttpServer.HttpServer).address)
    const closedPort = yield* Effect.promise(() =>
      new Promise<number>((resolve) => {
        const probe = createNetServer().listen(0, "127.0.0.1", () => {
          const address = probe.address()
          const port = typeof address === "object" && address !== null ? address.port : 0
          probe.close(() => resolve(port))
        })
      })
    )
    return StatusServer.of({
      base: (mode) => `${origin}/${mode}`,
      closed: `http://127.0.0.1:${closedPort}/ok`,
      store,
      hits: (id) => log.filter((hit) => hit.id === id)
    })
  })
)

let counter = 0
const freshId = (label: string) => `${label}-${process.pid}-${++counter}`

/** The HTTP adapter on one behaviour: quick timeout and backoff so the failure paths stay short. */
const httpStatus = (url: string, token?: Redacted.Redacted<string>) =>
  ExecutionStatus.ExecutionStatus.layerHttp({
    url,
    token,
    timeout: "300 millis",
    retries: 2,
    retryBase: "5 millis"
  })

/** Valid options only: a refused base URL would be a bug of this file. */
const withHttp = <A, E, R>(url: string, effect: Effect.Effect<A, E, R>, token?: Redacted.Redacted<string>) =>
  effect.pipe(Effect.provide(httpStatus(url, token).pipe(Layer.orDie)))

const seed = (id: string, org: string, status: Status | null) =>
  StatusServer.use((server) => Effect.sync(() => server.store.set(id, { org, status, errorMessage: null })))

const read = (id: string, org: string) => ExecutionStatus.ExecutionStatus.use((s) => s.read(id, org))
const mark = (id: string, org: string, status: Status, errorMessage?: string) =>
  ExecutionStatus.ExecutionStatus.use((s) => s.mark(id, org, status, errorMessage))

const Env = Layer.merge(testDb("exec_status", { maxConnections: 24 }), serverLayer)

// ---------------------------------------------------------------------------------------------------------

layer(Env, { excludeTestServices: true })("ExecutionStatus", (it) => {
  it.effect("isTerminal: COMPLETED, ERROR and STOPPED only", () =>
    Effect.sync(() => {
      expect(ExecutionStatus.statuses.filter(ExecutionStatus.isTerminal)).toEqual(["COMPLETED", "ERROR", "STOPPED"])
    }))

  describe("SQL store", () => {
    const sqlStore = Layer.unwrap(TestSchema.use(({ schema }) => Effect.succeed(ExecutionStatus.ExecutionStatus.layerSql(schema))))
    const withSql = <A, E, R>(effect: Effect.Effect<A, E, R>) => effect.pipe(Effect.provide(sqlStore))
    const row = (id: string) =>
      Effect.gen(function*() {
        const { schema } = yield* TestSchema
        const sql = yield* SqlClient.SqlClient
        const rows = yield* sql<{ org_id: string; status: string; error_message: string | null; updated_at: string }>`
          SELECT org_id, status, error_message, updated_at::text AS updated_at
          FROM ${sql(`${schema}.execution`)} WHERE execution_id = ${id}`
        return rows[0]
      })

    it.effect("read: no row is Gone; a row is Found", () =>
      withSql(Effect.gen(function*() {
        const id = freshId("sql-read")
        expect(yield* read(id, "org-a")).toEqual({ _tag: "Gone" })
        const { schema } = yield* TestSchema
        const sql = yield* SqlClient.SqlClient
        yield* sql`INSERT INTO ${sql(`${schema}.execution`)} (execution_id, org_id, status) VALUES (${id}, 'org-a', 'EXECUTING')`
        expect(yield* read(id, "org-a")).toEqual({ _tag: "Found", status: "EXECUTING" })
      })))

    it.effect("mark creates the row in this schema with its org; non-terminal marks move it", () =>
      withSql(Effect.gen(function*() {
        const id = freshId("sql-create")
        expect(yield* mark(id, "org-a", "PENDING")).toEqual({ _tag: "Marked", status: "PENDING" })
        expect(yield* row(id)).toMatchObject({ org_id: "org-a", status: "PENDING", error_message: null })
        expect(yield* mark(id, "org-a", "EXECUTING")).toEqual({ _tag: "Marked", status: "EXECUTING" })
        expect(yield* mark(id, "org-a", "PENDING")).toEqual({ _tag: "Marked", status: "PENDING" })
        expect(yield* mark(id, "org-a", "ERROR", "batch 3 failed")).toEqual({ _tag: "Marked", status: "ERROR" })
        expect(yield* row(id)).toMatchObject({ org_id: "org-a", status: "ERROR", error_message: "batch 3 failed" })
        expect(yield* read(id, "org-a")).toEqual({ _tag: "Found", status: "ERROR" })
      })))

    it.effect("a terminal status is final: later marks of any status return it and change nothing", () =>
      withSql(Effect.gen(function*() {
        const id = freshId("sql-final")
        yield* mark(id, "org-a", "EXECUTING")
        expect(yield* mark(id, "org-a", "STOPPED", "stopped by user")).toEqual({ _tag: "Marked", status: "STOPPED" })
        const before = yield* row(id)
        for (const status of ExecutionStatus.statuses) {
          expect(yield* mark(id, "org-a", status, "late")).toEqual({ _tag: "Marked", status: "STOPPED" })
        }
        expect(yield* row(id)).toEqual(before)
      })))

    it.effect("16 concurrent terminal marks: exactly one wins and every caller is told the winner", () =>
      withSql(Effect.gen(function*() {
        const terminals = ExecutionStatus.statuses.filter(ExecutionStatus.isTerminal)
        // Fresh ids race the INSERT itself; seeded ones race the UPDATE of a live execution.
        for (const seeded of [false, true, false, true, false, true]) {
          const id = freshId("sql-race")
          if (seeded) yield* mark(id, "org-a", "EXECUTING")
          const results = yield* Effect.all(
            Array.from({ length: 16 }, (_, i) => mark(id, "org-a", terminals[i % 3]!, `caller ${i}`)),
            { concurrency: "unbounded" }
          )
          const winners = new Set(results.map((r) => (r._tag === "Marked" ? r.status : "Gone")))
          expect(winners.size).toBe(1)
          const [winner] = [...winners]
          const stored = yield* row(id)
          expect(stored?.status).toBe(winner)
          // The stored message belongs to a caller who asked for the winning status.
          const caller = Number(stored?.error_message?.replace("caller ", ""))
          expect(terminals[caller % 3]).toBe(winner)
        }
      })))

    it.effect("inside the caller's transaction: visible to it, gone when it rolls back, kept when it commits", () =>
      withSql(Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const rolledBack = freshId("sql-tx-rollback")
        const failure = yield* sql.withTransaction(Effect.gen(function*() {
          yield* mark(rolledBack, "org-a", "EXECUTING")
          expect(yield* read(rolledBack, "org-a")).toEqual({ _tag: "Found", status: "EXECUTING" })
          return yield* Effect.fail("host aborted" as const)
        })).pipe(Effect.flip)
        expect(failure).toBe("host aborted")
        expect(yield* row(rolledBack)).toBeUndefined()
        expect(yield* read(rolledBack, "org-a")).toEqual({ _tag: "Gone" })

        const committed = freshId("sql-tx-commit")
        yield* sql.withTransaction(mark(committed, "org-a", "EXECUTING"))
        expect(yield* row(committed)).toMatchObject({ status: "EXECUTING", org_id: "org-a" })
      })))

    it.effect("every database failure is a typed failure naming the execution, never a defect", () =>
      Effect.gen(function*() {
        const missing = ExecutionStatus.ExecutionStatus.layerSql("no_such_schema_here")
        const readError = yield* read("exec-x", "org-a").pipe(Effect.provide(missing), Effect.flip)
        expect(readError._tag).toBe("StatusReadFailed")
        expect(readError.executionId).toBe("exec-x")
        expect(readError.message).toContain("exec-x")
        expect(readError.reason).toContain("no_such_schema_here")
        const writeError = yield* mark("exec-x", "org-a", "ERROR", "x").pipe(Effect.provide(missing), Effect.flip)
        expect(writeError._tag).toBe("StatusWriteFailed")
        expect(writeError.status).toBe("ERROR")
        expect(writeError.message).toContain("exec-x")
        expect(writeError.message).toContain("ERROR")

        // A NUL byte cannot be stored in text: typed, not a defect.
        const nul = yield* withSql(read("bad\u0000id", "org-a")).pipe(Effect.flip)
        expect(nul._tag).toBe("StatusReadFailed")
        // A status outside the five (from untyped callers) names the status.
        const bogus = yield* withSql(mark(freshId("sql-bogus"), "org-a", "DONE" as Status)).pipe(Effect.flip)
        expect(bogus._tag).toBe("StatusWriteFailed")
        expect(bogus.message).toContain("DONE")
      }))
  })

  describe("HTTP adapter", () => {
    it.effect("GET 200 is Found; null status is NoStatus; id and org are URL-encoded; bearer token sent", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        const id = `${freshId("http read")}/../x?y#z&é`
        const org = "org a&b=c/d"
        yield* seed(id, org, "EXECUTING")
        const found = yield* withHttp(server.base("ok"), read(id, org), Redacted.make(TOKEN))
        expect(found).toEqual({ _tag: "Found", status: "EXECUTING" })
        const [hit] = server.hits(id)
        expect(hit?.method).toBe("GET")
        expect(hit?.target.startsWith(`/ok/executions/${encodeURIComponent(id)}?`)).toBe(true)
        expect(hit?.org).toBe(org)
        expect(hit?.authorization).toBe(`Bearer ${TOKEN}`)

        const blank = freshId("http-nostatus")
        yield* seed(blank, "org-a", null)
        expect(yield* withHttp(server.base("ok"), read(blank, "org-a"))).toEqual({ _tag: "NoStatus" })
        expect(server.hits(blank)[0]?.authorization).toBeUndefined()
      }))

    it.effect("GET 404 with the not_found marker is Gone (also for another org's execution)", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        const id = freshId("http-gone")
        expect(yield* withHttp(server.base("ok"), read(id, "org-a"))).toEqual({ _tag: "Gone" })
        yield* seed(id, "org-b", "EXECUTING")
        expect(yield* withHttp(server.base("ok"), read(id, "org-a"))).toEqual({ _tag: "Gone" })
        expect(server.hits(id)).toHaveLength(2)
      }))

    const readFailure = (mode: string, id: string, token?: Redacted.Redacted<string>) =>
      StatusServer.use((server) =>
        withHttp(mode === "closed" ? server.closed : server.base(mode), read(id, "org-a"), token).pipe(Effect.flip)
      )

    it.effect("GET 404 without the marker, 403 and undecodable bodies fail at once, never Gone", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        for (const [mode, expected] of [["plain404", "404"], ["other404", "404"], ["forbidden", "403"]] as const) {
          const id = freshId(`http-${mode}`)
          const error = yield* readFailure(mode, id, Redacted.make(TOKEN))
          expect(error._tag).toBe("StatusReadFailed")
          expect(error.executionId).toBe(id)
          expect(error.reason).toContain(expected)
          expect(error.message).toContain(id)
          // Not transient: one request only.
          expect(server.hits(id)).toHaveLength(1)
          // The token never reaches an error.
          expect(`${error.message} ${JSON.stringify(error)} ${String(error)}`).not.toContain(TOKEN)
        }
        for (const variant of Object.keys(garbage)) {
          const error = yield* readFailure("garbage", variant)
          expect(error._tag).toBe("StatusReadFailed")
          expect(error.reason).toMatch(/undecodable/)
        }
      }))

    it.effect("GET 500, a timeout and a closed port are retried, then fail typed with the cause", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        const broken = freshId("http-500")
        const error500 = yield* readFailure("broken", broken)
        expect(error500.reason).toContain("500")
        expect(server.hits(broken)).toHaveLength(3)

        const slow = freshId("http-slow")
        const timedOut = yield* readFailure("slow", slow)
        expect(timedOut._tag).toBe("StatusReadFailed")
        expect(timedOut.reason).toMatch(/timed out after 300 ms/)
        expect(server.hits(slow)).toHaveLength(3)

        const closed = yield* readFailure("closed", freshId("http-closed"))
        expect(closed._tag).toBe("StatusReadFailed")
        expect(closed.reason).toMatch(/transport/)
      }), 30_000)

    it.effect("a transient 503 that clears is retried to success", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        const id = freshId("http-flaky")
        yield* seed(id, "org-a", "PENDING")
        expect(yield* withHttp(server.base("flaky"), read(id, "org-a"))).toEqual({ _tag: "Found", status: "PENDING" })
        expect(server.hits(id)).toHaveLength(3)
      }))

    it.effect("ids that cannot be one URL path segment are refused before any request", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        for (const id of ["", ".", ".."]) {
          const readError = yield* readFailure("ok", id)
          expect(readError._tag).toBe("StatusReadFailed")
          expect(readError.message).toContain(JSON.stringify(id))
          const writeError = yield* withHttp(server.base("ok"), mark(id, "org-a", "ERROR")).pipe(Effect.flip)
          expect(writeError._tag).toBe("StatusWriteFailed")
        }
        expect(server.hits("")).toHaveLength(0)
      }))

    it.effect("PUT sets a live execution and answers the status after it; a terminal status is final", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        const id = freshId("http put/é")
        yield* seed(id, "org-a", "PENDING")
        const http = <A, E, R>(effect: Effect.Effect<A, E, R>) => withHttp(server.base("ok"), effect, Redacted.make(TOKEN))
        expect(yield* http(mark(id, "org-a", "EXECUTING"))).toEqual({ _tag: "Marked", status: "EXECUTING" })
        expect(yield* http(mark(id, "org-a", "ERROR", "boom"))).toEqual({ _tag: "Marked", status: "ERROR" })
        expect(yield* http(mark(id, "org-a", "COMPLETED"))).toEqual({ _tag: "Marked", status: "ERROR" })
        expect(server.store.get(id)).toEqual({ org: "org-a", status: "ERROR", errorMessage: "boom" })
        const puts = server.hits(id)
        expect(puts.map((h) => h.method)).toEqual(["PUT", "PUT", "PUT"])
        expect(puts[0]?.target).toBe(`/ok/executions/${encodeURIComponent(id)}/status`)
        expect(puts[1]?.body).toEqual({ org_id: "org-a", status: "ERROR", error_message: "boom" })
        expect(puts[0]?.body).toEqual({ org_id: "org-a", status: "EXECUTING", error_message: null })
        expect(puts[0]?.authorization).toBe(`Bearer ${TOKEN}`)
      }))

    it.effect("PUT 404 with the marker is Gone", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        expect(yield* withHttp(server.base("ok"), mark(freshId("http-put-gone"), "org-a", "ERROR"))).toEqual({
          _tag: "Gone"
        })
      }))

    it.effect("PUT failures are typed with the status and the cause; transient ones are retried", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        const cases = [
          ["plain404", "404", 1],
          ["forbidden", "403", 1],
          ["broken", "500", 3],
          ["slow", "timed out", 3],
          ["garbage", "undecodable", 1],
          ["closed", "transport", 0]
        ] as const
        for (const [mode, expected, tries] of cases) {
          const id = mode === "garbage" ? "text" : freshId(`http-put-${mode}`)
          const before = server.hits(id).length
          const url = mode === "closed" ? server.closed : server.base(mode)
          const error = yield* withHttp(url, mark(id, "org-a", "STOPPED", "why"), Redacted.make(TOKEN)).pipe(Effect.flip)
          expect(error._tag).toBe("StatusWriteFailed")
          expect(error.executionId).toBe(id)
          expect(error.status).toBe("STOPPED")
          expect(error.reason).toContain(expected)
          expect(error.message).toContain(id)
          expect(`${error.message} ${JSON.stringify(error)}`).not.toContain(TOKEN)
          expect(server.hits(id).length - before).toBe(tries)
        }
      }), 30_000)

    it.effect("layerHttp refuses a base URL it cannot use, naming it", () =>
      Effect.gen(function*() {
        for (const url of ["ftp://host/x", "not a url", "http://host/api?x=1"]) {
          const error = yield* read("x", "o").pipe(Effect.provide(httpStatus(url)), Effect.flip)
          expect(error._tag).toBe("InvalidConfig")
          expect(error.message).toContain("url")
        }
      }))
  })

  describe("fromSettings", () => {
    it.effect("PGQ_STATUS_URL unset: the SQL store on PGQ_SCHEMA", () =>
      Effect.gen(function*() {
        const { schema } = yield* TestSchema
        const sql = yield* SqlClient.SqlClient
        const settings = yield* settingsWith({ schema })
        const id = freshId("settings-sql")
        const marked = yield* mark(id, "org-a", "EXECUTING").pipe(
          Effect.provide(ExecutionStatus.ExecutionStatus.fromSettings(settings))
        )
        expect(marked).toEqual({ _tag: "Marked", status: "EXECUTING" })
        const rows = yield* sql`SELECT status FROM ${sql(`${schema}.execution`)} WHERE execution_id = ${id}`
        expect(rows).toEqual([{ status: "EXECUTING" }])
      }))

    it.effect("PGQ_STATUS_URL set: the HTTP adapter with PGQ_STATUS_TOKEN", () =>
      Effect.gen(function*() {
        const server = yield* StatusServer
        const settings = yield* settingsWith({
          statusUrl: Option.some(server.base("ok")),
          statusToken: Option.some(Redacted.make(TOKEN)),
          statusTimeoutMs: 2000
        })
        const id = freshId("settings-http")
        yield* seed(id, "org-a", "PENDING")
        const result = yield* read(id, "org-a").pipe(Effect.provide(ExecutionStatus.ExecutionStatus.fromSettings(settings)))
        expect(result).toEqual({ _tag: "Found", status: "PENDING" })
        assert.strictEqual(server.hits(id)[0]?.authorization, `Bearer ${TOKEN}`)
      }))
  })
})
