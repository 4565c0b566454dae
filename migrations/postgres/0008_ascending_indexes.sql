-- The listing indexes become ascending, as on SQLite (see ../sqlite/0008_ascending_indexes.sql):
-- every new record is the newest, so in a newest-first index each insert went to the first
-- leaf, which a B-tree splits in half and leaves half empty; PostgreSQL, like SQLite, keeps its
-- cheap path (the cached last leaf, split to leave it full) for appends at the other end. A
-- listing scans the same index backwards.
DROP INDEX runs_newest;
DROP INDEX runs_session_newest;
DROP INDEX runs_owner_newest;
DROP INDEX runs_cli_newest;
DROP INDEX runs_active_newest;
DROP INDEX runs_interrupted_newest;
CREATE INDEX runs_newest ON runs (created_at, run_id);
CREATE INDEX runs_session_newest ON runs (session_id, created_at, run_id);
CREATE INDEX runs_owner_newest ON runs (owner, created_at, run_id);
CREATE INDEX runs_cli_newest ON runs (cli, created_at, run_id);
CREATE INDEX runs_active_newest ON runs (created_at, run_id) WHERE state IN ('queued', 'running');
CREATE INDEX runs_interrupted_newest ON runs (created_at, run_id) WHERE state = 'interrupted';
