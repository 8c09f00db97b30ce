/**
 * A real database crash undoes an asynchronously committed claim, and the job's next claim hands out the same
 * attempt number (read_ct) again: only the per-claim token tells the two claims apart.
 *
 * The test runs a private embedded Postgres, claims jobs (synchronous_commit=off), crashes the server
 * (immediate shutdown: SIGQUIT to the postmaster) before the claim's WAL left shared memory, and starts it
 * again on the same data folder. Crash recovery replays only the WAL that reached the kernel, so the claim is
 * gone, while the worker that received it would still be running its jobs.
 *
 * Losing the commit is made certain, not likely: an asynchronous commit is written out by the WAL writer
 * (every wal_writer_delay, or at once when it is woken: wal_writer_flush_after=0 wakes it on every
 * asynchronous commit) and by whoever commits durably next (every commit flushes the WAL written before it).
 * Once written, it survives any crash of Postgres alone: the kernel holds it, fsync or not. So the WAL
 * writer is stopped (SIGSTOP) across the claim and killed with the server, nothing else commits (no
 * autovacuum), and the background writer writes no page (it would flush the WAL up to the page first).
 * The test asserts the claim's WAL was not written before the crash and that read_ct went back after it.
 */
import { expect, it } from "@effect/vitest"
import { Effect, Layer, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { chmodSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Database from "../src/Database.ts"
import { embedded } from "../src/Embedded.ts"
import { migrate } from "../src/Migrations.ts"
import { type ClaimedJob, Queue } from "../src/Queue.ts"
import { freePort } from "./processes.ts"

const SCHEMA = "pgq_crash"
const QUEUE = "crash"
const JOBS = 4

/** No other writer of WAL or pages between the claim and the crash (see the header). */
const FLAGS = ["-c", "autovacuum=off", "-c", "bgwriter_lru_maxpages=0"]

/** A folder for the server's data that outlives one server, removed at the end (enterable when root runs postgres as the postgres user). */
const serverFolder = Effect.acquireRelease(
  Effect.sync(() => {
    const base = mkdtempSync(join(tmpdir(), "pgq-crash-"))
    chmodSync(base, 0o755)
    return base
  }),
  (base) => Effect.sync(() => rmSync(base, { recursive: true, force: true }))
).pipe(Effect.map((base) => join(base, "server")))

/** Run `body` against the server in `dir` (started, or restarted on its existing data), with one connection. */
const withServer = <A, E, R>(dir: string, port: number, body: (dataDir: string) => Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const server = yield* embedded({ dir, port, flags: FLAGS })
    const db = Queue.layer({ schema: SCHEMA, maxAttempts: 5, notify: false }).pipe(
      Layer.provideMerge(Database.layer({ url: server.url, maxConnections: 1, applicationName: "pgq-test-crash" }))
    )
    return yield* Effect.provide(body(server.dataDir), db)
  }).pipe(Effect.scoped)

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * The WAL writer's pid, stopped: it cannot write the WAL of what commits now until the crash. Resumed when
 * the scope closes, should the test fail before the crash (a stopped WAL writer would stall the shutdown).
 */
const freezeWalWriter = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [walWriter] = yield* sql<{ pid: number }>`SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'`
  return yield* Effect.acquireRelease(
    Effect.sync(() => {
      process.kill(walWriter!.pid, "SIGSTOP")
      return walWriter!.pid
    }),
    (pid) => Effect.sync(() => isAlive(pid) && process.kill(pid, "SIGCONT"))
  )
})

/** WAL inserted (in shared memory) but not yet written to the kernel: what a crash of Postgres loses. */
const unwrittenWal = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [row] = yield* sql<{ bytes: number }>`
    SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_lsn())::int AS bytes`
  return row!.bytes
})

/**
 * Immediate shutdown (SIGQUIT to the postmaster: every process exits at once, nothing is written) and the
 * stopped WAL writer killed outright; returns when the postmaster is gone.
 */
const crash = (dataDir: string, walWriter: number) =>
  Effect.gen(function*() {
    const postmaster = Number(readFileSync(join(dataDir, "postmaster.pid"), "utf8").split("\n")[0])
    yield* Effect.sync(() => {
      process.kill(postmaster, "SIGQUIT")
      process.kill(walWriter, "SIGKILL")
    })
    yield* Effect.sync(() => isAlive(postmaster)).pipe(
      Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (alive) => !alive })
    )
  })

