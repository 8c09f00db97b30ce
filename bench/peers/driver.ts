/**
 * What `bench/compare.ts` needs of a peer (pg-boss, graphile-worker): a client in the bench process that
 * installs the peer fresh and enqueues through its public API, and the command of its worker process.
 *
 * The peers' code is plain JavaScript (`bench/peers/*.mjs`) loaded with a dynamic `import()` after
 * `bench/peers/node_modules` is installed, so the library's typecheck never needs the peers installed.
 */

/** The bench's three tasks: a no-op (enqueue, drain), one recording its start latency, one running for an hour (rescue). */
export type BenchTask = "noop" | "latency" | "long"

export interface PeerOptions {
  readonly url: string
  /** The peer's own schema, dropped and installed again by `reset()`. */
  readonly schema: string
  /** Where its tasks record (`latency (i, seconds)`, `started (i, pid, at)`); the harness creates it. */
  readonly recordSchema: string
  /** One of the module's `profiles`. */
  readonly profile: string
}

export interface WorkerCommand {
  /** Arguments of `node`, relative to the repository root. */
  readonly args: ReadonlyArray<string>
  readonly env: Readonly<Record<string, string>>
  /** The worker prints a line containing this once it is connected and working. */
  readonly readyLine: string
}

export interface PeerClient {
  /** The profile's settings, for the report. */
  readonly settings: (task: BenchTask) => string
  /** Drop the peer's schema and install it again (and its queues). */
  readonly reset: () => Promise<void>
  /** One job per call (the single-enqueue scenario runs 8 callers at once). */
  readonly send: (task: BenchTask, i: number) => Promise<void>
  /** Jobs `from` .. `from + count - 1` in one call of the peer's batch API. */
  readonly sendMany: (task: BenchTask, from: number, count: number) => Promise<void>
  /** Jobs of `task` not finished yet (queued or running). */
  readonly pending: (task: BenchTask) => Promise<number>
  /** Fresh planner statistics of the peer's job tables. */
  readonly analyze: () => Promise<void>
  /** The tables the drain's start gate locks (schema-qualified), so no worker claims before the clock starts. */
  readonly gateTables: () => ReadonlyArray<string>
  readonly worker: (task: BenchTask, concurrency: number) => WorkerCommand
  /** Drop the peer's schema (the end of the run). */
  readonly drop: () => Promise<void>
  readonly close: () => Promise<void>
}

export interface PeerModule {
  readonly name: string
  readonly version: string
  readonly profiles: ReadonlyArray<string>
  readonly make: (options: PeerOptions) => Promise<PeerClient>
}

export const isPeerModule = (u: unknown): u is PeerModule =>
  typeof u === "object" && u !== null && "make" in u && typeof u.make === "function" && "name" in u &&
  typeof u.name === "string" && "profiles" in u && Array.isArray(u.profiles)
