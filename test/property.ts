/**
 * Model-based property tests on `it.effect.prop`: an operation sequence is a Schema value, so effect's
 * Arbitrary engine generates it and shrinks a failure by dropping and simplifying operations.
 *
 * Replay: PGQ_PROP_SEED reruns a whole search (every failure message names its seed);
 * PGQ_PROP_REPLAY='<token>' reruns just the shrunk case that the `Replay:` line of a failure printed. A token
 * belongs to one property, so select that test alone (`vitest run <file> -t '<name>'`).
 */
import { Effect, Schema } from "effect"
import { randomInt } from "node:crypto"

const replay = process.env.PGQ_PROP_REPLAY
/** A string, so the seed printed in a failure is exactly the one the engine used. */
const seed = process.env.PGQ_PROP_SEED ?? String(randomInt(2 ** 31))

/** An index 0..n-1 (a candidate, a worker, ...); shrinks toward 0. */
export const Index = (n: number) => Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: n - 1 }))

/**
 * A union whose members are drawn in proportion to their weights: the generator picks a union member
 * uniformly, so each schema is listed `weight` times. Decoding and the `Type` are the plain union's.
 */
export const Weighted = <const Members extends ReadonlyArray<readonly [weight: number, op: Schema.Constraint]>>(
  members: Members
) => Schema.Union(members.flatMap(([weight, op]) => Array.from({ length: weight }, (): Members[number][1] => op)))

/** Up to `maxSteps` operations. Pass the same `maxSteps` to `sequenceOptions`, which lets lengths reach it. */
export const Steps = <S extends Schema.Top>(op: S, maxSteps: number) =>
  Schema.Array(op).check(Schema.isMaxLength(maxSteps))

/**
 * Options for `it.effect.prop`. Generated lengths grow with the run index up to `maxSteps` (mean about
 * maxSteps / 4), so runs × maxSteps / 4 is the total work. Shrinking gets a generous budget: each
 * candidate is one more sequence against the database, and only a failing search pays for it.
 */
export const sequenceOptions = (options: {
  readonly runs: number
  readonly maxSteps: number
  readonly timeout: number
}) => ({
  timeout: options.timeout,
  arbitrary: replay === undefined
    ? { runs: options.runs, size: options.maxSteps, seed, maxShrinks: 500 }
    : { replay }
})

/** A broken invariant, with the steps that led to it. */
export class PropertyViolation extends Schema.TaggedError<PropertyViolation>()("PropertyViolation", {
  reason: Schema.String,
  trace: Schema.Array(Schema.String)
}) {
  override get message() {
    const steps = this.trace.map((line, i) => `  ${i + 1}. ${line}`).join("\n")
    const again = replay === undefined
      ? `rerun with PGQ_PROP_SEED=${seed}, or only this case with PGQ_PROP_REPLAY='<the Replay token below>'`
      : `replayed from PGQ_PROP_REPLAY`
    return `${this.reason}\n${steps}\n(${again})`
  }
}

/** The narration of one sequence; `check` fails with everything narrated so far. */
export const makeTrace = () => {
  const lines: Array<string> = []
  const fail = (reason: string) => Effect.fail(new PropertyViolation({ reason, trace: [...lines] }))
  return {
    log: (line: string) => void lines.push(line),
    fail,
    check: (condition: boolean, reason: string) => condition ? Effect.void : fail(reason)
  }
}
