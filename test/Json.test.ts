/**
 * Payloads jsonb cannot store are rejected before anything is written, naming the field. Here: strings and keys
 * that are not well-formed UTF-16 (a lone surrogate), which Postgres rejects as a `\ud800` escape.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Option } from "effect"
import { SqlClient } from "effect/sql"
import { findUnstorable } from "../src/Json.ts"
import { Queue } from "../src/Queue.ts"
import { TestSchema, testDb } from "./support.ts"

const lone: ReadonlyArray<[string, unknown, string]> = [
  ["a lone high surrogate", { text: "a\ud800b" }, "payload.text"],
  ["a lone low surrogate", { list: ["ok", "\udc00"] }, "payload.list[1]"],
  ["a reversed pair", { deep: { er: "\ude00\ud83d" } }, "payload.deep.er"],
  ["a surrogate at the end", "tail\ud83d", "payload"],
  ["a lone surrogate in a key", { ["k\ud800"]: 1 }, 'payload["k\\ud800"]'],
  ["a lone surrogate in a nested key", { a: [{ ["\udfff"]: true }] }, 'payload.a[0]["\\udfff"]']
]

describe("Json.findUnstorable", () => {
  for (const [label, payload, path] of lone) {
    it(`rejects ${label}, naming ${path}`, () => {
      const found = findUnstorable(payload)
      expect(Option.isSome(found)).toBe(true)
      if (Option.isNone(found)) return
      expect(found.value.path).toBe(path)
      expect(found.value.reason).toMatch(/surrogate/)
    })
  }

  it("accepts well-formed text, surrogate pairs included", () => {
    expect(findUnstorable({ emoji: "😀 𝄞", ["κλειδί😀"]: "ok", text: "\uffff\ue000" })).toEqual(Option.none())
  })
})

layer(testDb("json"), { excludeTestServices: true })("Json (enqueue)", (it) => {
  it.effect("a lone surrogate fails enqueue with PayloadRejected naming the field, and nothing is written", () =>
    Effect.gen(function*() {
      const q = yield* Queue
      const sql = yield* SqlClient.SqlClient
      const { schema } = yield* TestSchema
      for (const [, payload, path] of lone) {
        const error = yield* q.enqueue("utf16", payload, { queue: "utf16" }).pipe(Effect.flip)
        expect(error._tag).toBe("PayloadRejected")
        if (error._tag !== "PayloadRejected") continue
        expect(error.field).toBe(path)
        expect(error.message).toContain("utf16")
      }
      // One bad job rejects the whole batch.
      const batch = yield* q.enqueueMany([
        { task: "utf16", payload: { ok: "😀" }, options: { queue: "utf16" } },
        { task: "utf16", payload: { bad: "\ud800" }, options: { queue: "utf16" } }
      ]).pipe(Effect.flip)
      expect(batch._tag).toBe("PayloadRejected")
      const [{ count }] = yield* sql<{ count: number }>`
        SELECT count(*)::int AS count FROM ${sql(`${schema}.message`)} WHERE queue = 'utf16'`
      expect(count).toBe(0)
      // Well-formed text, pairs included, is stored as is.
      yield* q.enqueue("utf16", { text: "😀 𝄞" }, { queue: "utf16" })
      const [row] = yield* sql<{ payload: unknown }>`SELECT payload FROM ${sql(`${schema}.message`)} WHERE queue = 'utf16'`
      expect(row!.payload).toEqual({ text: "😀 𝄞" })
    }))
})
