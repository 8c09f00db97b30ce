/**
 * Barrier recovery across real reaper processes: two `dist/reaper.js` replicas over 300 stranded barriers;
 * the leader is SIGKILLed mid-recovery and the standby finishes. Triggers in this file's schema record every
 * ERROR mark and every barrier delete that COMMITTED (a transaction the kill cut short records nothing), so
 * the test sees each execution marked once and each barrier removed once: recovered == 300. And with
 * PGQ_STATUS_URL the reaper reads and marks through the HTTP adapter.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { createServer } from "node:http"
import { eventually, httpGet, type Replica, startReaper } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const LEASE = 2
const INTERVAL = 0.5
const STRANDED = 300

const startReplica = (env: Readonly<Record<string, string>> = {}) =>
  TestSchema.use((db) =>
    startReaper(db, { PGQ_LEASE_SECONDS: String(LEASE), PGQ_REAPER_INTERVAL_SECONDS: String(INTERVAL), ...env })
  )

/**
 * The host's status service (the README's REST contract) over an in-memory map: GET answers the status or
 * 404 not_found, PUT keeps a terminal status final. Closed with the scope.
 */
const statusService = (statuses: Map<string, string>) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly url: string; readonly close: () => void }>((resume) => {
      const server = createServer((request, response) => {
        const match = /^\/executions\/([^/?]+)(\/status)?/.exec(request.url ?? "")
        const id = decodeURIComponent(match?.[1] ?? "")
        const reply = (code: number, body: unknown) => {
          response.writeHead(code, { "content-type": "application/json" })
          response.end(JSON.stringify(body))
        }
        let body = ""
        request.on("data", (chunk: Buffer) => (body += chunk.toString()))
        request.on("end", () => {
          const current = statuses.get(id)
          if (current === undefined) return reply(404, { error: "not_found" })
          if (request.method === "PUT") {
            const wanted = (JSON.parse(body) as { status: string }).status
            if (!["COMPLETED", "ERROR", "STOPPED"].includes(current)) statuses.set(id, wanted)
          }
          return reply(200, { status: statuses.get(id) })
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        const port = typeof address === "object" && address !== null ? address.port : 0
        resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, close: () => server.close() }))
      })
    }),
    (service) => Effect.sync(service.close)
  )

const isLeader = (replica: Replica) =>
  httpGet(`http://127.0.0.1:${replica.port}/health`).pipe(
    Effect.map((reply) => (JSON.parse(reply.body) as { is_leader: boolean }).is_leader)
  )

/** A counter's value on a replica's /metrics (0 when it has none yet). */
const counter = (replica: Replica, name: string) =>
  httpGet(`http://127.0.0.1:${replica.port}/metrics`).pipe(
    Effect.map((reply) => {
      const line = reply.body.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
      return line === undefined ? 0 : Number(line.split(" ").at(-1))
    })
  )

/** Wait until exactly one replica reports leadership; return it and the other. */
const leaderOf = (a: Replica, b: Replica) =>
  eventually(Effect.all([isLeader(a), isLeader(b)]), ([x, y]) => x !== y).pipe(
    Effect.map(([x]) => (x ? [a, b] as const : [b, a] as const))
  )

/** Record committed ERROR marks and barrier deletes, and strand STRANDED fan-outs (2 of 3 batches missing). */
const seed = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const t = (name: string) => sql(`${schema}.${name}`)
  yield* sql`CREATE TABLE ${t("recovery_log")} (execution_id text NOT NULL, what text NOT NULL)`
  yield* sql.unsafe(`
    CREATE FUNCTION "${schema}".log_error_mark() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.status = 'ERROR' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'ERROR') THEN
        INSERT INTO "${schema}".recovery_log VALUES (NEW.execution_id, 'marked');
      END IF;
      RETURN NEW;
    END $$`)
  yield* sql.unsafe(`CREATE TRIGGER log_error_mark AFTER INSERT OR UPDATE ON "${schema}".execution
                     FOR EACH ROW EXECUTE FUNCTION "${schema}".log_error_mark()`)
  yield* sql.unsafe(`
    CREATE FUNCTION "${schema}".log_barrier_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO "${schema}".recovery_log VALUES (OLD.execution_id, 'removed');
      RETURN OLD;
    END $$`)
  yield* sql.unsafe(`CREATE TRIGGER log_barrier_delete AFTER DELETE ON "${schema}".barrier
                     FOR EACH ROW EXECUTE FUNCTION "${schema}".log_barrier_delete()`)
  yield* sql`INSERT INTO ${t("execution")} (execution_id, org_id, status)
             SELECT 'p-' || i, 'org', 'EXECUTING' FROM generate_series(1, ${STRANDED}) AS i`
  yield* sql`INSERT INTO ${t("barrier")} (execution_id, org_id, total, remaining, callback, created_at, expires_at, last_progress_at)
             SELECT 'p-' || i, 'org', 3, 2, '{"task":"gather","context":null,"queue":"cb","priority":5}'::jsonb,
                    now() - interval '2 hours' + i * interval '1 millisecond', now() - interval '1 second',
                    now() - interval '2 hours'
             FROM generate_series(1, ${STRANDED}) AS i`
  yield* sql`INSERT INTO ${t("barrier_batch")} (execution_id, batch_index, result)
             SELECT 'p-' || i, 0, '"done"'::jsonb FROM generate_series(1, ${STRANDED}) AS i`
})

