/**
 * Demo tasks for `npm start` and the end-to-end tests: `PGQ_TASKS=./dist/demo/tasks.js`.
 */
import { Console, Effect, Schema } from "effect"
import * as Barrier from "../Barrier.ts"
import * as Task from "../Task.ts"

class DemoFailure extends Schema.TaggedError<DemoFailure>()("DemoFailure", { detail: Schema.String }) {}

export const noop = Task.define({ name: "noop", payload: Schema.Unknown, handler: () => Effect.void })

export const echo = Task.define({
  name: "echo",
  payload: Schema.Struct({ message: Schema.String }),
  handler: ({ message }, job) => Effect.logDebug(`echo #${job.msgId}: ${message}`)
})

export const sleep = Task.define({
  name: "sleep",
  payload: Schema.Struct({ ms: Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 3_600_000 })) }),
  handler: ({ ms }) => Effect.sleep(ms)
})

/** Fails its first `failures` attempts, then succeeds: shows retry with backoff. */
export const flaky = Task.define({
  name: "flaky",
  payload: Schema.Struct({ failures: Schema.Int }),
  backoff: { baseSeconds: 0.2, maxSeconds: 2 },
  handler: ({ failures }, job) =>
    job.attempt <= failures
      ? Effect.fail(new DemoFailure({ detail: `attempt ${job.attempt} of ${failures + 1} fails on purpose` }))
      : Effect.void
})

/** Always fails with an error its policy calls fatal: shows the dead-letter table. */
export const poison = Task.define({
  name: "poison",
  payload: Schema.Struct({ reason: Schema.String }),
  onFailure: () => "dead-letter",
  handler: ({ reason }) => Effect.fail(new DemoFailure({ detail: reason }))
})

/** A fan-out batch: the square of `n`, stored as its result (encoded with `result`). */
export const Square = Schema.Struct({ n: Schema.Int, square: Schema.Int })

export const square = Task.define({
  name: "square",
  payload: Schema.Struct({ n: Schema.Int }),
  result: Square,
  handler: ({ n }) => Effect.sleep(20 + (n % 5) * 20).pipe(Effect.as({ n, square: n * n }))
})

/** The fan-out's callback: every batch's result, in batch order, once. */
export const sumSquares = Task.define({
  name: "sum-squares",
  payload: Barrier.callbackPayload(Square, Schema.Struct({ label: Schema.String })),
  handler: ({ executionId, results, context }) =>
    Console.log(
      `callback of ${executionId} (${context.label}): ${results.length} results in batch order ` +
        `(n = ${results[0]?.n}..${results.at(-1)?.n}); sum of squares = ${results.reduce((sum, r) => sum + r.square, 0)}`
    )
})

export default Task.registry(noop, echo, sleep, flaky, poison, square, sumSquares)
