import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Redacted } from "effect"
import { parseSettings } from "../src/Config.ts"
import { describeTarget } from "../src/Database.ts"

const parse = (env: Record<string, string>) => Effect.runSync(parseSettings(env).pipe(Effect.result))

describe("Config", () => {
  it("defaults match DESIGN.md", () => {
    const result = parse({})
    expect(result._tag).toBe("Success")
    if (result._tag !== "Success") return
    const s = result.success
    expect(s).toMatchObject({
      schema: "pgq",
      pgbouncer: false,
      notify: true,
      queues: ["default"],
      concurrency: 10,
      prefetch: 0,
      processes: 1,
      vtSeconds: 30,
      maxAttempts: 5,
      pollIntervalMs: 100,
      pollMaxMs: 2000,
      shutdownGraceSeconds: 30,
      leaseSeconds: 10,
      reaperIntervalSeconds: 5,
      barrierTtlSeconds: 21600,
      stuckTimeoutSeconds: 9000,
      healthStaleSeconds: 60,
      logFormat: "json",
      autoMigrate: true
    })
    expect(Option.isNone(s.databaseUrl)).toBe(true)
    expect(Option.isNone(s.healthPort)).toBe(true)
  })

  it("parses valid values; empty counts as unset; queue lists are trimmed and de-duplicated", () => {
    const result = parse({
      PGQ_QUEUES: " emails, reports ,emails,, ",
      PGQ_PGBOUNCER: "TRUE",
      PGQ_HEALTH_PORT: "8080",
      PGQ_CONCURRENCY: "",
      PGQ_PREFETCH: "20",
      PGQ_REAPER_INTERVAL_SECONDS: "2.5",
      PGQ_LOG_FORMAT: "pretty"
    })
    expect(result._tag).toBe("Success")
    if (result._tag !== "Success") return
    expect(result.success.queues).toEqual(["emails", "reports"])
    expect(result.success.pgbouncer).toBe(true)
    expect(result.success.healthPort).toEqual(Option.some(8080))
    expect(result.success.concurrency).toBe(10)
    expect(result.success.prefetch).toBe(20)
    expect(result.success.reaperIntervalSeconds).toBe(2.5)
  })

  const bad: ReadonlyArray<[Record<string, string>, string]> = [
    [{ PGQ_CONCURRENCY: "0" }, "PGQ_CONCURRENCY"],
    [{ PGQ_CONCURRENCY: "1.5" }, "PGQ_CONCURRENCY"],
    [{ PGQ_PREFETCH: "-1" }, "PGQ_PREFETCH"],
    [{ PGQ_VT_SECONDS: "-3" }, "PGQ_VT_SECONDS"],
    [{ PGQ_MAX_ATTEMPTS: "abc" }, "PGQ_MAX_ATTEMPTS"],
    [{ PGQ_HEALTH_PORT: "70000" }, "PGQ_HEALTH_PORT"],
    [{ PGQ_SCHEMA: "Robert'); DROP TABLE" }, "PGQ_SCHEMA"],
    [{ PGQ_QUEUES: "ok,not ok" }, "PGQ_QUEUES"],
    [{ PGQ_QUEUES: " , " }, "PGQ_QUEUES"],
    [{ PGQ_LOG_FORMAT: "xml" }, "PGQ_LOG_FORMAT"],
    [{ PGQ_PGBOUNCER: "sometimes" }, "PGQ_PGBOUNCER"],
    [{ PGQ_NOTIFY: "maybe" }, "PGQ_NOTIFY"],
    [{ PGQ_POLL_INTERVAL_MS: "300", PGQ_POLL_MAX_MS: "200" }, "PGQ_POLL_MAX_MS"],
    [{ PGQ_REAPER_INTERVAL_SECONDS: "10" }, "PGQ_REAPER_INTERVAL_SECONDS"],
    [{ PGQ_HEARTBEAT_SECONDS: "20" }, "PGQ_PROCESS_STALE_SECONDS"]
  ]
  for (const [env, variable] of bad) {
    it(`rejects ${JSON.stringify(env)} naming ${variable}`, () => {
      const result = parse(env)
      expect(result._tag).toBe("Failure")
      if (result._tag !== "Failure") return
      expect(result.failure._tag).toBe("InvalidConfig")
      expect(result.failure.variable).toBe(variable)
      expect(result.failure.message).toContain(variable)
    })
  }

  it("describes a database target without its password", () => {
    expect(describeTarget(Redacted.make("postgres://app:s3cret@db.internal:6432/jobs?sslmode=require"))).toBe(
      "db.internal:6432/jobs"
    )
  })
})
