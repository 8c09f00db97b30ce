/**
 * The `process` table: every worker, reaper and supervisor registers itself and heartbeats there.
 * A process whose heartbeat is stale is presumed dead: pruning it gives its claims back at once
 * (seconds-level rescue) instead of waiting for each job's lease to lapse.
 *
 * Staleness belongs to the process: its row records its own heartbeat period and stale timeout, and a
 * pruner judges it by those, never by its own settings (a worker with a 15 s heartbeat beside a reaper
 * with a 2 s one is not pruned every tick).
 *
 * A silent process is either stalled (a long GC pause, a blocked event loop, SIGSTOP) or dead, and only the
 * stale timeout tells them apart, unless the database can: heartbeats run on a connection of their own
 * whose server session (pid, start time) the row records. When the process dies the kernel closes its
 * socket and the session ends; a stalled process keeps it. A row whose session is gone is pruned after two
 * missed heartbeats instead of the stale timeout (rescue in seconds after a SIGKILL, an OOM kill or a
 * crash), and a stall is still judged by the stale timeout alone. Not behind PgBouncer's transaction
 * pooling, where a client has no session of its own.
 */
import { Cause, Clock, Context, Duration, Effect, Exit, Layer, Option, Ref, Schedule, Scope, Semaphore } from "effect"
import { SqlClient, type SqlConnection, type SqlError, type Statement } from "effect/sql"
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
   * after it, no pruner can have presumed us dead: the server's heartbeat_at is at least that recent. A plain
   * read: every job's admission asks.
   */
  readonly confirmedAt: () => number
}

/**
 * Registrations made by this process so far: a worker and a reaper (or two workers) in one process get rows
 * of their own, so the one that shuts down never deletes the other's row and frees its claims.
 */
let registrations = 0

/**
 * Statements on one reserved connection, the witness of our life: on a failure the connection is dropped
 * and the statement runs once more on a fresh one (a terminated session must not keep the witness dead
 * until the next heartbeat). Closed with the enclosing scope.
 */
const makeWitness = Effect.fnUntraced(function*(sql: SqlClient.SqlClient) {
  let held: Option.Option<readonly [SqlConnection.Connection, Scope.Closeable]> = Option.none()
  const drop = Effect.suspend(() => {
    const current = held
    held = Option.none()
    return Option.match(current, { onNone: () => Effect.void, onSome: ([, scope]) => Scope.close(scope, Exit.void) })
  })
  const connection = Effect.suspend(() =>
    Option.match(held, {
      onSome: ([connection]) => Effect.succeed(connection),
      onNone: () =>
        Effect.gen(function*() {
          const scope = yield* Scope.make()
          const connection = yield* sql.reserve.pipe(Scope.provide(scope), Effect.onError(() => Scope.close(scope, Exit.void)))
          held = Option.some([connection, scope] as const)
          return connection
        })
    })
  )
  yield* Effect.addFinalizer(() => drop)
  const once = <A extends object>(statement: Statement.Statement<A>) =>
    Effect.flatMap(connection, (c) => {
      const [text, params] = statement.compile()
      return c.execute(text, params, undefined) as Effect.Effect<ReadonlyArray<A>, SqlError.SqlError>
    }).pipe(Effect.tapError(() => drop))
  return <A extends object>(statement: Statement.Statement<A>) => once(statement).pipe(Effect.catch(() => once(statement)))
})

export interface RegistryOptions {
  /** Heartbeat on a session of its own, recorded in the row (default true; off behind PgBouncer). */
  readonly sessionWitness?: boolean
}

