import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { makeLeaderLease } from "../src/LeaderLease.ts"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import { Queue } from "../src/Queue.ts"
import { makeTick, Reaper, type ReaperOptions } from "../src/Reaper.ts"
import { TestSchema, testDb } from "./support.ts"

const options = (schema: string): ReaperOptions => ({
  schema,
  maxAttempts: 5,
  leaseName: "reaper-test",
  leaseSeconds: 10,
  intervalSeconds: 1,
  processStaleSeconds: 10,
  heartbeatSeconds: 1,
  deadLetterRetentionSeconds: 3600,
  sweepEverySeconds: 0
})

/** One expired claim, one due scheduled job, one dead process holding a fresh claim, one old dead letter. */
const strandWork = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const q = yield* Queue
  const t = (name: string) => sql(`${schema}.${name}`)
  yield* sql`DELETE FROM ${t("message")}`
  yield* sql`DELETE FROM ${t("dead_letter")}`
  yield* sql`DELETE FROM ${t("process")}`
  yield* q.enqueueMany([0, 1, 2].map((i) => ({ task: "t", payload: { i }, options: { queue: "reap" } })))
  const [expired, , ofDead] = yield* q.claim({ queues: ["reap"], limit: 3, leaseSeconds: 30, processId: "live" })
  yield* sql`UPDATE ${t("message")} SET vt = now() - interval '1 second' WHERE msg_id = ${expired!.msgId}::bigint`
  yield* sql`UPDATE ${t("message")} SET claimed_by = 'dead-process' WHERE msg_id = ${ofDead!.msgId}::bigint`
  yield* sql`INSERT INTO ${t("process")} (process_id, kind, host, pid, heartbeat_at)
             VALUES ('dead-process', 'worker', 'h', 1, now() - interval '1 minute'),
                    ('live', 'worker', 'h', 2, now())`
  yield* q.enqueue("t", {}, { queue: "reap", delay: 60_000 })
  yield* sql`UPDATE ${t("message")} SET visible_at = now() - interval '1 second' WHERE state = 'scheduled'`
  const poison = yield* q.enqueue("t", {}, { queue: "reap-dead" })
  const [claimed] = yield* q.claim({ queues: ["reap-dead"], limit: 1, leaseSeconds: 30, processId: "live" })
  yield* q.deadLetter(claimed!, "old failure")
  yield* sql`UPDATE ${t("dead_letter")} SET failed_at = now() - interval '2 hours' WHERE msg_id = ${poison}::bigint`
})

const snapshot = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const messages = yield* sql`SELECT msg_id, state, claimed_by FROM ${sql(`${schema}.message`)} ORDER BY msg_id`
  const processes = yield* sql`SELECT process_id FROM ${sql(`${schema}.process`)} ORDER BY process_id`
  const dead = yield* sql`SELECT msg_id FROM ${sql(`${schema}.dead_letter`)} ORDER BY msg_id`
  return { messages, processes, dead }
})

/** Win the test lease for `holder`, first freeing it from whoever a previous test left there. */
const termFor = (schema: string, holder: string, free = true) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    if (free) yield* sql`UPDATE ${sql(`${schema}.lease`)} SET holder = '', expires_at = now() WHERE name = 'reaper-test'`
    const lease = yield* makeLeaderLease({ schema })
    const term = yield* lease.tryAcquire("reaper-test", holder, 10)
    expect(Option.isSome(term)).toBe(true)
    const value = Option.getOrThrow(term)
    return { name: "reaper-test", holder, term: value, fence: lease.fence("reaper-test", holder, value) }
  })

/** Poll a condition until it holds; the test's own timeout bounds it. */
const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, until: (a: A) => boolean) =>
  check.pipe(Effect.repeat({ schedule: Schedule.spaced("100 millis"), until }))

const providers = Layer.unwrap(
  TestSchema.use(({ schema }) => Effect.succeed(ProcessRegistry.layer(schema)))
)

