/**
 * The `process` table: every worker, reaper and supervisor registers itself and heartbeats there.
 * A process whose heartbeat is stale is presumed dead: pruning it gives its claims back at once
 * (seconds-level rescue) instead of waiting for each job's lease to lapse.
 */
import { Context, Duration, Effect, Layer, Schedule } from "effect"
import { SqlClient, type Statement } from "effect/sql"
import { hostname } from "node:os"
import { workerId } from "./LeaderLease.ts"

export interface Registration {
  readonly kind: "worker" | "reaper" | "supervisor"
  readonly queues?: ReadonlyArray<string>
  /** Heartbeat period in seconds. */
  readonly every: number
  readonly processId?: string
}

export const makeProcessRegistry = Effect.fnUntraced(function*(schema: string) {
  const sql = yield* SqlClient.SqlClient
  const table = sql(`${schema}.process`)
  const message = sql(`${schema}.message`)

  const upsert = (processId: string, registration: Registration) =>
    sql`
      INSERT INTO ${table} (process_id, kind, host, pid, queues)
      VALUES (${processId}, ${registration.kind}, ${hostname()}, ${process.pid}, ${registration.queues ?? []}::text[])
      ON CONFLICT (process_id) DO UPDATE SET heartbeat_at = now()`

  /** Heartbeat; re-registers if a reaper pruned us during a pause (our old claims were already given back). */
  const heartbeat = (processId: string, registration: Registration) =>
    sql`UPDATE ${table} SET heartbeat_at = now() WHERE process_id = ${processId} RETURNING 1`.pipe(
      Effect.flatMap((rows) =>
        rows.length > 0
          ? Effect.void
          : Effect.logWarning(`process ${processId} was pruned as stale; registering again`).pipe(
            Effect.andThen(upsert(processId, registration))
          )
      )
    )

  /** Register for the life of the enclosing scope, heartbeating in the background. */
  const register = Effect.fnUntraced(function*(registration: Registration) {
    const processId = registration.processId ?? workerId()
    yield* Effect.acquireRelease(upsert(processId, registration), () =>
      sql`DELETE FROM ${table} WHERE process_id = ${processId}`.pipe(Effect.ignore))
    const every = Duration.millis(registration.every * 1000)
    yield* heartbeat(processId, registration).pipe(
      Effect.catchCause((cause) => Effect.logWarning("process heartbeat failed", cause)),
      Effect.repeat(Schedule.spaced(every)),
      Effect.delay(every),
      Effect.forkScoped
    )
    return processId
  })

  /** Delete processes silent for `staleSeconds` and make the jobs they held ready again, in one statement. */
  const pruneStale = Effect.fn("ProcessRegistry.pruneStale")(function*(staleSeconds: number, fence?: Statement.Fragment) {
    const [row] = yield* sql<{ pruned: number; released: number }>`
      WITH dead AS (
        DELETE FROM ${table}
        WHERE heartbeat_at < now() - ${staleSeconds} * interval '1 second' AND ${fence ?? sql`TRUE`}
        RETURNING process_id
      ), released AS (
        UPDATE ${message} SET state = 'ready', vt = NULL, claimed_by = NULL
        WHERE state = 'claimed' AND claimed_by IN (SELECT process_id FROM dead)
        RETURNING msg_id
      )
      SELECT (SELECT count(*) FROM dead)::int AS pruned, (SELECT count(*) FROM released)::int AS released`
    return { pruned: row!.pruned, released: row!.released }
  })

  const list = sql<{ process_id: string; kind: string; heartbeat_age: number }>`
    SELECT process_id, kind, extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
    FROM ${table} ORDER BY started_at`

  return { register, pruneStale, list }
})

export class ProcessRegistry extends Context.Service<
  ProcessRegistry,
  Effect.Success<ReturnType<typeof makeProcessRegistry>>
>()("effect-pg-queue/ProcessRegistry") {
  static readonly layer = (schema: string) => Layer.effect(ProcessRegistry, makeProcessRegistry(schema))
}
