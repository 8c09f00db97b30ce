import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { Queue } from "../src/Queue.ts"
import { spawnNode } from "./processes.ts"
import { TestSchema, testDb } from "./support.ts"

/** Run `node dist/cli.js args…` to completion against the test schema. */
const cli = (...args: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const { schema, url } = yield* TestSchema
    const child = yield* spawnNode("cli.js", { DATABASE_URL: url, PGQ_SCHEMA: schema, PGQ_LOG_FORMAT: "pretty" }, args)
    const exit = yield* child.exit
    return { code: exit.code, output: child.output() }
  })

layer(testDb("cli"), { excludeTestServices: true })("dist/cli.js", (it) => {
  it.effect("migrate, enqueue, status, dead-letter list and replay", () =>
    Effect.gen(function*() {
      expect((yield* cli("migrate")).output).toMatch(/is up to date/)
      const enqueued = yield* cli("enqueue", "--task", "echo", "--payload", `{"message":"hi"}`, "--queue", "mail", "--count", "3")
      expect(enqueued).toMatchObject({ code: 0 })
      expect(enqueued.output).toMatch(/enqueued 3 jobs/)
      yield* cli("enqueue", "--task", "later", "--queue", "mail", "--delay", "60")

      const status = yield* cli("status", "--json")
      expect(JSON.parse(status.output)).toEqual([
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
})
