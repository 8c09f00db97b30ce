/**
 * Tagged errors shared across modules. A tagged error never has a field called `name` or `message`
 * (they would shadow `Error.name` / `Error.message`); each error's `message` getter names the culprit.
 */
import { Schema } from "effect"

/** A configuration value (an environment variable or an option) is missing or malformed. */
export class InvalidConfig extends Schema.TaggedError<InvalidConfig>()("InvalidConfig", {
  variable: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `${this.variable}: ${this.reason}`
  }
}

/** The database could not be reached at start-up. Never carries the password. */
export class DatabaseUnavailable extends Schema.TaggedError<DatabaseUnavailable>()("DatabaseUnavailable", {
  target: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `cannot connect to ${this.target}: ${this.reason}`
  }
}

/** A payload (or option) cannot be stored: it names the task and the field. */
export class PayloadRejected extends Schema.TaggedError<PayloadRejected>()("PayloadRejected", {
  task: Schema.String,
  field: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `task ${this.task}: ${this.field} ${this.reason}`
  }
}

/** A message names a task that is not in the registry. */
export class UnknownTask extends Schema.TaggedError<UnknownTask>()("UnknownTask", {
  task: Schema.String
}) {
  override get message() {
    return `unknown task ${JSON.stringify(this.task)}`
  }
}

/** The schema migration failed. */
export class MigrationFailed extends Schema.TaggedError<MigrationFailed>()("MigrationFailed", {
  statement: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `migration failed at ${JSON.stringify(this.statement.slice(0, 80))}: ${this.reason}`
  }
}

/** Leadership ended: a renew returned false or failed. */
export class LeaseLost extends Schema.TaggedError<LeaseLost>()("LeaseLost", {
  lease: Schema.String,
  holder: Schema.String,
  term: Schema.Number,
  reason: Schema.String
}) {
  override get message() {
    return `lease ${this.lease} lost by ${this.holder} (term ${this.term}): ${this.reason}`
  }
}

/** An execution's status could not be read (store unreachable, refused, or an answer we cannot trust). */
export class StatusReadFailed extends Schema.TaggedError<StatusReadFailed>()("StatusReadFailed", {
  executionId: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `cannot read the status of execution ${JSON.stringify(this.executionId)}: ${this.reason}`
  }
}

/** An execution's status could not be written; the caller must not assume it changed. */
export class StatusWriteFailed extends Schema.TaggedError<StatusWriteFailed>()("StatusWriteFailed", {
  executionId: Schema.String,
  status: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `cannot mark execution ${JSON.stringify(this.executionId)} ${this.status}: ${this.reason}`
  }
}

/** No execution has this id: no status, barrier, batches, jobs or dead letters (operator commands). */
export class ExecutionNotFound extends Schema.TaggedError<ExecutionNotFound>()("ExecutionNotFound", {
  executionId: Schema.String
}) {
  override get message() {
    return `no execution ${JSON.stringify(this.executionId)}: no status, barrier, batches, jobs or dead letters`
  }
}

/** The OS would not start a worker process (EAGAIN, ENOMEM, a missing entry file). */
export class ForkFailed extends Schema.TaggedError<ForkFailed>()("ForkFailed", {
  slot: Schema.Number,
  processes: Schema.Number,
  reason: Schema.String
}) {
  override get message() {
    return `cannot start worker process ${this.slot + 1} of ${this.processes}: ${this.reason}; ` +
      "lower PGQ_PROCESSES (or the memory each process uses) or raise the process/memory limit"
  }
}
