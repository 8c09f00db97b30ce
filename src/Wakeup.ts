/**
 * The optional LISTEN/NOTIFY accelerator. Enqueuers announce, after commit, the queues that received ready
 * jobs; workers listening on a dedicated connection cut their idle poll wait short. Polling stays the source
 * of truth: a lost notification, a dropped listener or PgBouncer (where LISTEN cannot work) only costs the
 * poll interval.
 *
 * The NOTIFY is sent after the enqueue commits, from one fiber that coalesces announcements, in its own
 * asynchronously committed statement: a NOTIFY inside the enqueue's transaction would hold Postgres's
 * database-wide notify lock through that transaction's WAL flush and serialize concurrent enqueuers.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { Duration, Effect, Option, Queue as Q, Ref, Schedule } from "effect"
import { SqlClient } from "effect/sql"

/** Announcements arriving within this long after a NOTIFY share the next one. */
const COALESCE = Duration.millis(10)

/** The channel of a schema's queues; the payload is a queue name. */
export const channel = (schema: string) => `pgq_${schema}`

/**
 * Enqueue side: returns `announce(queues)`, which only records the queues (never blocks, never fails);
 * a background fiber of the caller's scope sends them.
 */
export const makeAnnouncer = Effect.fnUntraced(function*(schema: string) {
  const sql = yield* SqlClient.SqlClient
  const pending = yield* Q.unbounded<string>()
  const send = (queues: ReadonlyArray<string>) =>
    sql`SELECT pg_notify(${channel(schema)}, q), set_config('synchronous_commit', 'off', true)
        FROM unnest(${[...new Set(queues)]}::text[]) AS q`
  // On close (a CLI enqueue, a host shutting down), send what is still pending: best effort, bounded.
  yield* Effect.addFinalizer(() =>
    Q.clear(pending).pipe(
      Effect.flatMap((queues) => queues.length === 0 ? Effect.void : send(queues)),
      Effect.timeout("1 second"),
      Effect.ignore
    )
  )
  // After each NOTIFY, gather announcements for a moment: one notification per burst is enough to wake a
  // worker, and fewer NOTIFYs mean less contention on the notify lock for concurrent enqueuers.
  yield* Q.takeAll(pending).pipe(
    Effect.flatMap(send),
    Effect.catchCause((cause) => Effect.logDebug("wake-up notification failed; workers will poll", cause)),
    Effect.andThen(Effect.sleep(COALESCE)),
    Effect.forever,
    Effect.forkScoped
  )
  return (queues: ReadonlyArray<string>): Effect.Effect<void> => Q.offerAll(pending, queues).pipe(Effect.asVoid)
})

/**
 * Worker side: LISTEN on the schema's channel and signal `wake` when one of `queues` got jobs. Needs a
 * `PgClient` in context (absent: does nothing). Re-listens every 2 s after a lost connection. Runs until
 * interrupted. `listening` is true exactly while the LISTEN session is up.
 */
export const listen = (options: {
  readonly schema: string
  readonly queues: ReadonlyArray<string>
  readonly wake: Effect.Effect<void>
  readonly listening?: Ref.Ref<boolean>
}) =>
  Effect.serviceOption(PgClient.PgClient).pipe(
    Effect.flatMap(Option.match({
      onNone: () => Effect.logDebug("no PgClient: LISTEN/NOTIFY wake-ups off, polling only"),
      onSome: (pg) =>
        Effect.scoped(Effect.gen(function*() {
          const notifications = yield* pg.listen(channel(options.schema))
          const { listening } = options
          if (listening !== undefined) yield* Effect.acquireRelease(Ref.set(listening, true), () => Ref.set(listening, false))
          yield* Effect.logDebug(`listening for wake-ups on ${channel(options.schema)}`)
          return yield* Q.take(notifications).pipe(
            Effect.flatMap((n) => options.queues.includes(n.payload) ? options.wake : Effect.void),
            Effect.forever
          )
        })).pipe(
          Effect.tapError((error) => Effect.logWarning("wake-up listener lost; polling until it is back", error)),
          Effect.retry(Schedule.spaced("2 seconds"))
        )
    }))
  )
