-- The `calls` triggers no longer NOTIFY. A notifying transaction takes a
-- server-wide lock at commit and holds it until its commit record is
-- flushed, so one `pg_notify` per writing statement serialised every
-- create and settlement behind each other's WAL flush. The store now wakes
-- its own engine in process after a write commits, and other processes
-- through one debounced NOTIFY sent outside the writing transactions (see
-- the crate's `wake` module). The triggers keep the per-status counters.

CREATE OR REPLACE FUNCTION calls_after_insert() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_status_counts (status, delta)
    SELECT status, count(*) FROM inserted GROUP BY status;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION calls_after_update() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    -- Net change per status; a statement that changes no status (a payload
    -- update, a provider id) adds no rows.
    INSERT INTO call_status_counts (status, delta)
    SELECT status, sum(delta)
    FROM (SELECT status, -1 AS delta FROM before_update
          UNION ALL
          SELECT status, 1 FROM after_update) AS moves
    GROUP BY status
    HAVING sum(delta) <> 0;
    RETURN NULL;
END
$$;
