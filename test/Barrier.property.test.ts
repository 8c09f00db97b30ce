/**
 * Fan-in barriers under random interleavings, against a reference model, on a real Postgres. A few executions
 * of a few batches each; then a generated sequence of what workers, operators and the reaper do to them: claim
 * a batch, complete or discard it, let its lease expire (its old attempt completes late, as a zombie), deliver a
 * duplicate of it, fail it for good, stop the execution, start it again, expire its barrier, run its callback,
 * and race two of these on two connections. Jobs go through the worker's own code: `dispositionOf` decides
 * whether a claimed job runs, and `makeSettlement` records every outcome (a spy on the Barrier and Queue it is
 * given reports what they answered).
 *
 * After every step the database must match the model (barrier rows, markers and their results, every batch
 * message and its claim, callbacks and their payloads, statuses, dead letters), and these hold whatever the
 * model says: a terminal execution has no barrier row; a live barrier's `remaining` is its total minus its
 * markers, and some batch of it without a marker is still pending or held; an execution never gets a second
 * callback; a callback's results are complete and in batch order. At the end everything is drained (held
 * attempts settled, what is left claimed and completed, callbacks run): every execution must then be terminal,
 * without a barrier row or a job, with exactly one callback iff all its batches were counted before it ended.
 *
 * A failure shrinks to a short sequence and prints its trace (test/property.ts says how to replay it).
 */
import { describe, expect, layer } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Option, References, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { isDeepStrictEqual } from "node:util"
import { Barrier, type CompleteResult, type StartOptions } from "../src/Barrier.ts"
import { type ExecutionStatus, isTerminal, type Status } from "../src/ExecutionStatus.ts"
import { makeLeaderLease } from "../src/LeaderLease.ts"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import { type ClaimedJob, Queue } from "../src/Queue.ts"
import { makeTick, type ReaperOptions } from "../src/Reaper.ts"
import { type Disposition, dispositionOf, makeSettlement } from "../src/Settlement.ts"
import * as Task from "../src/Task.ts"
import { Index, makeTrace, type PropertyViolation, sequenceOptions, Steps, Weighted } from "./property.ts"
import { TestSchema, testDb } from "./support.ts"

const MAX_EXECUTIONS = 3
const MAX_BATCHES = 5
const MAX_STEPS = 40
const RUNS = 100
/**
 * Attempts of a batch: low, so that redelivered batches are rejected (attempt > max_attempts) within a
 * sequence; batch 1 has a single attempt, so its first redelivery is rejected.
 */
const maxAttemptsOf = (batch: number) => batch === 1 ? 1 : 2
const LEASE = 30
const TTL = 3600
const ORG = "org"

// The operations. An op names an execution (modulo how many there are), and a held attempt or a batch by
// index; an op that cannot act (nothing held, no such batch) is skipped and says so in the trace.
const Exec = Index(MAX_EXECUTIONS)
/** One of the attempts the test holds for the execution, oldest first (modulo how many it holds). */
const Pick = Index(4)
const BarrierOp = Weighted([
  // A worker claims the execution's next batch job; it runs, or is skipped or rejected as a worker decides.
  [6, Schema.TaggedStruct("Claim", { exec: Exec })],
  // A held attempt's batch succeeded (or failed with "discard": it counts, with a null result).
  [6, Schema.TaggedStruct("Complete", { exec: Exec, pick: Pick })],
  [1, Schema.TaggedStruct("Discard", { exec: Exec, pick: Pick })],
  // A held attempt's lease runs out and is re-armed: the attempt lives on as a zombie, a claim gets a new one.
  [3, Schema.TaggedStruct("Redeliver", { exec: Exec, pick: Pick })],
  // Another message of the same batch (a replayed dead letter, a double enqueue), claimed at once.
  [2, Schema.TaggedStruct("Duplicate", { exec: Exec, batch: Index(MAX_BATCHES) })],
  // A held attempt's batch fails for good: dead-lettered, and its execution aborted.
  [2, Schema.TaggedStruct("FailForGood", { exec: Exec, pick: Pick })],
  [1, Schema.TaggedStruct("Stop", { exec: Exec })],
  // The orchestrator is delivered again: the execution must not fan out twice.
  [1, Schema.TaggedStruct("StartAgain", { exec: Exec })],
  // The barrier's expires_at passes (its TTL elapses on the server clock): it is stranded.
  [2, Schema.TaggedStruct("Expire", { exec: Exec })],
  // A reaper tick (a newly elected leader): stranded barriers are recovered (marked ERROR and removed).
  [2, Schema.TaggedStruct("Tick", {})],
  // A worker claims the execution's callback and runs it.
  [2, Schema.TaggedStruct("CallbackRun", { exec: Exec })],
  // A held attempt completes while, on another connection, the next held attempt completes or fails for
  // good, or the execution is stopped, or a reaper tick runs. The outcome must be that of one of the two
  // serial orders (or, for a tick, of the tick skipping the barrier whose row the completion holds).
  [3, Schema.TaggedStruct("Race", { exec: Exec, pick: Pick, with: Schema.Literals(["complete", "fail", "stop", "tick"]) })]
])
type BarrierOp = typeof BarrierOp.Type
const BarrierOps = Steps(BarrierOp, MAX_STEPS)
/** The batch counts of the executions started before the sequence. */
const Executions = Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: MAX_BATCHES })))
  .check(Schema.isMinLength(1), Schema.isMaxLength(MAX_EXECUTIONS))

