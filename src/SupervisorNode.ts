/**
 * The supervisor as `node dist/worker.js` runs it when PGQ_PROCESSES > 1: children forked from the worker's
 * own entry file with an IPC channel (`node:child_process.fork`; effect/process has none), the fleet's
 * /health and /metrics on PGQ_HEALTH_PORT, and the supervisor's row in `process`.
 */
import { type Cause, Deferred, Effect, Layer, Option, Queue as Q, Schema } from "effect"
import { fork } from "node:child_process"
import { access } from "node:fs/promises"
import type { PgqSettings } from "./Config.ts"
import { ForkFailed } from "./Errors.ts"
import type { ChildExit } from "./Fleet.ts"
import type * as Health from "./Health.ts"
import { ProcessRegistry } from "./ProcessRegistry.ts"
import { exitIfShutdownHangs } from "./Shutdown.ts"
import { ChildMessage, type ForkedChild, Launcher, Stop, Supervisor } from "./Supervisor.ts"
import { shutdownDeadlineSeconds } from "./Worker.ts"

/** Set by the supervisor in each child's environment: the child's slot (0-based). */
export const SLOT_VARIABLE = "PGQ_SUPERVISOR_SLOT"

/**
 * A child's drain window: the shared grace less a margin (2 s at most, a quarter at least), so a child that
 * interrupts its last jobs still has time to release them before the supervisor's SIGKILL at the deadline.
 */
export const childGraceSeconds = (graceSeconds: number): number => graceSeconds - Math.min(2, graceSeconds / 4)

/**
 * A child's environment: the supervisor's, as one plain worker (no supervisor, no health server: the fleet
 * serves it) that does not migrate (the supervisor did), drains within its share of the grace.
 */
export const childEnv = (
  env: Readonly<Record<string, string | undefined>>,
  settings: PgqSettings,
  slot: number
): Record<string, string> => {
  const { PGQ_HEALTH_PORT: _healthPort, ...rest } = env
  const defined = Object.fromEntries(Object.entries(rest).flatMap(([k, v]) => (v === undefined ? [] : [[k, v]])))
  return {
    ...defined,
    [SLOT_VARIABLE]: String(slot),
    PGQ_PROCESSES: "1",
    PGQ_AUTO_MIGRATE: "false",
    PGQ_SHUTDOWN_GRACE_SECONDS: String(childGraceSeconds(settings.shutdownGraceSeconds))
  }
}

const encodeStop = Schema.encodeSync(Stop)
const decodeMessage = Schema.decodeUnknownOption(ChildMessage)

export interface NodeLauncherOptions {
  /** The file each child runs (the worker entrypoint). */
  readonly entry: string
  readonly processes: number
  readonly env: (slot: number) => Record<string, string>
}

/** Fork `entry` with an IPC channel; the child's stdout and stderr are the supervisor's. */
const forkNode = (options: NodeLauncherOptions) => (slot: number, inbox: Q.Enqueue<ChildMessage, Cause.Done>) =>
  Effect.gen(function*() {
    const failed = (reason: string) => new ForkFailed({ slot, processes: options.processes, reason })
    yield* Effect.tryPromise({
      try: () => access(options.entry),
      catch: () => failed(`the entry file ${options.entry} is missing`)
    })
    const exited = yield* Deferred.make<ChildExit>()
    const child = yield* Effect.try({
      try: () =>
        fork(options.entry, [], {
          env: options.env(slot),
          execArgv: process.execArgv,
          stdio: ["ignore", "inherit", "inherit", "ipc"]
        }),
      catch: (error) => failed(String(error))
    })
    // EAGAIN and ENOMEM arrive as an 'error' event instead of 'spawn'.
    yield* Effect.callback<void, ForkFailed>((resume) => {
      child.once("spawn", () => resume(Effect.void))
      child.once("error", (error) => resume(Effect.fail(failed(error.message))))
    })
    // Later errors (a send to a child that just died) show as its exit; unhandled, one would crash us.
    child.on("error", () => {})
    child.on("message", (raw: unknown) => Option.map(decodeMessage(raw), (message) => Q.offerUnsafe(inbox, message)))
    // The channel closes after the last message has been read, which may be after the exit.
    child.once("disconnect", () => Q.endUnsafe(inbox))
    child.once("exit", (code, signal) => Deferred.doneUnsafe(exited, Effect.succeed({ code, signal })))
    return {
      pid: child.pid ?? -1,
      exited: Deferred.await(exited),
      stop: Effect.sync(() => {
        if (child.connected) child.send(encodeStop({ _tag: "Stop" }), () => {})
      }),
      kill: Effect.sync(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
      })
    } satisfies ForkedChild
  })

