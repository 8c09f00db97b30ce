/**
 * What Postgres jsonb can store. JSON.stringify silently turns NaN into null and drops undefined,
 * and jsonb rejects "\u0000" only at commit time, and a lone UTF-16 surrogate (JSON.stringify writes it as a
 * `\ud800` escape, which jsonb refuses) fails the whole statement; we reject all of them up front, naming the field.
 */
import { Option, Predicate } from "effect"

export interface Unstorable {
  /** Path from the payload root, e.g. `payload.items[2].name`. */
  readonly path: string
  readonly reason: string
}

const keyPath = (path: string, key: string) => (/^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`)

const NUL = "\u0000"

// A lone surrogate is a code point of category Cs in a `u` regex; a pair is one astral code point, not Cs.
// Equivalent to `!text.isWellFormed()` (ES2024), which the project's lib (ES2023) does not declare.
const loneSurrogate = /\p{Cs}/u

/** Whether `text` is well-formed UTF-16, i.e. has no unpaired surrogate (which UTF-8 and jsonb cannot hold). */
export const isWellFormed = (text: string): boolean => !loneSurrogate.test(text)

const textProblem = (text: string): Option.Option<string> =>
  text.includes(NUL)
    ? Option.some("a NUL character (\\u0000)")
    : isWellFormed(text)
    ? Option.none()
    : Option.some("a lone UTF-16 surrogate (not well-formed Unicode)")

const check = (value: unknown, path: string, seen: Set<object>): Option.Option<Unstorable> => {
  if (value === null || Predicate.isBoolean(value)) return Option.none()
  if (Predicate.isString(value)) return Option.map(textProblem(value), (problem) => ({ path, reason: `contains ${problem}` }))
  if (Predicate.isNumber(value)) {
    return Number.isFinite(value) ? Option.none() : Option.some({ path, reason: `is ${value}, which JSON cannot hold` })
  }
  if (Predicate.isBigInt(value)) return Option.some({ path, reason: "is a bigint; encode it as a string" })
  if (value === undefined) return Option.some({ path, reason: "is undefined" })
  if (Predicate.isFunction(value) || Predicate.isSymbol(value)) {
    return Option.some({ path, reason: `is a ${typeof value}, not JSON` })
  }
  if (seen.has(value)) return Option.some({ path, reason: "is a circular reference" })
  seen.add(value)
  const found = Array.isArray(value) ? checkArray(value, path, seen) : checkObject(value, path, seen)
  seen.delete(value)
  return found
}

const checkArray = (value: ReadonlyArray<unknown>, path: string, seen: Set<object>): Option.Option<Unstorable> => {
  for (let i = 0; i < value.length; i++) {
    const found = check(value[i], `${path}[${i}]`, seen)
    if (Option.isSome(found)) return found
  }
  return Option.none()
}

const checkObject = (value: object, path: string, seen: Set<object>): Option.Option<Unstorable> => {
  const proto = Object.getPrototypeOf(value)
  if (proto !== Object.prototype && proto !== null) {
    return Option.some({ path, reason: `is a ${value.constructor?.name ?? "class instance"}, not a plain JSON object` })
  }
  for (const [key, child] of Object.entries(value)) {
    const problem = textProblem(key)
    if (Option.isSome(problem)) return Option.some({ path: keyPath(path, key), reason: `is a key with ${problem.value}` })
    // Object properties that are undefined are legal in JS and simply omitted by JSON.
    if (child === undefined) continue
    const found = check(child, keyPath(path, key), seen)
    if (Option.isSome(found)) return found
  }
  return Option.none()
}

/** The first value under `root` that cannot be stored as jsonb, if any. */
export const findUnstorable = (value: unknown, root = "payload"): Option.Option<Unstorable> =>
  check(value, root, new Set())

/** Text columns reject NUL too. */
export const hasNul = (text: string): boolean => text.includes(NUL)
