/**
 * `Task.execute` classifies every handler outcome without failing or dying: a value it cannot describe must
 * not leave its job claimed until the visibility timeout (the worker records nothing when execute dies).
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import * as Task from "../src/Task.ts"
import { jobContext as job } from "./support.ts"

const failingWith = (error: unknown, onFailure?: (error: unknown) => Task.FailureAction) =>
  Task.define({
    name: "t",
    payload: Schema.Unknown,
    handler: () => Effect.fail(error),
    ...(onFailure === undefined ? {} : { onFailure })
  })

const dyingWith = (defect: unknown) => Task.define({ name: "t", payload: Schema.Unknown, handler: () => Effect.die(defect) })

const LIMIT = 2000

/** The outcome must be a Failed one whose text is one bounded, storable line. */
const expectSafeFailure = (outcome: Task.Outcome): Extract<Task.Outcome, { _tag: "Failed" }> => {
  assert(outcome._tag === "Failed", `expected Failed, got ${outcome._tag}`)
  expect(typeof outcome.error).toBe("string")
  expect(outcome.error.length).toBeGreaterThan(0)
  expect(outcome.error.length).toBeLessThanOrEqual(LIMIT)
  expect(outcome.error).not.toMatch(/[\u0000-\u001f\u007f]/)
  expect(/\p{Cs}/u.test(outcome.error)).toBe(false)
  return outcome
}

const run = (task: Task.Task<unknown>) =>
  task.execute({}, job).pipe(
    Effect.exit,
    Effect.map((exit) => {
      assert(Exit.isSuccess(exit), `execute did not succeed: ${String(exit)}`)
      return expectSafeFailure(exit.value)
    })
  )

const cyclic = (): Record<string, unknown> => {
  const value: Record<string, unknown> = { _tag: "Loop", n: 1 }
  value.self = value
  return value
}

const throwing = (what: string) => () => {
  throw new Error(`${what} threw`)
}

class MessageThrows extends Error {
  override get message(): string {
    throw new Error("message getter threw")
  }
}

const hostile: ReadonlyArray<[string, () => unknown]> = [
  ["a bigint field", () => ({ _tag: "Big", n: 10n })],
  ["a bigint", () => 12345678901234567890n],
  ["a cyclic object", cyclic],
  ["a throwing getter", () => Object.defineProperty({ _tag: "Getter" }, "boom", { enumerable: true, get: throwing("get") })],
  ["a throwing toJSON", () => ({ _tag: "Json", toJSON: throwing("toJSON") })],
  ["a throwing toString", () => ({ toString: throwing("toString") })],
  ["a symbol", () => Symbol("failure")],
  ["a symbol field", () => ({ _tag: "Sym", s: Symbol("field") })],
  ["a symbol _tag", () => ({ _tag: Symbol("tag") })],
  ["a null-prototype object", () => Object.assign(Object.create(null), { n: 1n, text: "x" })],
  ["an empty null-prototype object", () => Object.create(null)],
  ["an Error subclass whose message getter throws", () => new MessageThrows()],
  ["an Error whose own message getter throws", () =>
    Object.defineProperty(new Error("m"), "message", { get: throwing("message") })],
  ["an Error whose name getter throws", () => Object.defineProperty(new Error("m"), "name", { get: throwing("name") })],
  ["a Proxy that throws on every trap", () =>
    new Proxy({}, {
      get: throwing("get"),
      has: throwing("has"),
      ownKeys: throwing("ownKeys"),
      getPrototypeOf: throwing("getPrototypeOf"),
      getOwnPropertyDescriptor: throwing("getOwnPropertyDescriptor")
    })],
  ["a huge message", () => new Error("x".repeat(1_000_000))],
  ["a huge field", () => ({ _tag: "Huge", blob: "y".repeat(1_000_000) })],
  ["control characters and NUL", () => new Error("line 1\nline 2\r\n\u0000tab\there")],
  ["a lone surrogate", () => new Error("broken \ud800 text")],
  ["an Error with a cyclic cause", () => {
    const error = new Error("outer")
    Object.assign(error, { cause: error })
    return error
  }],
  ["undefined", () => undefined],
  ["null", () => null]
]