// ---------------------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------------------

interface ModelMessage {
  readonly msgId: string
  readonly batch: number
  readonly priority: number
  state: "ready" | "claimed"
  token: string | null
  readCt: number
}

interface Execution {
  readonly index: number
  readonly id: string
  readonly total: number
  readonly queue: string
  readonly callbackQueue: string
  readonly spec: StartOptions
  /** The barrier row exists. */
  live: boolean
  /** Its expires_at has passed. */
  expired: boolean
  /** Batches counted while the barrier was live. */
  readonly counted: Set<number>
  /** Its barrier_batch rows: batch index -> stored result (counted, or left by an abandoned completion). */
  readonly markers: Map<number, unknown>
  status: Status
  /** What ended it (stop, abort, callback): the first terminal mark. */
  endedBy: string | null
  /** Batch messages (duplicates included) by msg_id. */
  readonly messages: Map<string, ModelMessage>
  /** Attempts the test holds (a worker is running them), oldest first; one no longer current is a zombie. */
  held: Array<ClaimedJob>
  /** The results the callback must carry, once it fired. */
  callbackResults: ReadonlyArray<unknown> | null
  callbacksQueued: number
  callbacksRun: number
  deadLetters: number
}

const byMsgId = (a: { readonly msgId: string }, b: { readonly msgId: string }) =>
  BigInt(a.msgId) < BigInt(b.msgId) ? -1 : BigInt(a.msgId) > BigInt(b.msgId) ? 1 : 0

/** The claim order: priority first, then msg_id. */
const byClaimOrder = (a: ModelMessage, b: ModelMessage) => b.priority - a.priority || byMsgId(a, b)

const readyOf = (x: Execution) => [...x.messages.values()].filter((m) => m.state === "ready").sort(byClaimOrder)

/** The message an attempt holds, if the attempt is still current (its fence matches). */
const currentMessage = (x: Execution, job: ClaimedJob) => {
  const m = x.messages.get(job.msgId)
  return m !== undefined && m.state === "claimed" && m.token === job.token ? m : undefined
}

const label = (job: ClaimedJob) => `b${job.batchIndex} m${job.msgId} attempt ${job.attempt}`

/** The result a batch attempt reports: its batch, message and attempt, so a callback shows whose result it kept. */
const resultOf = (job: ClaimedJob) => `b${job.batchIndex}/m${job.msgId}/a${job.attempt}`

/** The worker lets go of an attempt (by its claim token: the model may be a copy). */
const letGo = (x: Execution, job: ClaimedJob) => {
  x.held = x.held.filter((h) => h.token !== job.token)
}

/** A terminal status is final (the status store's contract). */
const mark = (x: Execution, target: Status, by: string) => {
  if (isTerminal(x.status)) return
  x.status = target
  x.endedBy = by
}

/**
 * Barrier.stop / abort: only a live barrier ends (an execution whose barrier is gone — ended, or its callback
 * fired — is left alone), and an abort for a batch that was already counted (a failing duplicate) does
 * nothing; otherwise mark, drop the barrier row, remove the batch jobs nobody holds.
 */
const modelEnd = (x: Execution, target: "ERROR" | "STOPPED", by: string, batch?: number) => {
  if (!x.live || (batch !== undefined && x.markers.has(batch) && x.counted.has(batch))) return "already-ended"
  mark(x, target, by)
  x.live = false
  for (const m of [...x.messages.values()]) if (m.state !== "claimed") x.messages.delete(m.msgId)
  return "ended"
}

/** Barrier.complete of a held attempt: what it must answer, and what it must do. */
const modelComplete = (x: Execution, job: ClaimedJob, result: unknown): CompleteResult => {
  letGo(x, job)
  const m = currentMessage(x, job)
  if (m === undefined) return "stale"
  x.messages.delete(m.msgId)
  const batch = job.batchIndex!
  if (x.markers.has(batch)) return "duplicate"
  x.markers.set(batch, result)
  if (!x.live) return "abandoned"
  x.counted.add(batch)
  if (x.counted.size < x.total) return "pending"
  x.live = false
  x.callbackResults = Array.from({ length: x.total }, (_, i) => x.markers.get(i))
  x.callbacksQueued++
  return "complete"
}

/**
 * The reaper recovers a stranded (expired) barrier: its execution is live, so it is marked ERROR, and the
 * barrier and its markers are deleted; batch jobs stay (a claim finds the barrier gone and skips them). Every
 * batch counted (`remaining == 0`) would heal instead, but a live barrier never gets there: the last batch
 * fires the callback in its own transaction.
 */
const modelRecover = (x: Execution) => {
  if (!x.live || !x.expired) return
  mark(x, "ERROR", "recovery")
  x.live = false
  x.markers.clear()
}

/** A held attempt fails for good (Settlement: Queue.fail dead-letters it, then Barrier.abort). */
const modelFail = (x: Execution, job: ClaimedJob): ReadonlyArray<string> => {
  letGo(x, job)
  const m = currentMessage(x, job)
  if (m === undefined) return ["fail stale"]
  x.messages.delete(m.msgId)
  x.deadLetters++
  return ["fail dead-lettered", `abort ${modelEnd(x, "ERROR", `abort (b${job.batchIndex} failed)`, job.batchIndex!)}`]
}