const byId = (jobs: ReadonlyArray<ClaimedJob>) => [...jobs].sort((a, b) => Number(a.msgId) - Number(b.msgId))

const claimAll = (processId: string) =>
  Queue.use((q) => q.claim({ queues: [QUEUE], limit: JOBS, leaseSeconds: 30, processId })).pipe(Effect.map(byId))

it.live("a real crash undoes an asynchronous claim: the reclaimed job has the same attempt, and only the new claim's fence holds", () =>
  Effect.gen(function*() {
    const dir = yield* serverFolder
    const port = yield* freePort

    const lost = yield* withServer(dir, port, (dataDir) =>
      Effect.gen(function*() {
        const q = yield* Queue
        yield* migrate(SCHEMA)
        // Enqueues commit durably: the jobs survive the crash.
        yield* q.enqueueMany(Array.from({ length: JOBS }, (_, i) => ({ task: "t", payload: { i }, options: { queue: QUEUE } })))
        const walWriter = yield* freezeWalWriter
        const claimed = yield* claimAll("before-crash")
        expect(claimed.map((j) => j.attempt)).toEqual(Array(JOBS).fill(1))
        // The claim was acknowledged (committed), yet its WAL is still only in shared memory.
        expect(yield* unwrittenWal).toBeGreaterThan(0)
        yield* crash(dataDir, walWriter)
        return claimed
      })
    )

    yield* withServer(dir, port, () =>
      Effect.gen(function*() {
        const q = yield* Queue
        const sql = yield* SqlClient.SqlClient
        // Recovery undid the claim: the rows are ready again with the old read_ct (else this test proves nothing).
        const rows = yield* sql<{ msg_id: string; state: string; read_ct: number; claim_token: string | null }>`
          SELECT msg_id::text AS msg_id, state, read_ct, claim_token::text AS claim_token
          FROM ${sql(`${SCHEMA}.message`)} ORDER BY msg_id`
        expect(rows).toEqual(lost.map((j) => ({ msg_id: j.msgId, state: "ready", read_ct: 0, claim_token: null })))

        const next = yield* claimAll("after-crash")
        expect(next.map((j) => j.msgId)).toEqual(lost.map((j) => j.msgId))
        // The same attempt number again: read_ct alone cannot tell the lost claim from this one.
        expect(next.map((j) => j.attempt)).toEqual(lost.map((j) => j.attempt))
        next.forEach((job, i) => expect(job.token).not.toBe(lost[i]!.token))

        // The worker that received the lost claim still runs its jobs: every operation of it is refused.
        expect((yield* q.ackMany(lost)).size).toBe(0)
        expect((yield* q.extend(lost, 30)).size).toBe(0)
        for (const job of lost) expect(yield* q.fail(job, { error: "zombie", retryInSeconds: 0 })).toBe("stale")
        for (const job of lost) expect(yield* q.deadLetter(job, "zombie")).toBe(false)
        expect(yield* q.release(lost)).toBe(0)

        // The current claims' operations succeed.
        const [acked, extended, failed, released] = next
        expect(yield* q.ack(acked!)).toBe(true)
        expect((yield* q.extend([extended!], 60)).has(extended!.token)).toBe(true)
        expect(yield* q.fail(failed!, { error: "boom", retryInSeconds: 0 })).toBe("retried")
        expect(yield* q.release([released!])).toBe(1)
        const after = yield* sql<{ msg_id: string; state: string; claim_token: string | null }>`
          SELECT msg_id::text AS msg_id, state, claim_token::text AS claim_token
          FROM ${sql(`${SCHEMA}.message`)} ORDER BY msg_id`
        expect(after).toEqual([
          { msg_id: extended!.msgId, state: "claimed", claim_token: extended!.token },
          { msg_id: failed!.msgId, state: "scheduled", claim_token: null },
          { msg_id: released!.msgId, state: "ready", claim_token: null }
        ])
      })
    )
  }).pipe(Effect.scoped), { timeout: 120_000 })
