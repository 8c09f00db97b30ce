-- effect-pg-queue canonical DDL. "pgq" is a placeholder replaced by PGQ_SCHEMA at migration time.
--
-- This file is the desired state. src/Migrations.ts compares it with the catalog, creates only what is
-- missing, and records `schemaVersion` (src/Migrations.ts) in pgq.schema_version; a start against a database
-- already at that version runs no DDL at all. WHEN YOU CHANGE THIS FILE, BUMP schemaVersion (a test pins
-- these statements to the version). Rules, so that existing databases upgrade without freezing the queue:
-- - every statement is idempotent (IF NOT EXISTS): several processes may migrate at once;
-- - a new column of an existing table: add it to its CREATE TABLE and also as its own
--   `ALTER TABLE pgq.t ADD COLUMN IF NOT EXISTS c ...` at the end (one column per statement; a constant
--   DEFAULT keeps it a catalog-only change);
-- - a new index: `CREATE [UNIQUE] INDEX IF NOT EXISTS name ON pgq.t ...`; on an existing table it is built
--   CONCURRENTLY, outside any transaction, so writers are never blocked;
-- - anything else runs as written, whenever the recorded version is older, inside the migration's
--   transaction under lock_timeout: keep it idempotent and cheap.

CREATE SCHEMA IF NOT EXISTS pgq;

CREATE TABLE IF NOT EXISTS pgq.message (
  msg_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  queue         text        NOT NULL,
  task          text        NOT NULL,
  payload       jsonb       NOT NULL,
  org_id        text        NOT NULL DEFAULT '',
  priority      smallint    NOT NULL DEFAULT 5,
  state         text        NOT NULL DEFAULT 'ready',
  visible_at    timestamptz NOT NULL DEFAULT now(),
  vt            timestamptz,
  read_ct       integer     NOT NULL DEFAULT 0,
  max_attempts  integer     NOT NULL DEFAULT 5,
  claimed_by    text,
  -- Random per claim: the fence of ack/extend/fail/release. read_ct alone is not unique per claim once a
  -- crash undoes an asynchronously committed claim (the next claim hands out the same read_ct again).
  claim_token   uuid,
  last_error    text,
  enqueued_at   timestamptz NOT NULL DEFAULT now(),
  execution_id  text,
  batch_index   integer,
  CONSTRAINT message_priority_range CHECK (priority BETWEEN 1 AND 10),
  CONSTRAINT message_state_valid CHECK (state IN ('ready', 'scheduled', 'claimed')),
  CONSTRAINT message_max_attempts_positive CHECK (max_attempts >= 1)
);

-- The claim path: only ready rows, in claim order, so in-flight rows are never scanned past.
CREATE INDEX IF NOT EXISTS message_claim_idx ON pgq.message (queue, priority DESC, msg_id) WHERE state = 'ready';
-- Maintenance paths: expired claims, due scheduled jobs, claims of a dead process.
CREATE INDEX IF NOT EXISTS message_claimed_vt_idx ON pgq.message (vt) WHERE state = 'claimed';
CREATE INDEX IF NOT EXISTS message_scheduled_idx ON pgq.message (visible_at) WHERE state = 'scheduled';
CREATE INDEX IF NOT EXISTS message_claimed_by_idx ON pgq.message (claimed_by) WHERE state = 'claimed';
-- The jobs of one execution (its batches and its callback): stop, re-run and the operator's views.
CREATE INDEX IF NOT EXISTS message_execution_idx ON pgq.message (execution_id) WHERE execution_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS pgq.dead_letter (
  msg_id        bigint      PRIMARY KEY,
  queue         text        NOT NULL,
  task          text        NOT NULL,
  payload       jsonb       NOT NULL,
  org_id        text        NOT NULL DEFAULT '',
  priority      smallint    NOT NULL DEFAULT 5,
  read_ct       integer     NOT NULL DEFAULT 0,
  max_attempts  integer     NOT NULL DEFAULT 5,
  last_error    text        NOT NULL,
  enqueued_at   timestamptz NOT NULL,
  failed_at     timestamptz NOT NULL DEFAULT now(),
  execution_id  text,
  batch_index   integer
);
CREATE INDEX IF NOT EXISTS dead_letter_failed_at_idx ON pgq.dead_letter (failed_at);
CREATE INDEX IF NOT EXISTS dead_letter_queue_idx ON pgq.dead_letter (queue);
-- An execution's dead batches (`cli execution show`).
CREATE INDEX IF NOT EXISTS dead_letter_execution_idx ON pgq.dead_letter (execution_id) WHERE execution_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS pgq.barrier (
  execution_id      text        PRIMARY KEY,
  org_id            text        NOT NULL DEFAULT '',
  total             integer     NOT NULL,
  remaining         integer     NOT NULL,
  results           jsonb       NOT NULL DEFAULT '[]'::jsonb,
  callback          jsonb       NOT NULL,
  created_at        timestamptz NOT NULL DEFAULT now(),
  expires_at        timestamptz NOT NULL,
  last_progress_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT barrier_expiry_after_creation CHECK (expires_at > created_at)
);
CREATE INDEX IF NOT EXISTS barrier_expires_at_idx ON pgq.barrier (expires_at);
-- The reaper's stranded predicate is `expires_at < now() OR last_progress_at < now() - stuck`: both sides indexed.
CREATE INDEX IF NOT EXISTS barrier_last_progress_idx ON pgq.barrier (last_progress_at);