export const makeProcessRegistry = Effect.fnUntraced(function*(schema: string, options: RegistryOptions = {}) {
  const sql = yield* SqlClient.SqlClient
  const table = sql(`${schema}.process`)
  const message = sql(`${schema}.message`)
  const witnessed = options.sessionWitness ?? true
  const session = witnessed
    ? sql`pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())`
    : sql`NULL::integer, NULL::timestamptz`

  const upsert = (processId: string, registration: Registration) =>
    sql`
      INSERT INTO ${table} (process_id, kind, host, pid, queues, heartbeat_seconds, stale_seconds, session_pid, session_start)
      SELECT ${processId}, ${registration.kind}, ${hostname()}, ${process.pid}, ${registration.queues ?? []}::text[],
             ${registration.every}, ${registration.staleSeconds}, ${session}
      ON CONFLICT (process_id) DO UPDATE
        SET heartbeat_at = now(), session_pid = EXCLUDED.session_pid, session_start = EXCLUDED.session_start`

  /** Register for the life of the enclosing scope, heartbeating in the background. */
  const register = Effect.fnUntraced(function*(registration: Registration) {
    const processId = registration.processId ?? `${workerId()}/${registration.kind}-${++registrations}`
    const recovery = yield* Semaphore.make(1)
    const run = witnessed ? yield* makeWitness(sql) : <A extends object>(statement: Statement.Statement<A>) => statement
    yield* Effect.acquireRelease(run(upsert(processId, registration)), () =>
      sql`DELETE FROM ${table} WHERE process_id = ${processId}`.pipe(Effect.timeout("10 seconds"), Effect.ignore))
    const confirmedAt = yield* Ref.make(yield* Clock.currentTimeMillis)
    const beat = Effect.gen(function*() {
      const sentAt = yield* Clock.currentTimeMillis
      const rows = yield* run(sql`
        UPDATE ${table} AS p SET heartbeat_at = now(), session_pid = s.pid, session_start = s.started
        FROM (SELECT ${session}) AS s (pid, started)
        WHERE p.process_id = ${processId} RETURNING 1`)
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
                Effect.tap(() => run(upsert(processId, registration))),
                Effect.flatMap((sentAt) => Ref.set(confirmedAt, sentAt))
              )
        ),
        Effect.timeout(Duration.seconds(Math.max(registration.every, 5)))
      )
    )
    const every = Duration.millis(registration.every * 1000)
    // A failed beat (the database away, our sessions killed) is tried again within a quarter period, not a
    // whole period later: a heartbeat two periods old with its witness session gone is how a dead process
    // looks to the pruners, and a live one must have re-registered its new session long before that.
    const retry = Duration.millis(Math.min(250, registration.every * 250))
    yield* heartbeat.pipe(
      Effect.tapCause((cause) =>
        Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.logWarning("process heartbeat failed; trying again", cause)
      ),
      Effect.retry(Schedule.spaced(retry)),
      Effect.repeat(Schedule.spaced(every)),
      Effect.delay(every),
      Effect.forkScoped
    )
    return { processId, heartbeat, confirmedAt: () => Ref.getUnsafe(confirmedAt) } satisfies Registered
  })

  /**
   * The CTEs `held` and `released` (a relation of queue names): up to one batch of the claims whose owner
   * matches `owners` (a condition on `m`) made ready again; `releasedSummary` selects how many and which queues.
   */
  const releasing = (owners: Statement.Fragment) =>
    sql`held AS (
        SELECT m.ctid FROM ${message} AS m
        WHERE m.state = 'claimed' AND ${owners}
        LIMIT ${MAINTENANCE_BATCH}
        FOR UPDATE OF m SKIP LOCKED
      ), released AS (
        UPDATE ${message} AS m SET state = 'ready', vt = NULL, claimed_by = NULL, claim_token = NULL
        WHERE m.ctid = ANY(ARRAY(SELECT ctid FROM held))
        RETURNING m.queue
      )`
  const releasedSummary = sql`(SELECT count(*) FROM released)::int AS released,
             (SELECT coalesce(array_agg(DISTINCT queue), '{}') FROM released) AS queues`

  /**
   * Delete up to `limit` dead processes and make the jobs they held ready again: silent for longer than their
   * own stale timeout, or for two heartbeats with their witness session gone (a session older than the
   * server's start is no evidence: every session ends when the server restarts). A process that heartbeats
   * concurrently is skipped (SKIP LOCKED). The first batch of claims goes in the statement that deletes the
   * processes; a process that held more (a full prefetch buffer is over a thousand) gets the rest in further
   * batches at once, not at their lease's expiry, unless it has registered again meanwhile (back from a stall,
   * it has renewed what it still holds).
   */
  const pruneStale = Effect.fn("ProcessRegistry.pruneStale")(function*(
    options: { readonly fence?: Statement.Fragment; readonly limit?: number } = {}
  ) {
    const fence = options.fence ?? sql`TRUE`
    const [first] = yield* sql<{ pruned: ReadonlyArray<string>; released: number; queues: ReadonlyArray<string> }>`
      WITH stale AS (
        SELECT process_id FROM ${table}
        WHERE (heartbeat_at < now() - stale_seconds * interval '1 second'
               OR (heartbeat_at < now() - 2 * heartbeat_seconds * interval '1 second'
                   AND session_start > pg_postmaster_start_time()
                   AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a
                                   WHERE a.pid = session_pid AND coalesce(a.backend_start = session_start, true))))
          AND ${fence}
        ORDER BY heartbeat_at LIMIT ${options.limit ?? 100}
        FOR UPDATE SKIP LOCKED
      ), dead AS (
        DELETE FROM ${table} AS p USING stale WHERE p.process_id = stale.process_id
        RETURNING p.process_id
      ), ${releasing(sql`m.claimed_by IN (SELECT process_id FROM dead)`)}
      SELECT (SELECT coalesce(array_agg(process_id), '{}') FROM dead) AS pruned, ${releasedSummary}`
    const dead = first!.pruned
    const rest = sql`m.claimed_by = ANY(${dead}::text[]) AND ${fence}
                     AND NOT EXISTS (SELECT 1 FROM ${table} AS p WHERE p.process_id = m.claimed_by)`
    let released = first!.released
    const queues = new Set(first!.queues)
    for (let batch = released; batch === MAINTENANCE_BATCH; released += batch) {
      const [more] = yield* sql<{ released: number; queues: ReadonlyArray<string> }>`
        WITH ${releasing(rest)} SELECT ${releasedSummary}`
      batch = more!.released
      for (const queue of more!.queues) queues.add(queue)
    }
    return { pruned: dead.length, released, queues: [...queues] }
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
  static readonly layer = (schema: string, options?: RegistryOptions) =>
    Layer.effect(ProcessRegistry, makeProcessRegistry(schema, options))
}
