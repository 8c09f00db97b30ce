import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { Barrier } from "../src/Barrier.ts"
import { Queue } from "../src/Queue.ts"
import { spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

/** Run `node dist/cli.js args…` to completion against the test schema. */
const cli = (...args: ReadonlyArray<string>) => cliWith({}, ...args)

const cliWith = (env: Readonly<Record<string, string>>, ...args: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const { schema, url } = yield* TestSchema
    const child = yield* spawnNode("cli.js", { DATABASE_URL: url, PGQ_SCHEMA: schema, PGQ_LOG_FORMAT: "pretty", ...env }, args)
    const exit = yield* child.exit
    return { code: exit.code, output: child.output() }
  })

const fanOut = (executionId: string, n: number, queue: string) =>
  Barrier.use((b) =>
    b.start({
      executionId,
      orgId: "acme",
      batches: Array.from({ length: n }, (_, i) => ({ task: "part", payload: { i }, queue })),
      callback: { task: "gather", queue }
    })
  )

layer(testDb("cli"), { excludeTestServices: true })("dist/cli.js", (it) => {
  it.effect("migrate, enqueue, status, dead-letter list and replay", () =>
    Effect.gen(function*() {
      expect((yield* cli("migrate")).output).toMatch(/is up to date/)
      const enqueued = yield* cli("enqueue", "--task", "echo", "--payload", `{"message":"hi"}`, "--queue", "mail", "--count", "3")
      expect(enqueued).toMatchObject({ code: 0 })
      expect(enqueued.output).toMatch(/enqueued 3 jobs/)
      yield* cli("enqueue", "--task", "later", "--queue", "mail", "--delay", "60")

      const status = yield* cli("status", "--json")
      expect(JSON.parse(status.output).queues).toEqual([
        expect.objectContaining({ queue: "mail", ready: 3, scheduled: 1, claimed: 0, deadLettered: 0 })
      ])
      expect((yield* cli("status")).output).toMatch(/mail\s+3\s+1\s+0\s+0/)

      const q = yield* Queue
      const [job] = yield* q.claim({ queues: ["mail"], limit: 1, leaseSeconds: 30, processId: "cli-test" })
      yield* q.deadLetter(job!, "smtp said no")
      const listed = yield* cli("dead-letter", "list")
      expect(listed.output).toContain("smtp said no")
      expect(listed.output).toContain(job!.msgId)
      expect((yield* cli("dead-letter", "replay", job!.msgId)).output).toMatch(/replayed 1 dead letter/)
      expect((yield* cli("dead-letter", "list")).output).toMatch(/no dead letters/)
      expect((yield* q.stats())[0]).toMatchObject({ ready: 3, scheduled: 1, deadLettered: 0 })
    }), { timeout: 60_000 })

  it.effect("bad input exits non-zero and names the culprit", () =>
    Effect.gen(function*() {
      const badJson = yield* cli("enqueue", "--task", "echo", "--payload", "{not json")
      expect(badJson.code).not.toBe(0)
      expect(badJson.output).toContain("--payload")
      const badPriority = yield* cli("enqueue", "--task", "echo", "--priority", "42")
      expect(badPriority.code).not.toBe(0)
      expect(badPriority.output).toMatch(/priority/)
      const noIds = yield* cli("dead-letter", "replay")
      expect(noIds.code).not.toBe(0)
      expect(noIds.output).toMatch(/--all/)
    }), { timeout: 60_000 })

  it.effect("execution show / stop, barrier list (--stranded), barrier counts in status; unknown ids exit 1", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const { schema } = yield* TestSchema
      yield* fanOut("x-run", 3, "fan")
      yield* fanOut("x-lost", 2, "nobody")
      const q = yield* Queue
      const [job] = yield* q.claim({ queues: ["fan"], limit: 1, leaseSeconds: 30, processId: "cli-test" })
      yield* Barrier.use((b) => b.complete({ ...job!, executionId: "x-run", batchIndex: job!.batchIndex! }, { ok: true }))
      // x-lost made no progress for 2 minutes: stranded once the stuck timeout is 60 s.
      yield* sql`UPDATE ${sql(`${schema}.barrier`)} SET last_progress_at = now() - interval '2 minutes'
                 WHERE execution_id = 'x-lost'`
      const stuck = { PGQ_STUCK_TIMEOUT_SECONDS: "60" }

      const shown = yield* cliWith(stuck, "execution", "show", "x-run")
      expect(shown.code).toBe(0)
      expect(shown.output).toMatch(/status\s+EXECUTING/)
      expect(shown.output).toMatch(/1 of 3 batches counted, 2 left/)
      expect(shown.output).toMatch(/1 done, 2 pending \(ready 2, scheduled 0, running 0\), 0 dead-lettered/)
      expect(shown.output).toMatch(/callback\s+not enqueued yet/)
      const json = JSON.parse((yield* cliWith(stuck, "execution", "show", "x-lost", "--json")).output)
      expect(json).toMatchObject({
        executionId: "x-lost",
        orgId: "acme",
        status: { _tag: "Found", status: "EXECUTING" },
        barrier: { total: 2, remaining: 2, stranded: true },
        batches: { done: 0, ready: 2, deadLettered: 0 },
        callback: null
      })

      const unknown = yield* cli("execution", "show", "x-nope")
      expect(unknown.code).toBe(1)
      expect(unknown.output.trim().split("\n")).toEqual([expect.stringContaining(`no execution "x-nope"`)])

      const all = yield* cliWith(stuck, "barrier", "list")
      expect(all.output).toMatch(/x-run\s+acme\s+1\s+3/)
      expect(all.output).toMatch(/x-lost\s+acme\s+0\s+2.*STRANDED/)
      const stranded = JSON.parse((yield* cliWith(stuck, "barrier", "list", "--stranded", "--json")).output)
      expect(stranded.map((b: { executionId: string }) => b.executionId)).toEqual(["x-lost"])
      expect(JSON.parse((yield* cliWith(stuck, "barrier", "list", "--json", "--limit", "1")).output)).toHaveLength(1)
      expect((yield* cliWith(stuck, "barrier", "list", "--limit", "0")).code).not.toBe(0)

      expect((yield* cliWith(stuck, "status")).output).toMatch(/barriers: 2 live, 1 stranded/)
      expect(JSON.parse((yield* cliWith(stuck, "status", "--json")).output).barriers).toEqual({
        live: 2,
        stranded: 1,
        capped: false
      })

      const stopped = yield* cli("execution", "stop", "x-lost")
      expect(stopped).toMatchObject({ code: 0 })
      expect(stopped.output).toMatch(/execution x-lost stopped \(status STOPPED\)/)
      expect((yield* cli("execution", "stop", "x-lost")).output).toMatch(/already ended; status STOPPED/)
      const ghost = yield* cli("execution", "stop", "x-ghost")
      expect(ghost.code).toBe(1)
      expect(ghost.output).toContain(`no execution "x-ghost"`)
      expect((yield* cli("status")).output).toMatch(/barriers: 1 live, 0 stranded/)
    }), { timeout: 60_000 })
})
