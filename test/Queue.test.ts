import { assert, describe, expect, layer } from "@effect/vitest"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect, Exit, Queue as Q, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import * as Database from "../src/Database.ts"
import { Queue } from "../src/Queue.ts"
import * as Wakeup from "../src/Wakeup.ts"
import { migrate } from "../src/Migrations.ts"
import { TestSchema, testDb, uniqueSchema } from "./support.ts"

/** Shift a row's timestamps into the past: the server clock cannot be moved, the data can. */
const age = (column: "visible_at" | "vt", seconds: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    yield* sql.unsafe(`UPDATE "${schema}".message SET ${column} = ${column} - interval '${seconds} seconds'`)
  })

/** The queue's rows, in msg_id order. */
const rows = (queue: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    return yield* sql<{ msg_id: string; state: string }>`
      SELECT msg_id::text AS msg_id, state FROM ${sql(`${schema}.message`)} WHERE queue = ${queue} ORDER BY msg_id`
  })

const claim = (queue: string, limit: number, processId = "test-process") =>
  Queue.use((q) => q.claim({ queues: [queue], limit, leaseSeconds: 30, processId }))

const queueSuite = (label: string, pgbouncer: boolean) =>
  layer(testDb(`queue_${pgbouncer ? "bouncer" : "named"}`, { pgbouncer, maxConnections: 20 }), {
    excludeTestServices: true
  })(`Queue (${label})`, (it) => {
    it.effect("concurrent claimers never share a job and never over-claim", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        yield* q.enqueueMany(Array.from({ length: 500 }, (_, i) => ({ task: "t", payload: { i }, options: { queue: "race" } })))
        const batches = yield* Effect.all(
          Array.from({ length: 16 }, (_, i) => claim("race", 7, `claimer-${i}`)),
          { concurrency: "unbounded" }
        )
        for (const batch of batches) expect(batch.length).toBeLessThanOrEqual(7)
        const ids = batches.flat().map((job) => job.msgId)
        expect(new Set(ids).size).toBe(ids.length)
        // Drain the rest with more concurrent rounds: every job is claimed exactly once overall.
        const seen = new Set(ids)
        let rest = yield* Effect.all(Array.from({ length: 16 }, () => claim("race", 50)), { concurrency: "unbounded" })
        while (rest.some((b) => b.length > 0)) {
          for (const job of rest.flat()) {
            assert.isFalse(seen.has(job.msgId), `job ${job.msgId} claimed twice`)
            seen.add(job.msgId)
          }
          rest = yield* Effect.all(Array.from({ length: 16 }, () => claim("race", 50)), { concurrency: "unbounded" })
        }
        expect(seen.size).toBe(500)
      }))

    it.effect("claims by priority, then FIFO", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const low = yield* q.enqueue("t", 1, { queue: "prio", priority: 1 })
        const midA = yield* q.enqueue("t", 2, { queue: "prio" })
        const high = yield* q.enqueue("t", 3, { queue: "prio", priority: 10 })
        const midB = yield* q.enqueue("t", 4, { queue: "prio" })
        const jobs = yield* claim("prio", 10)
        expect(jobs.map((j) => j.msgId)).toEqual([high, midA, midB, low])
        expect(jobs.map((j) => j.attempt)).toEqual([1, 1, 1, 1])
      }))

    it.effect("a claim over several queues takes the best jobs of all of them, each once", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const a1 = yield* q.enqueue("t", 1, { queue: "multi-a", priority: 3 })
        const b1 = yield* q.enqueue("t", 2, { queue: "multi-b", priority: 9 })
        const a2 = yield* q.enqueue("t", 3, { queue: "multi-a", priority: 9 })
        const b2 = yield* q.enqueue("t", 4, { queue: "multi-b", priority: 1 })
        const first = yield* Queue.use((q) =>
          q.claim({ queues: ["multi-a", "multi-b", "multi-a"], limit: 3, leaseSeconds: 30, processId: "p" })
        )
        expect(first.map((j) => j.msgId)).toEqual([b1, a2, a1])
        const rest = yield* Queue.use((q) =>
          q.claim({ queues: ["multi-b", "multi-a"], limit: 10, leaseSeconds: 30, processId: "p" })
        )
        expect(rest.map((j) => j.msgId)).toEqual([b2])
      }))

    it.effect("ackAndClaim acks the attempts it is given (fenced) and claims in the same statement", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        yield* q.enqueueMany([1, 2, 3, 4].map((i) => ({ task: "t", payload: i, options: { queue: "ride" } })))
        const [a, b] = yield* claim("ride", 2)
        const stale = { msgId: b!.msgId, attempt: b!.attempt, token: "00000000-0000-4000-8000-000000000000" }
        const { acked, claimed } = yield* q.ackAndClaim(
          [a!, stale],
          { queues: ["ride"], limit: 10, leaseSeconds: 30, processId: "p" }
        )
        expect([...acked]).toEqual([a!.token])
        expect(claimed).toHaveLength(2)
        const left = yield* rows("ride")
        expect(left.map((r) => r.msg_id)).toEqual([b!.msgId, ...claimed.map((j) => j.msgId)])
        // With nothing to claim it still acks.
        const rest = yield* q.ackAndClaim(claimed, {
          queues: ["ride"], limit: 10, leaseSeconds: 30, processId: "p"
        })
        expect(rest.acked.size).toBe(2)
        expect(rest.claimed).toEqual([])
      }))

    it.effect("a backlog claimed, renewed, released and acked in batches of thousands on a drained table's statistics stays within the statement timeout", () =>
      Effect.gen(function*() {
        const { url } = yield* TestSchema
        const sql = yield* SqlClient.SqlClient
        // A schema of its own whose statistics are those of a drained queue: pages, but no live rows (what
        // autovacuum records between bursts).
        const schema = uniqueSchema("big_ack")
        yield* Effect.acquireRelease(migrate(schema), () => sql.unsafe(`DROP SCHEMA "${schema}" CASCADE`).pipe(Effect.ignore))
        const table = sql(`${schema}.message`)
        yield* sql`INSERT INTO ${table} (queue, task, payload) SELECT 'drained', 't', '{}' FROM generate_series(1, 5000)`
        yield* sql`DELETE FROM ${table}`
        yield* sql`ANALYZE ${table}`
        const rows = (queue: string) => sql`SELECT 1 FROM ${sql(`${schema}.message`)} WHERE queue = ${queue}`
        const claim = (queue: string, limit: number) =>
          Queue.use((q) => q.claim({ queues: [queue], limit, leaseSeconds: 30, processId: "p" }))
        yield* Effect.gen(function*() {
          const q = yield* Queue
          const enqueue = (n: number) =>
            q.enqueueMany(Array.from({ length: n }, () => ({ task: "t", payload: {}, options: { queue: "big-ack" } })))
          // A trickle of small batches on the one connection: the server caches a generic plan for the prepared
          // statements, planned for a small table. Then a backlog arrives and is claimed in one batch.
          for (let i = 0; i < 10; i++) {
            yield* enqueue(20)
            yield* q.ackMany(yield* claim("big-ack", 10))
            yield* q.ackAndClaim(yield* claim("big-ack", 10), { queues: ["big-ack"], limit: 10, leaseSeconds: 30, processId: "p" })
              .pipe(Effect.flatMap(({ claimed }) => q.ackMany(claimed)))
          }
          yield* enqueue(8000)
          const backlog = yield* claim("big-ack", 8000)
          expect(backlog).toHaveLength(8000)
          expect((yield* q.extend(backlog, 60)).size).toBe(8000)
          expect(yield* q.release(backlog.slice(0, 4000))).toBe(4000)
          expect((yield* q.ackMany(backlog.slice(4000))).size).toBe(4000)
          expect(yield* rows("big-ack")).toHaveLength(4000)
        }).pipe(
          Effect.provide(Queue.layer({ schema, maxAttempts: 5, statementTimeoutMs: 3000 })),
          Effect.provide(Database.layer({ url: Redacted.make(url), pgbouncer, maxConnections: 1 }))
        )
      }), { timeout: 60_000 })

    it.effect("the relaxed commit mode never leaks into a host transaction or the session", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        const commitMode = sql<{ mode: string }>`SELECT current_setting('synchronous_commit') AS mode`.pipe(
          Effect.map((rows) => rows[0]!.mode)
        )
        yield* q.enqueueMany([1, 2].map((i) => ({ task: "t", payload: i, options: { queue: "commit" } })))
        const inHost = yield* sql.withTransaction(
          Effect.all([claim("commit", 1), commitMode])
        )
        expect(inHost[0].length).toBe(1)
        expect(inHost[1]).toBe("on")
        // On its own the setting is local to the claim's own transaction: the session keeps its default.
        const [job] = yield* claim("commit", 1)
        expect(yield* q.ack(job!)).toBe(true)
        expect(yield* commitMode).toBe("on")
      }))

    it.effect("claims commit asynchronously inside their own transaction (seen by a statement trigger)", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        const { schema } = yield* TestSchema
        // An AFTER STATEMENT trigger runs inside the claim's transaction, after the claim set its commit mode.
        yield* sql.unsafe(`CREATE TABLE "${schema}".commit_seen (mode text)`)
        yield* sql.unsafe(`CREATE FUNCTION "${schema}".record_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN INSERT INTO "${schema}".commit_seen VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$`)
        yield* sql.unsafe(`CREATE TRIGGER record_commit_mode AFTER UPDATE ON "${schema}".message
          FOR EACH STATEMENT EXECUTE FUNCTION "${schema}".record_commit_mode()`)
        const seen = sql<{ mode: string }>`DELETE FROM ${sql(`${schema}.commit_seen`)} RETURNING mode`.pipe(
          Effect.map((rows) => rows.map((r) => r.mode))
        )
        yield* Effect.ensuring(
          Effect.gen(function*() {
            yield* q.enqueueMany([1, 2].map((i) => ({ task: "t", payload: i, options: { queue: "commit-seen" } })))
            yield* seen
            yield* claim("commit-seen", 1)
            expect(yield* seen).toEqual(["off"])
            yield* sql.withTransaction(claim("commit-seen", 1))
            expect(yield* seen).toEqual(["on"])
          }),
          sql.unsafe(`DROP TRIGGER record_commit_mode ON "${schema}".message`).pipe(Effect.orDie)
        )
      }))

    it.effect("a claim undone by a database crash: the next claim of the job gets a fence of its own", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        const { schema } = yield* TestSchema
        const id = yield* q.enqueue("t", {}, { queue: "undone" })
        const [lost] = yield* claim("undone", 1)
        // What crash recovery leaves when the asynchronously committed claim never reached the WAL on disk:
        // the row exactly as before the claim (the worker that got the claim keeps running it).
        yield* sql`UPDATE ${sql(`${schema}.message`)}
                   SET state = 'ready', read_ct = read_ct - 1, vt = NULL, claimed_by = NULL, claim_token = NULL
                   WHERE msg_id = ${id}::bigint`
        const [next] = yield* claim("undone", 1)
        expect(next!.attempt).toBe(lost!.attempt)
        expect(yield* q.ack(lost!)).toBe(false)
        expect((yield* q.extend([lost!], 30)).size).toBe(0)
        expect(yield* q.fail(lost!, { error: "zombie", retryInSeconds: 0 })).toBe("stale")
        expect(yield* q.release([lost!])).toBe(0)
        expect((yield* q.extend([next!], 30)).has(next!.token)).toBe(true)
        expect(yield* q.ack(next!)).toBe(true)
      }))

    it.effect("a delayed job is invisible until due, then promoted", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const id = yield* q.enqueue("t", {}, { queue: "delay", delay: "1 hour" })
        expect(yield* claim("delay", 1)).toEqual([])
        expect(yield* q.promoteDue({ queues: ["delay"] })).toBe(0)
        yield* age("visible_at", 3601)
        expect(yield* q.promoteDue({ queues: ["delay"] })).toBe(1)
        expect((yield* claim("delay", 1)).map((j) => j.msgId)).toEqual([id])
      }))

    it.effect("a stale attempt can neither ack, extend, fail nor release a newer one", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        yield* q.enqueue("t", {}, { queue: "fence" })
        const [first] = yield* claim("fence", 1)
        yield* age("vt", 60)
        expect(yield* q.rearmExpired({ queues: ["fence"] })).toBe(1)
        const [second] = yield* claim("fence", 1)
        expect(second!.attempt).toBe(first!.attempt + 1)
        expect(yield* q.ack(first!)).toBe(false)
        expect((yield* q.extend([first!], 30)).size).toBe(0)
        expect(yield* q.fail(first!, { error: "zombie", retryInSeconds: 0 })).toBe("stale")
        expect(yield* q.release([first!])).toBe(0)
        expect(yield* q.deadLetter(first!, "zombie")).toBe(false)
        // The newer attempt is untouched and can complete.
        expect((yield* q.extend([second!], 30)).has(second!.token)).toBe(true)
        expect(yield* q.ack(second!)).toBe(true)
      }))

    it.effect("failures retry with backoff, then dead-letter; replay brings the job back", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        const { schema } = yield* TestSchema
        const id = yield* q.enqueue("t", { n: 1 }, { queue: "retry", maxAttempts: 2 })
        const [first] = yield* claim("retry", 1)
        expect(yield* q.fail(first!, { error: "boom 1", retryInSeconds: 120 })).toBe("retried")
        const [row] = yield* sql<{ state: string; delay: number; last_error: string }>`
          SELECT state, extract(epoch FROM visible_at - now())::float8 AS delay, last_error
          FROM ${sql(`${schema}.message`)} WHERE msg_id = ${id}::bigint`
        expect(row!.state).toBe("scheduled")
        expect(row!.delay).toBeGreaterThan(100)
        expect(row!.last_error).toBe("boom 1")
        expect(yield* claim("retry", 1)).toEqual([])
        yield* age("visible_at", 200)
        yield* q.promoteDue({ queues: ["retry"] })
        const [second] = yield* claim("retry", 1)
        expect(second!.attempt).toBe(2)
        expect(yield* q.fail(second!, { error: "boom 2", retryInSeconds: 1 })).toBe("dead-lettered")
        const dead = yield* q.listDeadLetters()
        expect(dead.map((d) => [d.msgId, d.lastError, d.attempts])).toEqual([[id, "boom 2", 2]])
        expect(yield* q.replayDeadLetters([id])).toBe(1)
        expect(yield* q.listDeadLetters()).toEqual([])
        const [replayed] = yield* claim("retry", 1)
        expect(replayed!.payload).toEqual({ n: 1 })
        expect(replayed!.attempt).toBe(1)
        expect(replayed!.msgId).not.toBe(id)
      }))

    it.effect("release gives a job back at once without spending an attempt", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        yield* q.enqueue("t", {}, { queue: "release", maxAttempts: 1 })
        const [first] = yield* claim("release", 1)
        expect(yield* q.release([first!])).toBe(1)
        const [again] = yield* claim("release", 1)
        expect(again!.attempt).toBe(2)
        expect(again!.maxAttempts).toBe(2)
      }))

    it.effect("enqueue joins the host transaction: rolled back means never enqueued", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        const failed = yield* sql.withTransaction(
          q.enqueue("t", { outbox: true }, { queue: "outbox" }).pipe(Effect.andThen(Effect.fail("host failed")))
        ).pipe(Effect.exit)
        expect(Exit.isFailure(failed)).toBe(true)
        expect(yield* claim("outbox", 10)).toEqual([])
        yield* sql.withTransaction(q.enqueue("t", { outbox: true }, { queue: "outbox" }))
        expect((yield* claim("outbox", 10)).length).toBe(1)
      }))

    it.effect("after commit, listeners hear which queues got ready jobs; rollbacks and delayed jobs stay silent", () =>
      Effect.scoped(Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        const pg = yield* PgClient.PgClient
        const { schema } = yield* TestSchema
        const heard = yield* pg.listen(Wakeup.channel(schema))
        yield* sql.withTransaction(q.enqueue("t", 1, { queue: "rolled-back" }).pipe(Effect.andThen(Effect.fail("no"))))
          .pipe(Effect.ignore)
        yield* q.enqueue("t", 2, { queue: "later", delay: "1 hour" })
        yield* sql.withTransaction(q.enqueueMany([
          { task: "t", payload: 3, options: { queue: "committed" } },
          { task: "t", payload: 4, options: { queue: "committed" } }
        ]))
        // Earlier tests' announcements may still arrive; ours come in order, so a wrong one would come first.
        const payloads: Array<string> = []
        while (payloads.at(-1) !== "committed") {
          const note = yield* Q.take(heard)
          expect(note.channel).toBe(Wakeup.channel(schema))
          payloads.push(note.payload)
        }
        expect(payloads).not.toContain("rolled-back")
        expect(payloads).not.toContain("later")
      })))

    it.effect("bad payloads and options are rejected before anything is written, naming the field", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const cases: ReadonlyArray<[unknown, object, string, RegExp]> = [
          [{ n: 1n }, {}, "payload.n", /bigint/],
          [{ list: [1, Number.NaN] }, {}, "payload.list[1]", /NaN/],
          [{ text: "a\u0000b" }, {}, "payload.text", /NUL/],
          [{ ok: 1 }, { priority: 11 }, "priority", /1\.\.10/],
          [{ ok: 1 }, { priority: 2.5 }, "priority", /1\.\.10/],
          [{ ok: 1 }, { maxAttempts: 0 }, "maxAttempts", /positive/],
          [{ ok: 1 }, { queue: "" }, "queue", /non-empty/],
          // A name PGQ_QUEUES could never list: one rule for both (Names.ts).
          [{ ok: 1 }, { queue: "my queue" }, "queue", /A-Z a-z 0-9/],
          [{ ok: 1 }, { queue: "emails,reports" }, "queue", /A-Z a-z 0-9/],
          [{ ok: 1 }, { delay: -5 }, "delay", /non-negative/]
        ]
        for (const [payload, options, field, reason] of cases) {
          const error = yield* q.enqueue("bad-task", payload, { queue: "bad", ...options }).pipe(Effect.flip)
          expect(error._tag).toBe("PayloadRejected")
          if (error._tag === "PayloadRejected") {
            expect(error.field).toBe(field)
            expect(error.message).toMatch(reason)
            expect(error.message).toContain("bad-task")
          }
        }
        // One bad job rejects the whole batch.
        const batch = yield* q.enqueueMany([
          { task: "good", payload: 1, options: { queue: "bad" } },
          { task: "bad", payload: Number.POSITIVE_INFINITY, options: { queue: "bad" } }
        ]).pipe(Effect.flip)
        expect(batch._tag).toBe("PayloadRejected")
        expect(yield* claim("bad", 10)).toEqual([])
      }))

    it.effect("enqueueMany inserts a batch in one statement and returns ids in order", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const ids = yield* q.enqueueMany(
          Array.from({ length: 1000 }, (_, i) => ({ task: "bulk", payload: { i }, options: { queue: "bulk" } }))
        )
        expect(ids.length).toBe(1000)
        expect(ids.map(Number)).toEqual([...ids.map(Number)].sort((a, b) => a - b))
        const jobs = yield* claim("bulk", 1000)
        expect(jobs.map((j) => (j.payload as { i: number }).i)).toEqual(Array.from({ length: 1000 }, (_, i) => i))
        expect((yield* q.stats()).find((s) => s.queue === "bulk")?.claimed).toBe(1000)
      }))

    it.effect("every option and payload shape survives the batch insert", () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        const { schema } = yield* TestSchema
        const payloads: ReadonlyArray<unknown> = [null, "text", 0, false, [1, "two"], { nested: { deep: ["x"] } }, "quote'\"\\"]
        const ids = yield* q.enqueueMany([
          ...payloads.map((payload) => ({ task: "shape", payload, options: { queue: "shapes" } })),
          { task: "opts", payload: {}, options: { queue: "shapes", priority: 9, orgId: "org-1", maxAttempts: 7, executionId: "ex-1", batchIndex: 3 } },
          { task: "later", payload: {}, options: { queue: "shapes", delay: "90 seconds", priority: 1 } }
        ])
        const stored = yield* sql<{
          payload: unknown; org_id: string; priority: number; max_attempts: number; state: string
          execution_id: string | null; batch_index: number | null; delay: number
        }>`SELECT payload, org_id, priority, max_attempts, state, execution_id, batch_index,
                  extract(epoch FROM visible_at - enqueued_at)::float8 AS delay
           FROM ${sql(`${schema}.message`)} WHERE msg_id = ANY(${ids}::bigint[]) ORDER BY msg_id`
        expect(stored.slice(0, payloads.length).map((r) => r.payload)).toEqual(payloads)
        expect(stored[0]).toMatchObject({ org_id: "", priority: 5, max_attempts: 5, state: "ready", execution_id: null, batch_index: null })
        expect(stored[payloads.length]).toMatchObject({ org_id: "org-1", priority: 9, max_attempts: 7, execution_id: "ex-1", batch_index: 3 })
        expect(stored[payloads.length + 1]!.state).toBe("scheduled")
        expect(stored[payloads.length + 1]!.priority).toBe(1)
        expect(stored[payloads.length + 1]!.delay).toBeCloseTo(90, 3)
      }))
  })

describe("Queue", () => {
  queueSuite("named prepared statements", false)
  queueSuite("PGQ_PGBOUNCER=true, no prepared statements", true)
})
