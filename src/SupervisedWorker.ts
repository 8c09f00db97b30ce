/**
 * A worker process forked by the supervisor (SupervisorNode.ts): an ordinary worker that says Ready over
 * the IPC channel, reports its poll-loop age and job counters every second, and drains and exits when the
 * supervisor says Stop, when the supervisor is gone (the channel closed: SIGKILL, OOM), or when it has done
 * its share (PGQ_MAX_JOBS_PER_PROCESS jobs, PGQ_MAX_RSS_MB of memory) and announces it is recycling.
 *
 * SIGINT/SIGTERM (a terminal's Ctrl-C reaches the whole process group) interrupt it like any worker:
 * interruption and Stop end the same scope, so however many arrive, the worker drains once.
 */
import { Deferred, Effect, Metric, Option, Schedule, Schema } from "effect"
import type { SqlClient } from "effect/sql"
import { Layer } from "effect"
import type { PgqSettings } from "./Config.ts"
import * as Metrics from "./Metrics.ts"
import { exitIfShutdownHangs } from "./Shutdown.ts"
import { type ChildMessage, ChildMessage as ChildMessageSchema, jobCounters, Stop } from "./Supervisor.ts"
import type { TaskRegistry } from "./Task.ts"
import * as Worker from "./Worker.ts"

const encode = Schema.encodeSync(ChildMessageSchema)
const isStop = Schema.is(Stop)

const send = (message: ChildMessage) =>
  Effect.sync(() => {
    if (process.connected) process.send?.(encode(message), undefined, undefined, () => {})
  })

/** Send and wait (a second at most) until it is written, so that exiting right after does not lose it. */
const sendWritten = (message: ChildMessage) =>
  Effect.callback<void>((resume) => {
    if (!process.connected || process.send === undefined) return resume(Effect.void)
    process.send(encode(message), undefined, undefined, () => resume(Effect.void))
  }).pipe(Effect.timeoutOption("1 second"), Effect.asVoid)

/**
 * Listen to the supervisor for the life of the scope: Stop, or the channel closing, completes `stopped`.
 * The channel is unref'd: it must not keep the process alive once the worker has drained.
 */
const listenToSupervisor = (stopped: Deferred.Deferred<string>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const onMessage = (raw: unknown) => {
        if (isStop(raw)) Deferred.doneUnsafe(stopped, Effect.succeed("the supervisor asked"))
      }
      const onDisconnect = () => Deferred.doneUnsafe(stopped, Effect.succeed("the supervisor is gone"))
      process.on("message", onMessage)
      process.once("disconnect", onDisconnect)
      process.channel?.unref()
      if (!process.connected) onDisconnect()
      return { onMessage, onDisconnect }
    }),
    ({ onMessage, onDisconnect }) =>
      Effect.sync(() => {
        process.off("message", onMessage)
        process.off("disconnect", onDisconnect)
      })
  )

/** The job counters of this process, by name (totals). */
const counters = Metric.snapshot.pipe(
  Effect.map((snapshot) =>
    Object.fromEntries(
      snapshot.flatMap((m) => (m.type === "Counter" && jobCounters.has(m.id) ? [[m.id, Number(m.state.count)]] : []))
    )
  )
)

/** Why this process should be recycled now, if it should: jobs run (succeeded or failed) or memory. */
export const recycleReason = (
  settings: Pick<PgqSettings, "maxJobsPerProcess" | "maxRssMb">,
  jobsRun: number,
  rssBytes: number
): Option.Option<string> => {
  const jobs = Option.filter(settings.maxJobsPerProcess, (max) => jobsRun >= max)
  if (Option.isSome(jobs)) return Option.some(`ran ${jobsRun} jobs (PGQ_MAX_JOBS_PER_PROCESS=${jobs.value})`)
  const rssMb = rssBytes / (1024 * 1024)
  return Option.map(
    Option.filter(settings.maxRssMb, (max) => rssMb >= max),
    (max) => `resident memory ${rssMb.toFixed(0)} MiB (PGQ_MAX_RSS_MB=${max})`
  )
}

/** One heartbeat to the supervisor, and the recycling check. */
const report = (worker: Worker.Worker["Service"], settings: PgqSettings, stopped: Deferred.Deferred<string>) =>
  Effect.gen(function*() {
    const status = yield* worker.status
    const totals = yield* counters
    yield* send({ _tag: "Beat", ageSeconds: status.secondsSinceLastPoll, inFlight: status.inFlight, counters: totals })
    const jobsRun = (totals[Metrics.jobsProcessed.id] ?? 0) + (totals[Metrics.jobsFailed.id] ?? 0)
    const reason = recycleReason(settings, jobsRun, process.memoryUsage.rss())
    if (Option.isNone(reason) || (yield* Deferred.isDone(stopped))) return
    yield* send({ _tag: "Recycling", reason: reason.value })
    yield* Deferred.succeed(stopped, `recycling: ${reason.value}`)
  })

const supervised = (slot: number, settings: PgqSettings, stopped: Deferred.Deferred<string>) =>
  Effect.gen(function*() {
    const worker = yield* Worker.Worker
    yield* send({ _tag: "Ready" })
    yield* report(worker, settings, stopped).pipe(
      Effect.catchCause((cause) => Effect.logWarning("heartbeat to the supervisor failed", cause)),
      Effect.repeat(Schedule.spaced("1 second")),
      Effect.forkScoped
    )
    // Armed when the drain begins: an orphan has no supervisor to SIGKILL it if the database swallows packets.
    yield* exitIfShutdownHangs(Worker.shutdownDeadlineSeconds(settings), "pgq-worker")
    const reason = yield* Deferred.await(stopped)
    yield* Effect.logInfo(`worker process ${slot} draining: ${reason}`)
  }).pipe(Effect.scoped)

/**
 * The end of a child that has drained and closed its pools: exit now, so that nothing left armed (the shutdown
 * hang guard's timer) keeps the process alive.
 */
export const exit = Effect.sync(() => process.exit(0))

/**
 * Run the worker of a supervised child until the supervisor stops it (or vanishes) or it recycles itself;
 * then it drains (the Worker layer's release) and the process exits 0.
 */
export const run = <R, E2, R2, E3 = never, R3 = never>(
  registry: TaskRegistry<R>,
  settings: PgqSettings,
  runtime: Layer.Layer<SqlClient.SqlClient, E2, R2>,
  slot: number,
  /** The task module's layer: built once the supervisor is heard, released after the drain. */
  services: Layer.Layer<never, E3, R3> = Layer.empty
) =>
  Effect.gen(function*() {
    // Listening starts before the worker does: a Stop or a disconnect during start-up is not lost.
    const stopped = yield* Deferred.make<string>()
    yield* listenToSupervisor(stopped)
    // After the drain: the jobs finished since the last heartbeat count in the fleet's metrics too.
    const drained = counters.pipe(Effect.flatMap((totals) => sendWritten({ _tag: "Drained", counters: totals })))
    yield* supervised(slot, settings, stopped).pipe(
      Effect.provide(Worker.layerWithRuntime(registry, settings, runtime)),
      Effect.provide(services),
      Effect.ensuring(drained)
    )
  }).pipe(Effect.scoped)
