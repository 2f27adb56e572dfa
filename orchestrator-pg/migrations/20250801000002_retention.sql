-- Retention deletes ended calls oldest first: this index finds them without
-- scanning the live ones (only ended calls have `ended_at`). Their attempts
-- and provider ids go with them through `ON DELETE CASCADE`, and the delete
-- trigger keeps the per-status counters exact.
CREATE INDEX calls_ended ON calls (ended_at) WHERE ended_at IS NOT NULL;