describe("Task.execute never fails or dies, whatever the handler failed with", () => {
  for (const [label, make] of hostile) {
    it.effect(`typed failure: ${label}`, () => run(failingWith(make())))
    it.effect(`defect: ${label}`, () => run(dyingWith(make())))
  }

  it.effect("a handler that throws instead of returning an Effect is a defect, retried", () =>
    Effect.gen(function*() {
      const task = Task.define({ name: "t", payload: Schema.Unknown, handler: throwing("handler") })
      const outcome = yield* run(task)
      expect(outcome.action).toBe("retry")
      expect(outcome.error).toContain("handler threw")
    }))

  it.effect("a throwing onFailure retries and says so", () =>
    Effect.gen(function*() {
      const outcome = yield* run(failingWith({ _tag: "Oops", n: 1n }, throwing("policy")))
      expect(outcome.action).toBe("retry")
      expect(outcome.error).toMatch(/^Oops: \{"n":1n\}/)
      expect(outcome.error).toContain("onFailure threw")
      expect(outcome.error).toContain("policy threw")
    }))

  it.effect("an onFailure that returns no known action retries and says so", () =>
    Effect.gen(function*() {
      const outcome = yield* run(failingWith("plain", () => "explode" as Task.FailureAction))
      expect(outcome.action).toBe("retry")
      expect(outcome.error).toContain("onFailure returned")
    }))

  it.effect("the text stays useful: tag and fields, message, defect message", () =>
    Effect.gen(function*() {
      expect((yield* run(failingWith({ _tag: "Big", n: 10n }))).error).toBe('Big: {"n":10n}')
      expect((yield* run(failingWith(cyclic()))).error).toBe('Loop: {"n":1,"self":{"_tag":"Loop","n":1,"self":[Circular]}}')
      expect((yield* run(failingWith(new Error("boom")))).error).toBe("Error: boom")
      expect((yield* run(failingWith(""))).error).toBe("(empty string)")
      expect((yield* run(failingWith(new Error("outer", { cause: new Error("inner") })))).error)
        .toBe("Error: outer (cause: Error: inner)")
      expect((yield* run(dyingWith(new Error("kaboom")))).error).toBe("defect: Error: kaboom")
      expect((yield* run(failingWith(new Error("line 1\nline 2")))).error).toBe("Error: line 1\\nline 2")
    }))

  it.effect("a long text is capped with a marker of how much was cut", () =>
    Effect.gen(function*() {
      const outcome = yield* run(failingWith(new Error("x".repeat(10_000))))
      expect(outcome.error.length).toBe(LIMIT)
      const marker = /^(x*) … \[(\d+) characters cut\]$/.exec(outcome.error.slice("Error: ".length))
      assert(marker !== null, outcome.error.slice(-60))
      expect(marker[1]!.length + Number(marker[2])).toBe(10_000)
    }))

  it.effect("secrets in failures and defects are redacted", () =>
    Effect.gen(function*() {
      const failure = yield* run(failingWith(new Error("connect postgres://app:hunter2@db:5432/prod failed")))
      expect(failure.error).toBe("Error: connect postgres://app:***@db:5432/prod failed")
      const defect = yield* run(dyingWith({ _tag: "Http", headers: { Authorization: "Bearer abc.def" }, apiKey: "k-123" }))
      expect(defect.error).not.toContain("abc.def")
      expect(defect.error).not.toContain("k-123")
    }))
})

/** JSON-ish values plus bigint, nested: what a careless handler might fail with. */
type Thrown = null | boolean | number | string | bigint | ReadonlyArray<Thrown> | { readonly [key: string]: Thrown }
const Thrown: Schema.Codec<Thrown> = Schema.Union([
  Schema.Null,
  Schema.Boolean,
  Schema.Number,
  Schema.String,
  Schema.BigInt,
  Schema.Array(Schema.suspend((): Schema.Codec<Thrown> => Thrown)),
  Schema.Record(Schema.String, Schema.suspend((): Schema.Codec<Thrown> => Thrown))
])

describe("Task.execute (property)", () => {
  it.effect.prop(
    "any thrown value becomes a Failed outcome with a bounded one-line error",
    { value: Thrown, text: Schema.String, tag: Schema.String },
    ({ tag, text, value }) =>
      Effect.gen(function*() {
        const loop: Record<string, unknown> = { _tag: tag, value }
        loop.self = loop
        const shapes: ReadonlyArray<unknown> = [value, loop, { _tag: tag, value }, new Error(text, { cause: value })]
        for (const shape of shapes) {
          yield* run(failingWith(shape))
          yield* run(dyingWith(shape))
        }
      }),
    { arbitrary: { runs: 200 } }
  )
})
