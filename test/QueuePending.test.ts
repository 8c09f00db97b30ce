/**
 * `queue.pending(queues?)`: a cheap per-queue count of what is still to run (ready + scheduled + claimed), for
 * hosts and dashboards. Unlike `stats()` it never reads the dead-letter table, and every count stops at `limit`.
 */
import { assert, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { InvalidConfig } from "../src/Errors.ts"
import { Queue } from "../src/Queue.ts"
import { TestSchema, testDb } from "./support.ts"

const seed = Effect.gen(function*() {
  const q = yield* Queue
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const job = (queue: string, delay?: number) => ({ task: "t", payload: {}, options: { queue, ...(delay === undefined ? {} : { delay: `${delay} seconds` as const }) } })
  yield* q.enqueueMany([
    ...Array.from({ length: 5 }, () => job("p.alpha")),
    job("p.alpha", 600),
    job("p.alpha", 600),
    ...Array.from({ length: 3 }, () => job("p.beta")),
    job("p.gamma", 600),
    job("p.dead")
  ])
  // Two of alpha's ready jobs are claimed; beta's claimed one is claimed by no live process.
  yield* q.claim({ queues: ["p.alpha"], limit: 2, leaseSeconds: 30, processId: "proc-a" })
  yield* sql`UPDATE ${sql(`${schema}.message`)} SET state = 'claimed', vt = now() + interval '30 seconds'
             WHERE msg_id = (SELECT min(msg_id) FROM ${sql(`${schema}.message`)} WHERE queue = 'p.beta')`
  // p.dead has only a dead letter: not pending, so not listed.
  const [dead] = yield* q.claim({ queues: ["p.dead"], limit: 1, leaseSeconds: 30, processId: "proc-a" })
  yield* q.deadLetter(dead!, "for the test")
})

layer(testDb("queue_pending"))("Queue.pending", (it) => {
  it.effect("per queue: ready, scheduled, claimed and their sum; only queues with pending jobs; dead letters not read", () =>
    Effect.gen(function*() {
      yield* seed
      const q = yield* Queue
      const all = (yield* q.pending()).filter((p) => p.queue.startsWith("p."))
      expect(all).toEqual([
        { queue: "p.alpha", ready: 3, scheduled: 2, claimed: 2, pending: 7, capped: false },
        { queue: "p.beta", ready: 2, scheduled: 0, claimed: 1, pending: 3, capped: false },
        { queue: "p.gamma", ready: 0, scheduled: 1, claimed: 0, pending: 1, capped: false }
      ])
      // Named queues come back in the order asked, an empty or unknown one with zeros.
      expect(yield* q.pending(["p.gamma", "p.nothing", "p.dead", "p.alpha"])).toEqual([
        { queue: "p.gamma", ready: 0, scheduled: 1, claimed: 0, pending: 1, capped: false },
        { queue: "p.nothing", ready: 0, scheduled: 0, claimed: 0, pending: 0, capped: false },
        { queue: "p.dead", ready: 0, scheduled: 0, claimed: 0, pending: 0, capped: false },
        { queue: "p.alpha", ready: 3, scheduled: 2, claimed: 2, pending: 7, capped: false }
      ])
    }))

  it.effect("bounded: each count stops at the limit and says so", () =>
    Effect.gen(function*() {
      const q = yield* Queue
      expect(yield* q.pending(["p.alpha"], { limit: 2 })).toEqual([
        { queue: "p.alpha", ready: 2, scheduled: 2, claimed: 2, pending: 6, capped: true }
      ])
      expect((yield* q.pending(undefined, { limit: 3 })).find((p) => p.queue === "p.alpha")).toMatchObject({ ready: 3, capped: true })
    }))

  it.effect("bad input names the culprit", () =>
    Effect.gen(function*() {
      const q = yield* Queue
      const badLimit = yield* Effect.flip(q.pending(["p.alpha"], { limit: 0 }))
      assert(badLimit instanceof InvalidConfig)
      expect(badLimit.message).toContain("limit")
      const badQueue = yield* Effect.flip(q.pending(["ok", "not ok"]))
      assert(badQueue instanceof InvalidConfig)
      expect(badQueue.message).toContain('"not ok"')
    }))
})