/** One side of a race: what it does, and what the model expects it to answer (applied to a copy). */
interface Contender {
  readonly run: Effect.Effect<ReadonlyArray<string>, unknown>
  readonly model: (x: Execution) => ReadonlyArray<string>
}

interface RaceOutcome {
  readonly index: number
  /** Models of the serial orders that fit the answers. */
  readonly candidates: ReadonlyArray<Execution>
  readonly orders: ReadonlyArray<string>
}

/**
 * What a drain still has to do for an execution, as the next op; undefined when it is done. Two workers
 * drain it: held attempts complete in pairs, at once (the last two batches race for the callback).
 */
const drainStep = (x: Execution): BarrierOp | undefined => {
  if (x.held.length >= 2) return { _tag: "Race", exec: x.index, pick: 0, with: "complete" }
  if (readyOf(x).length > 0) return { _tag: "Claim", exec: x.index }
  if (x.held.length > 0) return { _tag: "Complete", exec: x.index, pick: 0 }
  if (x.callbacksQueued > 0) return { _tag: "CallbackRun", exec: x.index }
  return undefined
}

const summary = (x: Execution) =>
  JSON.stringify({
    live: x.live,
    expired: x.expired,
    status: x.status,
    endedBy: x.endedBy,
    counted: [...x.counted].sort(),
    markers: [...x.markers.keys()].sort(),
    messages: [...x.messages.values()].sort(byMsgId).map((m) => `m${m.msgId}:b${m.batch}:${m.state}:${m.readCt}`),
    held: x.held.map(label),
    callbacks: { queued: x.callbacksQueued, run: x.callbacksRun }
  })

// ---------------------------------------------------------------------------------------------------------
// The system under test, and the database as the checks see it
// ---------------------------------------------------------------------------------------------------------

interface DbState {
  readonly barriers: ReadonlyArray<{ id: string; total: number; remaining: number; expired: boolean }>
  readonly markers: ReadonlyArray<{ id: string; batch: number; result: unknown }>
  readonly messages: ReadonlyArray<{
    id: string
    msgId: string
    batch: number | null
    state: string
    token: string | null
    readCt: number
    payload: unknown
  }>
  readonly statuses: ReadonlyArray<{ id: string; status: Status }>
  readonly dead: ReadonlyArray<{ id: string; batch: number | null }>
}

/** Where the spies write what the Barrier and Queue answered during one settlement. */
const Answers = Context.Reference<Array<string>>("test/Barrier.property/Answers", { defaultValue: () => [] })

/** Every answer seen in the search, counted: the coverage test below reads it. */
const seen = new Map<string, number>()
const see = (line: string) => void seen.set(line, (seen.get(line) ?? 0) + 1)

