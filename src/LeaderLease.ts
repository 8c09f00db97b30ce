/**
 * Named leader leases: one row per lease in `<schema>.lease`, fenced by a `term` that grows by one on every
 * acquisition. Each operation is one conditional UPDATE in its own (implicit) transaction, so it needs no
 * session state (no advisory locks) and works through PgBouncer in transaction pooling. Every time
 * comparison uses the server's now(): clients never compare their own clocks.
 *
 * Expected outcomes are values (`Option` term, `boolean`); only a database failure is an error, and a
 * caller must treat it like a refused renew ("leadership unknown, stop acting").
 */
import { Context, Effect, Layer, Option } from "effect"
import { SqlClient, type SqlError, type Statement } from "effect/sql"
import { randomBytes } from "node:crypto"
import { hostname } from "node:os"
import { InvalidConfig } from "./Errors.ts"

export interface LeaseState {
  /** '' when the lease is free. */
  readonly holder: string
  readonly term: number
  /** Seconds until expiry by the server clock; zero or negative once expired. */
  readonly expiresInSeconds: number
}

let memoWorkerId: string | undefined

/**
 * `<hostname>:<pid>:<8 hex>`, computed once per process. The random part tells apart two processes that
 * reuse a pid (containers), and a forked child gets its own id because module state is per process.
 */
export const workerId = (): string => {
  memoWorkerId ??= `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`
  return memoWorkerId
}

/** '' is the "free" sentinel, so a blank holder id would silently act as "nobody". */
export const validateHolder = (holder: string, variable = "holder"): Effect.Effect<string, InvalidConfig> =>
  holder.trim() === ""
    ? Effect.fail(new InvalidConfig({ variable, reason: "must be a non-empty, non-blank holder id ('' marks a free lease)" }))
    : Effect.succeed(holder)

export const validateLeaseSeconds = (
  leaseSeconds: number,
  variable = "leaseSeconds"
): Effect.Effect<number, InvalidConfig> =>
  Number.isFinite(leaseSeconds) && leaseSeconds > 0
    ? Effect.succeed(leaseSeconds)
    : Effect.fail(new InvalidConfig({ variable, reason: `must be a positive number of seconds, got ${leaseSeconds}` }))

/** One candidate's view of one lease, validated once: the operations a leader loop needs. */
export interface LeaseCandidate {
  readonly name: string
  readonly holder: string
  readonly leaseSeconds: number
  readonly tryAcquire: Effect.Effect<Option.Option<number>, SqlError.SqlError>
  readonly renew: (term: number) => Effect.Effect<boolean, SqlError.SqlError>
  readonly release: (term: number) => Effect.Effect<boolean, SqlError.SqlError>
  /** Free any term this holder still holds (shutdown only; see `relinquish`). */
  readonly relinquish: Effect.Effect<boolean, SqlError.SqlError>
  readonly fence: (term: number) => Statement.Fragment
}

