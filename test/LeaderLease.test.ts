/**
 * The lease SQL against a real Postgres: the §15.8 catalogue of the reference system, plus a model-based
 * property test of random operation sequences (a failure shrinks to a short sequence; test/property.ts says how
 * to replay it). The server clock cannot be moved, so "time passes" is simulated by shifting the stored
 * timestamps back.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Option, Schema } from "effect"
import { workerId } from "../src/LeaderLease.ts"
import { Index, makeTrace, sequenceOptions, Steps, Weighted } from "./property.ts"
import { leaseFixture, testDb } from "./support.ts"

const LEASE = 10

// The property test's operations (its model and runner are at the end of the file). Defined up here
// because `it.effect.prop` compiles the Schema when the test is registered.
const CANDIDATES = 4
const MAX_STEPS = 60
/** Long, and time moves in coarse steps: see the model. */
const PROP_LEASE = 100
const Who = Index(CANDIDATES)
/** A zombie fiber of the process, from the term before or after the one the process believes it holds. */
const Off = Schema.Literals([-1, 1])
/** By candidate index; an op whose candidate cannot act is skipped (see `skipReason`). */
const LeaseOp = Weighted([
  [4, Schema.TaggedStruct("Acquire", { who: Who })],
  [3, Schema.TaggedStruct("Renew", { who: Who })],
  [2, Schema.TaggedStruct("Release", { who: Who })],
  [3, Schema.TaggedStruct("Write", { who: Who })],
  [3, Schema.TaggedStruct("Advance", { seconds: Schema.Literals([10, 20, 30, 50, 90, 100, 110, 250]) })],
  [1, Schema.TaggedStruct("ZombieRenew", { who: Who, off: Off })],
  [1, Schema.TaggedStruct("ZombieRelease", { who: Who, off: Off })],
  [1, Schema.TaggedStruct("ZombieWrite", { who: Who, off: Off })],
  [1, Schema.TaggedStruct("Stampede", {})],
  [1, Schema.TaggedStruct("Crash", { who: Who })],
  [1, Schema.TaggedStruct("Pause", { who: Who })],
  // The longest-crashed candidate comes back as a new process (a new holder id).
  [1, Schema.TaggedStruct("Restart", {})],
  // The longest-paused candidate resumes, still believing what it believed.
  [1, Schema.TaggedStruct("Resume", {})]
])
type LeaseOp = typeof LeaseOp.Type
const LeaseOps = Steps(LeaseOp, MAX_STEPS)

const setup = Effect.gen(function*() {
  const { schema, sql, leases, table, age } = yield* leaseFixture
  /** The raw row, timestamps as text, to prove a refused operation changed nothing. */
  const snapshot = (name: string) =>
    sql<{ holder: string; term: string; acquired_at: string; expires_at: string }>`
      SELECT holder, term::text AS term, acquired_at::text AS acquired_at, expires_at::text AS expires_at
      FROM ${table} WHERE name = ${name}`.pipe(Effect.map((rows) => rows[0]))
  const holderOf = (name: string) =>
    leases.current(name).pipe(Effect.map(Option.match({ onNone: () => undefined, onSome: (s) => s.holder })))
  return { sql, schema, leases, table, age, snapshot, holderOf }
})

