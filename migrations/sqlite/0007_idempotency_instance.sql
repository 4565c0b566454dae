-- The gateway instance that claimed an Idempotency-Key. A claim is committed before its run's
-- record (the run may wait for a slot in between), so a gateway that dies in that window leaves
-- a key that names a run nobody will record, and every retry with the key was answered 409 for
-- the rest of the day. Knowing the claimer, the instance's next start (or, for a replica, the
-- replicas that see it dead) forgets such keys. Keys claimed before this column existed have ''.
ALTER TABLE idempotency ADD COLUMN instance TEXT NOT NULL DEFAULT '';
CREATE INDEX idempotency_instance ON idempotency (instance);