const setup = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const { schema } = yield* TestSchema
  const queue = yield* Queue
  const barrier = yield* Barrier
  const t = (name: string) => sql(`${schema}.${name}`)

  const snapshot = (ids: ReadonlyArray<string>) =>
    sql<{ state: DbState }>`
      SELECT jsonb_build_object(
        'barriers', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', execution_id, 'total', total,
                       'remaining', remaining, 'expired', expires_at < now())), '[]')
                     FROM ${t("barrier")} WHERE execution_id = ANY(${ids}::text[])),
        'markers', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', execution_id, 'batch', batch_index,
                      'result', result) ORDER BY batch_index), '[]')
                    FROM ${t("barrier_batch")} WHERE execution_id = ANY(${ids}::text[])),
        'messages', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', execution_id, 'msgId', msg_id::text,
                       'batch', batch_index, 'state', state, 'token', claim_token::text, 'readCt', read_ct,
                       'payload', CASE WHEN batch_index IS NULL THEN payload END) ORDER BY msg_id), '[]')
                     FROM ${t("message")} WHERE execution_id = ANY(${ids}::text[])),
        'statuses', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', execution_id, 'status', status)), '[]')
                     FROM ${t("execution")} WHERE execution_id = ANY(${ids}::text[])),
        'dead', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', execution_id, 'batch', batch_index)), '[]')
                 FROM ${t("dead_letter")} WHERE execution_id = ANY(${ids}::text[]))
      ) AS state`.pipe(Effect.map((rows) => rows[0]!.state))

  /** The execution's batch jobs in msg_id order (right after its start: one per batch). */
  const batchJobs = (executionId: string) =>
    sql<{ msg_id: string; batch_index: number }>`
      SELECT msg_id::text AS msg_id, batch_index FROM ${t("message")}
      WHERE execution_id = ${executionId} ORDER BY msg_id`

  /** A claim's lease runs out: pushed into the past, then re-armed as the reaper or an idle worker does. */
  const expireClaim = (job: ClaimedJob) =>
    sql`UPDATE ${t("message")} SET vt = now() - interval '1 second'
        WHERE msg_id = ${job.msgId}::bigint AND claim_token = ${job.token}::uuid`.pipe(
      Effect.andThen(queue.rearmExpired({ queues: [job.queue] }))
    )

  /** The barrier's TTL elapses: both its timestamps move back (expires_at must stay after created_at). */
  const expireBarrier = (executionId: string) =>
    sql`UPDATE ${t("barrier")}
        SET created_at = created_at - ${TTL + 1} * interval '1 second',
            expires_at = expires_at - ${TTL + 1} * interval '1 second'
        WHERE execution_id = ${executionId} RETURNING 1`.pipe(Effect.map((rows) => rows.length))

  // A reaper tick as a newly elected leader: the lease freed, a fresh term, a fresh tick (its recovery pages
  // from the oldest stranded barrier, and one page holds whatever earlier sequences left behind).
  const leases = yield* makeLeaderLease({ schema })
  const reaper: ReaperOptions = {
    schema,
    maxAttempts: 2,
    leaseName: "reaper-prop",
    leaseSeconds: 30,
    intervalSeconds: 1,
    processStaleSeconds: 10,
    heartbeatSeconds: 1,
    deadLetterRetentionSeconds: 3600,
    recoveryLimit: 10_000
  }
  const services = yield* Effect.context<SqlClient.SqlClient | Queue | ExecutionStatus | ProcessRegistry>()
  const tick = Effect.gen(function*() {
    yield* sql`UPDATE ${t("lease")} SET holder = '', expires_at = now() WHERE name = 'reaper-prop'`
    const term = Option.getOrThrow(yield* leases.tryAcquire("reaper-prop", "prop-reaper", 30))
    const run = yield* makeTick(reaper)
    return yield* run({ name: "reaper-prop", holder: "prop-reaper", term, fence: leases.fence("reaper-prop", "prop-reaper", term) })
  }).pipe(Effect.provideContext(services))

  // The worker's settlement, over spies of the Barrier and the Queue it is given.
  const answer = (line: string) =>
    Effect.gen(function*() {
      const lines = yield* Answers
      lines.push(line)
    })
  const spiedBarrier: Barrier["Service"] = {
    ...barrier,
    complete: (attempt, result) => barrier.complete(attempt, result).pipe(Effect.tap((r) => answer(`complete ${r}`))),
    abort: (executionId, orgId, batchIndex, reason) =>
      barrier.abort(executionId, orgId, batchIndex, reason).pipe(Effect.tap((r) => answer(`abort ${r}`))),
    finish: (executionId, orgId, outcome) =>
      barrier.finish(executionId, orgId, outcome).pipe(
        Effect.tap((r) => answer(`finish ${r._tag === "Marked" ? r.status : r._tag}`))
      )
  }
  const spiedQueue: Queue["Service"] = {
    ...queue,
    fail: (attempt, options) => queue.fail(attempt, options).pipe(Effect.tap((r) => answer(`fail ${r}`)))
  }
  // The tasks only let a job run; what the run ends with is the next op's choice.
  const registry = Task.registry(
    Task.define({ name: "part", payload: Schema.Unknown, handler: () => Effect.succeed("ran") }),
    Task.define({ name: "gather", payload: Schema.Unknown, handler: () => Effect.succeed("gathered") })
  )
  const settle = makeSettlement({
    queue: spiedQueue,
    barrier: spiedBarrier,
    registry,
    unknownTaskGraceSeconds: 3600,
    ack: (attempt) => queue.ack(attempt).pipe(Effect.flatMap((acked) => answer(`ack ${acked}`)), Effect.orDie)
  })
  /** Settle as a worker does; answers what the spied Barrier and Queue said, in order. */
  const settleAs = (job: ClaimedJob, disposition: Disposition) =>
    Effect.suspend(() => {
      const lines: Array<string> = []
      return settle(job, disposition).pipe(
        Effect.provideService(Answers, lines),
        Effect.map(() => {
          lines.forEach(see)
          return lines as ReadonlyArray<string>
        })
      )
    })

  return {
    queue,
    barrier,
    snapshot,
    batchJobs,
    expireClaim,
    expireBarrier,
    settleAs,
    disposition: (job: ClaimedJob) => dispositionOf(registry, job),
    tick
  }
})

type Env = Effect.Success<typeof setup>

/** Every sequence (each run and each shrink candidate) gets execution ids and queues of its own. */
let sequences = 0

const startExecutions = (env: Env, run: number, sizes: ReadonlyArray<number>, trace: ReturnType<typeof makeTrace>) =>
  Effect.forEach(sizes, (total, index) =>
    Effect.gen(function*() {
      const id = `p${run}-e${index}`
      const queue = `p${run}e${index}`
      const spec: StartOptions = {
        executionId: id,
        orgId: ORG,
        batches: Array.from({ length: total }, (_, b) => ({ task: "part", payload: { b }, queue, maxAttempts: maxAttemptsOf(b) })),
        callback: { task: "gather", context: { execution: id }, queue: `${queue}-callback` }
      }
      const started = yield* env.barrier.start(spec)
      yield* trace.check(started._tag === "Started", `start e${index}: ${JSON.stringify(started)}`)
      const jobs = yield* env.batchJobs(id)
      trace.log(`start e${index}: ${total} batch(es) as m${jobs.map((j) => j.msg_id).join(",m")}`)
      const messages = jobs.map((j): [string, ModelMessage] => [
        j.msg_id,
        { msgId: j.msg_id, batch: j.batch_index, priority: 5, state: "ready", token: null, readCt: 0 }
      ])
      return {
        index,
        id,
        total,
        queue,
        callbackQueue: `${queue}-callback`,
        spec,
        live: true,
        expired: false,
        counted: new Set<number>(),
        markers: new Map<number, unknown>(),
        status: "EXECUTING",
        endedBy: null,
        messages: new Map(messages),
        held: [],
        callbackResults: null,
        callbacksQueued: 0,
        callbacksRun: 0,
        deadLetters: 0
      } satisfies Execution as Execution
    }))

