/**
 * What Postgres jsonb can store. JSON.stringify silently turns NaN into null and drops undefined,
 * and jsonb rejects "\u0000" only at commit time; we reject all of them up front, naming the field.
 */
import { Option, Predicate } from "effect"

export interface Unstorable {
  /** Path from the payload root, e.g. `payload.items[2].name`. */
  readonly path: string
  readonly reason: string
}

const keyPath = (path: string, key: string) => (/^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`)

const NUL = "\u0000"

const check = (value: unknown, path: string, seen: Set<object>): Option.Option<Unstorable> => {
  if (value === null || Predicate.isBoolean(value)) return Option.none()
  if (Predicate.isString(value)) {
    return value.includes(NUL) ? Option.some({ path, reason: "contains a NUL character (\\u0000)" }) : Option.none()
  }
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
    if (key.includes(NUL)) return Option.some({ path: keyPath(path, key), reason: "has a key with a NUL character" })
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
