-- The call store: calls, the history of their attempts, the provider's ids,
-- and exact per-status counters. See ARCHITECTURE-pg.md for why each piece
-- has the shape it has.
--
-- Every timestamp is a timestamptz written by the engine (its injected
-- clock); nothing here reads the database clock for call data.

CREATE TABLE calls (
    id               uuid        PRIMARY KEY,
    -- The normalised E.164 number: the one-call-per-number rule keys on it.
    to_number        text        NOT NULL,
    script_id        text        NOT NULL,
    -- `json`, not `jsonb`: metadata is passed through untouched, byte for
    -- byte, and never queried (jsonb would renormalise numbers and reject
    -- "\u0000").
    metadata         json,
    status           text        NOT NULL
        CONSTRAINT calls_status_known
        CHECK (status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED')),
    attempts         integer     NOT NULL CHECK (attempts >= 0),
    last_error       text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    ended_at         timestamptz,
    not_before       timestamptz,
    expires_at       timestamptz,
    next_attempt_at  timestamptz,
    lease_expires_at timestamptz,
    provider_call_id text,
    duration_sec     bigint      CHECK (duration_sec >= 0),
    idempotency_key  text        CONSTRAINT calls_idempotency_key_unique UNIQUE,
    -- The earliest instant a PENDING call may be dialled (`Call::due_at`):
    -- GREATEST ignores NULLs, exactly like the Rust fold.
    due_at           timestamptz NOT NULL
        GENERATED ALWAYS AS (GREATEST(created_at, not_before, next_attempt_at)) STORED
);

-- SPEC 5.2, enforced by the database whatever the writer: at most one
-- IN_PROGRESS call per number.
CREATE UNIQUE INDEX calls_one_in_progress_per_number
    ON calls (to_number) WHERE status = 'IN_PROGRESS';

-- The claim walks this index oldest first.
CREATE INDEX calls_pending_queue ON calls (created_at, id) WHERE status = 'PENDING';
-- next_timer: the earliest future due instant, expiry and lease.
CREATE INDEX calls_pending_due ON calls (due_at) WHERE status = 'PENDING';
CREATE INDEX calls_pending_expiry ON calls (expires_at)
    WHERE status = 'PENDING' AND expires_at IS NOT NULL;
CREATE INDEX calls_in_progress_lease ON calls (lease_expires_at) WHERE status = 'IN_PROGRESS';
-- Listing, newest first, with and without a status filter.
CREATE INDEX calls_by_status_newest ON calls (status, created_at, id);
CREATE INDEX calls_newest ON calls (created_at, id);

-- Orders claims and settlements across transactions and processes: each claim
-- statement and each applied settlement draws one value inside its
-- transaction, so history can be audited after the fact.
CREATE SEQUENCE call_event_seq;

-- One row per claim (a dial of one attempt). A 429 gives the attempt number
-- back, so one (call_id, attempt) can have several rows; all but the last
-- end in CAPACITY.
CREATE TABLE call_attempts (
    call_id          uuid        NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    claim_seq        bigint      NOT NULL,
    attempt          integer     NOT NULL CHECK (attempt >= 1),
    to_number        text        NOT NULL,
    claimed_at       timestamptz NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    -- The last id the provider gave this dial, if it was recorded.
    provider_call_id text,
    settle_seq       bigint,
    outcome          text
        CONSTRAINT call_attempts_outcome_known
        CHECK (outcome IN ('COMPLETED', 'FAILED', 'RETRY', 'CAPACITY')),
    last_error       text,
    -- COMPLETED / FAILED: when the call ended.
    ended_at         timestamptz,
    -- RETRY / CAPACITY: not re-dialled before this instant.
    retry_at         timestamptz,
    PRIMARY KEY (call_id, claim_seq),
    CONSTRAINT call_attempts_settled_once CHECK ((settle_seq IS NULL) = (outcome IS NULL))
);

-- The webhook's lookup: provider id (any string) -> attempt. Kept for every
-- recorded attempt, so a late webhook for an older attempt is still found
-- (and then changes nothing). The last recording of an id wins.
CREATE TABLE provider_calls (
    provider_call_id text    PRIMARY KEY,
    call_id          uuid    NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    attempt          integer NOT NULL CHECK (attempt >= 1)
);
CREATE INDEX provider_calls_by_call ON provider_calls (call_id);

-- Exact counts per status without counting rows: every statement that
-- changes statuses appends one signed delta row per status it changed (no
-- shared row is updated, so writers never queue behind each other), and
-- compact_call_status_counts() folds the rows into one per status. The count
-- of a status is the sum of its rows; a reader always sees whole statements.
CREATE TABLE call_status_counts (
    status text   NOT NULL,
    delta  bigint NOT NULL
);

-- The wake-up channel: a call became PENDING (created or re-enqueued) or a
-- slot was freed. NOTIFY is delivered at commit, so listeners never see a
-- change that rolled back.
CREATE FUNCTION calls_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_status_counts (status, delta)
    SELECT status, count(*) FROM inserted GROUP BY status;
    IF EXISTS (SELECT 1 FROM inserted WHERE status = 'PENDING') THEN
        PERFORM pg_notify('orchestrator_calls', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION calls_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wake boolean;
BEGIN
    -- Net change per status; a statement that changes no status (a payload
    -- update, a provider id) adds no rows and wakes nobody.
    WITH changes AS (
        SELECT status, sum(delta) AS delta
        FROM (SELECT status, -1 AS delta FROM before_update
              UNION ALL
              SELECT status, 1 FROM after_update) AS moves
        GROUP BY status
        HAVING sum(delta) <> 0
    ), counted AS (
        INSERT INTO call_status_counts (status, delta) SELECT status, delta FROM changes
    )
    SELECT coalesce(bool_or((status = 'PENDING' AND delta > 0)
                            OR (status = 'IN_PROGRESS' AND delta < 0)), false)
    INTO wake FROM changes;
    IF wake THEN
        PERFORM pg_notify('orchestrator_calls', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION calls_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_status_counts (status, delta)
    SELECT status, -count(*) FROM deleted GROUP BY status;
    RETURN NULL;
END
$$;

CREATE FUNCTION calls_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM call_status_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER calls_count_insert AFTER INSERT ON calls
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION calls_after_insert();
CREATE TRIGGER calls_count_update AFTER UPDATE ON calls
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION calls_after_update();
CREATE TRIGGER calls_count_delete AFTER DELETE ON calls
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION calls_after_delete();
CREATE TRIGGER calls_count_truncate AFTER TRUNCATE ON calls
    FOR EACH STATEMENT EXECUTE FUNCTION calls_after_truncate();

-- Folds the delta rows into one row per status. Concurrent callers are safe
-- (each delta row is deleted by exactly one DELETE, and its value re-inserted
-- by that same statement), and the try-lock makes all but one of them return
-- at once instead of queueing on each other's row locks.
-- Advisory lock keys of this schema: (1869771365, 1) serialises claimers,
-- (1869771365, 2) guards this compaction.
CREATE FUNCTION compact_call_status_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(1869771365, 2) THEN
        WITH gone AS (DELETE FROM call_status_counts RETURNING status, delta)
        INSERT INTO call_status_counts (status, delta)
        SELECT status, sum(delta) FROM gone GROUP BY status HAVING sum(delta) <> 0;
    END IF;
END
$$;