layer(testDb("leader_lease", { maxConnections: 20 }))("LeaderLease", (it) => {
  describe("construction", () => {
    it.effect("empty or blank holder ids are refused, naming the field", () =>
      Effect.gen(function*() {
        const { leases } = yield* setup
        for (const holder of ["", "   "]) {
          const error = yield* Effect.flip(leases.tryAcquire("c-blank", holder, LEASE))
          expect(error._tag).toBe("InvalidConfig")
          expect(error.message).toContain("holder")
          expect((yield* Effect.flip(leases.renew("c-blank", holder, 1, LEASE)))._tag).toBe("InvalidConfig")
          expect((yield* Effect.flip(leases.release("c-blank", holder, 1)))._tag).toBe("InvalidConfig")
          expect((yield* Effect.flip(leases.candidate({ name: "c-blank", holder, leaseSeconds: LEASE })))._tag)
            .toBe("InvalidConfig")
        }
      }))

    it.effect("non-positive or non-finite lease seconds are refused", () =>
      Effect.gen(function*() {
        const { leases } = yield* setup
        for (const seconds of [0, -5, Number.NaN, Number.POSITIVE_INFINITY]) {
          const error = yield* Effect.flip(leases.tryAcquire("c-secs", "me", seconds))
          expect(error._tag).toBe("InvalidConfig")
          expect(error.message).toContain("leaseSeconds")
        }
      }))

    it.effect("workerId is host:pid:8hex and stable across calls", () =>
      Effect.sync(() => {
        const id = workerId()
        const parts = id.split(":")
        expect(parts).toHaveLength(3)
        expect(parts[1]).toBe(String(process.pid))
        expect(parts[2]).toMatch(/^[0-9a-f]{8}$/)
        expect(workerId()).toBe(id)
      }))
  })

  describe("lease operations", () => {
    it.effect("acquire on a free lease succeeds; the missing row self-heals", () =>
      Effect.gen(function*() {
        const { leases, snapshot } = yield* setup
        expect(yield* snapshot("free")).toBeUndefined()
        expect(yield* leases.tryAcquire("free", "a", LEASE)).toEqual(Option.some(1))
        const state = Option.getOrThrow(yield* leases.current("free"))
        expect(state.holder).toBe("a")
        expect(state.term).toBe(1)
        expect(state.expiresInSeconds).toBeGreaterThan(LEASE - 2)
        expect(state.expiresInSeconds).toBeLessThanOrEqual(LEASE)
      }))

    it.effect("a deleted row is recreated by the next acquire, with a fresh term sequence", () =>
      Effect.gen(function*() {
        const { leases, sql, table } = yield* setup
        yield* leases.ensureRow("heal")
        yield* leases.ensureRow("heal") // idempotent
        expect(Option.getOrThrow(yield* leases.current("heal")).holder).toBe("")
        yield* sql`DELETE FROM ${table} WHERE name = 'heal'`
        expect(yield* leases.tryAcquire("heal", "a", LEASE)).toEqual(Option.some(1))
      }))

    it.effect("a second acquirer fails while the lease is fresh", () =>
      Effect.gen(function*() {
        const { leases, snapshot } = yield* setup
        yield* leases.tryAcquire("busy", "a", LEASE)
        const before = yield* snapshot("busy")
        expect(yield* leases.tryAcquire("busy", "b", LEASE)).toEqual(Option.none())
        expect(yield* snapshot("busy")).toEqual(before)
      }))

    it.effect("a stale lease (aged 30 s past a 10 s lease) allows takeover with the next term", () =>
      Effect.gen(function*() {
        const { age, leases, holderOf } = yield* setup
        yield* leases.tryAcquire("stale", "a", LEASE)
        yield* age("stale", LEASE + 30)
        expect(yield* leases.tryAcquire("stale", "b", LEASE)).toEqual(Option.some(2))
        expect(yield* holderOf("stale")).toBe("b")
      }))

    it.effect("the holder re-acquiring its fresh lease gets none, but renew succeeds", () =>
      Effect.gen(function*() {
        const { leases } = yield* setup
        const term = Option.getOrThrow(yield* leases.tryAcquire("same", "a", LEASE))
        expect(yield* leases.tryAcquire("same", "a", LEASE)).toEqual(Option.none())
        expect(yield* leases.renew("same", "a", term, LEASE)).toBe(true)
        expect(Option.getOrThrow(yield* leases.current("same")).term).toBe(term)
      }))

    it.effect("renew keeps leadership: it pushes the expiry a full lease ahead", () =>
      Effect.gen(function*() {
        const { age, leases } = yield* setup
        const term = Option.getOrThrow(yield* leases.tryAcquire("keep", "a", LEASE))
        yield* age("keep", 7)
        expect(Option.getOrThrow(yield* leases.current("keep")).expiresInSeconds).toBeLessThan(4)
        expect(yield* leases.renew("keep", "a", term, LEASE)).toBe(true)
        expect(Option.getOrThrow(yield* leases.current("keep")).expiresInSeconds).toBeGreaterThan(LEASE - 2)
        // ... so a challenger still loses after the original lease would have run out.
        yield* age("keep", 5)
        expect(yield* leases.tryAcquire("keep", "b", LEASE)).toEqual(Option.none())
      }))

    it.effect("renew by a non-holder, or with a wrong term, returns false and changes nothing", () =>
      Effect.gen(function*() {
        const { leases, snapshot } = yield* setup
        const term = Option.getOrThrow(yield* leases.tryAcquire("nonholder", "a", LEASE))
        const before = yield* snapshot("nonholder")
        expect(yield* leases.renew("nonholder", "b", term, LEASE)).toBe(false)
        expect(yield* leases.renew("nonholder", "a", term + 1, LEASE)).toBe(false)
        expect(yield* leases.renew("nonholder", "a", term - 1, LEASE)).toBe(false)
        expect(yield* snapshot("nonholder")).toEqual(before)
      }))

    it.effect("renew after a takeover returns false; an expired lease cannot be revived by renew", () =>
      Effect.gen(function*() {
        const { age, leases, snapshot } = yield* setup
        const first = Option.getOrThrow(yield* leases.tryAcquire("takeover", "a", LEASE))
        yield* age("takeover", LEASE + 1)
        // Expired but not yet taken: still refused (the safer choice, see LeaderLease.renew).
        expect(yield* leases.renew("takeover", "a", first, LEASE)).toBe(false)
        const second = Option.getOrThrow(yield* leases.tryAcquire("takeover", "b", LEASE))
        expect(second).toBe(first + 1)
        const before = yield* snapshot("takeover")
        expect(yield* leases.renew("takeover", "a", first, LEASE)).toBe(false)
        expect(yield* snapshot("takeover")).toEqual(before)
      }))

    it.effect("release frees the lease immediately", () =>
      Effect.gen(function*() {
        const { leases, holderOf } = yield* setup
        const term = Option.getOrThrow(yield* leases.tryAcquire("rel", "a", LEASE))
        expect(yield* leases.release("rel", "a", term)).toBe(true)
        expect(yield* holderOf("rel")).toBe("")
        expect(Option.getOrThrow(yield* leases.current("rel")).expiresInSeconds).toBeLessThanOrEqual(0)
        expect(yield* leases.tryAcquire("rel", "b", LEASE)).toEqual(Option.some(term + 1))
        // The old holder's renew is refused after its release.
        expect(yield* leases.renew("rel", "a", term, LEASE)).toBe(false)
      }))

    it.effect("release by a non-holder is a no-op", () =>
      Effect.gen(function*() {
        const { leases, snapshot } = yield* setup
        const term = Option.getOrThrow(yield* leases.tryAcquire("relnh", "a", LEASE))
        const before = yield* snapshot("relnh")
        expect(yield* leases.release("relnh", "b", term)).toBe(false)
        expect(yield* leases.release("relnh", "a", term + 1)).toBe(false)
        expect(yield* snapshot("relnh")).toEqual(before)
      }))

    it.effect("release after a takeover is a no-op: a late release never frees the new holder", () =>
      Effect.gen(function*() {
        const { age, leases, snapshot, holderOf } = yield* setup
        const first = Option.getOrThrow(yield* leases.tryAcquire("relto", "a", LEASE))
        yield* age("relto", LEASE + 30)
        yield* leases.tryAcquire("relto", "b", LEASE)
        const before = yield* snapshot("relto")
        expect(yield* leases.release("relto", "a", first)).toBe(false)
        expect(yield* snapshot("relto")).toEqual(before)
        expect(yield* holderOf("relto")).toBe("b")
      }))

    it.effect("a same-named holder from an older term cannot renew or release the newer term", () =>
      Effect.gen(function*() {
        const { age, leases, snapshot } = yield* setup
        const first = Option.getOrThrow(yield* leases.tryAcquire("reuse", "a", LEASE))
        yield* age("reuse", LEASE + 1)
        const second = Option.getOrThrow(yield* leases.tryAcquire("reuse", "a", LEASE))
        expect(second).toBe(first + 1)
        const before = yield* snapshot("reuse")
        expect(yield* leases.renew("reuse", "a", first, LEASE)).toBe(false)
        expect(yield* leases.release("reuse", "a", first)).toBe(false)
        expect(yield* snapshot("reuse")).toEqual(before)
      }))

    it.effect("20 concurrent acquirers on a free lease: exactly one wins, and terms strictly increase", () =>
      Effect.gen(function*() {
        const { leases } = yield* setup
        const holders = Array.from({ length: 20 }, (_, i) => `racer-${i}`)
        const terms: Array<number> = []
        for (let round = 0; round < 5; round++) {
          const results = yield* Effect.forEach(holders, (h) => leases.tryAcquire("race", h, LEASE), {
            concurrency: "unbounded"
          })
          const winners = results.flatMap((r, i) => Option.isSome(r) ? [{ holder: holders[i]!, term: r.value }] : [])
          expect(winners).toHaveLength(1)
          const winner = winners[0]!
          terms.push(winner.term)
          expect(yield* leases.release("race", winner.holder, winner.term)).toBe(true)
        }
        expect(terms).toEqual([1, 2, 3, 4, 5])
      }))

    it.effect("a fenced write passes for the current term only", () =>
      Effect.gen(function*() {
        const { age, leases, sql, schema } = yield* setup
        const scratch = sql(`${schema}.fence_scratch`)
        yield* sql`CREATE TABLE ${scratch} (id int PRIMARY KEY, writes int NOT NULL, last_term bigint)`
        yield* sql`INSERT INTO ${scratch} VALUES (1, 0, NULL)`
        const write = (holder: string, term: number) =>
          sql`UPDATE ${scratch} SET writes = writes + 1, last_term = ${term}
              WHERE id = 1 AND ${leases.fence("fenced", holder, term)} RETURNING 1`.pipe(
            Effect.map((rows) => rows.length === 1)
          )
        const a = Option.getOrThrow(yield* leases.tryAcquire("fenced", "a", LEASE))
        expect(yield* write("a", a)).toBe(true)
        expect(yield* write("b", a)).toBe(false)
        expect(yield* write("a", a + 1)).toBe(false)
        yield* age("fenced", LEASE + 1)
        expect(yield* write("a", a)).toBe(false) // expired, not yet taken over: still refused
        const b = Option.getOrThrow(yield* leases.tryAcquire("fenced", "b", LEASE))
        expect(yield* write("a", a)).toBe(false)
        expect(yield* write("b", b)).toBe(true)
        // The fence also works as a plain predicate, and inside INSERT … SELECT / DELETE.
        const [row] = yield* sql<{ ok: boolean }>`SELECT ${leases.fence("fenced", "b", b)} AS ok`
        expect(row!.ok).toBe(true)
        yield* sql`INSERT INTO ${scratch} SELECT 2, 0, ${b} WHERE ${leases.fence("fenced", "a", a)}`
        yield* sql`DELETE FROM ${scratch} WHERE id = 1 AND ${leases.fence("fenced", "a", a)}`
        const rows = yield* sql<{ id: number; writes: number }>`SELECT id, writes FROM ${scratch} ORDER BY id`
        expect(rows).toEqual([{ id: 1, writes: 2 }])
      }))
  })

  describe("property: random operation sequences against a reference model", () => {
    it.effect.prop(
      "100 sequences of up to 60 steps over 4 candidates keep every invariant",
      { ops: LeaseOps },
      ({ ops }) => Effect.flatMap(setup, (env) => runSequence(env, ops)),
      sequenceOptions({ runs: 100, maxSteps: MAX_STEPS, timeout: 60_000 })
    )
  })
})