layer(providers.pipe(Layer.provideMerge(testDb("reaper"))), { excludeTestServices: true })("Reaper tick", (it) => {
  it.effect("the leader re-arms, promotes, prunes dead processes (freeing their claims) and sweeps", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      yield* strandWork
      const tick = yield* makeTick(options(schema))
      const term = yield* termFor(schema, "leader-a")
      const outcome = yield* tick(term)
      expect(outcome).toMatchObject({ rearmed: 1, promoted: 1, pruned: 1, released: 1, swept: 1, failures: [] })
      const after = yield* snapshot
      expect(after.messages.filter((m) => m.state === "ready")).toHaveLength(3)
      expect(after.processes.map((p) => p.process_id)).toEqual(["live"])
      expect(after.dead).toEqual([])
      // Nothing left to do: a second tick is a no-op.
      expect(yield* tick(term)).toMatchObject({ rearmed: 0, promoted: 0, pruned: 0, released: 0, swept: 0 })
    }))

  it.effect("an ex-leader's fenced tick changes nothing after a takeover", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const stale = yield* termFor(schema, "paused-leader")
      // The paused leader's lease runs out and a standby takes over.
      yield* sql`UPDATE ${sql(`${schema}.lease`)} SET expires_at = now() - interval '1 second' WHERE name = 'reaper-test'`
      const fresh = yield* termFor(schema, "standby", false)
      expect(fresh.term).toBe(stale.term + 1)
      yield* strandWork
      const before = yield* snapshot
      const tick = yield* makeTick(options(schema))
      const outcome = yield* tick(stale)
      expect(outcome).toMatchObject({ rearmed: 0, promoted: 0, pruned: 0, released: 0, swept: 0, failures: [] })
      expect(yield* snapshot).toEqual(before)
      // The real leader's tick does the work.
      expect(yield* tick(fresh)).toMatchObject({ rearmed: 1, promoted: 1, pruned: 1, released: 1, swept: 1 })
    }))

  it.effect("one failing job does not stop the others", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      yield* strandWork
      const tick = yield* makeTick(options(schema))
      yield* sql.unsafe(`ALTER TABLE "${schema}".process RENAME TO process_gone`)
      const outcome = yield* tick(yield* termFor(schema, "leader-b")).pipe(
        Effect.ensuring(sql.unsafe(`ALTER TABLE "${schema}".process_gone RENAME TO process`).pipe(Effect.orDie))
      )
      expect(outcome.failures).toEqual(["prune stale processes"])
      expect(outcome).toMatchObject({ rearmed: 1, promoted: 1, pruned: 0, released: 0, swept: 1 })
    }))

  it.effect("each process is judged stale by its own heartbeat settings, never by the pruner's", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      yield* sql`DELETE FROM ${sql(`${schema}.process`)}`
      // Both silent for 20 s: long for a 1 s heartbeat, nothing for a 15 s one (stale after 45 s).
      yield* sql`INSERT INTO ${sql(`${schema}.process`)} (process_id, kind, host, pid, heartbeat_at, heartbeat_seconds, stale_seconds)
                 VALUES ('patient', 'worker', 'h', 1, now() - interval '20 seconds', 15, 45),
                        ('hasty', 'worker', 'h', 2, now() - interval '20 seconds', 1, 3)`
      const tick = yield* makeTick(options(schema))
      expect(yield* tick(yield* termFor(schema, "leader-c"))).toMatchObject({ pruned: 1 })
      const left = yield* sql<{ process_id: string }>`SELECT process_id FROM ${sql(`${schema}.process`)}`
      expect(left.map((p) => p.process_id)).toEqual(["patient"])
    }))

  it.effect("a process whose witness session is gone is pruned after two missed heartbeats, not its stale timeout", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const processes = sql(`${schema}.process`)
      yield* sql`DELETE FROM ${processes}`
      const session = sql<{ pid: number; started: Date }>`
        SELECT pg_backend_pid() AS pid, backend_start AS started FROM pg_stat_activity WHERE pid = pg_backend_pid()`
      // A session that ended (as a killed process's does) and one that is alive (held until the test ends).
      const [ended] = yield* Effect.scoped(Effect.gen(function*() {
        const doomed = yield* sql.reserve
        const rows = yield* doomed.execute(session.compile()[0], [], undefined)
        yield* sql`SELECT pg_terminate_backend(${rows[0].pid}, 5000)`
        return rows
      }))
      const live = yield* sql.reserve
      const [alive] = yield* live.execute(session.compile()[0], [], undefined)
      // heartbeat 1 s, stale 30 s; ages in seconds.
      // The session's start as the server has it (a JavaScript Date would drop its microseconds).
      const row = (id: string, age: number, pid: number, started = sql`(SELECT backend_start FROM pg_stat_activity WHERE pid = ${pid})`) =>
        sql`INSERT INTO ${processes} (process_id, kind, host, pid, heartbeat_at, heartbeat_seconds, stale_seconds, session_pid, session_start)
            VALUES (${id}, 'worker', 'h', 1, now() - ${age} * interval '1 second', 1, 30, ${pid}, coalesce(${started}, ${ended.started}))`
      yield* row("dead", 2.5, ended.pid)
      yield* row("dead-but-recent", 1.5, ended.pid)
      yield* row("stalled", 20, alive.pid)
      // Its pid now belongs to another session (one that started later, since this server started: the witness
      // is gone). The server may have started seconds ago (an embedded one for the test run).
      yield* row("pid-reused", 2.5, alive.pid, sql`pg_postmaster_start_time() + interval '1 microsecond'`)
      // A session from before the server's last start says nothing about the process.
      yield* sql`INSERT INTO ${processes} (process_id, kind, host, pid, heartbeat_at, heartbeat_seconds, stale_seconds, session_pid, session_start)
                 VALUES ('before-restart', 'worker', 'h', 1, now() - interval '2.5 seconds', 1, 30, ${ended.pid},
                         pg_postmaster_start_time() - interval '1 second')`
      yield* sql`INSERT INTO ${processes} (process_id, kind, host, pid, heartbeat_at, heartbeat_seconds, stale_seconds)
                 VALUES ('unwitnessed', 'worker', 'h', 1, now() - interval '20 seconds', 1, 30)`
      const tick = yield* makeTick(options(schema))
      expect(yield* tick(yield* termFor(schema, "leader-w"))).toMatchObject({ pruned: 2 })
      const left = yield* sql<{ process_id: string }>`SELECT process_id FROM ${processes} ORDER BY process_id`
      expect(left.map((p) => p.process_id)).toEqual(["before-restart", "dead-but-recent", "stalled", "unwitnessed"])
    }))

  it.effect("a dead process holding more claims than one batch gets all of them released at its prune", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const q = yield* Queue
      const registry = yield* ProcessRegistry
      const t = (name: string) => sql(`${schema}.${name}`)
      yield* sql`DELETE FROM ${t("process")}`
      // A worker at concurrency 10 with `auto` prefetch holds up to 1,010: more than one maintenance batch.
      yield* q.enqueueMany(Array.from({ length: 1500 }, (_, i) => ({ task: "t", payload: { i }, options: { queue: "many" } })))
      yield* sql`INSERT INTO ${t("process")} (process_id, kind, host, pid, heartbeat_at)
                 VALUES ('dead-holder', 'worker', 'h', 1, now() - interval '1 minute')`
      const claimed = yield* q.claim({ queues: ["many"], limit: 1500, leaseSeconds: 300, processId: "dead-holder" })
      expect(claimed.length).toBe(1500)
      const pruned = yield* registry.pruneStale()
      expect(pruned).toMatchObject({ pruned: 1, released: 1500, queues: ["many"] })
      const [left] = yield* sql<{ n: number }>`
        SELECT count(*)::int AS n FROM ${t("message")} WHERE queue = 'many' AND state = 'claimed'`
      expect(left!.n).toBe(0)
      yield* sql`DELETE FROM ${t("message")} WHERE queue = 'many'`
    }), { timeout: 30_000 })

  it.effect("a heartbeat that fails is tried again within a fraction of its period, not a whole period later", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const registry = yield* ProcessRegistry
      const table = `"${schema}".process`
      yield* Effect.scoped(Effect.gen(function*() {
        const { processId } = yield* registry.register({ kind: "worker", every: 2, staleSeconds: 30 })
        // The table is away from just after the registration until past the first beat (due at 2 s): that beat
        // fails, on both of its tries. A process whose beats fail this way while its witness session is gone
        // (connections killed) is pruned once its heartbeat is two periods old: it must not wait a period more.
        yield* sql.unsafe(`ALTER TABLE ${table} RENAME TO process_away`)
        yield* Effect.sleep("2500 millis")
        yield* sql.unsafe(`ALTER TABLE "${schema}".process_away RENAME TO process`)
        const [restored] = yield* sql<{ at: Date }>`SELECT clock_timestamp() AS at`
        const beat = sql<{ after: number }>`
          SELECT extract(epoch FROM heartbeat_at - ${restored!.at}::timestamptz)::float8 AS after
          FROM ${sql(`${schema}.process`)} WHERE process_id = ${processId}`
        const [fresh] = yield* eventually(beat, (rows) => rows.length > 0 && rows[0]!.after > 0)
        // The next period's beat would come 1.5 s after the table is back.
        expect(fresh!.after).toBeLessThan(1)
      }))
    }), { timeout: 30_000 })

  it.effect("a backlog of 200,000 due jobs is promoted in bounded batches while the leader keeps its lease", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const m = sql(`${schema}.message`)
      yield* sql`DELETE FROM ${m}`
      yield* sql`INSERT INTO ${m} (queue, task, payload, state, visible_at)
                 SELECT 'backlog', 't', '{}'::jsonb, 'scheduled', now() - interval '1 second'
                 FROM generate_series(1, 200000)`
      const scheduled = sql<{ n: number }>`SELECT count(*)::int AS n FROM ${m} WHERE state = 'scheduled'`.pipe(
        Effect.map((rows) => rows[0]!.n)
      )
      // A short lease and a tick every second: an unbounded promote holds the fence's share lock on the
      // lease row past the renew's deadline, so every term ends "renew timed out" and nothing is promoted.
      const reaper = yield* Layer.build(Reaper.layer({ ...options(schema), leaseName: "backlog", leaseSeconds: 2, intervalSeconds: 1 }))
      const leadership = Context.get(reaper, Reaper).leadership
      yield* eventually(scheduled, (n) => n === 0)
      const state = yield* leadership
      expect(state).toMatchObject({ isLeader: true, losses: 0, acquisitions: 1 })
      yield* sql`DELETE FROM ${m}`
    }), { timeout: 120_000 })
})
