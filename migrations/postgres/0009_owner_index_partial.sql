-- A run has an owner only when the gateway has tokens (the token's name); the owner filter of a
-- listing is only used then (`owner = $1`, which implies the condition below). Without tokens
-- every record's owner is NULL, and runs_owner_newest was one more B-tree leaf written by every
-- run's commit for nothing. Partial, it holds the owned records only.
DROP INDEX runs_owner_newest;
CREATE INDEX runs_owner_newest ON runs (owner, created_at, run_id) WHERE owner IS NOT NULL;
