/**
 * The `process` table: every worker, reaper and supervisor registers itself and heartbeats there.
 * A process whose heartbeat is stale is presumed dead: pruning it gives its claims back at once
 * (seconds-level rescue) instead of waiting for each job's lease to lapse.
 *
 * Staleness belongs to the process: its row records its own heartbeat period and stale timeout, and a
 * pruner judges it by those, never by its own settings (a worker with a 15 s heartbeat beside a reaper
 * with a 2 s one is not pruned every tick).
 */
import { Clock, Context, Duration, Effect, Layer, Ref, Schedule, Semaphore } from "effect"
import { SqlClient, type Statement } from "effect/sql"
import { hostname } from "node:os"
import { workerId } from "./LeaderLease.ts"
import { MAINTENANCE_BATCH } from "./Queue.ts"

export interface Registration {
  readonly kind: "worker" | "reaper" | "supervisor"
  readonly queues?: ReadonlyArray<string>
  /** Heartbeat period in seconds. */
  readonly every: number
  /** Silent this long, the process is presumed dead (at least 3 × `every`). */
  readonly staleSeconds: number
  readonly processId?: string
  /**
   * Runs when a heartbeat finds the row gone (a pruner presumed us dead after a stall and freed our claims),
   * before the row is written again: the moment to find out which attempts we lost.
   */
  readonly onPruned?: Effect.Effect<void>
}

export interface Registered {
  readonly processId: string
  /**
   * Heartbeat now; when the row is gone, run `onPruned` and register again. Returns false when it found
   * the row gone. Concurrent calls share one recovery.
   */
  readonly heartbeat: Effect.Effect<boolean, unknown>
  /**
   * When (local clock, at sending) the last heartbeat that found our row was sent. Until `staleSeconds`
   * after it, no pruner can have presumed us dead: the server's heartbeat_at is at least that recent.
   */
  readonly confirmedAt: Effect.Effect<number>
}

/**
 * Registrations made by this process so far: a worker and a reaper (or two workers) in one process get rows
 * of their own, so the one that shuts down never deletes the other's row and frees its claims.
 */
let registrations = 0

export const makeProcessRegistry = Effect.fnUntraced(function*(schema: string) {
  const sql = yield* SqlClient.SqlClient
  const table = sql(`${schema}.process`)
  const message = sql(`${schema}.message`)

  const upsert = (processId: string, registration: Registration) =>
    sql`
      INSERT INTO ${table} (process_id, kind, host, pid, queues, heartbeat_seconds, stale_seconds)
      VALUES (${processId}, ${registration.kind}, ${hostname()}, ${process.pid}, ${registration.queues ?? []}::text[],
              ${registration.every}, ${registration.staleSeconds})
      ON CONFLICT (process_id) DO UPDATE SET heartbeat_at = now()`

  /** Register for the life of the enclosing scope, heartbeating in the background. */
  const register = Effect.fnUntraced(function*(registration: Registration) {
    const processId = registration.processId ?? `${workerId()}/${registration.kind}-${++registrations}`
    const recovery = yield* Semaphore.make(1)
    yield* Effect.acquireRelease(upsert(processId, registration), () =>
      sql`DELETE FROM ${table} WHERE process_id = ${processId}`.pipe(Effect.timeout("10 seconds"), Effect.ignore))
    const confirmedAt = yield* Ref.make(yield* Clock.currentTimeMillis)
    const beat = Effect.gen(function*() {
      const sentAt = yield* Clock.currentTimeMillis
      const rows = yield* sql`UPDATE ${table} SET heartbeat_at = now() WHERE process_id = ${processId} RETURNING 1`
      if (rows.length > 0) yield* Ref.set(confirmedAt, sentAt)
      return rows.length > 0
    })
    // Serialised, and the row re-checked inside: the poller and the heartbeat may both find it gone at once.
    const heartbeat = recovery.withPermits(1)(
      beat.pipe(
        Effect.tap((alive) =>
          alive
            ? Effect.void
            : Effect.logWarning(`process ${processId} was pruned as stale; checking its jobs, then registering again`)
              .pipe(
                Effect.andThen(registration.onPruned ?? Effect.void),
                Effect.andThen(Clock.currentTimeMillis),
                Effect.tap(() => upsert(processId, registration)),
                Effect.flatMap((sentAt) => Ref.set(confirmedAt, sentAt))
              )
        ),
        Effect.timeout(Duration.seconds(Math.max(registration.every, 5)))
      )
    )
    const every = Duration.millis(registration.every * 1000)
    yield* heartbeat.pipe(
      Effect.catchCause((cause) => Effect.logWarning("process heartbeat failed", cause)),
      Effect.repeat(Schedule.spaced(every)),
      Effect.delay(every),
      Effect.forkScoped
    )
    return { processId, heartbeat, confirmedAt: Ref.get(confirmedAt) } satisfies Registered
  })

  /**
   * Delete up to `limit` processes silent for longer than their own stale timeout and make the jobs they
   * held ready again, in one statement. A process that heartbeats concurrently is skipped (SKIP LOCKED).
   */
  const pruneStale = Effect.fn("ProcessRegistry.pruneStale")(function*(
    options: { readonly fence?: Statement.Fragment; readonly limit?: number } = {}
  ) {
    const [row] = yield* sql<{ pruned: number; released: number }>`
      WITH stale AS (
        SELECT process_id FROM ${table}
        WHERE heartbeat_at < now() - stale_seconds * interval '1 second' AND ${options.fence ?? sql`TRUE`}
        ORDER BY heartbeat_at LIMIT ${options.limit ?? 100}
        FOR UPDATE SKIP LOCKED
      ), dead AS (
        DELETE FROM ${table} AS p USING stale WHERE p.process_id = stale.process_id
        RETURNING p.process_id
      ), held AS (
        SELECT m.msg_id FROM ${message} AS m
        WHERE m.state = 'claimed' AND m.claimed_by IN (SELECT process_id FROM dead)
        LIMIT ${MAINTENANCE_BATCH}
        FOR UPDATE OF m SKIP LOCKED
      ), released AS (
        UPDATE ${message} AS m SET state = 'ready', vt = NULL, claimed_by = NULL, claim_token = NULL
        FROM held WHERE m.msg_id = held.msg_id
        RETURNING m.msg_id
      )
      SELECT (SELECT count(*) FROM dead)::int AS pruned, (SELECT count(*) FROM released)::int AS released`
    return { pruned: row!.pruned, released: row!.released }
  })

  const list = sql<{ process_id: string; kind: string; heartbeat_age: number }>`
    SELECT process_id, kind, extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
    FROM ${table} ORDER BY started_at LIMIT 1000`

  return { register, pruneStale, list }
})

export class ProcessRegistry extends Context.Service<
  ProcessRegistry,
  Effect.Success<ReturnType<typeof makeProcessRegistry>>
>()("effect-pg-queue/ProcessRegistry") {
  static readonly layer = (schema: string) => Layer.effect(ProcessRegistry, makeProcessRegistry(schema))
}
