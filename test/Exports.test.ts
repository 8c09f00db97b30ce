/**
 * What a host composes from the package entry alone, without rebuilding internals: the settings parser (one
 * validation for the environment and code), the database layer from settings, the logger layer, the queue, and
 * the Promise facade. The built entry (dist/index.js, the package's `main`) exports the same.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import * as Pgq from "../src/index.ts"
import { databaseUrl, uniqueSchema } from "./support.ts"

const hostApi = (entry: Record<string, unknown>) => ({
  "Config.parseSettings": typeof (entry.Config as Record<string, unknown>)?.parseSettings,
  "Config.settingsWith": typeof (entry.Config as Record<string, unknown>)?.settingsWith,
  "Config.settingsFrom": typeof (entry.Config as Record<string, unknown>)?.settingsFrom,
  "Database.layer": typeof (entry.Database as Record<string, unknown>)?.layer,
  "Main.databaseLayer": typeof (entry.Main as Record<string, unknown>)?.databaseLayer,
  "Main.loggerLayer": typeof (entry.Main as Record<string, unknown>)?.loggerLayer,
  "Task.forWorker": typeof (entry.Task as Record<string, unknown>)?.forWorker,
  startWorker: typeof entry.startWorker,
  createClient: typeof entry.createClient
})

const allFunctions = Object.fromEntries(Object.keys(hostApi({})).map((name) => [name, "function"]))

describe("the package entry", () => {
  it("src/index.ts exports what a host composes with", () => {
    expect(hostApi(Pgq as unknown as Record<string, unknown>)).toEqual(allFunctions)
  })

  it("dist/index.js (package.json main) exports the same", async () => {
    const built = (await import(new URL("../dist/index.js", import.meta.url).href)) as Record<string, unknown>
    expect(hostApi(built)).toEqual(allFunctions)
  })

  it.effect("a host composes settings, database, logger and queue from the entry alone", () =>
    Effect.gen(function*() {
      const schema = uniqueSchema("exports")
      const settings = yield* Pgq.Config.settingsWith({
        databaseUrl: Option.some(Redacted.make(databaseUrl())),
        schema,
        logLevel: "Warn"
      })
      const database = Pgq.Main.databaseLayer(settings, "host-app", 2)
      const queue = Pgq.Queue.Queue.fromSettings(settings).pipe(
        Layer.provideMerge(Layer.effectDiscard(Pgq.Migrations.migrate(schema))),
        Layer.provideMerge(database),
        Layer.provide(Pgq.Main.loggerLayer(settings.logFormat))
      )
      const pending = yield* Effect.gen(function*() {
        const q = yield* Pgq.Queue.Queue
        yield* q.enqueue("host.task", { n: 1 }, { queue: "host" })
        const counts = yield* q.pending(["host"])
        yield* SqlClient.SqlClient.use((sql) => sql.unsafe(`DROP SCHEMA "${schema}" CASCADE`))
        return counts
      }).pipe(Effect.provide(queue))
      expect(pending).toEqual([{ queue: "host", ready: 1, scheduled: 0, claimed: 0, pending: 1, capped: false }])
    }))
})
