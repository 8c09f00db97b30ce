import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Ref, Schedule, Schema, Scope } from "effect"
import { SqlClient } from "effect/sql"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import { Queue } from "../src/Queue.ts"
import * as Task from "../src/Task.ts"
import { pollSchedule, Worker, type WorkerOptions } from "../src/Worker.ts"
import { TestSchema, testDb } from "./support.ts"

class Flaky extends Schema.TaggedError<Flaky>()("Flaky", { attempt: Schema.Number }) {}
class Fatal extends Schema.TaggedError<Fatal>()("Fatal", { why: Schema.String }) {}

const options = (schema: string, queue: string, overrides: Partial<WorkerOptions> = {}): WorkerOptions => ({
  schema,
  queues: [queue],
  concurrency: 4,
  leaseSeconds: 30,
  maxAttempts: 5,
  pollIntervalMs: 10,
  pollMaxMs: 50,
  shutdownGraceSeconds: 5,
  heartbeatSeconds: 1,
  processStaleSeconds: 5,
  ...overrides
})

/** Run a worker for the duration of `body`, in a scope of its own. */
const withWorker = <R, A, E, R2>(
  registry: Task.TaskRegistry<R>,
  opts: (schema: string) => WorkerOptions,
  body: Effect.Effect<A, E, R2>
) =>
  Effect.gen(function*() {
    const { schema } = yield* TestSchema
    return yield* body.pipe(
      Effect.provide(Worker.layer(registry, opts(schema)).pipe(Layer.provide(ProcessRegistry.layer(schema))))
    )
  })

const rows = (where: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    return yield* sql.unsafe<{ msg_id: string; state: string; read_ct: number; vt: Date | null; last_error: string | null }>(
      `SELECT msg_id::text AS msg_id, state, read_ct, vt, last_error FROM "${schema}".message WHERE ${where} ORDER BY msg_id`
    )
  })

const deadLetters = (queue: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    return yield* sql.unsafe<{ task: string; last_error: string; read_ct: number }>(
      `SELECT task, last_error, read_ct FROM "${schema}".dead_letter WHERE queue = '${queue}' ORDER BY msg_id`
    )
  })

/** Poll a condition (database state) until it holds; the test's own timeout bounds it. */
const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, until: (a: A) => boolean) =>
  check.pipe(Effect.repeat({ schedule: Schedule.spaced("20 millis"), until }))

