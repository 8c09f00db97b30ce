import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Redacted } from "effect"
import { type PgqSettings, parseSettings, settingsWith } from "../src/Config.ts"
import { describeTarget } from "../src/Database.ts"

const parse = (env: Record<string, string>) => Effect.runSync(parseSettings(env).pipe(Effect.result))
const inCode = (overrides: Partial<PgqSettings>) => Effect.runSync(settingsWith(overrides).pipe(Effect.result))

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
      prefetch: "auto",
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
    const auto = parse({ PGQ_PREFETCH: "AUTO" })
    expect(auto._tag === "Success" && auto.success.prefetch).toBe("auto")
  })

  const bad: ReadonlyArray<[Record<string, string>, string]> = [
    [{ PGQ_CONCURRENCY: "0" }, "PGQ_CONCURRENCY"],
    [{ PGQ_CONCURRENCY: "1.5" }, "PGQ_CONCURRENCY"],
    [{ PGQ_PREFETCH: "-1" }, "PGQ_PREFETCH"],
    [{ PGQ_PREFETCH: "lots" }, "PGQ_PREFETCH"],
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

  describe("settings built in code (settingsWith) are validated like the environment's", () => {
    // Each case: the value in code, and the variable the same value breaks in the environment.
    const badInCode: ReadonlyArray<[Partial<PgqSettings>, string, string]> = [
      [{ concurrency: 0 }, "concurrency", "PGQ_CONCURRENCY"],
      [{ concurrency: 1.5 }, "concurrency", "PGQ_CONCURRENCY"],
      [{ concurrency: Number.NaN }, "concurrency", "PGQ_CONCURRENCY"],
      [{ prefetch: -1 }, "prefetch", "PGQ_PREFETCH"],
      [{ prefetch: "some" as unknown as number }, "prefetch", "PGQ_PREFETCH"],
      [{ vtSeconds: -3 }, "vtSeconds", "PGQ_VT_SECONDS"],
      [{ maxAttempts: "5" as unknown as number }, "maxAttempts", "PGQ_MAX_ATTEMPTS"],
      [{ healthPort: Option.some(70000) }, "healthPort", "PGQ_HEALTH_PORT"],
      [{ healthPort: 8080 as unknown as Option.Option<number> }, "healthPort", "PGQ_HEALTH_PORT"],
      [{ schema: "Robert'); DROP TABLE" }, "schema", "PGQ_SCHEMA"],
      [{ queues: ["ok", "not ok"] }, "queues", "PGQ_QUEUES"],
      [{ queues: [] }, "queues", "PGQ_QUEUES"],
      [{ logFormat: "xml" as PgqSettings["logFormat"] }, "logFormat", "PGQ_LOG_FORMAT"],
      [{ logLevel: "info" as PgqSettings["logLevel"] }, "logLevel", "PGQ_LOG_LEVEL"],
      [{ pgbouncer: "sometimes" as unknown as boolean }, "pgbouncer", "PGQ_PGBOUNCER"],
      [{ statusUrl: Option.some("ftp://status.internal") }, "statusUrl", "PGQ_STATUS_URL"],
      [{ reaperIntervalSeconds: Number.POSITIVE_INFINITY }, "reaperIntervalSeconds", "PGQ_REAPER_INTERVAL_SECONDS"],
      [{ maxRssMb: Option.some(0) }, "maxRssMb", "PGQ_MAX_RSS_MB"],
      [{ databaseUrl: Option.some("postgres://u:pw@h/db") as unknown as PgqSettings["databaseUrl"] }, "databaseUrl", "DATABASE_URL"],
      [{ pollIntervalMs: 300, pollMaxMs: 200 }, "pollMaxMs", "PGQ_POLL_MAX_MS"],
      [{ reaperIntervalSeconds: 10 }, "reaperIntervalSeconds", "PGQ_REAPER_INTERVAL_SECONDS"],
      [{ heartbeatSeconds: 20 }, "heartbeatSeconds", "PGQ_PROCESS_STALE_SECONDS"]
    ]
    for (const [overrides, field, variable] of badInCode) {
      it(`rejects ${JSON.stringify(overrides)} naming ${field} and ${variable}`, () => {
        const result = inCode(overrides)
        expect(result._tag).toBe("Failure")
        if (result._tag !== "Failure") return
        expect(result.failure._tag).toBe("InvalidConfig")
        expect(result.failure.message).toContain(field)
        expect(result.failure.message).toContain(variable)
        expect(result.failure.message).not.toContain("pw@") // a secret is never echoed
      })
    }

    it("accepts valid values, with the environment's defaults and normalisations", () => {
      const result = inCode({ concurrency: 3, queues: ["a", "b", "a"], vtSeconds: 60, processes: 100 })
      expect(result._tag).toBe("Success")
      if (result._tag !== "Success") return
      expect(result.success).toMatchObject({ concurrency: 3, queues: ["a", "b"], processes: 64, schema: "pgq" })
      // derived like PGQ_VT_SECONDS=60 derives it: max(30, vt)
      expect(result.success.shutdownGraceSeconds).toBe(60)
      const fromEnv = parse({ PGQ_CONCURRENCY: "3", PGQ_QUEUES: "a,b,a", PGQ_VT_SECONDS: "60", PGQ_PROCESSES: "100" })
      expect(fromEnv._tag === "Success" && fromEnv.success).toEqual(result.success)
    })

    it("a message shows the value as it was written: the variable's text quoted, a value from code as is", () => {
      const fromEnv = parse({ PGQ_CONCURRENCY: "0" })
      expect(fromEnv._tag === "Failure" && fromEnv.failure.message).toBe('PGQ_CONCURRENCY: expected a positive integer, got "0"')
      const fromCode = inCode({ concurrency: 0 })
      expect(fromCode._tag === "Failure" && fromCode.failure.message).toBe(
        "concurrency (PGQ_CONCURRENCY): expected a positive integer, got 0"
      )
    })

    it("a field left undefined takes its default", () => {
      const result = inCode({ concurrency: undefined } as unknown as Partial<PgqSettings>)
      expect(result._tag === "Success" && result.success.concurrency).toBe(10)
    })
  })
})
