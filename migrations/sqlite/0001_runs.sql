-- Durable run records (SQLite). Kept column for column in step with ../postgres/0001_runs.sql:
-- the store reads both through one code path (sqlx's Any driver), so every integer is BIGINT
-- (read as i64 on both), booleans are BIGINT 0/1 (the Any driver cannot read an SQLite BOOLEAN)
-- and JSON is TEXT. Times are unix milliseconds.

CREATE TABLE runs (
    run_id        TEXT    NOT NULL PRIMARY KEY,
    session_id    TEXT    NOT NULL,
    cli           TEXT    NOT NULL,
    args          TEXT    NOT NULL,            -- JSON array of strings
    env_keys      TEXT    NOT NULL,            -- JSON array of names, never values
    model         TEXT,
    mode          TEXT    NOT NULL CHECK (mode IN ('local', 'docker')),
    owner         TEXT,                        -- token name; NULL when the gateway has no tokens
    instance      TEXT    NOT NULL,            -- gateway instance that executes the run
    state         TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'finished', 'interrupted')),
    exit_code     BIGINT,
    reason        TEXT,
    created_at    BIGINT  NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    stdout_bytes  BIGINT  NOT NULL DEFAULT 0,
    stderr_bytes  BIGINT  NOT NULL DEFAULT 0,
    log_bytes     BIGINT  NOT NULL DEFAULT 0,
    detached      BIGINT  NOT NULL DEFAULT 0 CHECK (detached IN (0, 1)),
    callback_url  TEXT,
    callback      TEXT                         -- JSON object: delivery status
);

-- Listing newest first, unfiltered and by each filter; (created_at, run_id) is the cursor.
CREATE INDEX runs_newest ON runs (created_at DESC, run_id DESC);
CREATE INDEX runs_session_newest ON runs (session_id, created_at DESC, run_id DESC);
CREATE INDEX runs_owner_newest ON runs (owner, created_at DESC, run_id DESC);
CREATE INDEX runs_cli_newest ON runs (cli, created_at DESC, run_id DESC);
CREATE INDEX runs_state_newest ON runs (state, created_at DESC, run_id DESC);
-- An instance's queued/running runs (start-up recovery, shutdown).
CREATE INDEX runs_active_by_instance ON runs (instance) WHERE state IN ('queued', 'running');
-- Retention: ended runs, oldest end first.
CREATE INDEX runs_ended_oldest ON runs (finished_at, run_id) WHERE state IN ('finished', 'interrupted');

-- Idempotency keys of POST /run (used by a later change): one run per (owner, key).
CREATE TABLE idempotency (
    key         TEXT   NOT NULL,
    owner       TEXT   NOT NULL DEFAULT '',    -- '' when the gateway has no tokens
    body_hash   TEXT   NOT NULL,               -- hex SHA-256 of the request body
    run_id      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);

-- Gateway replicas sharing one database (used by a later change).
CREATE TABLE replicas (
    id            TEXT   NOT NULL PRIMARY KEY,
    advertise_url TEXT   NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);
CREATE INDEX replicas_heartbeat ON replicas (heartbeat_at);
