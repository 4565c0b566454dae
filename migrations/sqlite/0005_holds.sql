-- What a queued or running run holds besides its session: its workspace branch and its state key
-- (each a JSON array). Recorded here as on PostgreSQL; one gateway keeps them to one run each in
-- memory, so there is no index to enforce it (see the PostgreSQL migration for replicas).
ALTER TABLE runs ADD COLUMN branch_hold TEXT;
ALTER TABLE runs ADD COLUMN state_hold TEXT;
