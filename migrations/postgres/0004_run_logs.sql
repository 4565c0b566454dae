-- The whole log of a finished run that was small enough to keep here (most short runs): its file
-- is then emptied and reused for a later run's log, which saves the file system an inode per run.
-- Written in the transaction that finishes the run; deleted with the run.
CREATE TABLE run_logs (
    run_id  TEXT PRIMARY KEY,
    content BYTEA NOT NULL
);
