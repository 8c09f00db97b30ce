import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Schema } from "effect"
import { parseSettings } from "../src/Config.ts"
import * as Names from "../src/Names.ts"

describe("Names: queue names", () => {
  const good = ["default", "emails", "a", "A-Z_0.9:x", "tenant:42.high-prio", "q".repeat(128)]
  const bad = ["", "my queue", "q".repeat(129), "emails,reports", "ü", "a\u0000b", " default", "default\n", "\ud800", "a/b", "😀"]

  for (const name of good) {
    it(`accepts ${JSON.stringify(name.slice(0, 20))}`, () => {
      expect(Names.isQueueName(name)).toBe(true)
      expect(Names.queueNameProblem(name)).toEqual(Option.none())
    })
  }
  for (const name of bad) {
    it(`rejects ${JSON.stringify(name.slice(0, 20))}, saying why`, () => {
      expect(Names.isQueueName(name)).toBe(false)
      const problem = Names.queueNameProblem(name)
      expect(Option.getOrThrow(problem)).toBe(Names.queueNameRule)
    })
  }

  it("the rule text is what an enqueue of an empty name has always said (non-empty)", () => {
    expect(Names.queueNameRule).toMatch(/non-empty/)
    expect(Names.queueNameRule).toMatch(/128/)
  })

  it("every name the rule accepts is one PGQ_QUEUES can list, and vice versa", () => {
    for (const name of [...good, ...bad.filter((name) => name.trim() !== "" && !name.includes(","))]) {
      const parsed = Effect.runSync(parseSettings({ PGQ_QUEUES: name }).pipe(Effect.result))
      const consumable = parsed._tag === "Success" && parsed.success.queues.includes(name)
      expect([name, consumable]).toEqual([name, Names.isQueueName(name)])
    }
  })

  it("PGQ_QUEUES names the bad queue and the rule", () => {
    const parsed = Effect.runSync(parseSettings({ PGQ_QUEUES: "ok,my queue" }).pipe(Effect.result))
    expect(parsed._tag).toBe("Failure")
    if (parsed._tag !== "Failure") return
    expect(parsed.failure.message).toContain(`"my queue" ${Names.queueNameRule}`)
  })

  it.prop("the schema and the predicate agree", [Schema.String], ([name]) => {
    expect(Schema.is(Names.QueueName)(name)).toBe(Names.isQueueName(name))
  })
})

describe("Names: SQL identifiers (PGQ_SCHEMA)", () => {
  const good = ["pgq", "_private", "jobs_2", "a".repeat(63)]
  const bad = ["", "Pgq", "2jobs", "a".repeat(64), "my schema", "pgq;drop", "pg-q", "\"pgq\"", "pgq."]

  for (const name of good) {
    it(`accepts ${JSON.stringify(name.slice(0, 20))}`, () => {
      expect(Names.isIdentifier(name)).toBe(true)
      expect(Names.identifierProblem(name)).toEqual(Option.none())
    })
  }
  for (const name of bad) {
    it(`rejects ${JSON.stringify(name.slice(0, 20))}`, () => {
      expect(Names.isIdentifier(name)).toBe(false)
      expect(Option.getOrThrow(Names.identifierProblem(name))).toBe(Names.identifierRule)
      if (name !== "") {
        const parsed = Effect.runSync(parseSettings({ PGQ_SCHEMA: name }).pipe(Effect.result))
        expect(parsed._tag).toBe("Failure")
      }
    })
  }
})
