/**
 * The dashboard's JSON API against a real Postgres with known contents: every count is compared with SQL,
 * every list is a page (LIMIT/OFFSET) in a stable order, the strings come back verbatim (the page escapes
 * them; see dashboard-browser.test.ts), actions are refused unless turned on and authorised, and the
 * throughput history follows known flows.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { HttpServer } from "effect/http"
import { SqlClient } from "effect/sql"
import { request } from "node:http"
import * as Barrier from "../src/Barrier.ts"
import { Dashboard, ERROR_PREVIEW, makeDashboard } from "../src/Dashboard.ts"
import { script } from "../src/DashboardAssets.ts"
import * as DashboardServer from "../src/DashboardServer.ts"
import { apportion, intervalOf, type Sample } from "../src/DashboardThroughput.ts"
import * as ExecutionStatus from "../src/ExecutionStatus.ts"
import { Executions } from "../src/Executions.ts"
import { Queue } from "../src/Queue.ts"
import { TestSchema, testDb } from "./support.ts"

const STUCK = 600
const TOKEN = "dashboard-test-token-0123456789"
const HOSTILE = `<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">`

const db = Layer.unwrap(
  TestSchema.use(({ schema }) => Effect.succeed(Executions.layer({ schema, stuckTimeoutSeconds: STUCK })))
).pipe(Layer.provideMerge(testDb("dashboard")))

const table = (name: string) =>
  TestSchema.use(({ schema }) => SqlClient.SqlClient.use((sql) => Effect.succeed(sql(`${schema}.${name}`))))

interface Reply {
  readonly status: number
  readonly body: Record<string, unknown> & { readonly rows: ReadonlyArray<Record<string, unknown>> }
}

/** One HTTP request with node:http (fetch would not let a test set the Host header). */
const call = (url: string, init: { readonly method?: string; readonly headers?: Record<string, string> } = {}) =>
  Effect.callback<Reply, Error>((resume) => {
    const req = request(url, { method: init.method ?? "GET", headers: init.headers ?? {} }, (res) => {
      let text = ""
      res.on("data", (chunk: Buffer) => (text += chunk.toString()))
      res.on("end", () => resume(Effect.succeed({ status: res.statusCode ?? 0, body: JSON.parse(text) })))
    })
    req.on("error", (error) => resume(Effect.fail(error)))
    req.end()
  })

/** A dashboard server on a free port for the rest of the test; its base URL. */
const serve = (actionToken: Option.Option<Redacted.Redacted<string>> = Option.none()) =>
  Effect.gen(function*() {
    const { schema } = yield* TestSchema
    const context = yield* Layer.build(
      DashboardServer.layer({ port: 0, host: "127.0.0.1", actionToken }).pipe(
        Layer.provide(Dashboard.layer({ schema, stuckTimeoutSeconds: STUCK, sqlStatusStore: true, cacheMs: 0 }))
      )
    )
    return HttpServer.formatAddress(Context.get(context, HttpServer.HttpServer).address)
  })

const claim = (queue: string, limit: number, processId = "test") =>
  Queue.use((q) => q.claim({ queues: [queue], limit, leaseSeconds: 30, processId }))

const enqueue = (queue: string, n: number, delay = 0) =>
  Queue.use((q) =>
    q.enqueueMany(Array.from({ length: n }, (_, i) => ({ task: `${queue}.task`, payload: { i }, options: { queue, delay } })))
  )

const SUPERVISOR = "h1:100:aaaa/supervisor-1"
const WORKER_A = "h1:101:bbbb/worker-1"
const WORKER_B = "h1:102:cccc/worker-1"
const STALE = "h2:200:dddd/worker-1"
const REAPER = "h3:300:eeee/reaper-1"

