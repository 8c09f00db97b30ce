/**
 * Expected failures of the entrypoints (bad configuration, an unreachable database, an embedded Postgres that
 * cannot start) print ONE line naming the program and the culprit, and exit 1; PGQ_LOG_LEVEL=debug shows the
 * whole cause.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { chmodSync, mkdtempSync, rmSync } from "node:fs"
import { createServer, type Server } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort, spawnNode } from "./processes.ts"

const run = (script: string, env: Record<string, string>, args: ReadonlyArray<string> = []) =>
  Effect.gen(function*() {
    const child = yield* spawnNode(script, env, args)
    const { code } = yield* child.exit
    return { code, lines: child.output().trim().split("\n") }
  })

/** A port that refuses connections: free a moment ago, nobody listens. */
const closedPort = freePort

/** A port something else listens on, for as long as the scope is open. */
const takenPort = Effect.acquireRelease(
  Effect.callback<{ server: Server; port: number }>((resume) => {
    const server = createServer()
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      resume(Effect.succeed({ server, port: typeof address === "object" && address !== null ? address.port : 0 }))
    })
  }),
  ({ server }) => Effect.callback<void>((resume) => void server.close(() => resume(Effect.void)))
).pipe(Effect.map(({ port }) => port))

/** A folder the postgres user can enter when we are root (mkdtemp makes 0700 ones), removed afterwards. */
const scratchDir = Effect.acquireRelease(
  Effect.sync(() => {
    const dir = mkdtempSync(join(tmpdir(), "pgq-failures-"))
    chmodSync(dir, 0o755)
    return dir
  }),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

describe("expected failures print one line and exit 1", () => {
  it.live("worker: PGQ_TASKS unset, then DATABASE_URL unset", () =>
    Effect.gen(function*() {
      const noTasks = yield* run("worker.js", {})
      expect(noTasks).toEqual({
        code: 1,
        lines: ["pgq-worker: PGQ_TASKS: is not set: name the module exporting your task registry"]
      })
      const noUrl = yield* run("worker.js", { PGQ_TASKS: "./dist/demo/tasks.js" })
      expect(noUrl).toEqual({ code: 1, lines: ["pgq-worker: DATABASE_URL: is not set"] })
    }))

  it.live("worker: the database refuses connections", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const result = yield* run("worker.js", {
        DATABASE_URL: `postgres://pgq:secret@127.0.0.1:${port}/jobs`,
        PGQ_TASKS: "./dist/demo/tasks.js"
      })
      expect(result.code).toBe(1)
      expect(result.lines).toHaveLength(1)
      expect(result.lines[0]).toMatch(new RegExp(`^pgq-worker: cannot connect to 127\\.0\\.0\\.1:${port}/jobs: .*ECONNREFUSED`))
      expect(result.lines[0]).not.toContain("secret")
    }))

  it.live("reaper and cli: an invalid variable", () =>
    Effect.gen(function*() {
      const reaper = yield* run("reaper.js", { PGQ_LEASE_SECONDS: "soon" })
      expect(reaper).toEqual({ code: 1, lines: ["pgq-reaper: PGQ_LEASE_SECONDS: expected a positive integer, got \"soon\""] })
      const cli = yield* run("cli.js", { PGQ_LOG_LEVEL: "loud" }, ["status"])
      expect(cli.code).toBe(1)
      expect(cli.lines).toHaveLength(1)
      expect(cli.lines[0]).toMatch(/^pgq-cli: PGQ_LOG_LEVEL: expected trace, debug, info, warn or error, got "loud"$/)
    }))

  it.live("cli dev: the embedded Postgres cannot start", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      const notAFolder = yield* run("cli.js", { PGQ_DEV_DIR: "/dev/null/pgq", PGQ_DEV_PORT: "1" }, ["dev", "--jobs", "1"])
      expect(notAFolder.code).toBe(1)
      expect(notAFolder.lines.at(-1)).toMatch(/^pgq-cli: cannot connect to the embedded Postgres on port 1: creating \/dev\/null\/pgq: /)
      const port = yield* takenPort
      const portTaken = yield* run("cli.js", { PGQ_DEV_DIR: join(dir, "dev"), PGQ_DEV_PORT: String(port) }, ["dev", "--jobs", "1"])
      expect(portTaken.code).toBe(1)
      // The demo's own progress line, then the failure.
      expect(portTaken.lines).toEqual([
        `starting embedded Postgres on port ${port} ...`,
        expect.stringMatching(new RegExp(`^pgq-cli: cannot connect to the embedded Postgres on port ${port}: .*port ${port} is taken`))
      ])
    }), { timeout: 60_000 })

  it.live("PGQ_LOG_LEVEL=debug prints the whole cause, stack included", () =>
    Effect.gen(function*() {
      const result = yield* run("worker.js", { PGQ_TASKS: "./dist/demo/tasks.js", PGQ_LOG_LEVEL: "debug" })
      expect(result.code).toBe(1)
      expect(result.lines[0]).toContain("DATABASE_URL: is not set")
      expect(result.lines.some((line) => /^\s+at /.test(line))).toBe(true)
    }))
})
