/**
 * The result of `npm run bench -- --peers` (bench/compare.ts) and the README table generated from it.
 * The table sits in README.md between `<!-- bench:peers:start -->` and `<!-- bench:peers:end -->`;
 * `node bench/readme-table.ts [results.json]` rewrites it from a saved result (default bench/peers/last-run.json) and
 * keeps that result as bench/peers/last-run.json (committed with the table); `npm run bench -- --peers --readme` does
 * both after the run.
 */
import { readFileSync, writeFileSync } from "node:fs"
import type { Summary } from "./support.ts"

export interface RuntimeInfo {
  readonly id: string
  readonly library: string
  readonly version: string
  readonly profile: string
  readonly ours: boolean
  /** The profile's settings per task (noop: enqueue and drain, latency, long: rescue). */
  readonly settings: Readonly<Record<string, string>>
}

export interface RowResult {
  readonly key: string
  readonly label: string
  readonly unit: string
  readonly better: "higher" | "lower"
  /** A row the issue sets a target on (start-up is reported, not targeted). */
  readonly target: boolean
  /** Per runtime id; a median of Infinity is "did not happen within the limit" (rescue). */
  readonly values: Readonly<Record<string, Summary>>
  /** The peer profile with the best median (the ratio's denominator). */
  readonly bestPeer: string | null
  /** Per ours runtime id: ours ÷ best peer, oriented so that > 1 means we are ahead. */
  readonly ratios: Readonly<Record<string, number | null>>
  /** Per runtime id, a qualifier of its value (a drain stopped at its time limit). */
  readonly notes?: Readonly<Record<string, string>>
}

export interface ComparisonResult {
  readonly mode: "peers"
  readonly startedAt: string
  readonly finishedAt: string
  readonly environment: {
    readonly commit: string
    readonly dirty: boolean
    readonly node: string
    readonly cpus: number
    readonly cpuModel: string
    readonly database: string
    readonly postgres: string
    readonly synchronousCommit: string
    readonly fsync: string
    readonly sharedBuffers: string
  }
  readonly parameters: Readonly<Record<string, unknown>>
  readonly runtimes: ReadonlyArray<RuntimeInfo>
  readonly rows: ReadonlyArray<RowResult>
  readonly details: Readonly<Record<string, unknown>>
  readonly table: string
}

export const START = "<!-- bench:peers:start -->"
export const END = "<!-- bench:peers:end -->"

const number = (x: number) =>
  Math.abs(x) >= 100 ? Math.round(x).toLocaleString("en-US") : x.toFixed(Math.abs(x) >= 10 ? 1 : 2)

const cell = (result: ComparisonResult, row: RowResult, id: string) => {
  const s = row.values[id]
  if (s === undefined) return "–"
  if (!Number.isFinite(s.median)) {
    return row.key === "rescue" ? `> ${String(result.parameters.rescueLimitSeconds ?? "?")} s` : "fell behind"
  }
  const text = number(s.median) + (row.notes?.[id] === undefined ? "" : ` (${row.notes[id]})`)
  return row.bestPeer === id ? `**${text}**` : text
}

const ratio = (r: number | null | undefined) =>
  r === null || r === undefined ? "–" : !Number.isFinite(r) ? "∞" : r >= 1 ? `**${r.toFixed(2)}**` : r.toFixed(2)

/** The markdown between the markers: what was run, the table, how to read it. */
export const renderMarkdown = (result: ComparisonResult) => {
  const ours = result.runtimes.filter((rt) => rt.ours)
  const peers = result.runtimes.filter((rt) => !rt.ours)
  const title = (rt: RuntimeInfo) => (rt.ours ? `ours, ${rt.profile}` : `${rt.library} ${rt.profile}`)
  const header = ["scenario", "unit", ...result.runtimes.map(title), ...ours.map((rt) => `ours ${rt.profile} ÷ best peer`)]
  const lines = [
    `| ${header.join(" | ")} |`,
    `|${header.map((_, i) => (i < 2 ? "---" : "---:")).join("|")}|`,
    ...result.rows.map((row) =>
      `| ${
        [
          row.label,
          row.unit,
          ...result.runtimes.map((rt) => cell(result, row, rt.id)),
          ...ours.map((rt) => (row.target ? ratio(row.ratios[rt.id]) : `(${ratio(row.ratios[rt.id]).replaceAll("**", "")})`))
        ].join(" | ")
      } |`
    )
  ]
  const env = result.environment
  const versions = peers.filter((rt) => rt.profile === "defaults").map((rt) => `${rt.library} ${rt.version}`).join(", ")
  const recommended = ours.find((rt) => rt.profile !== "defaults")?.settings.noop ?? ""
  return [
    `Measured by \`npm run bench -- --peers\` in one run on one server (${env.cpus} cores, ${
      env.postgres.split(" ").slice(0, 2).join(" ")
    }, Node ${env.node}, ${result.startedAt.slice(0, 10)}, commit ${env.commit}${env.dirty ? " with uncommitted changes" : ""}), against ${versions}; medians of ${
      String(result.parameters.runs)
    } interleaved runs, fresh schemas per run. Each peer at its defaults and at its best documented settings; ours at its defaults and at the settings we recommend (\`${recommended}\`). The best peer profile of each row is in bold; a ratio is ours ÷ that profile, oriented so that above 1 means effect-pg-queue is ahead (bold). Drain workers are started and connected before the clock (start-up is its own row); the peers' best drain profiles hold 500 jobs per process (graphile-worker's documented \`localQueue\`, pg-boss \`batchSize\` 50 × 10 slots), ours at defaults what its slots start within 50 ms at the recent pace (\`PGQ_PREFETCH=auto\`: up to 1000 for no-op jobs, none for long ones), recommended for a fleet of short jobs only a fixed 1000; rescue is the seconds from SIGKILL of a worker holding 50 long jobs until all 50 have started again on a fresh worker. Generated by \`bench/readme-table.ts\` from that run's result, kept in \`bench/peers/last-run.json\`; scenarios and profiles in \`bench/README.md\`.`,
    "",
    ...lines
  ].join("\n")
}

/** JSON has no Infinity (a rescue that did not happen, its ratio): written as the strings "Infinity" / "-Infinity". */
export const toJson = (result: ComparisonResult) =>
  JSON.stringify(result, (_key, value: unknown) =>
    typeof value === "number" && !Number.isFinite(value) && !Number.isNaN(value) ? String(value) : value, 2) + "\n"

export const fromJson = (text: string): ComparisonResult =>
  JSON.parse(text, (_key, value: unknown) => (value === "Infinity" || value === "-Infinity" ? Number(value) : value))

/** Replaces what is between the markers in `readmePath` with the table of `result`, and keeps `result` beside it. */
export const rewriteReadme = (readmePath: string, result: ComparisonResult) => {
  writeFileSync(new URL("./peers/last-run.json", import.meta.url), toJson(result))
  const text = readFileSync(readmePath, "utf8")
  const start = text.indexOf(START)
  const end = text.indexOf(END)
  if (start < 0 || end < start) throw new Error(`${readmePath}: no ${START} … ${END} markers`)
  writeFileSync(readmePath, `${text.slice(0, start + START.length)}\n${renderMarkdown(result)}\n${text.slice(end)}`)
}