/** The known world: queues in every state, dead letters, leases, a fleet, barriers and finished executions. */
const seed = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [dead, lease, processTable, execution] = yield* Effect.all([
    table("dead_letter"),
    table("lease"),
    table("process"),
    table("execution")
  ])
  yield* enqueue("alpha", 5)
  yield* enqueue("alpha", 2, 3_600_000)
  yield* claim("alpha", 2, WORKER_A)
  yield* enqueue("beta", 1)
  // 25 dead letters of beta, 900001 the newest; the newest carries markup, the next a long error.
  yield* sql`
    INSERT INTO ${dead} (msg_id, queue, task, payload, read_ct, max_attempts, last_error, enqueued_at, failed_at)
    SELECT 900000 + i, 'beta', 'beta.send', jsonb_build_object('n', i, 'html', '<b>bold</b>'), 5, 5,
           CASE i WHEN 1 THEN ${HOSTILE} WHEN 2 THEN repeat('x', 400) ELSE 'boom ' || i END,
           now() - interval '1 hour', now() - i * interval '1 minute'
    FROM generate_series(1, 25) AS i`
  yield* sql`
    INSERT INTO ${lease} (name, holder, term, expires_at)
    VALUES ('reaper', ${REAPER}, 7, now() + interval '10 seconds'), ('nightly', '', 3, now() - interval '5 seconds')`
  yield* sql`
    INSERT INTO ${processTable} (process_id, kind, host, pid, queues, started_at, heartbeat_at, stale_seconds)
    VALUES (${SUPERVISOR}, 'supervisor', 'h1', 100, '{alpha}', now() - interval '60 seconds', now(), 10),
           (${WORKER_A}, 'worker', 'h1', 101, '{alpha}', now() - interval '59 seconds', now(), 10),
           (${WORKER_B}, 'worker', 'h1', 102, '{alpha}', now() - interval '58 seconds', now(), 10),
           (${STALE}, 'worker', 'h2', 200, '{beta}', now() - interval '300 seconds', now() - interval '120 seconds', 10),
           (${REAPER}, 'reaper', 'h3', 300, '{}', now() - interval '30 seconds', now(), 10)`
  const start = (executionId: string, n: number) =>
    Barrier.Barrier.use((b) =>
      b.start({
        executionId,
        orgId: "acme",
        batches: Array.from({ length: n }, (_, i) => ({ task: "part", payload: { i }, queue: "gamma" })),
        callback: { task: "gather", queue: "gamma-cb" }
      })
    )
  yield* start("x-live", 4)
  yield* start("x-stuck", 2)
  yield* sql`UPDATE ${yield* table("barrier")} SET last_progress_at = now() - ${STUCK + 5} * interval '1 second'
             WHERE execution_id = 'x-stuck'`
  yield* sql`
    INSERT INTO ${execution} (execution_id, status, error_message, updated_at)
    VALUES ('f-recovered', 'ERROR', '[reaper-recovery] Execution stranded: 2 batch(es) never completed', now() - interval '10 seconds'),
           ('f-done', 'COMPLETED', NULL, now() - interval '5 seconds')`
})