const runSequence = (env: Env, sizes: ReadonlyArray<number>, ops: ReadonlyArray<BarrierOp>) =>
  Effect.gen(function*() {
    const { barrier, queue } = env
    const run = ++sequences
    const trace = makeTrace()
    const executions = yield* startExecutions(env, run, sizes, trace)
    const ids = executions.map((x) => x.id)

    const expectAnswers = (x: Execution, what: string, got: ReadonlyArray<string>, expected: ReadonlyArray<string>) =>
      trace.check(
        isDeepStrictEqual(got, expected),
        `e${x.index} ${what}: answered [${got.join(", ")}], the model expects [${expected.join(", ")}] (model ${summary(x)})`
      )

    /** The held attempt an op names; undefined when none is held. */
    const pickHeld = (x: Execution, pick: number) => x.held.length === 0 ? undefined : x.held[pick % x.held.length]!

    // --- ops ---------------------------------------------------------------------------------------------
    const claim = (x: Execution, why: string) =>
      Effect.gen(function*() {
        const expected = readyOf(x)[0]
        const [job, ...more] = yield* queue.claim({ queues: [x.queue], limit: 1, leaseSeconds: LEASE, processId: "prop" })
        yield* trace.check(more.length === 0, "claim(1) returned more than one job")
        if (job === undefined) {
          trace.log(`${why}e${x.index}: nothing to claim`)
          return yield* trace.check(expected === undefined, `e${x.index}: nothing claimed, but m${expected?.msgId} is ready`)
        }
        yield* trace.check(
          job.msgId === expected?.msgId,
          `e${x.index}: claimed m${job.msgId}, the model expects ${expected === undefined ? "nothing" : `m${expected.msgId}`}`
        )
        const m = expected!
        yield* trace.check(job.attempt === m.readCt + 1, `claim of m${m.msgId}: attempt ${job.attempt}, expected ${m.readCt + 1}`)
        yield* trace.check(job.batchIndex === m.batch && job.executionId === x.id, `claim of m${m.msgId}: wrong barrier context`)
        yield* trace.check(
          job.barrierLive === x.live,
          `claim of m${m.msgId}: barrierLive ${job.barrierLive}, but the barrier is ${x.live ? "live" : "gone"}`
        )
        m.state = "claimed"
        m.token = job.token
        m.readCt = job.attempt
        const disposition = yield* env.disposition(job)
        see(`claim ${disposition._tag}`)
        switch (disposition._tag) {
          case "Succeeded": {
            trace.log(`${why}e${x.index}: claim ${label(job)}, runs`)
            x.held.push(job)
            return
          }
          case "Skipped": {
            const answers = yield* env.settleAs(job, disposition)
            trace.log(`${why}e${x.index}: claim ${label(job)}, skipped (the barrier is gone) -> ${answers.join(", ")}`)
            x.messages.delete(m.msgId)
            return yield* expectAnswers(x, "skip", answers, ["ack true"])
          }
          case "Rejected": {
            yield* trace.check(job.attempt > maxAttemptsOf(m.batch), `e${x.index}: ${label(job)} rejected: ${disposition.reason}`)
            const answers = yield* env.settleAs(job, disposition)
            trace.log(`${why}e${x.index}: claim ${label(job)}, rejected (attempts used up) -> ${answers.join(", ")}`)
            x.messages.delete(m.msgId)
            x.deadLetters++
            const ended = modelEnd(x, "ERROR", `abort (b${m.batch} rejected)`, m.batch)
            return yield* expectAnswers(x, "reject", answers, [`abort ${ended}`])
          }
          default:
            return yield* trace.fail(`e${x.index}: ${label(job)} got the disposition ${JSON.stringify(disposition)}`)
        }
      })

    /**
     * Run `a` and `b` at once. Their answers and the database must be those of `a` then `b`, or of `b` then
     * `a` — or, when `b` may pass over a row `a` holds (a reaper tick: SKIP LOCKED), of `a` alone. Answers the
     * models that fit the answers, for `step` to check against the database.
     */
    const race = (
      x: Execution,
      what: string,
      a: Contender,
      b: Contender & { readonly mayPassOver?: boolean }
    ) =>
      Effect.gen(function*() {
        const got = yield* Effect.all([a.run, b.run], { concurrency: "unbounded" })
        const orders = ["a then b", "b then a", ...(b.mayPassOver === true ? ["a alone"] : [])]
        const serial = orders.map((order) => {
          const model: Execution = structuredClone(x)
          if (order === "a then b") return { order, model, answers: [a.model(model), b.model(model)] }
          if (order === "a alone") return { order, model, answers: [a.model(model), got[1]] }
          const second = b.model(model)
          return { order, model, answers: [a.model(model), second] }
        })
        const fits = serial.filter((s) => isDeepStrictEqual(s.answers, got))
        trace.log(`${what} -> [${got[0].join(", ")}] | [${got[1].join(", ")}] (as if ${fits.map((s) => s.order).join(" or ") || "no serial order"})`)
        if (fits.length === 0) {
          return yield* trace.fail(
            `e${x.index} ${what}: the answers fit no serial order: ` +
              serial.map((s) => `${s.order} answers ${JSON.stringify(s.answers)}`).join("; ") +
              ` (model before the race ${summary(x)})`
          )
        }
        return { index: x.index, candidates: fits.map((s) => s.model), orders: fits.map((s) => s.order) } satisfies RaceOutcome
      })

    /** Recover every stranded barrier of the sequence but `except`'s (a tick recovers them all). */
    const recoverAll = (except?: Execution) => {
      for (const y of executions) if (y.index !== except?.index) modelRecover(y)
    }

    const tickAnswers = (outcome: Effect.Success<typeof env.tick>, stranded: number) =>
      trace.check(
        outcome.failures.length === 0 && outcome.recoveryFailures === 0 && outcome.recovered >= stranded,
        `reaper tick ${JSON.stringify(outcome)}: expected ${stranded} recovered (or more: left-overs of failed sequences)`
      )

    /** Apply one op to the database and to the model; a race answers the models it may have produced. */
    const apply = (op: BarrierOp, why: string) =>
      Effect.gen(function*(): Effect.fn.Return<RaceOutcome | undefined, unknown> {
        if (op._tag === "Tick") {
          const stranded = executions.filter((y) => y.live && y.expired)
          const outcome = yield* env.tick
          trace.log(`${why}reaper tick: recovered ${outcome.recovered}, healed ${outcome.healed}`)
          recoverAll()
          see(`tick recovered ${stranded.length > 0}`)
          yield* tickAnswers(outcome, stranded.length)
          return
        }
        const x = executions[op.exec % executions.length]!
        switch (op._tag) {
          case "Claim":
            yield* claim(x, why)
            return
          case "Complete":
          case "Discard": {
            const job = pickHeld(x, op.pick)
            if (job === undefined) return trace.log(`${why}e${x.index} ${op._tag} skipped: nothing held`)
            const zombie = currentMessage(x, job) === undefined ? " (zombie)" : ""
            const result = op._tag === "Complete" ? resultOf(job) : null
            const answers = yield* env.settleAs(
              job,
              op._tag === "Complete"
                ? { _tag: "Succeeded", result }
                : { _tag: "Failed", action: "discard", error: "discarded by the test" }
            )
            trace.log(`${why}e${x.index}: ${op._tag.toLowerCase()} ${label(job)}${zombie} -> ${answers.join(", ")}`)
            yield* expectAnswers(x, `${op._tag} of ${label(job)}`, answers, [`complete ${modelComplete(x, job, result)}`])
            return
          }
          case "Redeliver": {
            const job = pickHeld(x, op.pick)
            if (job === undefined) return trace.log(`${why}e${x.index} Redeliver skipped: nothing held`)
            const m = currentMessage(x, job)
            if (m === undefined) return trace.log(`${why}e${x.index} Redeliver skipped: ${label(job)} is a zombie already`)
            const rearmed = yield* env.expireClaim(job)
            trace.log(`${why}e${x.index}: the lease of ${label(job)} runs out, re-armed ${rearmed} (the attempt runs on, a zombie)`)
            yield* trace.check(rearmed === 1, `e${x.index}: re-armed ${rearmed} claims, expected 1`)
            m.state = "ready"
            m.token = null
            return
          }
          case "Duplicate": {
            if (op.batch >= x.total) return trace.log(`${why}e${x.index} Duplicate skipped: no batch ${op.batch}`)
            // Priority 10: the claim right after takes it.
            const msgId = yield* queue.enqueue("part", { b: op.batch, duplicate: true }, {
              queue: x.queue,
              priority: 10,
              orgId: ORG,
              executionId: x.id,
              batchIndex: op.batch,
              maxAttempts: maxAttemptsOf(op.batch)
            })
            trace.log(`${why}e${x.index}: a duplicate of b${op.batch} arrives as m${msgId}`)
            x.messages.set(msgId, { msgId, batch: op.batch, priority: 10, state: "ready", token: null, readCt: 0 })
            yield* claim(x, why)
            return
          }
          case "FailForGood": {
            const job = pickHeld(x, op.pick)
            if (job === undefined) return trace.log(`${why}e${x.index} FailForGood skipped: nothing held`)
            const zombie = currentMessage(x, job) === undefined ? " (zombie)" : ""
            const answers = yield* env.settleAs(job, { _tag: "Failed", action: "dead-letter", error: "failed for good" })
            trace.log(`${why}e${x.index}: ${label(job)}${zombie} fails for good -> ${answers.join(", ")}`)
            yield* expectAnswers(x, `failure of ${label(job)}`, answers, modelFail(x, job))
            return
          }
          case "Stop": {
            const result = yield* barrier.stop(x.id)
            see(`stop ${result}`)
            trace.log(`${why}e${x.index}: stop -> ${result}`)
            yield* expectAnswers(x, "stop", [result], [modelEnd(x, "STOPPED", "stop")])
            return
          }
          case "StartAgain": {
            const result = yield* barrier.start(x.spec)
            trace.log(`${why}e${x.index}: started again -> ${result._tag}`)
            yield* trace.check(result._tag === "AlreadyStarted", `e${x.index}: a second start answered ${result._tag}`)
            return
          }
          case "Expire": {
            const n = yield* env.expireBarrier(x.id)
            trace.log(`${why}e${x.index}: the barrier's TTL elapses (${n} row)`)
            yield* trace.check(n === (x.live ? 1 : 0), `e${x.index}: expired ${n} barrier rows`)
            if (x.live) x.expired = true
            return
          }
          case "CallbackRun": {
            const [job] = yield* queue.claim({ queues: [x.callbackQueue], limit: 1, leaseSeconds: LEASE, processId: "prop" })
            if (job === undefined) {
              trace.log(`${why}e${x.index}: no callback to run`)
              yield* trace.check(x.callbacksQueued === 0, `e${x.index}: the callback enqueued is not claimable`)
              return
            }
            yield* trace.check(x.callbacksQueued > 0, `e${x.index}: claimed a callback the model never fired`)
            yield* trace.check(
              isDeepStrictEqual(job.payload, { executionId: x.id, results: x.callbackResults, context: { execution: x.id } }),
              `e${x.index}: callback payload ${JSON.stringify(job.payload)}, expected results ${JSON.stringify(x.callbackResults)}`
            )
            const answers = yield* env.settleAs(job, yield* env.disposition(job))
            x.callbacksQueued--
            x.callbacksRun++
            mark(x, "COMPLETED", "callback")
            trace.log(`${why}e${x.index}: the callback runs -> ${answers.join(", ")}`)
            yield* expectAnswers(x, "callback", answers, [`finish ${x.status}`, "ack true"])
            return
          }
          case "Race": {
            const first = pickHeld(x, op.pick)
            if (first === undefined) return trace.log(`${why}e${x.index} Race skipped: nothing held`)
            const completes = {
              run: env.settleAs(first, { _tag: "Succeeded", result: resultOf(first) }),
              model: (m: Execution) => [`complete ${modelComplete(m, first, resultOf(first))}`]
            }
            if (op.with === "stop") {
              return yield* race(x, `${why}e${x.index}: race: complete ${label(first)} || stop`, completes, {
                run: barrier.stop(x.id).pipe(Effect.map((r) => [`stop ${r}`])),
                model: (m) => [`stop ${modelEnd(m, "STOPPED", "stop")}`]
              })
            }
            if (op.with === "tick") {
              const stranded = executions.filter((y) => y.live && y.expired).length
              const outcome = yield* race(x, `${why}e${x.index}: race: complete ${label(first)} || reaper tick`, completes, {
                run: env.tick.pipe(
                  Effect.tap((o) => tickAnswers(o, stranded - (x.live && x.expired ? 1 : 0))),
                  Effect.as([])
                ),
                model: (m) => {
                  modelRecover(m)
                  return []
                },
                mayPassOver: true
              })
              recoverAll(x)
              return outcome
            }
            if (x.held.length < 2) return trace.log(`${why}e${x.index} Race skipped: only one attempt held`)
            const second = x.held[(op.pick + 1) % x.held.length]!
            return yield* race(
              x,
              `${why}e${x.index}: race: complete ${label(first)} || ${op.with === "fail" ? "fail for good" : "complete"} ${label(second)}`,
              completes,
              op.with === "fail"
                ? {
                  run: env.settleAs(second, { _tag: "Failed", action: "dead-letter", error: "failed for good" }),
                  model: (m) => modelFail(m, second)
                }
                : {
                  run: env.settleAs(second, { _tag: "Succeeded", result: resultOf(second) }),
                  model: (m) => [`complete ${modelComplete(m, second, resultOf(second))}`]
                }
            )
          }
        }
      })

    // --- checks ------------------------------------------------------------------------------------------
    const verifyOne = (x: Execution, db: DbState) =>
      Effect.gen(function*() {
        const check = (ok: boolean, what: string) => trace.check(ok, `e${x.index}: ${what} (model ${summary(x)})`)
        const row = db.barriers.find((b) => b.id === x.id)
        const markers = db.markers.filter((m) => m.id === x.id)
        const messages = db.messages.filter((m) => m.id === x.id)
        const batches = messages.filter((m) => m.batch !== null)
        const callbacks = messages.filter((m) => m.batch === null)
        const status = db.statuses.find((s) => s.id === x.id)?.status

        // The barrier's invariants, whatever the model says.
        yield* check(!(row !== undefined && status !== undefined && isTerminal(status)), `${status} with a barrier row`)
        if (row !== undefined) {
          yield* check(
            row.remaining === row.total - markers.length,
            `remaining ${row.remaining} is not total ${row.total} - ${markers.length} markers`
          )
          const marked = new Set(markers.map((m) => m.batch))
          yield* check(batches.some((m) => !marked.has(m.batch!)), "stranded: no batch without a marker is pending or held")
        }
        yield* check(callbacks.length + x.callbacksRun <= 1, `${callbacks.length + x.callbacksRun} callbacks`)
        for (const cb of callbacks) {
          const results = (cb.payload as { results?: ReadonlyArray<unknown> }).results ?? []
          yield* check(
            results.length === x.total &&
              results.every((r, i) => r === null || (typeof r === "string" && r.startsWith(`b${i}/`))),
            `callback results incomplete or out of order: ${JSON.stringify(results)}`
          )
        }

        // The database is the model.
        yield* check((row !== undefined) === x.live, `barrier row ${row === undefined ? "gone" : "present"}`)
        if (row !== undefined) {
          yield* check(
            row.total === x.total && row.remaining === x.total - x.counted.size && row.expired === x.expired,
            `barrier row ${JSON.stringify(row)}`
          )
        }
        const expectedMarkers = [...x.markers.entries()].sort(([a], [b]) => a - b).map(([batch, result]) => ({ batch, result }))
        yield* check(
          isDeepStrictEqual(markers.map((m) => ({ batch: m.batch, result: m.result })), expectedMarkers),
          `markers ${JSON.stringify(markers.map((m) => [m.batch, m.result]))}`
        )
        const expectedBatches = [...x.messages.values()].sort(byMsgId)
          .map(({ msgId, batch, state, token, readCt }) => ({ msgId, batch, state, token, readCt }))
        yield* check(
          isDeepStrictEqual(batches.map(({ msgId, batch, state, token, readCt }) => ({ msgId, batch, state, token, readCt })), expectedBatches),
          `batch jobs ${JSON.stringify(batches.map((m) => `m${m.msgId}:b${m.batch}:${m.state}:${m.readCt}`))}`
        )
        yield* check(callbacks.length === x.callbacksQueued, `${callbacks.length} callback job(s) queued`)
        for (const cb of callbacks) {
          yield* check(
            isDeepStrictEqual(cb.payload, { executionId: x.id, results: x.callbackResults, context: { execution: x.id } }),
            `callback payload ${JSON.stringify(cb.payload)}`
          )
        }
        yield* check(status === x.status, `status ${status}`)
        yield* check(db.dead.filter((d) => d.id === x.id).length === x.deadLetters, "dead letters")
      })

    /** Apply, then check every execution; after a race, the first serial order the database agrees with. */
    const step = (op: BarrierOp, why: string) =>
      Effect.gen(function*() {
        const raced = yield* apply(op, why)
        const db = yield* env.snapshot(ids)
        for (const x of executions) if (x.index !== raced?.index) yield* verifyOne(x, db)
        if (raced === undefined) return
        const failures: Array<PropertyViolation> = []
        for (const [i, candidate] of raced.candidates.entries()) {
          const exit = yield* Effect.exit(verifyOne(candidate, db))
          if (Exit.isSuccess(exit)) {
            executions[raced.index] = candidate
            see(`race ${raced.orders[i]}`)
            return
          }
          failures.push(...(exit.cause.reasons.flatMap((r) => r._tag === "Fail" ? [r.error] : [])))
        }
        return yield* Effect.fail(failures[0]!)
      })

    for (const op of ops) yield* step(op, "")

    // --- drain: settle what is held, claim and complete what is left, run the callbacks -----------------
    for (const index of executions.keys()) {
      for (let n = 0;; n++) {
        const next = drainStep(executions[index]!)
        if (next === undefined) break
        yield* trace.check(n < 100, `e${index}: the drain does not end`)
        yield* step(next, "drain: ")
      }
    }
    const db = yield* env.snapshot(ids)
    for (const x of executions) {
      const check = (ok: boolean, what: string) => trace.check(ok, `after the drain, e${x.index}: ${what} (model ${summary(x)})`)
      const status = db.statuses.find((s) => s.id === x.id)?.status
      yield* check(status !== undefined && isTerminal(status), `status ${status} is not terminal`)
      yield* check(!db.barriers.some((b) => b.id === x.id), "its barrier row outlived it")
      yield* check(!db.messages.some((m) => m.id === x.id), "jobs are left")
      const allCounted = x.counted.size === x.total
      yield* check(
        x.callbacksRun === (allCounted ? 1 : 0),
        `${x.callbacksRun} callback(s) ran, but ${allCounted ? "every" : `only ${x.counted.size} of ${x.total}`} batch(es) were counted before it ended`
      )
    }
  })