-- A batch's marker: it is counted once, ever, and its result waits here for the callback (results are
-- gathered in batch order when the last batch completes, so no row is rewritten per completion).
CREATE TABLE IF NOT EXISTS pgq.barrier_batch (
  execution_id  text        NOT NULL,
  batch_index   integer     NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  result        jsonb,
  PRIMARY KEY (execution_id, batch_index)
);
-- The retention sweep of old markers (a million rows is normal: one per batch ever run).
CREATE INDEX IF NOT EXISTS barrier_batch_created_at_idx ON pgq.barrier_batch (created_at);

CREATE TABLE IF NOT EXISTS pgq.lease (
  name         text        PRIMARY KEY,
  holder       text        NOT NULL DEFAULT '',
  term         bigint      NOT NULL DEFAULT 0,
  acquired_at  timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pgq.execution (
  execution_id   text        PRIMARY KEY,
  org_id         text        NOT NULL DEFAULT '',
  status         text        NOT NULL DEFAULT 'PENDING',
  error_message  text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT execution_status_valid CHECK (status IN ('PENDING', 'EXECUTING', 'COMPLETED', 'ERROR', 'STOPPED'))
);
-- The retention sweep of finished executions.
CREATE INDEX IF NOT EXISTS execution_finished_idx ON pgq.execution (updated_at)
  WHERE status IN ('COMPLETED', 'ERROR', 'STOPPED');

CREATE TABLE IF NOT EXISTS pgq.process (
  process_id    text        PRIMARY KEY,
  kind          text        NOT NULL,
  host          text        NOT NULL,
  pid           integer     NOT NULL,
  queues        text[]      NOT NULL DEFAULT '{}',
  started_at    timestamptz NOT NULL DEFAULT now(),
  heartbeat_at  timestamptz NOT NULL DEFAULT now(),
  -- The process's own cadence: a pruner judges it by these, never by its own settings.
  heartbeat_seconds float8 NOT NULL DEFAULT 2,
  stale_seconds     float8 NOT NULL DEFAULT 10,
  -- The server session its heartbeats run on: when it is gone (the process died and the kernel closed its
  -- socket), the process is pruned after two missed heartbeats instead of its stale timeout.
  session_pid       integer,
  session_start     timestamptz
);
CREATE INDEX IF NOT EXISTS process_heartbeat_idx ON pgq.process (heartbeat_at);

-- The schemaVersion this schema was last brought to (one row); read at every start.
CREATE TABLE IF NOT EXISTS pgq.schema_version (
  singleton   boolean     PRIMARY KEY DEFAULT true,
  version     integer     NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT schema_version_one_row CHECK (singleton)
);

-- Upgrades of databases created before these columns existed (no-ops on a fresh schema).
ALTER TABLE pgq.message ADD COLUMN IF NOT EXISTS claim_token uuid;
ALTER TABLE pgq.process ADD COLUMN IF NOT EXISTS heartbeat_seconds float8 NOT NULL DEFAULT 2;
ALTER TABLE pgq.process ADD COLUMN IF NOT EXISTS stale_seconds float8 NOT NULL DEFAULT 10;
ALTER TABLE pgq.process ADD COLUMN IF NOT EXISTS session_pid integer;
ALTER TABLE pgq.process ADD COLUMN IF NOT EXISTS session_start timestamptz;
ALTER TABLE pgq.barrier_batch ADD COLUMN IF NOT EXISTS result jsonb;