layer(db, { excludeTestServices: true })("Dashboard API", (it) => {
  it.effect("overview: queue, fleet, barrier and dead-letter counts match SQL; leases as stored; read-only", () =>
    Effect.gen(function*() {
      yield* seed
      const base = yield* serve()
      const { status, body } = yield* call(`${base}/api/overview`)
      expect(status).toBe(200)
      const sql = yield* SqlClient.SqlClient
      const expected = yield* sql<{ queue: string; ready: number; scheduled: number; claimed: number; dead: number }>`
        SELECT queue, count(*) FILTER (WHERE state = 'ready')::int AS ready,
               count(*) FILTER (WHERE state = 'scheduled')::int AS scheduled,
               count(*) FILTER (WHERE state = 'claimed')::int AS claimed,
               (SELECT count(*)::int FROM ${yield* table("dead_letter")} d WHERE d.queue = m.queue) AS dead
        FROM ${yield* table("message")} m GROUP BY queue ORDER BY queue`
      const queues = body.queues as ReadonlyArray<Record<string, unknown>>
      expect(queues.map((q) => ({ queue: q.queue, ready: q.ready, scheduled: q.scheduled, claimed: q.claimed, dead: q.deadLettered })))
        .toEqual(expected)
      expect(queues.find((q) => q.queue === "alpha")).toMatchObject({ ready: 3, scheduled: 2, claimed: 2, consumers: 2 })
      expect(queues.find((q) => q.queue === "beta")).toMatchObject({ ready: 1, deadLettered: 25, consumers: 1 })
      expect(body.fleet).toEqual({ total: 5, stale: 1, byKind: { reaper: 1, supervisor: 1, worker: 3 } })
      expect(body.barriers).toEqual({ live: 2, stranded: 1, capped: false })
      expect(body.deadLetters).toEqual({ total: 25, capped: false })
      expect(body.reaper).toBeNull()
      expect(body.server).toEqual({ actions: false, refreshMs: 2000 })
      const leases = body.leases as ReadonlyArray<Record<string, unknown>>
      expect(leases.map((l) => [l.name, l.holder, l.term, l.held])).toEqual([
        ["nightly", "", 3, false],
        ["reaper", REAPER, 7, true]
      ])
      expect(leases[1]!.expiresInSeconds).toBeGreaterThan(0)
      expect(leases[0]!.expiresInSeconds).toBeLessThan(0)
    }))

  it.effect("fleet: supervisors with their workers, stale flagged, in-flight jobs counted, paged in SQL", () =>
    Effect.gen(function*() {
      const base = yield* serve()
      const all = (yield* call(`${base}/api/processes?limit=10`)).body.rows
      expect(all.map((p) => [p.processId, p.kind, p.supervisor, p.stale, p.inFlight])).toEqual([
        [SUPERVISOR, "supervisor", null, false, 0],
        [WORKER_A, "worker", SUPERVISOR, false, 2],
        [WORKER_B, "worker", SUPERVISOR, false, 0],
        [STALE, "worker", null, true, 0],
        [REAPER, "reaper", null, false, 0]
      ])
      expect(all[3]!.heartbeatAgeSeconds).toBeGreaterThan(100)
      const pages = yield* Effect.forEach([0, 2, 4], (offset) => call(`${base}/api/processes?offset=${offset}&limit=2`))
      expect(pages.map((p) => p.body.rows.map((r) => r.processId))).toEqual([
        [SUPERVISOR, WORKER_A],
        [WORKER_B, STALE],
        [REAPER]
      ])
    }))

  it.effect("dead letters: newest first a page at a time, errors cut short, strings verbatim; detail with payload", () =>
    Effect.gen(function*() {
      const base = yield* serve()
      const first = (yield* call(`${base}/api/dead-letters?limit=10`)).body.rows
      expect(first.map((d) => d.msgId)).toEqual(Array.from({ length: 10 }, (_, i) => String(900001 + i)))
      expect(first[0]).toMatchObject({ queue: "beta", task: "beta.send", lastError: HOSTILE, errorTruncated: false, attempts: 5 })
      expect(first[1]!.errorTruncated).toBe(true)
      expect((first[1]!.lastError as string).length).toBe(ERROR_PREVIEW)
      expect(first[0]).not.toHaveProperty("payload")
      const third = (yield* call(`${base}/api/dead-letters?offset=20&limit=10`)).body.rows
      expect(third.map((d) => d.msgId)).toEqual(["900021", "900022", "900023", "900024", "900025"])
      const detail = yield* call(`${base}/api/dead-letters/900002`)
      expect(detail.status).toBe(200)
      expect(detail.body.lastError).toBe("x".repeat(400))
      expect(JSON.parse(detail.body.payload as string)).toEqual({ n: 2, html: "<b>bold</b>" })
      expect(detail.body.payloadTruncated).toBe(false)
      expect((yield* call(`${base}/api/dead-letters/999999`)).status).toBe(404)
      const bad = yield* call(`${base}/api/dead-letters/1%20OR%201=1`)
      expect(bad.status).toBe(400)
      expect(bad.body.error).toContain("is not a message id")
    }))

  it.effect("executions: live and stranded barriers with progress, paged; finished ones with recoveries; show", () =>
    Effect.gen(function*() {
      const base = yield* serve()
      const live = (yield* call(`${base}/api/barriers`)).body.rows
      expect(live.map((b) => [b.executionId, b.total, b.remaining, b.stranded]).sort()).toEqual([
        ["x-live", 4, 4, false],
        ["x-stuck", 2, 2, true]
      ])
      const stranded = (yield* call(`${base}/api/barriers?stranded=true`)).body.rows
      expect(stranded.map((b) => b.executionId)).toEqual(["x-stuck"])
      const pages = yield* Effect.forEach([0, 1], (offset) => call(`${base}/api/barriers?offset=${offset}&limit=1`))
      expect(pages.flatMap((p) => p.body.rows.map((b) => b.executionId))).toEqual(live.map((b) => b.executionId))
      const finished = (yield* call(`${base}/api/executions/finished`)).body.rows
      expect(finished.map((e) => [e.executionId, e.status, e.recovered])).toEqual([
        ["f-done", "COMPLETED", false],
        ["f-recovered", "ERROR", true]
      ])
      const show = yield* call(`${base}/api/executions/x-live`)
      expect(show.body).toMatchObject({ executionId: "x-live", orgId: "acme", status: { _tag: "Found", status: "EXECUTING" } })
      expect(show.body.batches).toEqual({ done: 0, ready: 4, scheduled: 0, claimed: 0, deadLettered: 0 })
      const unknown = yield* call(`${base}/api/executions/nope`)
      expect(unknown.status).toBe(404)
      expect(unknown.body.error).toContain(`"nope"`)
    }))

  it.effect("bad parameters are 400 naming the rule; a request addressed to another name is refused (rebinding)", () =>
    Effect.gen(function*() {
      const base = yield* serve()
      for (const query of ["limit=0", "limit=101", "offset=-1", "offset=x", "limit=1.5"]) {
        const reply = yield* call(`${base}/api/dead-letters?${query}`)
        expect(reply.status, query).toBe(400)
        expect(reply.body.error).toContain("limit an integer 1..100")
      }
      expect((yield* call(`${base}/api/barriers?stranded=maybe`)).status).toBe(400)
      const rebound = yield* call(`${base}/api/overview`, { headers: { host: "attacker.example:80" } })
      expect(rebound.status).toBe(421)
      expect((yield* call(`${base}/api/overview`, { headers: { host: "localhost" } })).status).toBe(200)
    }))

  it.effect("actions: off by default (403); on, they need the token (401); then replay and stop are the fenced operations", () =>
    Effect.gen(function*() {
      const readOnly = yield* serve()
      const off = yield* call(`${readOnly}/api/dead-letters/900025/replay`, { method: "POST" })
      expect(off.status).toBe(403)
      expect(off.body.error).toContain("PGQ_DASHBOARD_ACTIONS")
      const base = yield* serve(Option.some(Redacted.make(TOKEN)))
      expect((yield* call(`${base}/api/overview`)).body.server).toEqual({ actions: true, refreshMs: 2000 })
      expect((yield* call(`${base}/api/dead-letters/900025/replay`, { method: "POST" })).status).toBe(401)
      const wrong = { method: "POST", headers: { authorization: `Bearer ${TOKEN}x` } }
      expect((yield* call(`${base}/api/dead-letters/900025/replay`, wrong)).status).toBe(401)
      const authorised = { method: "POST", headers: { authorization: `Bearer ${TOKEN}` } }
      const replay = yield* call(`${base}/api/dead-letters/900025/replay`, authorised)
      expect(replay).toEqual({ status: 200, body: { replayed: 1 } })
      expect((yield* call(`${base}/api/dead-letters/900025`)).status).toBe(404)
      const sql = yield* SqlClient.SqlClient
      const [revived] = yield* sql<{ n: number }>`
        SELECT count(*)::int AS n FROM ${yield* table("message")} WHERE queue = 'beta' AND payload = '{"n": 25, "html": "<b>bold</b>"}'`
      expect(revived!.n).toBe(1)
      expect((yield* call(`${base}/api/dead-letters/900025/replay`, authorised)).status).toBe(404)
      const stop = yield* call(`${base}/api/executions/x-live/stop`, authorised)
      expect(stop.status).toBe(200)
      expect(stop.body).toMatchObject({ executionId: "x-live", outcome: "ended", status: { _tag: "Found", status: "STOPPED" } })
      expect(yield* ExecutionStatus.ExecutionStatus.use((s) => s.read("x-live", "acme"))).toEqual({
        _tag: "Found",
        status: "STOPPED"
      })
      expect((yield* call(`${base}/api/executions/ghost/stop`, authorised)).status).toBe(404)
    }))

  it.effect("throughput: completed and dead-lettered per interval follow the flows between samples", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const dashboard = yield* makeDashboard({ schema, stuckTimeoutSeconds: STUCK, sqlStatusStore: true })
      yield* dashboard.sampleNow
      // tp1: 10 arrive; 3 complete, 1 is dead-lettered; 5 more arrive and complete before the next sample.
      yield* enqueue("tp1", 10)
      const jobs = yield* claim("tp1", 4)
      yield* Queue.use((q) => q.ackMany(jobs.slice(0, 3)))
      yield* Queue.use((q) => q.deadLetter(jobs[3]!, "nope"))
      const fresh = new Set(yield* enqueue("tp1", 5))
      const rest = yield* claim("tp1", 100)
      yield* Queue.use((q) => q.ackMany(rest.filter((j) => fresh.has(j.msgId))))
      yield* dashboard.sampleNow
      const first = (yield* dashboard.history).intervals
      expect(first).toHaveLength(1)
      expect(first[0]!.queues["tp1"]).toEqual({ completed: 8, failed: 1 })
      expect(Object.entries(first[0]!.queues).filter(([q, f]) => q !== "tp1" && (f.completed > 0 || f.failed > 0))).toEqual([])
      // tp2: 4 arrive and complete unseen while one of its jobs runs; tp1's 6 claimed ones complete, seen.
      yield* enqueue("tp2", 1)
      yield* claim("tp2", 1)
      yield* enqueue("tp2", 4)
      yield* Queue.use((q) => claim("tp2", 4).pipe(Effect.flatMap(q.ackMany)))
      const tp1 = yield* SqlClient.SqlClient.use((sql) =>
        Effect.gen(function*() {
          return yield* sql<{ msg_id: string; claim_token: string; read_ct: number }>`
            SELECT msg_id::text AS msg_id, claim_token::text AS claim_token, read_ct FROM ${yield* table("message")}
            WHERE queue = 'tp1' AND state = 'claimed'`
        })
      )
      expect(tp1).toHaveLength(6)
      yield* Queue.use((q) => q.ackMany(tp1.map((r) => ({ msgId: r.msg_id, token: r.claim_token, attempt: r.read_ct }))))
      yield* dashboard.sampleNow
      const second = (yield* dashboard.history).intervals[1]!
      expect(second.queues["tp1"]).toEqual({ completed: 6, failed: 0 })
      expect(second.queues["tp2"]).toEqual({ completed: 4, failed: 0 })
      expect(second.seconds).toBeGreaterThan(0)
    }))
})