const count = (query: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    const rows = yield* sql.unsafe<{ n: number }>(query.replaceAll("$schema", `"${schema}"`))
    return rows[0]!.n
  })

const liveBarriers = count(`SELECT count(*)::int AS n FROM $schema.barrier`)

layer(testDb("barrier_reaper_process"), { excludeTestServices: true })("dist/reaper.js barrier recovery", (it) => {
  it.effect("SIGKILL the leader mid-recovery of 300 stranded barriers: the standby finishes, each recovered once", () =>
    Effect.gen(function*() {
      const [leader, standby] = yield* leaderOf(yield* startReplica(), yield* startReplica())
      yield* seed
      // Kill it once it has recovered some (the first page) but not all.
      const before = yield* eventually(liveBarriers, (n) => n < STRANDED)
      leader.process.child.kill("SIGKILL")
      yield* leader.process.exit
      const atKill = yield* liveBarriers
      console.log(`[measure] leader SIGKILLed with ${atKill} of ${STRANDED} stranded barriers left (${before} at the last poll)`)
      expect(atKill).toBeGreaterThan(0)
      yield* eventually(isLeader(standby), (leads) => leads)
      yield* eventually(liveBarriers, (n) => n === 0)
      const perExecution = yield* count(`
        SELECT count(*)::int AS n FROM (
          SELECT execution_id FROM $schema.recovery_log GROUP BY execution_id
          HAVING count(*) FILTER (WHERE what = 'marked') = 1 AND count(*) FILTER (WHERE what = 'removed') = 1
        ) AS once`)
      expect(perExecution).toBe(STRANDED)
      expect(yield* count(`SELECT count(*)::int AS n FROM $schema.recovery_log`)).toBe(2 * STRANDED)
      expect(yield* count(`SELECT count(*)::int AS n FROM $schema.execution WHERE status = 'ERROR'
                             AND error_message LIKE '[reaper-recovery] Execution stranded: 2 batch(es) never completed%'`))
        .toBe(STRANDED)
      expect(yield* count(`SELECT count(*)::int AS n FROM $schema.barrier_batch`)).toBe(0)
      expect(yield* count(`SELECT count(*)::int AS n FROM $schema.message`)).toBe(0)
      // The standby did the rest (at most what the dead leader had not committed).
      // The counter is bumped when the tick ends, a moment after its last delete: await it.
      const byStandby = yield* eventually(counter(standby, "pgq_reaper_barrier_recovered_total"), (n) => n > 0)
      expect(byStandby).toBeGreaterThan(0)
      expect(byStandby).toBeLessThanOrEqual(atKill)
    }), { timeout: 90_000 })

  it.effect("with PGQ_STATUS_URL the reaper reads and marks through the HTTP status service", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const { schema } = yield* TestSchema
      const t = (name: string) => sql(`${schema}.${name}`)
      yield* sql`DELETE FROM ${t("barrier")}`
      const statuses = new Map([["h-1", "EXECUTING"], ["h-2", "EXECUTING"], ["h-done", "COMPLETED"]])
      const service = yield* statusService(statuses)
      yield* sql`INSERT INTO ${t("barrier")} (execution_id, org_id, total, remaining, callback, created_at, expires_at)
                 SELECT id, 'org', 2, 1, '{"task":"gather","context":null,"queue":"cb","priority":5}'::jsonb,
                        now() - interval '2 hours', now() - interval '1 second'
                 FROM unnest(ARRAY['h-1', 'h-2', 'h-done', 'h-gone']) AS id`
      const replica = yield* startReplica({ PGQ_STATUS_URL: service.url })
      yield* eventually(isLeader(replica), (leads) => leads)
      yield* eventually(liveBarriers, (n) => n === 0)
      expect(Object.fromEntries(statuses)).toEqual({ "h-1": "ERROR", "h-2": "ERROR", "h-done": "COMPLETED" })
      // Nothing was written to the SQL store: the HTTP service is the store.
      expect(yield* count(`SELECT count(*)::int AS n FROM $schema.execution WHERE execution_id LIKE 'h-%'`)).toBe(0)
      // The counter is bumped when the tick ends, a moment after its last delete: await it.
      expect(yield* eventually(counter(replica, "pgq_reaper_barrier_recovered_total"), (n) => n >= 4)).toBe(4)
    }), { timeout: 60_000 })
})