export const nodeLauncher = (options: NodeLauncherOptions) =>
  Layer.succeed(Launcher, Launcher.of({ fork: forkNode(options) }))

/** The fleet's liveness: the oldest poll over every slot, null (503) while crash-looping. */
export const fleetCheck = (settings: Pick<PgqSettings, "healthStaleSeconds">, supervisor: Supervisor["Service"]): Health.HealthCheck => ({
  check: "pgq_fleet",
  ageKey: "oldest_child_seconds_since_poll",
  staleAfterSeconds: settings.healthStaleSeconds,
  liveness: supervisor.status.pipe(
    Effect.map((view) => ({
      ageSeconds: view.ageSeconds,
      extra: {
        alive_children: view.alive,
        processes: view.processes,
        crash_looping: view.crashLooping,
        slots: view.slots.map((s) => ({
          slot: s.slot,
          pid: s.pid,
          seconds_since_poll: Math.round(s.secondsSincePoll * 1000) / 1000,
          restarts: s.restarts,
          quick_deaths: s.crashes,
          last_exit: s.lastExit === null ? null : {
            pid: s.lastExit.pid,
            code: s.lastExit.code,
            signal: s.lastExit.signal,
            uptime_seconds: Math.round(s.lastExit.uptimeSeconds * 1000) / 1000,
            recycled: s.lastExit.recycled
          }
        }))
      }
    }))
  )
})

/**
 * What `node dist/worker.js` runs with PGQ_PROCESSES > 1: the fleet of children running `entry`, its
 * /health and /metrics, and the supervisor's `process` row, until interrupted; then every child drains
 * within one shared PGQ_SHUTDOWN_GRACE_SECONDS. Needs the database (for the `process` row).
 */
export const serve = (settings: PgqSettings, entry: string) => {
  // A crash-looping slot recovers once its child polls at least every idle poll interval (plus a slow claim).
  const freshSeconds = Math.min(settings.healthStaleSeconds, settings.pollMaxMs / 1000 + 2)
  const fleet = Supervisor.layer({
    processes: settings.processes,
    graceSeconds: settings.shutdownGraceSeconds,
    freshSeconds
  }).pipe(
    Layer.provide(nodeLauncher({
      entry,
      processes: settings.processes,
      env: (slot) => childEnv(process.env, settings, slot)
    }))
  )
  return Effect.gen(function*() {
    const supervisor = yield* Supervisor
    const registry = yield* ProcessRegistry
    yield* registry.register({
      kind: "supervisor",
      queues: settings.queues,
      every: settings.heartbeatSeconds,
      staleSeconds: settings.processStaleSeconds
    })
    yield* Option.match(settings.healthPort, {
      onNone: () => Effect.void,
      // Imported on demand, as in Worker.serve: the HTTP server stack is a large share of start-up.
      onSome: (port) =>
        Effect.flatMap(
          Effect.promise(() => import("./Health.ts")),
          (Health) => Layer.build(Health.layer(port, fleetCheck(settings, supervisor)))
        )
    })
    // Children are SIGKILLed at the shared deadline; past that only the supervisor's own statements remain.
    yield* exitIfShutdownHangs(shutdownDeadlineSeconds(settings), "pgq-worker")
    return yield* Effect.never
  }).pipe(Effect.scoped, Effect.provide(Layer.merge(fleet, ProcessRegistry.layer(settings.schema, { sessionWitness: !settings.pgbouncer }))))
}
