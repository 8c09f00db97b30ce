/**
 * The prefork supervisor with real processes: `node dist/worker.js` with PGQ_PROCESSES=2 against this file's
 * schema. A SIGKILLed child is forked again after its backoff while its job runs again elsewhere; a task module
 * that throws at import crash-loops one slot (503, valid JSON) until a child of it has polled for 10 s; SIGTERM
 * drains every child against one shared deadline and SIGKILLs a straggler; a Ctrl-C to the process group
 * drains each child once; a SIGKILLed supervisor's children
 * drain and exit on their own; recycling loses and repeats no job; bad PGQ_PROCESSES values are refused.
 */
import { expect, layer } from "@effect/vitest"
import { Clock, Deferred, Effect } from "effect"
import { spawn } from "node:child_process"
import { SqlClient } from "effect/sql"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { chaosTables } from "../bench/chaos-tasks.ts"
import { Queue } from "../src/Queue.ts"
import { eventually, freePort, httpGet, spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

interface SlotBody {
  readonly slot: number
  readonly pid: number | null
  readonly restarts: number
  readonly quick_deaths: number
  readonly last_exit: { code: number | null; signal: string | null; recycled: boolean } | null
}
interface FleetBody {
  readonly status: string
  readonly check: string
  readonly oldest_child_seconds_since_poll: number | null
  readonly alive_children: number
  readonly processes: number
  readonly crash_looping: boolean
  readonly slots: ReadonlyArray<SlotBody>
}

const fleetEnv = (schema: string, url: string, port: number, extra: Record<string, string>) => ({
  DATABASE_URL: url,
  PGQ_SCHEMA: schema,
  PGQ_PROCESSES: "2",
  PGQ_TASKS: "./test/fixtures/supervisor-tasks.mjs",
  PGQ_HEALTH_PORT: String(port),
  PGQ_POLL_INTERVAL_MS: "20",
  PGQ_POLL_MAX_MS: "100",
  PGQ_HEARTBEAT_SECONDS: "0.5",
  PGQ_PROCESS_STALE_SECONDS: "2",
  PGQ_SHUTDOWN_GRACE_SECONDS: "2",
  ...extra
})

/** The fleet's /health: status and the parsed body (parsing proves it is valid JSON). */
const health = (port: number) =>
  httpGet(`http://127.0.0.1:${port}/health`).pipe(
    Effect.map((reply) => ({ status: reply.status, body: JSON.parse(reply.body) as FleetBody }))
  )

const seconds = (since: number) => Clock.currentTimeMillis.pipe(Effect.map((now) => (now - since) / 1000))

/** A process that has exited (a zombie whose parent died counts as exited). */
const isGone = (pid: number) => {
  const stat = `/proc/${pid}/stat`
  return !existsSync(stat) || readFileSync(stat, "utf8").split(") ")[1]?.startsWith("Z") === true
}

const jobRows = (queue: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { schema } = yield* TestSchema
    return yield* sql<{ task: string; state: string; read_ct: number; claimed_by: string | null }>`
      SELECT task, state, read_ct, claimed_by FROM ${sql(`${schema}.message`)} WHERE queue = ${queue} ORDER BY msg_id`
  })

/**
 * `node dist/worker.js` as a terminal runs it: leader of its own process group, so a Ctrl-C (SIGINT to the
 * group) reaches the supervisor and every child at once. The group is SIGKILLed when the scope closes.
 */
const spawnGroupLeader = (env: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const exited = yield* Deferred.make<{ code: number | null; signal: NodeJS.Signals | null }>()
      let output = ""
      const child = spawn(process.execPath, ["dist/worker.js"], {
        cwd: new URL("..", import.meta.url).pathname,
        env: { PATH: process.env.PATH ?? "", PGQ_LOG_FORMAT: "json", ...env },
        stdio: ["ignore", "pipe", "pipe"],
        detached: true
      })
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
      child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
      child.once("exit", (code, signal) => Deferred.doneUnsafe(exited, Effect.succeed({ code, signal })))
      return { group: child.pid!, exit: Deferred.await(exited), output: () => output }
    }),
    ({ group }) => Effect.try(() => process.kill(-group, "SIGKILL")).pipe(Effect.ignore)
  )

const pidOf = (claimedBy: string | null) => Number(claimedBy?.split(":")[1])