export const makeLeaderLease = Effect.fnUntraced(function*(options: { readonly schema: string }) {
  const sql = yield* SqlClient.SqlClient
  const lease = sql(`${options.schema}.lease`)

  /** The row self-heals: a deleted or never-created row is recreated free (holder '', term 0). */
  const ensureRow = Effect.fn("LeaderLease.ensureRow")(function*(name: string) {
    yield* sql`INSERT INTO ${lease} (name) VALUES (${name}) ON CONFLICT (name) DO NOTHING`
  })

  /**
   * Win the lease if it is free or expired. The row lock serialises concurrent acquirers: the losers
   * re-check the WHERE against the winner's row and find it fresh, so exactly one wins. The current
   * holder of a fresh lease also gets none: it must renew, so a term never changes under a live leader.
   */
  const acquire = (name: string, holder: string, leaseSeconds: number) =>
    ensureRow(name).pipe(
      Effect.andThen(sql<{ term: number }>`
        UPDATE ${lease}
        SET holder = ${holder}, term = term + 1, acquired_at = now(),
            expires_at = now() + ${leaseSeconds}::float8 * interval '1 second'
        WHERE name = ${name} AND (holder = '' OR expires_at < now())
        RETURNING term::float8 AS term`),
      Effect.map((rows) => Option.fromNullishOr(rows[0]?.term))
    )

  /**
   * Extend a lease we still hold. An expired lease is NOT revived even when nobody took it over: between
   * expiry and this renew a standby was entitled to win, and the old leader's writes already stopped
   * passing the fence; the loser must campaign again and get a new term instead.
   */
  const extend = (name: string, holder: string, term: number, leaseSeconds: number) =>
    sql`
      UPDATE ${lease} SET expires_at = now() + ${leaseSeconds}::float8 * interval '1 second'
      WHERE name = ${name} AND holder = ${holder} AND term = ${term}::bigint AND expires_at > now()
      RETURNING 1 AS ok`.pipe(Effect.map((rows) => rows.length === 1))

  /** Free the lease at once (also an expired one of ours); a late release can never free a newer term. */
  const free = (name: string, holder: string, term: number) =>
    sql`
      UPDATE ${lease} SET holder = '', expires_at = now()
      WHERE name = ${name} AND holder = ${holder} AND term = ${term}::bigint
      RETURNING 1 AS ok`.pipe(Effect.map((rows) => rows.length === 1))

  /**
   * Free whatever term `holder` still holds, for a candidate that is going away: an acquire interrupted
   * in flight may have committed after we stopped waiting for its answer, and we would not know its term.
   * Safe against successors because holder ids are unique per process (`workerId`); do not run two
   * candidates for one lease name under one holder id.
   */
  const relinquish = (name: string, holder: string) =>
    sql`
      UPDATE ${lease} SET holder = '', expires_at = now()
      WHERE name = ${name} AND holder = ${holder}
      RETURNING 1 AS ok`.pipe(Effect.map((rows) => rows.length === 1))

  /**
   * `EXISTS (…)`: true only while `holder` holds `term` unexpired. Put it in the WHERE of every leader-only
   * write so a paused or partitioned ex-leader cannot write. FOR SHARE makes the check hold until the
   * writing transaction commits: an acquirer's UPDATE waits for it, and a write racing a committed takeover
   * re-checks the new row and is refused. (So keep fenced transactions short: they also delay renewals.)
   */
  const fence = (name: string, holder: string, term: number): Statement.Fragment =>
    sql`EXISTS (
      SELECT 1 FROM ${lease}
      WHERE name = ${name} AND holder = ${holder} AND term = ${term}::bigint AND expires_at > now()
      FOR SHARE)`

  const tryAcquire = Effect.fn("LeaderLease.tryAcquire")(
    function*(name: string, holder: string, leaseSeconds: number) {
      yield* validateHolder(holder)
      yield* validateLeaseSeconds(leaseSeconds)
      return yield* acquire(name, holder, leaseSeconds)
    }
  )

  const renew = Effect.fn("LeaderLease.renew")(
    function*(name: string, holder: string, term: number, leaseSeconds: number) {
      yield* validateHolder(holder)
      yield* validateLeaseSeconds(leaseSeconds)
      return yield* extend(name, holder, term, leaseSeconds)
    }
  )

  const release = Effect.fn("LeaderLease.release")(function*(name: string, holder: string, term: number) {
    yield* validateHolder(holder)
    return yield* free(name, holder, term)
  })

  /** The row as the server sees it now; none when the row does not exist (yet). */
  const current = Effect.fn("LeaderLease.current")(function*(name: string) {
    const rows = yield* sql<LeaseState>`
      SELECT holder, term::float8 AS term,
             extract(epoch FROM expires_at - now())::float8 AS "expiresInSeconds"
      FROM ${lease} WHERE name = ${name}`
    return Option.fromNullishOr(rows[0])
  })

  /** Validate once, then hand out operations whose only failure is the database's. */
  const candidate = Effect.fn("LeaderLease.candidate")(function*(options: {
    readonly name: string
    readonly holder: string
    readonly leaseSeconds: number
  }) {
    const holder = yield* validateHolder(options.holder)
    const leaseSeconds = yield* validateLeaseSeconds(options.leaseSeconds)
    const { name } = options
    return {
      name,
      holder,
      leaseSeconds,
      tryAcquire: acquire(name, holder, leaseSeconds).pipe(Effect.withSpan("LeaderLease.tryAcquire")),
      renew: (term: number) => extend(name, holder, term, leaseSeconds).pipe(Effect.withSpan("LeaderLease.renew")),
      release: (term: number) => free(name, holder, term).pipe(Effect.withSpan("LeaderLease.release")),
      relinquish: relinquish(name, holder).pipe(Effect.withSpan("LeaderLease.relinquish")),
      fence: (term: number) => fence(name, holder, term)
    } satisfies LeaseCandidate
  })

  return { ensureRow, tryAcquire, renew, release, current, fence, candidate }
})

export type LeaderLeaseShape = Effect.Success<ReturnType<typeof makeLeaderLease>>

export class LeaderLease extends Context.Service<LeaderLease, LeaderLeaseShape>()("effect-pg-queue/LeaderLease") {
  static readonly layer = (options: { readonly schema: string }) => Layer.effect(LeaderLease, makeLeaderLease(options))
}
