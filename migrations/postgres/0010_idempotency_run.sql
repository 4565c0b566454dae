-- Retention deletes a key together with the run it names (a key outlived its run when the
-- retention age is under the key's 24 hours, and every retry with it then waited for a record
-- that was gone and got 409): this finds a run's keys without reading the whole table.
CREATE INDEX idempotency_run ON idempotency (run_id);
