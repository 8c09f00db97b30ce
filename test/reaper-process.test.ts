import { expect, layer } from "@effect/vitest"
import { Clock, Effect } from "effect"
import { SqlClient } from "effect/sql"
import { eventually, httpGet, type Replica, startReaper } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

const LEASE = 2
const INTERVAL = 0.5

const startReplica = TestSchema.use((db) =>
  startReaper(db, { PGQ_LEASE_SECONDS: String(LEASE), PGQ_REAPER_INTERVAL_SECONDS: String(INTERVAL) })
)

const health = (replica: Replica) =>
  httpGet(`http://127.0.0.1:${replica.port}/health`).pipe(
    Effect.map((reply) => ({ ...(JSON.parse(reply.body) as { is_leader: boolean; term: number | null }), code: reply.status }))
  )

const lease = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const [row] = yield* sql<{ holder: string; term: number }>`
    SELECT holder, term::int AS term FROM ${sql(`${schema}.lease`)} WHERE name = 'reaper'`
  return row
})

/** Wait until exactly one of the replicas reports leadership; return it and the other. */
const leaderOf = (a: Replica, b: Replica) =>
  eventually(Effect.all([health(a), health(b)]), ([x, y]) => x.is_leader !== y.is_leader).pipe(
    Effect.map(([x]) => (x.is_leader ? [a, b] as const : [b, a] as const))
  )

const secondsSince = (start: number) => Clock.currentTimeMillis.pipe(Effect.map((now) => (now - start) / 1000))

layer(testDb("reaper_process"), { excludeTestServices: true })("dist/reaper.js replicas", (it) => {
  it.effect("one leads; SIGKILL it and the standby leads within lease + interval", () =>
    Effect.gen(function*() {
      const [leader, standby] = yield* leaderOf(yield* startReplica, yield* startReplica)
      const standbyHealth = yield* health(standby)
      expect(standbyHealth.code).toBe(200)
      const before = yield* lease
      const killedAt = yield* Clock.currentTimeMillis
      leader.process.child.kill("SIGKILL")
      yield* eventually(health(standby), (h) => h.is_leader)
      const seconds = yield* secondsSince(killedAt)
      console.log(`[measure] standby reaper leads ${seconds.toFixed(2)} s after the leader was SIGKILLed (lease ${LEASE} s, interval ${INTERVAL} s)`)
      expect(seconds).toBeLessThan(LEASE + INTERVAL + 1.5)
      expect((yield* lease)!.term).toBe(before!.term + 1)
    }), { timeout: 60_000 })

  it.effect("a SIGSTOPped leader is replaced; after SIGCONT it steps down and writes nothing", () =>
    Effect.gen(function*() {
      const [leader, standby] = yield* leaderOf(yield* startReplica, yield* startReplica)
      const before = yield* lease
      leader.process.child.kill("SIGSTOP")
      yield* eventually(health(standby), (h) => h.is_leader)
      const taken = yield* lease
      expect(taken!.term).toBe(before!.term + 1)
      expect(taken!.holder).not.toBe(before!.holder)
      leader.process.child.kill("SIGCONT")
      const resumed = yield* eventually(health(leader), (h) => !h.is_leader)
      expect(resumed.code).toBe(200)
      // The resumed ex-leader neither re-took nor disturbed the lease.
      expect(yield* lease).toEqual(taken)
      expect((yield* health(standby)).is_leader).toBe(true)
    }), { timeout: 60_000 })

  it.effect("SIGTERM releases the lease and exits 0; the standby takes over within about one interval", () =>
    Effect.gen(function*() {
      const [leader, standby] = yield* leaderOf(yield* startReplica, yield* startReplica)
      const stoppedAt = yield* Clock.currentTimeMillis
      leader.process.child.kill("SIGTERM")
      expect(yield* leader.process.exit).toEqual({ code: 0, signal: null })
      yield* eventually(health(standby), (h) => h.is_leader)
      const seconds = yield* secondsSince(stoppedAt)
      console.log(`[measure] standby reaper leads ${seconds.toFixed(2)} s after the leader's SIGTERM`)
      expect(seconds).toBeLessThan(LEASE)
    }), { timeout: 60_000 })
})
