-- Several replicas (PostgreSQL only: SQLite has one gateway, whose running index already keeps a
-- session to one run at a time). A session has at most one queued/running run across every
-- replica sharing this database: the second insert fails on this index and its request gets 409.
-- Should an older database hold two active runs of one session, all but the newest end first.
UPDATE runs SET state = 'interrupted', reason = 'duplicate_session',
       finished_at = (extract(epoch from clock_timestamp()) * 1000)::bigint
 WHERE state IN ('queued', 'running')
   AND run_id NOT IN (SELECT DISTINCT ON (session_id) run_id FROM runs
                       WHERE state IN ('queued', 'running')
                       ORDER BY session_id, created_at DESC, run_id DESC);

CREATE UNIQUE INDEX runs_one_active_per_session ON runs (session_id) WHERE state IN ('queued', 'running');
