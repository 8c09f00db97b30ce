/**
 * `npm start -- --jobs N` (`node dist/cli.js dev`) end to end on its own embedded Postgres: it must exit by
 * itself (.ci/run relies on it) after showing the fan-out's callback and the reaper's recovery of the lost
 * execution, in lines for a person.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { chmodSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort, spawnNode } from "./processes.ts"

/** A folder the postgres user can enter when we are root (mkdtemp makes 0700 ones), removed afterwards. */
const scratchDir = Effect.acquireRelease(
  Effect.sync(() => {
    const dir = mkdtempSync(join(tmpdir(), "pgq-demo-"))
    chmodSync(dir, 0o755)
    return dir
  }),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

describe("npm start (cli.js dev)", () => {
  it.live("fans out, sums the callback's results, the reaper ends the lost execution ERROR, and exits 0", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir
      const port = yield* freePort
      const child = yield* spawnNode(
        "cli.js",
        { PGQ_DEV_DIR: join(dir, "pgq"), PGQ_DEV_PORT: String(port), PGQ_LOG_FORMAT: "" },
        ["dev", "--jobs", "20"]
      )
      const { code } = yield* child.exit
      const output = child.output()
      expect(code, output).toBe(0)
      expect(output).toContain("fan-out squares-1: 20 batches")
      expect(output).toMatch(/callback of squares-1 .*: 20 results in batch order .*sum of squares = 2470/)
      expect(output).toMatch(/fan-out squares-1: COMPLETED after [\d.]+ s/)
      expect(output).toMatch(
        /execution lost-1 stranded → reaper marked it ERROR after [\d.]+ s: \[reaper-recovery\] Execution stranded/
      )
      expect(output).toContain("it acks the lost batch of lost-1 without running it")
      expect(output).toMatch(/job \d+ \(square\) not run: execution lost-1 has already ended/)
      expect(output).toMatch(/^drained in [\d.]+s/m)
      // Lines for a person: no JSON log records.
      expect(output).not.toMatch(/^\{"message"/m)
    }), { timeout: 120_000 })
})
