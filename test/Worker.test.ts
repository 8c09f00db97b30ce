import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Metric, Ref, Schedule, Schema, Scope } from "effect"
import { SqlClient } from "effect/sql"
import * as Metrics from "../src/Metrics.ts"
import { ProcessRegistry } from "../src/ProcessRegistry.ts"
import { Queue } from "../src/Queue.ts"
import * as Task from "../src/Task.ts"
import { pollSchedule, Worker } from "../src/Worker.ts"
import { options, TestSchema, testDb, withWorker } from "./support.ts"

class Flaky extends Schema.TaggedError<Flaky>()("Flaky", { attempt: Schema.Number }) {}
class Fatal extends Schema.TaggedError<Fatal>()("Fatal", { why: Schema.String }) {}

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

/**
 * A real stall: the server prunes the worker (as a reaper would, once its heartbeat is 3 s old) while this
 * process's event loop is blocked for 4.5 s, like a long GC pause. The prune runs on the server during the
 * block (one DO statement sent before it), so the worker finds out only after it resumes.
 */
const stallThroughPrune = (schema: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const sent = yield* Deferred.make<void>()
    yield* Effect.forkChild(
      Deferred.succeed(sent, undefined).pipe(Effect.andThen(sql.unsafe(`DO $$ BEGIN
        PERFORM pg_sleep(3.5);
        WITH dead AS (
          DELETE FROM "${schema}".process WHERE heartbeat_at < clock_timestamp() - interval '3 seconds'
          RETURNING process_id)
        UPDATE "${schema}".message SET state = 'ready', vt = NULL, claimed_by = NULL
        WHERE state = 'claimed' AND claimed_by IN (SELECT process_id FROM dead);
      END $$`)))
    )
    yield* Deferred.await(sent)
    yield* Effect.sleep("50 millis") // let the DO statement reach the server before the loop blocks
    yield* Effect.sync(() => {
      const until = Date.now() + 4500
      while (Date.now() < until) {
        // the event loop is blocked: no heartbeat, no renewal, no poll
      }
    })
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

  it.effect("undecodable payloads go to the dead-letter table with the reason", () =>
    Effect.gen(function*() {
      const typed = Task.define({
        name: "typed",
        payload: Schema.Struct({ id: Schema.Number }),
        handler: () => Effect.void
      })
      const q = yield* Queue
      yield* q.enqueue("typed", { id: "not a number" }, { queue: "poison" })
      yield* withWorker(
        Task.registry(typed),
        (schema) => options(schema, "poison"),
        eventually(rows("queue = 'poison'"), (r) => r.length === 0)
      )
      const dead = yield* deadLetters("poison")
      expect(dead.map((d) => d.task)).toEqual(["typed"])
      expect(dead[0]!.last_error).toContain("payload does not match the schema of task typed")
      expect(dead.map((d) => d.read_ct)).toEqual([1])
    }))

  it.effect("an unknown task is put off with backoff (a rolling deploy), then dead-lettered after the grace", () =>
    Effect.gen(function*() {
      const known = Task.define({ name: "known", payload: Schema.Struct({}), handler: () => Effect.void })
      const q = yield* Queue
      const sql = yield* SqlClient.SqlClient
      const { schema } = yield* TestSchema
      const id = yield* q.enqueue("from-the-next-release", {}, { queue: "rolling", maxAttempts: 1 })
      yield* withWorker(
        Task.registry(known),
        (s) => options(s, "rolling", { unknownTaskGraceSeconds: 600 }),
        Effect.gen(function*() {
          const [deferred] = yield* eventually(rows(`msg_id = ${id}`), (r) => r[0]?.state !== "ready" && r[0]?.state !== "claimed")
          // Put off, not buried: its attempt budget untouched, the reason recorded.
          expect(deferred).toMatchObject({ state: "scheduled", read_ct: 1 })
          expect(deferred!.last_error).toContain('unknown task "from-the-next-release"')
          expect(yield* deadLetters("rolling")).toEqual([])
          // The grace runs out (by the server clock, from the enqueue): the next attempt buries it.
          yield* sql.unsafe(`UPDATE "${schema}".message SET enqueued_at = now() - interval '1 hour',
                                                           visible_at = now() WHERE msg_id = ${id}`)
          yield* eventually(rows(`msg_id = ${id}`), (r) => r.length === 0)
        })
      )
      const dead = yield* deadLetters("rolling")
      expect(dead).toHaveLength(1)
      expect(dead[0]!.last_error).toContain('unknown task "from-the-next-release"')
    }), { timeout: 30_000 })

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
        // A 2 s lease renewed every 0.67 s: a 2-core machine's hiccups stay well inside it.
        (schema) => options(schema, "long", { leaseSeconds: 2 }),
        Effect.gen(function*() {
          yield* Deferred.await(started)
          const [claimed] = yield* rows(`msg_id = ${id}`)
          // Two lease lengths later the job is still claimed by the same attempt: renewals kept it.
          const later = yield* eventually(rows(`msg_id = ${id}`), (r) => r[0]!.vt!.getTime() >= claimed!.vt!.getTime() + 4000)
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
      // Full, it still polls (waiting at most pollMaxMs for a slot), so health does not flap under long jobs.
      const full = yield* eventually(worker.status, (s) => s.polls >= status.polls + 3)
      expect(full).toMatchObject({ inFlight: 2, prefetched: 3, processed: 0 })
      // Shutdown: the three jobs that never started are ready again while the two running ones still drain.
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void))
      const during = yield* eventually(rows("queue = 'prefetch'"), (r) => r.filter((x) => x.state === "ready").length === 4)
      expect(during.filter((r) => r.state === "claimed")).toHaveLength(2)
      yield* Fiber.join(closing)
      const after = yield* rows("queue = 'prefetch'")
      expect(after.map((r) => r.state)).toEqual(Array(6).fill("ready"))
      expect(yield* Ref.get(started)).toBe(2)
    }), { timeout: 30_000 })

  it.effect("prefetch auto: short jobs are claimed ahead in batches; long jobs are never held from an idle worker", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const q = yield* Queue
      const quick = Task.define({ name: "quick", payload: Schema.Struct({}), handler: () => Effect.sleep("1 millis") })
      const slow = Task.define({ name: "slow", payload: Schema.Struct({}), handler: () => Effect.sleep("300 millis") })
      const registry = Task.registry(quick, slow)
      const layerFor = (queue: string) =>
        Worker.layer(registry, options(schema, queue, { concurrency: 2, prefetch: "auto" })).pipe(
          Layer.provide(ProcessRegistry.layer(schema))
        )
      // Short jobs (1 ms): once the pace is known the worker holds jobs ahead of its two slots (about 50).
      yield* q.enqueueMany(Array.from({ length: 2000 }, () => ({ task: "quick", payload: {}, options: { queue: "auto-short" } })))
      const ahead = yield* Effect.scoped(Effect.gen(function*() {
        const worker = Context.get(yield* Layer.build(layerFor("auto-short")), Worker)
        return yield* eventually(worker.status, (s) => s.prefetched > 2)
      }))
      expect(ahead.prefetched).toBeGreaterThan(2)

      // Long jobs: worker A learns their pace on one job, then a burst of six arrives with worker B idle
      // beside it. A holds nothing ahead, so B runs its share.
      const claimers = sql<{ claimed_by: string; n: number }>`
        SELECT claimed_by, count(*)::int AS n FROM ${sql(`${schema}.message`)}
        WHERE queue = 'auto-long' AND state = 'claimed' GROUP BY claimed_by`
      yield* Effect.scoped(Effect.gen(function*() {
        const a = Context.get(yield* Layer.build(layerFor("auto-long")), Worker)
        yield* q.enqueue("slow", {}, { queue: "auto-long" })
        yield* eventually(a.status, (s) => s.processed === 1)
        const b = Context.get(yield* Layer.build(layerFor("auto-long")), Worker)
        yield* q.enqueueMany(Array.from({ length: 6 }, () => ({ task: "slow", payload: {}, options: { queue: "auto-long" } })))
        // Each holds only what its two slots run; the other two jobs wait in the queue for whoever frees one.
        const split = yield* eventually(claimers, (rows) => rows.length === 2)
        expect(split.map((r) => r.n)).toEqual([2, 2])
        expect((yield* a.status).prefetched).toBe(0)
        yield* eventually(Effect.all([a.status, b.status]), ([sa, sb]) => sa.processed + sb.processed === 7)
        expect((yield* b.status).processed).toBeGreaterThanOrEqual(2)
      }))
    }), { timeout: 30_000 })

  it.effect("shutdown at any moment never strands a claim: nothing stays claimed by the closed worker", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const noop = Task.define({ name: "noop", payload: Schema.Struct({}), handler: () => Effect.void })
      const q = yield* Queue
      const claimed = sql<{ n: number }>`
        SELECT count(*)::int AS n FROM ${sql(`${schema}.message`)} WHERE queue = 'strand' AND state = 'claimed'`
      // Close the worker at moments spread over its first claims (the window the review hit "in most runs").
      for (const closeAfterMs of [30, 45, 60, 75, 90, 105, 120, 135, 150]) {
        yield* sql`DELETE FROM ${sql(`${schema}.message`)} WHERE queue = 'strand'`
        yield* q.enqueueMany(Array.from({ length: 300 }, () => ({ task: "noop", payload: {}, options: { queue: "strand" } })))
        const scope = yield* Scope.make()
        yield* Layer.buildWithScope(
          Worker.layer(Task.registry(noop), options(schema, "strand", { concurrency: 4 })).pipe(
            Layer.provide(ProcessRegistry.layer(schema))
          ),
          scope
        )
        yield* Effect.sleep(Duration.millis(closeAfterMs))
        yield* Scope.close(scope, Exit.void)
        expect((yield* claimed)[0]!.n, `closed after ${closeAfterMs} ms`).toBe(0)
      }
    }), { timeout: 60_000 })

  it.effect("a live worker that was pruned stops the attempt it lost before it runs the job again", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const running = yield* Ref.make(0)
      const mostAtOnce = yield* Ref.make(0)
      const starts = yield* Ref.make<ReadonlyArray<number>>([])
      const gate = yield* Deferred.make<void>()
      const long = Task.define({
        name: "long-stalled",
        payload: Schema.Struct({}),
        handler: (_payload, job) =>
          Effect.gen(function*() {
            yield* Ref.update(starts, (xs) => [...xs, job.attempt])
            const now = yield* Ref.updateAndGet(running, (n) => n + 1)
            yield* Ref.update(mostAtOnce, (n) => Math.max(n, now))
            yield* Deferred.await(gate)
          }).pipe(Effect.ensuring(Ref.update(running, (n) => n - 1)))
      })
      const q = yield* Queue
      const id = yield* q.enqueue("long-stalled", {}, { queue: "stalled" })
      yield* withWorker(
        Task.registry(long),
        (s) => options(s, "stalled", { concurrency: 4, heartbeatSeconds: 1, processStaleSeconds: 3 }),
        Effect.gen(function*() {
          yield* eventually(Ref.get(starts), (xs) => xs.length === 1)
          yield* stallThroughPrune(schema)
          yield* eventually(Ref.get(starts), (xs) => xs.length === 2)
          yield* Deferred.succeed(gate, undefined)
          yield* eventually(rows(`msg_id = ${id}`), (r) => r.length === 0)
        })
      )
      expect(yield* Ref.get(starts)).toEqual([1, 2])
      // Never two attempts of the job at once in the same process.
      expect(yield* Ref.get(mostAtOnce)).toBe(1)
      expect(yield* deadLetters("stalled")).toEqual([])
    }), { timeout: 30_000 })

  it.effect("a pruned worker never starts the prefetched jobs it lost; each runs once, on its new claim", () =>
    Effect.gen(function*() {
      const { schema } = yield* TestSchema
      const starts = yield* Ref.make<ReadonlyArray<string>>([])
      const gate = yield* Deferred.make<void>()
      const first = yield* Deferred.make<void>()
      const step = Task.define({
        name: "step",
        payload: Schema.Struct({ block: Schema.Boolean }),
        handler: ({ block }, job) =>
          Ref.update(starts, (xs) => [...xs, `${job.msgId}/${job.attempt}`]).pipe(
            Effect.andThen(block ? Deferred.succeed(first, undefined).pipe(Effect.andThen(Deferred.await(gate))) : Effect.void)
          )
      })
      const q = yield* Queue
      const blocker = yield* q.enqueue("step", { block: true }, { queue: "lost-prefetch", priority: 10 })
      const waiting = yield* q.enqueueMany([0, 1].map(() => ({ task: "step", payload: { block: false }, options: { queue: "lost-prefetch" } })))
      yield* withWorker(
        Task.registry(step),
        (s) => options(s, "lost-prefetch", { concurrency: 1, prefetch: 2, heartbeatSeconds: 1, processStaleSeconds: 3 }),
        Effect.gen(function*() {
          const worker = yield* Worker
          yield* Deferred.await(first)
          yield* eventually(worker.status, (s) => s.inFlight === 1 && s.prefetched === 2)
          yield* stallThroughPrune(schema)
          yield* Deferred.succeed(gate, undefined)
          yield* eventually(rows("queue = 'lost-prefetch'"), (r) => r.length === 0)
        })
      )
      const ran = yield* Ref.get(starts)
      for (const id of waiting) expect(ran.filter((s) => s.startsWith(`${id}/`)), `job ${id}`).toHaveLength(1)
      expect(ran.filter((s) => s.startsWith(`${blocker}/`)).length).toBeGreaterThanOrEqual(1)
      expect(yield* deadLetters("lost-prefetch")).toEqual([])
    }), { timeout: 30_000 })

  it.effect("a busy worker still promotes due jobs on its own schedule, not only when its backlog is gone", () =>
    Effect.gen(function*() {
      const done = yield* Ref.make(0)
      const doneWhenDueJobRan = yield* Deferred.make<number>()
      const busy = Task.define({
        name: "busy",
        payload: Schema.Struct({}),
        handler: () => Effect.sleep("30 millis").pipe(Effect.andThen(Ref.update(done, (n) => n + 1)))
      })
      const due = Task.define({
        name: "due",
        payload: Schema.Struct({}),
        handler: () => Ref.get(done).pipe(Effect.flatMap((n) => Deferred.succeed(doneWhenDueJobRan, n)))
      })
      const q = yield* Queue
      const backlog = 100
      yield* q.enqueueMany(Array.from({ length: backlog }, () => ({ task: "busy", payload: {}, options: { queue: "busy" } })))
      yield* q.enqueue("due", {}, { queue: "busy", delay: "300 millis", priority: 10 })
      const ranAfter = yield* withWorker(
        Task.registry(busy, due),
        (s) => options(s, "busy", { concurrency: 1 }),
        Deferred.await(doneWhenDueJobRan)
      )
      // It ran while most of the 3 s backlog was still waiting, not after it.
      expect(ranAfter).toBeLessThan(backlog / 2)
    }), { timeout: 60_000 })

  it.effect("a backlog of synchronous jobs is run in short turns: other fibers (heartbeats, renewals) still run", () =>
    Effect.gen(function*() {
      // Each job blocks the event loop for 2 ms; 300 of them held at once would block it for 600 ms in one go.
      const spin = Task.define({
        name: "spin",
        payload: Schema.Struct({}),
        handler: () =>
          Effect.sync(() => {
            const until = performance.now() + 2
            while (performance.now() < until) {
              // busy: a synchronous handler
            }
          })
      })
      const q = yield* Queue
      yield* q.enqueueMany(Array.from({ length: 300 }, () => ({ task: "spin", payload: {}, options: { queue: "spin" } })))
      const gaps: Array<number> = []
      let last = performance.now()
      const ticker = yield* Effect.sleep("1 millis").pipe(
        Effect.andThen(Effect.sync(() => {
          const now = performance.now()
          gaps.push(now - last)
          last = now
        })),
        Effect.forever,
        Effect.forkChild
      )
      yield* withWorker(
        Task.registry(spin),
        (s) => options(s, "spin", { concurrency: 10, prefetch: 300 }),
        eventually(rows("queue = 'spin'"), (r) => r.length === 0)
      )
      yield* Fiber.interrupt(ticker)
      // A turn ends after ~2 ms and the job running then; 100 ms leaves room for a slow machine, not for 600 ms.
      expect(Math.max(...gaps)).toBeLessThan(100)
    }), { timeout: 30_000 })

  it.effect("the in-flight gauge counts the jobs running now", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const started = yield* Ref.make(0)
      const held = Task.define({
        name: "gauged",
        payload: Schema.Struct({}),
        handler: () => Ref.update(started, (n) => n + 1).pipe(Effect.andThen(Deferred.await(gate)))
      })
      const q = yield* Queue
      yield* q.enqueueMany([0, 1, 2].map(() => ({ task: "gauged", payload: {}, options: { queue: "gauge" } })))
      const inFlight = Metric.value(Metrics.inFlight).pipe(Effect.map((s) => s.value))
      yield* withWorker(
        Task.registry(held),
        (s) => options(s, "gauge"),
        Effect.gen(function*() {
          yield* eventually(Ref.get(started), (n) => n === 3)
          expect(yield* inFlight).toBe(3)
          yield* Deferred.succeed(gate, undefined)
          yield* eventually(rows("queue = 'gauge'"), (r) => r.length === 0)
          yield* eventually(inFlight, (n) => n === 0)
        })
      )
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