layer(testDb("worker", { maxConnections: 12 }), { excludeTestServices: true })("Worker", (it) => {
  it.effect("runs every job exactly once and acks it", () =>
    Effect.gen(function*() {
      const seen = yield* Ref.make<ReadonlyArray<number>>([])
      const echo = Task.define({
        name: "echo",
        payload: Schema.Struct({ n: Schema.Number }),
        handler: ({ n }) => Ref.update(seen, (xs) => [...xs, n])
      })
      const q = yield* Queue
      yield* q.enqueueMany(Array.from({ length: 60 }, (_, n) => ({ task: "echo", payload: { n }, options: { queue: "run" } })))
      yield* withWorker(
        Task.registry(echo),
        (schema) => options(schema, "run"),
        eventually(rows("queue = 'run'"), (r) => r.length === 0)
      )
      const ran = yield* Ref.get(seen)
      expect([...ran].sort((a, b) => a - b)).toEqual(Array.from({ length: 60 }, (_, n) => n))
    }))

  it.effect("a typed failure retries with backoff until it succeeds", () =>
    Effect.gen(function*() {
      const attempts = yield* Ref.make<ReadonlyArray<number>>([])
      const flaky = Task.define({
        name: "flaky",
        payload: Schema.Struct({}),
        backoff: { baseSeconds: 0.05, maxSeconds: 0.1 },
        handler: (_payload, job) =>
          Ref.update(attempts, (xs) => [...xs, job.attempt]).pipe(
            Effect.andThen(job.attempt < 3 ? Effect.fail(new Flaky({ attempt: job.attempt })) : Effect.void)
          )
      })
      const q = yield* Queue
      yield* q.enqueue("flaky", {}, { queue: "flaky" })
      yield* withWorker(
        Task.registry(flaky),
        (schema) => options(schema, "flaky"),
        eventually(rows("queue = 'flaky'"), (r) => r.length === 0)
      )
      expect(yield* Ref.get(attempts)).toEqual([1, 2, 3])
      expect(yield* deadLetters("flaky")).toEqual([])
    }))

  it.effect("failure policy: dead-letter now, discard, and exhausted retries", () =>
    Effect.gen(function*() {
      const policy = Task.define({
        name: "policy",
        payload: Schema.Struct({ mode: Schema.Literals(["fatal", "discard", "retry", "defect"]) }),
        maxAttempts: 2,
        backoff: { baseSeconds: 0.01, maxSeconds: 0.02 },
        onFailure: (error: Fatal | Flaky) =>
          error._tag === "Fatal" ? (error.why === "discard" ? "discard" : "dead-letter") : "retry",
        handler: ({ mode }, job) =>
          mode === "defect"
            ? Effect.die(new Error("kaboom"))
            : mode === "retry"
            ? Effect.fail(new Flaky({ attempt: job.attempt }))
            : Effect.fail(new Fatal({ why: mode }))
      })
      const q = yield* Queue
      for (const mode of ["fatal", "discard", "retry", "defect"]) {
        yield* q.send(policy, { mode: mode as "fatal" }, { queue: "policy" })
      }
      yield* withWorker(
        Task.registry(policy),
        (schema) => options(schema, "policy"),
        eventually(rows("queue = 'policy'"), (r) => r.length === 0)
      )
      const dead = yield* deadLetters("policy")
      expect(dead.map((d) => [d.read_ct, d.last_error])).toEqual([
        [1, 'Fatal: {"why":"fatal"}'],
        [2, 'Flaky: {"attempt":2}'],
        [2, "defect: Error: kaboom"]
      ])
    }))

  it.effect("unknown tasks and undecodable payloads go to the dead-letter table with the reason", () =>
    Effect.gen(function*() {
      const typed = Task.define({
        name: "typed",
        payload: Schema.Struct({ id: Schema.Number }),
        handler: () => Effect.void
      })
      const q = yield* Queue
      yield* q.enqueue("nobody-knows-me", {}, { queue: "poison" })
      yield* q.enqueue("typed", { id: "not a number" }, { queue: "poison" })
      yield* withWorker(
        Task.registry(typed),
        (schema) => options(schema, "poison"),
        eventually(rows("queue = 'poison'"), (r) => r.length === 0)
      )
      const dead = yield* deadLetters("poison")
      expect(dead.map((d) => d.task)).toEqual(["nobody-knows-me", "typed"])
      expect(dead[0]!.last_error).toContain('unknown task "nobody-knows-me"')
      expect(dead[1]!.last_error).toContain("payload does not match the schema of task typed")
      expect(dead.map((d) => d.read_ct)).toEqual([1, 1])
    }))

  it.effect("lease renewal keeps a long job invisible with a short lease", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const finish = yield* Deferred.make<void>()
      const long = Task.define({
        name: "long",
        payload: Schema.Struct({}),
        handler: () => Deferred.succeed(started, undefined).pipe(Effect.andThen(Deferred.await(finish)))
      })
      const q = yield* Queue
      const id = yield* q.enqueue("long", {}, { queue: "long" })
      yield* withWorker(
        Task.registry(long),
        (schema) => options(schema, "long", { leaseSeconds: 1 }),
        Effect.gen(function*() {
          yield* Deferred.await(started)
          const [claimed] = yield* rows(`msg_id = ${id}`)
          // Three lease lengths later the job is still claimed by the same attempt: renewals kept it.
          const later = yield* eventually(rows(`msg_id = ${id}`), (r) => r[0]!.vt!.getTime() >= claimed!.vt!.getTime() + 2500)
          expect(later[0]!.state).toBe("claimed")
          expect(later[0]!.read_ct).toBe(1)
          expect(yield* q.rearmExpired({ queues: ["long"] })).toBe(0)
          expect(yield* q.claim({ queues: ["long"], limit: 1, leaseSeconds: 30, processId: "thief" })).toEqual([])
          yield* Deferred.succeed(finish, undefined)
          yield* eventually(rows(`msg_id = ${id}`), (r) => r.length === 0)
        })
      )
    }), { timeout: 30_000 })

  it.effect("graceful shutdown finishes what it can within the grace and releases the rest", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const runs = yield* Ref.make<ReadonlyArray<string>>([])
      const startedAll = yield* Deferred.make<void>()
      const gate = Task.define({
        name: "gate",
        payload: Schema.Struct({ hang: Schema.Boolean }),
        handler: ({ hang }, job) =>
          Ref.updateAndGet(runs, (xs) => [...xs, job.msgId]).pipe(
            Effect.tap((xs) => (xs.length === 4 ? Deferred.succeed(startedAll, undefined) : Effect.void)),
            Effect.andThen(hang ? Effect.never : Effect.sleep("300 millis"))
          )
      })
      const q = yield* Queue
      const quick = yield* q.enqueueMany([0, 1].map(() => ({ task: "gate", payload: { hang: false }, options: { queue: "drain" } })))
      const stuck = yield* q.enqueueMany([0, 1].map(() => ({ task: "gate", payload: { hang: true }, options: { queue: "drain" } })))
      const scope = yield* Scope.make()
      yield* Layer.buildWithScope(
        Worker.layer(Task.registry(gate), options(schema, "drain", { shutdownGraceSeconds: 1 })).pipe(
          Layer.provide(ProcessRegistry.layer(schema))
        ),
        scope
      )
      yield* Deferred.await(startedAll)
      const [elapsed] = yield* Scope.close(scope, Exit.void).pipe(Effect.timed)
      expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(900)
      // The quick jobs were acked; the stuck ones are ready again at once with their budget intact.
      const left = yield* rows("queue = 'drain'")
      expect(left.map((r) => r.msg_id)).toEqual(stuck)
      expect(left.map((r) => r.state)).toEqual(["ready", "ready"])
      expect(quick.every((id) => !left.some((r) => r.msg_id === id))).toBe(true)
      expect(yield* Ref.get(runs)).toHaveLength(4)
      const sql = yield* SqlClient.SqlClient
      const processes = yield* sql.unsafe(`SELECT 1 FROM "${schema}".process`)
      expect(processes).toHaveLength(0)
    }), { timeout: 30_000 })

  it.effect("LISTEN/NOTIFY: an enqueue wakes an idle worker long before its next poll", () =>
    Effect.gen(function*() {
      const ran = yield* Ref.make(0)
      const wake = Task.define({ name: "wake", payload: Schema.Struct({}), handler: () => Ref.update(ran, (n) => n + 1) })
      const q = yield* Queue
      yield* withWorker(
        Task.registry(wake),
        // Idle polls a minute apart: only a notification can start a job within the test's timeout.
        (schema) => options(schema, "wake", { pollIntervalMs: 60_000, pollMaxMs: 60_000, listen: true }),
        Effect.gen(function*() {
          // First let it poll once and settle into its minute-long idle wait.
          const worker = yield* Worker
          yield* eventually(worker.status, (s) => s.secondsSinceLastPoll > 0.1)
          // Enqueue until one is picked up: the listener may not be LISTENing yet when the worker starts.
          yield* eventually(q.enqueue("wake", {}, { queue: "wake" }).pipe(Effect.andThen(Ref.get(ran))), (n) => n > 0)
        })
      )
      expect(yield* Ref.get(ran)).toBeGreaterThan(0)
    }), { timeout: 15_000 })

  it.effect("prefetch: runs at most `concurrency`, holds the rest with live leases, hands them back at shutdown", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const started = yield* Ref.make(0)
      const hold = Task.define({
        name: "hold",
        payload: Schema.Struct({}),
        handler: () => Ref.update(started, (n) => n + 1).pipe(Effect.andThen(Effect.never))
      })
      const q = yield* Queue
      yield* q.enqueueMany(Array.from({ length: 6 }, () => ({ task: "hold", payload: {}, options: { queue: "prefetch" } })))
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Worker.layer(
          Task.registry(hold),
          options(schema, "prefetch", { concurrency: 2, prefetch: 3, shutdownGraceSeconds: 5, pollMaxMs: 50 })
        ).pipe(Layer.provide(ProcessRegistry.layer(schema))),
        scope
      )
      const worker = Context.get(context, Worker)
      const status = yield* eventually(worker.status, (s) => s.inFlight === 2 && s.prefetched === 3)
      expect(yield* Ref.get(started)).toBe(2)
      const claimed = yield* rows("queue = 'prefetch' AND state = 'claimed'")
      expect(claimed).toHaveLength(5)
      // Full for several poll periods: the poll heartbeat stays fresh (health must not flap under long jobs).
      yield* Effect.sleep("300 millis")
      expect((yield* worker.status).secondsSinceLastPoll).toBeLessThan(0.2)
      expect(status.processed).toBe(0)
      // Shutdown: the three jobs that never started are ready again while the two running ones still drain.
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      const during = yield* eventually(rows("queue = 'prefetch'"), (r) => r.filter((x) => x.state === "ready").length === 4)
      expect(during.filter((r) => r.state === "claimed")).toHaveLength(2)
      yield* Fiber.join(closing)
      const after = yield* rows("queue = 'prefetch'")
      expect(after.map((r) => r.state)).toEqual(Array(6).fill("ready"))
      expect(yield* Ref.get(started)).toBe(2)
    }), { timeout: 30_000 })
})


describe("pollSchedule", () => {
  it("doubles the idle delay up to the max and resets after work", async () => {
    const delays = await Effect.runPromise(
      Effect.gen(function*() {
        const step = yield* Schedule.toStep(pollSchedule(100, 2000))
        const out: Array<number> = []
        for (const claimed of [0, 0, 0, 0, 0, 0, 0, 3, 0]) {
          const [, delay] = yield* step(0, claimed)
          out.push(Duration.toMillis(delay))
        }
        return out
      })
    )
    expect(delays).toEqual([100, 200, 400, 800, 1600, 2000, 2000, 0, 100])
  })
})
