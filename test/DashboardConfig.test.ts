import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Redacted } from "effect"
import { parseSettings } from "../src/Config.ts"

const parse = (env: Record<string, string>) => Effect.runSync(parseSettings(env).pipe(Effect.result))
const failure = (env: Record<string, string>) => {
  const result = parse(env)
  return result._tag === "Failure" ? result.failure.message : "parsed"
}

describe("Dashboard settings", () => {
  it("default: no dashboard in the reaper, loopback, read-only", () => {
    const result = parse({})
    if (result._tag !== "Success") throw new Error("defaults failed")
    expect(Option.isNone(result.success.dashboardPort)).toBe(true)
    expect(result.success.dashboardHost).toBe("127.0.0.1")
    expect(result.success.dashboardActions).toBe(false)
  })

  it("actions need a token of at least 16 characters; bad values name their variable", () => {
    expect(failure({ PGQ_DASHBOARD_ACTIONS: "true" })).toBe("PGQ_DASHBOARD_TOKEN: must be set when PGQ_DASHBOARD_ACTIONS=true")
    expect(failure({ PGQ_DASHBOARD_ACTIONS: "true", PGQ_DASHBOARD_TOKEN: "short" })).toBe(
      "PGQ_DASHBOARD_TOKEN: must be at least 16 characters"
    )
    expect(failure({ PGQ_DASHBOARD_ACTIONS: "maybe" })).toContain("PGQ_DASHBOARD_ACTIONS")
    expect(failure({ PGQ_DASHBOARD_PORT: "http" })).toContain("PGQ_DASHBOARD_PORT")
    const ok = parse({
      PGQ_DASHBOARD_PORT: "8089",
      PGQ_DASHBOARD_HOST: "0.0.0.0",
      PGQ_DASHBOARD_ACTIONS: "true",
      PGQ_DASHBOARD_TOKEN: "0123456789abcdef"
    })
    if (ok._tag !== "Success") throw new Error("valid dashboard settings failed")
    expect(Option.getOrNull(ok.success.dashboardPort)).toBe(8089)
    expect(ok.success.dashboardHost).toBe("0.0.0.0")
    expect(Option.map(ok.success.dashboardToken, Redacted.value)).toEqual(Option.some("0123456789abcdef"))
  })
})