// ---------------------------------------------------------------------------------------------------------
// Model-based property test
// ---------------------------------------------------------------------------------------------------------

// The model's lease (PROP_LEASE) is long and time moves in coarse steps, so real time elapsing during a
// sequence (milliseconds) never flips "expired" vs "fresh"; remaining <= 0 means expired on the server too.
interface ModelLease {
  holder: string
  term: number
  /** Server seconds until expiry. */
  remaining: number
}

interface Candidate {
  readonly id: number
  /** A crash-restart is a new process, hence a new holder id. */
  incarnation: number
  status: "alive" | "paused" | "crashed"
  /** The term this process believes it holds. */
  belief: number | null
}

const holderId = (c: Candidate) => `c${c.id}.${c.incarnation}`

type Env = Effect.Success<typeof setup>

/** Every sequence (each run and each shrink candidate) gets a lease row of its own. */
let sequences = 0

const runSequence = (env: Env, ops: ReadonlyArray<LeaseOp>) =>
  Effect.gen(function*() {
    const { leases, sql, schema } = env
    const name = `prop-${++sequences}`
    const scratch = sql(`${schema}.prop_scratch`)
    yield* sql`CREATE TABLE IF NOT EXISTS ${scratch} (
      name text PRIMARY KEY, writes int NOT NULL DEFAULT 0, last_holder text, last_term bigint)`
    yield* sql`INSERT INTO ${scratch} (name) VALUES (${name})`
    const trace = makeTrace()
    const model: ModelLease = { holder: "", term: 0, remaining: 0 }
    let modelWrites = 0
    let maxTerm = 0
    const candidates: Array<Candidate> = Array.from({ length: CANDIDATES }, (_, id) => ({
      id,
      incarnation: 0,
      status: "alive",
      belief: null
    }))
    const valid = (holder: string, term: number) =>
      model.holder === holder && model.term === term && model.remaining > 0
    const acquirable = () => model.holder === "" || model.remaining <= 0
    const check = (condition: boolean, what: string) =>
      trace.check(condition, `${what} (model ${JSON.stringify(model)})`)
    /** The term the process believes it holds (a guess, the current one, if none); a zombie's is one off. */
    const termFor = (c: Candidate, op: LeaseOp) => Math.max(0, (c.belief ?? model.term) + ("off" in op ? op.off : 0))
    const actor = (c: Candidate, op: LeaseOp) => "off" in op ? `${holderId(c)}'s zombie` : holderId(c)
    /** Oldest first: Restart and Resume take the head. */
    const crashed: Array<Candidate> = []
    const paused: Array<Candidate> = []
    const won = (c: Candidate, term: number) =>
      Effect.gen(function*() {
        yield* check(term > maxTerm, `term ${term} not above the highest term seen (${maxTerm})`)
        maxTerm = term
        model.holder = holderId(c)
        model.term = term
        model.remaining = PROP_LEASE
        c.belief = term
      })
    /**
     * Only a running process acts (or crashes, or pauses). An op by any other is a no-op rather than moved
     * to someone else, so an op keeps its meaning whatever shrinking removed before it.
     */
    const skipReason = (op: LeaseOp): string | undefined => {
      switch (op._tag) {
        case "Advance":
          return undefined
        case "Stampede":
          return candidates.some((x) => x.status === "alive") ? undefined : "nobody alive"
        case "Restart":
          return crashed.length > 0 ? undefined : "nobody crashed"
        case "Resume":
          return paused.length > 0 ? undefined : "nobody paused"
        default: {
          const c = candidates[op.who]!
          return c.status === "alive" ? undefined : `${holderId(c)} is ${c.status}`
        }
      }
    }

    for (const op of ops) {
      const skip = skipReason(op)
      if (skip !== undefined) {
        trace.log(`${op._tag} skipped: ${skip}`)
        continue
      }
      const before = yield* env.snapshot(name)
      let mayChange = true
      switch (op._tag) {
        case "Acquire": {
          const c = candidates[op.who]!
          const expected = acquirable() ? Option.some(model.term + 1) : Option.none<number>()
          const result = yield* leases.tryAcquire(name, holderId(c), PROP_LEASE)
          trace.log(`${holderId(c)} acquire -> ${Option.getOrElse(Option.map(result, String), () => "none")}`)
          yield* check(Option.getOrUndefined(result) === Option.getOrUndefined(expected), "acquire result")
          if (Option.isSome(result)) yield* won(c, result.value)
          else mayChange = false
          break
        }
        case "Stampede": {
          const alive = candidates.filter((x) => x.status === "alive")
          const expectWin = acquirable()
          const results = yield* Effect.forEach(alive, (a) => leases.tryAcquire(name, holderId(a), PROP_LEASE), {
            concurrency: "unbounded"
          })
          const winners = results.flatMap((r, i) => Option.isSome(r) ? [{ c: alive[i]!, term: r.value }] : [])
          trace.log(`stampede of ${alive.length} -> ${winners.map((w) => `${holderId(w.c)}@${w.term}`).join(",")}`)
          yield* check(winners.length === (expectWin ? 1 : 0), `stampede winners: ${winners.length}`)
          if (winners[0] !== undefined) {
            yield* check(winners[0].term === model.term + 1, "stampede term")
            yield* won(winners[0].c, winners[0].term)
          } else {
            mayChange = false
          }
          break
        }
        case "Renew":
        case "ZombieRenew": {
          const c = candidates[op.who]!
          const term = termFor(c, op)
          const expected = valid(holderId(c), term)
          const result = yield* leases.renew(name, holderId(c), term, PROP_LEASE)
          trace.log(`${actor(c, op)} renew term ${term} -> ${result}`)
          yield* check(result === expected, "renew result")
          if (result) model.remaining = PROP_LEASE
          else {
            mayChange = false
            if (c.belief === term) c.belief = null // a refused renew means: step down
          }
          break
        }
        case "Release":
        case "ZombieRelease": {
          const c = candidates[op.who]!
          const term = termFor(c, op)
          const expected = model.holder === holderId(c) && model.term === term
          const result = yield* leases.release(name, holderId(c), term)
          trace.log(`${actor(c, op)} release term ${term} -> ${result}`)
          yield* check(result === expected, "release result")
          if (result) {
            model.holder = ""
            model.remaining = 0
          } else {
            mayChange = false
          }
          if (c.belief === term) c.belief = null
          break
        }
        case "Write":
        case "ZombieWrite": {
          const c = candidates[op.who]!
          const term = termFor(c, op)
          const expected = valid(holderId(c), term)
          const rows = yield* sql`
            UPDATE ${scratch} SET writes = writes + 1, last_holder = ${holderId(c)}, last_term = ${term}
            WHERE name = ${name} AND ${leases.fence(name, holderId(c), term)} RETURNING 1`
          trace.log(`${actor(c, op)} fenced write term ${term} -> ${rows.length === 1}`)
          yield* check((rows.length === 1) === expected, "fenced write")
          if (rows.length === 1) modelWrites++
          mayChange = false
          break
        }
        case "Advance": {
          trace.log(`advance ${op.seconds}s`)
          yield* env.age(name, op.seconds)
          model.remaining -= op.seconds
          break
        }
        case "Crash": {
          const c = candidates[op.who]!
          trace.log(`${holderId(c)} crashes (stops renewing, never releases)`)
          c.status = "crashed"
          crashed.push(c)
          mayChange = false
          break
        }
        case "Pause": {
          const c = candidates[op.who]!
          trace.log(`${holderId(c)} pauses (keeps believing term ${c.belief})`)
          c.status = "paused"
          paused.push(c)
          mayChange = false
          break
        }
        case "Restart": {
          const c = crashed.shift()!
          c.status = "alive"
          c.incarnation++
          c.belief = null
          trace.log(`c${c.id} restarts as ${holderId(c)}`)
          mayChange = false
          break
        }
        case "Resume": {
          const c = paused.shift()!
          c.status = "alive"
          trace.log(`${holderId(c)} resumes, still believing term ${c.belief}`)
          mayChange = false
          break
        }
      }

      // Invariants, checked against the database after every step.
      const after = yield* env.snapshot(name)
      if (!mayChange) {
        yield* check(JSON.stringify(after) === JSON.stringify(before), "a refused operation changed the row")
      }
      const current = yield* leases.current(name)
      if (Option.isSome(current)) {
        const s = current.value
        yield* check(s.holder === model.holder && s.term === model.term, `row ${s.holder}@${s.term} != model`)
        yield* check((s.expiresInSeconds > 0) === (model.remaining > 0), `expiry ${s.expiresInSeconds}s != model`)
        if (model.remaining > 0) {
          yield* check(Math.abs(s.expiresInSeconds - model.remaining) < 5, `expiry ${s.expiresInSeconds}s drifted`)
        }
      } else {
        yield* check(model.term === 0, "row vanished")
      }
      // At most one process believes it leads AND passes the fence; the fence agrees with the model.
      const believers = candidates.filter((x) => x.belief !== null && x.status !== "crashed")
      const fenced = yield* Effect.forEach(believers, (x) =>
        sql<{ ok: boolean }>`SELECT ${leases.fence(name, holderId(x), x.belief!)} AS ok`.pipe(
          Effect.map((rows) => rows[0]!.ok)
        ))
      yield* check(fenced.filter(Boolean).length <= 1, `${fenced.filter(Boolean).length} processes pass the fence`)
      for (const [i, x] of believers.entries()) {
        yield* check(fenced[i] === valid(holderId(x), x.belief!), `fence for ${holderId(x)} disagrees with model`)
      }
      const [writes] = yield* sql<{ writes: number }>`SELECT writes FROM ${scratch} WHERE name = ${name}`
      yield* check(writes!.writes === modelWrites, `fenced writes ${writes!.writes} != model ${modelWrites}`)
    }
  })
