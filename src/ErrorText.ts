/**
 * Any failure, defect or message as one line that is safe to store in `last_error` and to log.
 *
 * A handler can fail with anything: a bigint, a cycle, a Proxy whose every trap throws, a getter that throws.
 * If describing it threw, the worker could not record the outcome and the job would sit claimed until its
 * visibility timeout, so every function here is total. The line holds no control characters (Postgres text
 * rejects NUL) and no lone surrogates, shows no credentials it can recognise, and is capped.
 */
import { Cause, Formatter, Option, Result } from "effect"

/** The longest line these functions return, in UTF-16 code units, marker included. */
export const maxLength = 2000

/** Causes nested deeper than this are not shown (an error can be its own cause). */
const maxCauseDepth = 3

/** `f()`, or `fallback(thrown)` when it throws: hostile values throw from getters, traps and toString. */
const guard = <A>(f: () => A, fallback: (thrown: unknown) => A): A => Result.getOrElse(Result.try(f), fallback)

const unreadable = (what: string) => (thrown: unknown) =>
  `[${what} threw ${guard(() => String(thrown instanceof Error ? thrown.message : thrown), () => "")}]`

/** A `_tag`, else an Error's name, else "Error". */
const tagOf = (error: object): string =>
  guard(() => {
    const tag: unknown = Reflect.get(error, "_tag")
    if (tag !== undefined) return String(tag)
    return error instanceof Error ? String(error.name) : "Error"
  }, () => "Error")

const messageOf = (error: object): string =>
  guard(() => (error instanceof Error ? String(error.message) : ""), unreadable("message"))

const causeOf = (error: object, depth: number): string =>
  guard(() => {
    const cause: unknown = error instanceof Error ? error.cause : undefined
    if (cause === undefined) return ""
    return depth < maxCauseDepth ? ` (cause: ${render(cause, depth + 1)})` : " (cause: …)"
  }, () => "")

/** Own enumerable fields but `_tag`, each read on its own so one throwing getter hides only itself. */
const fieldsOf = (error: object): string =>
  guard(() => {
    const entries = Object.keys(error).filter((key) => key !== "_tag").map((key) =>
      [key, guard(() => Reflect.get(error, key), unreadable(key))] as const
    )
    return entries.length === 0 ? "" : Formatter.format(Object.fromEntries(entries))
  }, unreadable("fields"))

/** A tagged error without a message shows its fields; an Error shows its message and cause. */
const render = (error: unknown, depth: number): string => {
  if (typeof error === "string") return error === "" ? "(empty string)" : error
  if (typeof error !== "object" || error === null) return Formatter.format(error)
  const tag = tagOf(error)
  const message = messageOf(error)
  if (message !== "") return `${tag}: ${message}${causeOf(error, depth)}`
  const fields = fieldsOf(error)
  return fields === "" ? tag : `${tag}: ${fields}`
}

const renderTotal = (value: unknown): string =>
  guard(() => render(value, 0), (thrown) => `[unprintable value: ${guard(() => Formatter.format(thrown), () => "?")}]`)

// Credentials we can recognise. Over-redacting a harmless value is the lesser evil.
const secretKey = String.raw`[\w.-]*?(?:password|passwd|pwd|secret|token|api[_-]?key|` +
  String.raw`(?:access|private|secret|signing|encryption)[_-]?key|credentials?|authorization|cookie|session[_-]?id)`
/** `password=x`, `token: x`, `"apiKey":"x"`, `Authorization: Bearer x` (the scheme is kept). */
const secretPair = new RegExp(
  String.raw`(?<![\w.-])(["']?)(${secretKey})\1(\s*[=:]\s*)` +
    String.raw`("(?:[^"\\]|\\.)*"|'[^']*'|(?:(Bearer|Basic|Digest|Token)\s+)?[^\s&;,"'}\]]+)`,
  "gi"
)
/** The password of `scheme://user:password@host`. */
const urlPassword = /\b([a-z][a-z0-9+.-]*:\/\/[^\s:/?#@]*):[^\s@/]*@/gi
const bearer = /\bBearer\s+(?!\*\*\*)[\w.~+/=-]+/gi

/** Hide recognisable credentials: URL passwords, secret-named key/value pairs and JSON fields, bearer tokens. */
export const redact = (text: string): string =>
  text
    .replace(urlPassword, "$1:***@")
    .replace(secretPair, (_match, quote: string, key: string, separator: string, value: string, scheme?: string) => {
      const hidden = value.startsWith("\"") ? "\"***\"" : value.startsWith("'") ? "'***'" : scheme ? `${scheme} ***` : "***"
      return `${quote}${key}${quote}${separator}${hidden}`
    })
    .replace(bearer, "Bearer ***")

const escapeControl = (char: string): string =>
  char === "\t" ? "\\t" : char.length > 1 || char === "\n" || char === "\r" ? "\\n" : `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`

/** One line, storable as Postgres text: line breaks and control characters escaped, lone surrogates replaced. */
const oneLine = (text: string): string =>
  text.replace(/\r\n|[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, escapeControl).replace(/\p{Cs}/gu, "\uFFFD")

/** Cut to `max` with a marker saying how many characters of the `total` were cut; never splits a pair. */
const truncate = (text: string, total: number, max: number): string => {
  if (total <= max) return text
  const marker = (keep: number) => ` … [${total - keep} characters cut]`
  let keep = Math.max(0, max - marker(max).length)
  // Keeping less cuts more, and a longer count can lengthen the marker by a digit.
  while (keep > 0 && keep + marker(keep).length > max) keep--
  const kept = text.slice(0, keep).replace(/[\ud800-\udbff]$/, "")
  return `${kept}${marker(keep)}`
}

/**
 * Any text as one safe line of at most `max` characters: credentials redacted, control characters escaped,
 * lone surrogates replaced, the rest cut with a marker. Idempotent on its own output.
 */
export const safeLine = (text: string, max: number = maxLength): string => {
  // Only the head can survive the cap; bounding it first keeps redaction linear in `max`, not in the input.
  const head = text.length > max * 4 ? text.slice(0, max * 4) : text
  const line = oneLine(redact(head))
  return truncate(line, line.length + text.length - head.length, max)
}

/** A typed failure as one safe line, e.g. `Fatal: {"why":"bad input"}` or `Error: boom (cause: …)`. */
export const describeFailure = (error: unknown, max: number = maxLength): string => safeLine(renderTotal(error), max)

/** A defect as one safe line: `defect: ` and the defect described like a failure. */
export const describeDefect = (defect: unknown, max: number = maxLength): string =>
  safeLine(`defect: ${renderTotal(defect)}`, max)

/** A cause's first typed failure, else its first defect, else "interrupted". */
export const describeCause = (cause: Cause.Cause<unknown>, max: number = maxLength): string => {
  const failure = Cause.findErrorOption(cause)
  if (Option.isSome(failure)) return describeFailure(failure.value, max)
  const defect = Cause.findDefect(cause)
  if (Result.isSuccess(defect)) return describeDefect(defect.success, max)
  return Cause.hasInterrupts(cause) ? "interrupted" : "empty cause"
}