/** Outcomes a search of RUNS sequences reaches every time (seen over many seeds with a wide margin). */
const MUST_SEE = [
  "complete pending",
  "complete complete",
  "complete duplicate",
  "complete abandoned",
  "complete stale",
  "fail dead-lettered",
  "abort ended",
  "claim Skipped",
  "stop ended",
  "stop already-ended",
  "finish COMPLETED",
  "race a then b",
  "tick recovered true"
]

/** The test database with the process registry a reaper tick needs. */
const db = Layer.unwrap(TestSchema.use(({ schema }) => Effect.succeed(ProcessRegistry.layer(schema)))).pipe(
  Layer.provideMerge(testDb("barrier_prop", { maxConnections: 8 }))
)

layer(db, { excludeTestServices: true })("Barrier", (it) => {
  describe("property: random interleavings against a reference model", () => {
    it.effect.prop(
      `${RUNS} sequences of up to ${MAX_STEPS} steps over 1-${MAX_EXECUTIONS} executions keep every invariant`,
      { executions: Executions, ops: BarrierOps },
      ({ executions, ops }) =>
        Effect.flatMap(setup, (env) => runSequence(env, executions, ops)).pipe(
          // Settlement narrates skips and failures; the trace says it better.
          Effect.provideService(References.MinimumLogLevel, "None")
        ),
      sequenceOptions({ runs: RUNS, maxSteps: MAX_STEPS, timeout: 120_000 })
    )

    // A search that never reached an outcome proves nothing about it (a replay runs one case: nothing to say).
    it.effect.skipIf(process.env.PGQ_PROP_REPLAY !== undefined)("the search reached every outcome", () =>
      Effect.sync(() => {
        if (sequences === 0) return // the property was filtered out
        expect(MUST_SEE.filter((outcome) => !seen.has(outcome))).toEqual([])
      }))
  })
})