describe("Dashboard throughput arithmetic", () => {
  const sample = (at: number, lastId: number, queues: Sample["queues"], served: ReadonlyArray<string> = []): Sample => ({
    at,
    atText: "",
    lastId,
    queues,
    served
  })
  const q = (live: number, extra: Partial<Sample["queues"][string]> = {}) => ({
    live,
    arrived: 0,
    failed: 0,
    deadArrived: 0,
    claimed: 0,
    ...extra
  })

  it("one queue: exact, whatever was seen", () => {
    const interval = intervalOf(
      sample(0, 100, { a: q(10) }),
      sample(5000, 130, { a: q(12, { arrived: 8, failed: 3, deadArrived: 1 }) })
    )
    // 30 arrived (8 still queued, 1 already dead), 3 dead-lettered: 10 + 30 − 12 − 3 = 25 completed.
    expect(interval).toEqual({ at: 5000, seconds: 5, queues: { a: { completed: 25, failed: 3 } } })
  })

  it("unseen arrivals split by arrivals seen, else running jobs, else completions seen, else served queues", () => {
    const arriving = intervalOf(
      sample(0, 0, { a: q(10), b: q(10) }),
      sample(1000, 12, { a: q(7, { claimed: 2 }), b: q(11, { arrived: 1, claimed: 1 }) })
    )
    // 11 unseen, all b's (the only queue with arrivals seen); a's running jobs are long ones.
    expect(arriving.queues).toEqual({ a: { completed: 3, failed: 0 }, b: { completed: 11, failed: 0 } })
    const busy = intervalOf(
      sample(0, 0, { a: q(10), b: q(10) }),
      sample(1000, 10, { a: q(7, { claimed: 1 }), b: q(10, { claimed: 1 }) })
    )
    // One job running in each: the 10 unseen split 5 / 5, on top of a's 3 seen.
    expect(busy.queues).toEqual({ a: { completed: 8, failed: 0 }, b: { completed: 5, failed: 0 } })
    const draining = intervalOf(sample(0, 0, { a: q(10), b: q(10) }), sample(1000, 4, { a: q(7), b: q(9) }))
    expect(draining.queues).toEqual({ a: { completed: 6, failed: 0 }, b: { completed: 2, failed: 0 } })
    const quiet = intervalOf(sample(0, 0, {}), sample(1000, 4, {}, ["x", "y"]))
    expect(quiet.queues).toEqual({ x: { completed: 2, failed: 0 }, y: { completed: 2, failed: 0 } })
  })

  it("a sample racing a commit never gives negative counts", () => {
    const interval = intervalOf(sample(0, 10, { a: q(5) }), sample(1000, 10, { a: q(9) }))
    expect(interval.queues).toEqual({ a: { completed: 0, failed: 0 } })
  })

  it("apportion: integers, total kept, zero weights get nothing", () => {
    expect(apportion(10, [1, 1, 1])).toEqual([4, 3, 3])
    expect(apportion(7, [0, 2, 0])).toEqual([0, 7, 0])
    expect(apportion(5, [0, 0])).toEqual([0, 0])
  })
})

describe("Dashboard page", () => {
  it("builds every node with DOM calls: no HTML parsing of data anywhere in the script", () => {
    for (const sink of ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc"]) {
      expect(script, sink).not.toContain(sink)
    }
  })
})
