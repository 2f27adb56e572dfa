-- Stores in different schemas of one database share nothing. The tables are
-- per schema already; what PostgreSQL keys per database is keyed by schema
-- here:
-- - the wake-up channel: `orchestrator_calls` in `public` (as before, so
--   processes of an older version keep hearing it during a rolling upgrade),
--   `orchestrator_calls.<schema>` in any other schema. The store listens on
--   the same name; the schema name is at most 44 bytes, so the channel fits
--   the 63-byte limit;
-- - the compaction's advisory lock: the store passes its schema's keys, so
--   compactions in two schemas never skip each other.
--
-- The trigger functions also pin their search_path to the schema they were
-- created in, so a statement on `calls` from a session with another
-- search_path (an operator's psql) counts into this schema's counters.

CREATE OR REPLACE FUNCTION calls_after_insert() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_status_counts (status, delta)
    SELECT status, count(*) FROM inserted GROUP BY status;
    IF EXISTS (SELECT 1 FROM inserted WHERE status = 'PENDING') THEN
        PERFORM pg_notify(CASE WHEN TG_TABLE_SCHEMA = 'public' THEN 'orchestrator_calls'
                               ELSE 'orchestrator_calls.' || TG_TABLE_SCHEMA END, '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION calls_after_update() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
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
        PERFORM pg_notify(CASE WHEN TG_TABLE_SCHEMA = 'public' THEN 'orchestrator_calls'
                               ELSE 'orchestrator_calls.' || TG_TABLE_SCHEMA END, '');
    END IF;
    RETURN NULL;
END
$$;

ALTER FUNCTION calls_after_delete() SET search_path FROM CURRENT;
ALTER FUNCTION calls_after_truncate() SET search_path FROM CURRENT;

-- compact_call_status_counts() with the advisory lock key given by the
-- store. The version without arguments stays for older processes; in
-- `public` both take the same lock.
CREATE FUNCTION compact_call_status_counts(lock_class integer, lock_key integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(lock_class, lock_key) THEN
        WITH gone AS (DELETE FROM call_status_counts RETURNING status, delta)
        INSERT INTO call_status_counts (status, delta)
        SELECT status, sum(delta) FROM gone GROUP BY status HAVING sum(delta) <> 0;
    END IF;
END
$$;
