/**
 * `node dist/reaper.js`: the leader-elected maintenance process. Run several replicas; exactly one leads
 * (a TTL'd lease row, fenced by its term), the others stand by and take over within one lease plus one
 * interval after the leader dies, or within one interval after it shuts down (SIGTERM releases the lease).
 */
import { Effect, Layer, Option } from "effect"
import { parseSettings, type PgqSettings } from "../Config.ts"
import { databaseLayer, loggerLayer, runMain } from "../Main.ts"
import { migrate } from "../Migrations.ts"
import * as Reaper from "../Reaper.ts"

const healthServer = (settings: PgqSettings) =>
  Option.match(settings.healthPort, {
    onNone: () => Effect.void,
    onSome: (port) =>
      // Imported on demand, as in Worker.serve: the HTTP server stack is a large share of start-up.
      Reaper.Reaper.use((reaper) =>
        Effect.flatMap(Effect.promise(() => import("../Health.ts")), (Health) =>
          Layer.build(Health.layer(port, {
            check: "pgq_reaper_tick",
            ageKey: "seconds_since_last_tick",
            staleAfterSeconds: settings.healthStaleSeconds,
            liveness: reaper.liveness
          })))
      )
  })

/** PGQ_DASHBOARD_PORT: the dashboard, with this reaper's leadership and last tick. */
const dashboard = (settings: PgqSettings) =>
  Option.match(settings.dashboardPort, {
    onNone: () => Effect.void,
    onSome: (port) =>
      Reaper.Reaper.use((reaper) =>
        Effect.gen(function*() {
          const { start } = yield* Effect.promise(() => import("../DashboardServer.ts"))
          // A pool of its own: a slow count on a large table must never hold up the leader's renewals.
          const pool = yield* Layer.build(databaseLayer(settings, "pgq-reaper-dashboard", 2))
          const url = yield* start(settings, { port, host: settings.dashboardHost, reaper }).pipe(Effect.provide(pool))
          yield* Effect.logInfo(`dashboard on ${url} (${settings.dashboardActions ? "actions on, with the token" : "read-only"})`)
        })
      )
  })

const program = Effect.gen(function*() {
  const settings = yield* parseSettings(process.env)
  const options = Reaper.optionsFromSettings(settings)
  yield* Effect.gen(function*() {
    if (settings.autoMigrate) yield* migrate(settings.schema)
    yield* Effect.gen(function*() {
      yield* healthServer(settings)
      yield* dashboard(settings)
      yield* Effect.logInfo(
        `reaper started: lease ${settings.leaseSeconds}s, interval ${settings.reaperIntervalSeconds}s, schema ${settings.schema}`
      )
      return yield* Effect.never
    }).pipe(Effect.provide(Reaper.layerFromOptions(options)), Effect.scoped)
  }).pipe(
    Effect.provide(databaseLayer(settings, "pgq-reaper", 5)),
    Effect.provide(loggerLayer(settings.logFormat))
  )
})

runMain(program)
