/**
 * The names the runtime accepts, one rule each, shared by configuration and enqueue: a job can never be sent
 * to a queue that `PGQ_QUEUES` cannot list, and a schema name is always safe to splice into a statement.
 */
import { Option, Schema } from "effect"

/** A queue name: what `PGQ_QUEUES` (comma-separated, trimmed) can list, so what enqueue accepts. */
export const queueNamePattern = /^[A-Za-z0-9_.:-]{1,128}$/

export const queueNameRule = "must be a non-empty name of at most 128 characters from A-Z a-z 0-9 _ . : -"

/** A lower-case unquoted SQL identifier of at most 63 bytes (Postgres truncates longer ones). */
export const identifierPattern = /^[a-z_][a-z0-9_]{0,62}$/

export const identifierRule = "must be a lower-case SQL identifier: a-z or _, then up to 62 of a-z 0-9 _"

export const isQueueName = (name: string): boolean => queueNamePattern.test(name)

export const isIdentifier = (name: string): boolean => identifierPattern.test(name)

/** Why `name` is not a queue name, if it is not one. */
export const queueNameProblem = (name: string): Option.Option<string> =>
  isQueueName(name) ? Option.none() : Option.some(queueNameRule)

/** Why `name` is not an identifier, if it is not one. */
export const identifierProblem = (name: string): Option.Option<string> =>
  isIdentifier(name) ? Option.none() : Option.some(identifierRule)

export const QueueName = Schema.String.check(Schema.isPattern(queueNamePattern))

export const Identifier = Schema.String.check(Schema.isPattern(identifierPattern))
