-- What a queued or running run holds besides its session: its workspace branch and its state key
-- (each a JSON array: ["<project>","<branch>"], ["<owner>","<state_key>"]). With several replicas
-- a branch or a state key has at most one queued/running run across all of them: the second
-- insert fails on these indexes and its request gets 409 `busy`, as on one gateway.
ALTER TABLE runs ADD COLUMN branch_hold TEXT;
ALTER TABLE runs ADD COLUMN state_hold TEXT;
CREATE UNIQUE INDEX runs_one_active_per_branch ON runs (branch_hold)
    WHERE state IN ('queued', 'running') AND branch_hold IS NOT NULL;
CREATE UNIQUE INDEX runs_one_active_per_state_key ON runs (state_hold)
    WHERE state IN ('queued', 'running') AND state_hold IS NOT NULL;