layer(testDb("supervisor_process"), { excludeTestServices: true })("dist/worker.js with PGQ_PROCESSES=2", (it) => {
  it.effect("a SIGKILLed child is forked again after its backoff; its job runs again on the other child; both register in `process`", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      for (const statement of chaosTables(schema)) yield* sql.unsafe(statement)
      const port = yield* freePort
      const supervisor = yield* spawnNode(
        "worker.js",
        fleetEnv(schema, url, port, { PGQ_TASKS: "./bench/chaos-tasks.ts", PGQ_QUEUES: "kill", PGQ_CONCURRENCY: "1" })
      )
      const up = yield* eventually(health(port), (h) => h.status === 200 && h.body.alive_children === 2)
      expect(up.body).toMatchObject({ check: "pgq_fleet", processes: 2, crash_looping: false })
      const registered = sql<{ kind: string; pid: number; queues: ReadonlyArray<string> }>`
        SELECT kind, pid, queues FROM ${sql(`${schema}.process`)} ORDER BY kind, pid`
      const rows = yield* eventually(registered, (r) => r.length === 3)
      expect(rows.map((r) => [r.kind, r.pid, r.queues])).toEqual([
        ["supervisor", supervisor.child.pid, ["kill"]],
        ...up.body.slots.map((s) => ["worker", s.pid, ["kill"]]).sort((a, b) => Number(a[1]) - Number(b[1]))
      ])

      const id = yield* Queue.use((q) => q.enqueue("chaos.job", { i: 0, ms: 600_000 }, { queue: "kill" }))
      const runs = sql<{ attempt: number; pid: number }>`
        SELECT attempt, pid FROM ${sql(`${schema}.chaos_run`)} WHERE msg_id = ${id}::bigint ORDER BY run_id`
      const [first] = yield* eventually(runs, (r) => r.length === 1)
      const victim = up.body.slots.find((s) => s.pid === first!.pid)!
      const killedAt = yield* Clock.currentTimeMillis
      process.kill(first!.pid, "SIGKILL")

      const reforked = yield* eventually(health(port), (h) => {
        const slot = h.body.slots[victim.slot]!
        return slot.pid !== null && slot.pid !== victim.pid
      })
      const reforkSeconds = yield* seconds(killedAt)
      expect(reforked.body.slots[victim.slot]).toMatchObject({
        restarts: 1,
        last_exit: { code: null, signal: "SIGKILL", recycled: false }
      })
      const [, again] = yield* eventually(runs, (r) => r.length === 2)
      const rerunSeconds = yield* seconds(killedAt)
      expect(again!.attempt).toBe(2)
      expect(again!.pid).not.toBe(first!.pid)
      console.log(
        `[measure] SIGKILLed child forked again after ${reforkSeconds.toFixed(2)} s (backoff 2 s, 1 s monitor); ` +
          `its job running again on pid ${again!.pid} after ${rerunSeconds.toFixed(2)} s (process stale timeout 2 s)`
      )
      // The backoff is respected: no re-fork before 2 s.
      expect(reforkSeconds).toBeGreaterThanOrEqual(2)

      supervisor.child.kill("SIGTERM")
      expect(yield* supervisor.exit).toEqual({ code: 0, signal: null })
      expect(yield* registered).toEqual([])
    }), { timeout: 60_000 })

  it.effect("a task module that throws at import: three quick deaths are a crash loop (503, null age, valid JSON); healthy again once a child of the slot has polled for 10 s", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const port = yield* freePort
      const counter = join(mkdtempSync(join(tmpdir(), "pgq-flaky-")), "imports")
      const startedAt = yield* Clock.currentTimeMillis
      const supervisor = yield* spawnNode(
        "worker.js",
        fleetEnv(schema, url, port, { PGQ_QUEUES: "flaky", FLAKY_COUNTER_FILE: counter, FLAKY_FAILURES: "3" })
      )
      const looping = yield* eventually(health(port), (h) => h.status === 503)
      const loopingSeconds = yield* seconds(startedAt)
      expect(looping.body).toMatchObject({
        status: "unhealthy",
        crash_looping: true,
        oldest_child_seconds_since_poll: null,
        processes: 2
      })
      expect(looping.body.slots[0]).toMatchObject({ quick_deaths: 3, restarts: 2, last_exit: { code: 1, signal: null } })
      expect(looping.body.slots[1]).toMatchObject({ quick_deaths: 0, restarts: 0, last_exit: null })
      expect(supervisor.output()).toContain("import 3 fails on purpose")

      const healthyFork = yield* eventually(health(port), (h) => h.body.slots[0]!.pid !== null)
      const forkedAt = yield* Clock.currentTimeMillis
      expect(healthyFork.status).toBe(503)
      const healed = yield* eventually(health(port), (h) => h.status === 200)
      const healedAfter = yield* seconds(forkedAt)
      expect(healed.body).toMatchObject({ crash_looping: false, alive_children: 2 })
      expect(healed.body.slots[0]).toMatchObject({ quick_deaths: 0, restarts: 3 })
      console.log(
        `[measure] crash loop (3 quick deaths at import) answered 503 ${loopingSeconds.toFixed(1)} s after start; ` +
          `200 again ${healedAfter.toFixed(1)} s after the healthy fork (10 s of fresh polls + start-up)`
      )
      // Recovery waits for 10 s of polling, not merely for a live child.
      expect(healedAfter).toBeGreaterThanOrEqual(10)
      supervisor.child.kill("SIGTERM")
      expect(yield* supervisor.exit).toEqual({ code: 0, signal: null })
    }), { timeout: 90_000 })

  it.effect("SIGTERM: one shared deadline; the drained child releases its long job, the straggler is SIGKILLed by name; exit 0", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const port = yield* freePort
      const q = yield* Queue
      const supervisor = yield* spawnNode("worker.js", fleetEnv(schema, url, port, { PGQ_QUEUES: "term", PGQ_CONCURRENCY: "1" }))
      yield* eventually(health(port), (h) => h.status === 200 && h.body.alive_children === 2)
      yield* q.enqueue("block", { ms: 600_000 }, { queue: "term" })
      const [blocked] = yield* eventually(jobRows("term"), (r) => r[0]?.state === "claimed")
      const stuck = pidOf(blocked!.claimed_by)
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "term" })
      const [, sleeping] = yield* eventually(jobRows("term"), (r) => r[1]?.state === "claimed")
      expect(pidOf(sleeping!.claimed_by)).not.toBe(stuck)
      const fleet = (yield* health(port)).body
      const stuckSlot = fleet.slots.find((s) => s.pid === stuck)!.slot

      const termAt = yield* Clock.currentTimeMillis
      supervisor.child.kill("SIGTERM")
      expect(yield* supervisor.exit).toEqual({ code: 0, signal: null })
      const stopSeconds = yield* seconds(termAt)
      console.log(`[measure] SIGTERM to exit with a straggler: ${stopSeconds.toFixed(2)} s (shared grace 2 s, 2 children)`)
      expect(supervisor.output()).toContain(
        `worker process ${stuckSlot} (pid ${stuck}) did not drain within the shared 2 s grace: SIGKILL`
      )
      expect(fleet.slots.every((s) => s.pid !== null && isGone(s.pid))).toBe(true)
      const [, released] = yield* jobRows("term")
      expect(released).toMatchObject({ task: "sleep", state: "ready", read_ct: 1, claimed_by: null })
    }), { timeout: 60_000 })

  it.effect("Ctrl-C reaches the whole process group: each child drains once (not twice), gives its job back; exit 0", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const port = yield* freePort
      const q = yield* Queue
      const fleet = yield* spawnGroupLeader(fleetEnv(schema, url, port, { PGQ_QUEUES: "ctrlc", PGQ_CONCURRENCY: "1" }))
      yield* eventually(health(port), (h) => h.status === 200 && h.body.alive_children === 2)
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "ctrlc" })
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "ctrlc" })
      yield* eventually(jobRows("ctrlc"), (r) => r.length === 2 && r.every((j) => j.state === "claimed"))

      process.kill(-fleet.group, "SIGINT")
      expect(yield* fleet.exit).toEqual({ code: 0, signal: null })
      const drained = fleet.output().match(/worker \S+ drained/g) ?? []
      expect(drained).toHaveLength(2)
      expect(new Set(drained).size).toBe(2)
      expect(fleet.output().match(/released 1 unfinished job/g)).toHaveLength(2)
      const jobs = yield* jobRows("ctrlc")
      expect(jobs.map((j) => [j.state, j.read_ct, j.claimed_by])).toEqual([["ready", 1, null], ["ready", 1, null]])
    }), { timeout: 60_000 })

  it.effect("a SIGKILLed supervisor's children notice the closed channel, drain, give their jobs back and exit", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      const port = yield* freePort
      const q = yield* Queue
      const supervisor = yield* spawnNode("worker.js", fleetEnv(schema, url, port, { PGQ_QUEUES: "orphan", PGQ_CONCURRENCY: "1" }))
      const { body } = yield* eventually(health(port), (h) => h.status === 200 && h.body.alive_children === 2)
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "orphan" })
      yield* q.enqueue("sleep", { ms: 600_000 }, { queue: "orphan" })
      yield* eventually(jobRows("orphan"), (r) => r.length === 2 && r.every((j) => j.state === "claimed"))
      const children = body.slots.map((s) => s.pid!)

      const killedAt = yield* Clock.currentTimeMillis
      supervisor.child.kill("SIGKILL")
      yield* supervisor.exit
      yield* eventually(Effect.sync(() => children.every(isGone)), (gone) => gone)
      console.log(`[measure] children of a SIGKILLed supervisor exited ${(yield* seconds(killedAt)).toFixed(2)} s after it (grace 2 s)`)
      const jobs = yield* jobRows("orphan")
      expect(jobs.map((j) => [j.state, j.claimed_by])).toEqual([["ready", null], ["ready", null]])
      const workers = yield* sql`SELECT 1 FROM ${sql(`${schema}.process`)} WHERE kind = 'worker'`
      expect(workers).toHaveLength(0)
      yield* sql`DELETE FROM ${sql(`${schema}.process`)}`
    }), { timeout: 60_000 })

  it.effect("recycling after PGQ_MAX_JOBS_PER_PROCESS jobs: children replaced at once (no crash), no job lost or run twice, the fleet's counters complete", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe(`DROP TABLE IF EXISTS "${schema}".chaos_job, "${schema}".chaos_run, "${schema}".chaos_callback`)
      for (const statement of chaosTables(schema)) yield* sql.unsafe(statement)
      const port = yield* freePort
      const supervisor = yield* spawnNode(
        "worker.js",
        fleetEnv(schema, url, port, {
          PGQ_TASKS: "./bench/chaos-tasks.ts",
          PGQ_QUEUES: "recycle",
          PGQ_CONCURRENCY: "2",
          PGQ_MAX_JOBS_PER_PROCESS: "20"
        })
      )
      yield* eventually(health(port), (h) => h.status === 200 && h.body.alive_children === 2)
      const jobs = 120
      yield* Queue.use((q) =>
        q.enqueueMany(Array.from({ length: jobs }, (_, i) => ({ task: "chaos.job", payload: { i, ms: 100 }, options: { queue: "recycle" } })))
      )
      yield* eventually(jobRows("recycle"), (r) => r.length === 0)
      const [runs] = yield* sql<{ runs: number; jobs: number; finished: number; alongside: number; pids: number }>`
        SELECT count(*)::int AS runs, count(DISTINCT msg_id)::int AS jobs, count(finished_at)::int AS finished,
               max(alongside)::int AS alongside, count(DISTINCT pid)::int AS pids
        FROM ${sql(`${schema}.chaos_run`)}`
      expect(runs).toEqual({ runs: jobs, jobs, finished: jobs, alongside: 0, pids: runs!.pids })
      expect(runs!.pids).toBeGreaterThan(2)
      const { body } = yield* health(port)
      expect(body.slots.every((s) => s.quick_deaths === 0)).toBe(true)
      expect(body.slots.some((s) => s.last_exit?.recycled === true)).toBe(true)
      const metrics = yield* eventually(
        httpGet(`http://127.0.0.1:${port}/metrics`),
        (m) => new RegExp(`pgq_jobs_processed_total\\S* ${jobs}\\b`).test(m.body)
      )
      const restarts = Number(/pgq_supervisor_restarts_total\S* (\d+)/.exec(metrics.body)?.[1])
      expect(restarts).toBeGreaterThanOrEqual(1)
      console.log(`[measure] ${jobs} jobs of 100 ms, PGQ_MAX_JOBS_PER_PROCESS=20: ${runs!.pids} processes, ${restarts} recycled`)
      expect(supervisor.output()).toContain("is recycling (ran ")
      // A recycled child leaves as soon as it has drained, cleanly.
      const exits = (yield* eventually(Effect.sync(supervisor.output), (out) => /exited with code 0/.test(out))).match(/exited (with code|on) \S+/g)
      expect(new Set(exits)).toEqual(new Set(["exited with code 0"]))
      supervisor.child.kill("SIGTERM")
      expect(yield* supervisor.exit).toEqual({ code: 0, signal: null })
    }), { timeout: 90_000 })

  it.effect("PGQ_PROCESSES: bad values exit 1 naming it; 1 runs today's single worker, 2 the fleet", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* TestSchema
      for (const value of ["0", "-3", "2.5", "two"]) {
        const child = yield* spawnNode("worker.js", { ...fleetEnv(schema, url, 0, { PGQ_PROCESSES: value }) })
        expect((yield* child.exit).code, value).toBe(1)
        expect(child.output(), value).toContain(`PGQ_PROCESSES: expected a positive integer, got "${value}"`)
      }
      for (const [processes, check] of [["1", "pgq_worker_poll"], ["2", "pgq_fleet"]] as const) {
        const port = yield* freePort
        const child = yield* spawnNode("worker.js", fleetEnv(schema, url, port, { PGQ_PROCESSES: processes, PGQ_QUEUES: "which" }))
        const reply = yield* eventually(httpGet(`http://127.0.0.1:${port}/health`), (r) => r.status === 200)
        expect(JSON.parse(reply.body).check).toBe(check)
        child.child.kill("SIGTERM")
        expect(yield* child.exit).toEqual({ code: 0, signal: null })
      }
    }), { timeout: 60_000 })
})
