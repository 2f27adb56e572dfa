-- Call control (cancel, retry, client callbacks), the event log and the
-- callback outbox.
--
-- The per-status counters (`call_status_counts` and the `calls` triggers)
-- count whatever status a row has, so CANCELED is counted without a change
-- there; only the CHECK constraints learn the new status.

ALTER TABLE calls
    DROP CONSTRAINT calls_status_known,
    ADD CONSTRAINT calls_status_known
        CHECK (status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED')),
    -- The call this one retries. No foreign key: retention may delete the
    -- original first.
    ADD COLUMN retry_of            uuid,
    -- A cancel request on an IN_PROGRESS call: it is never re-dialled and
    -- ends CANCELED unless the provider reports it COMPLETED.
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN cancel_reason       text,
    -- Where the terminal event is POSTed.
    ADD COLUMN callback_url        text;

ALTER TABLE call_attempts
    DROP CONSTRAINT call_attempts_outcome_known,
    ADD CONSTRAINT call_attempts_outcome_known
        CHECK (outcome IN ('COMPLETED', 'FAILED', 'RETRY', 'CAPACITY', 'CANCELED'));

-- Listing the calls to one number, newest first.
CREATE INDEX calls_by_number_newest ON calls (to_number, created_at, id);

-- The event log: one row per change of a call's status, inserted by the
-- statement that makes the change. `seq` is drawn inside the writing
-- transaction, so it is NOT in commit order; `id`, the event id readers
-- see, is assigned after commit by the store's sequencer (one at a time,
-- under an advisory lock), in `seq` order among the rows committed by then,
-- which is commit order. `id` is NULL until then, and readers never see
-- such a row.
CREATE TABLE call_events (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          bigint,
    call_id     uuid        NOT NULL,
    type        text        NOT NULL
        CONSTRAINT call_events_type_known
        CHECK (type IN ('call.created', 'call.dialled', 'call.retry_scheduled', 'call.completed',
                        'call.failed', 'call.expired', 'call.canceled')),
    occurred_at timestamptz NOT NULL,
    -- The call just after the change, as the store reads it (`json`: kept
    -- as written, metadata byte for byte).
    call        json        NOT NULL
);
-- Readers' index. Partial, so a writer's insert (id NULL) does not touch it:
-- the sequencer adds each entry. `id > $1` and `id = $1` imply the predicate.
CREATE UNIQUE INDEX call_events_by_id ON call_events (id) WHERE id IS NOT NULL;
-- The sequencer's work: rows not sequenced yet, oldest first.
CREATE INDEX call_events_unsequenced ON call_events (seq) WHERE id IS NULL;
-- Retention deletes a call's events with it.
CREATE INDEX call_events_by_call ON call_events (call_id);

-- The last event id assigned; one row, written only by the sequencer.
CREATE TABLE call_event_position (
    only_row boolean PRIMARY KEY DEFAULT true CONSTRAINT call_event_position_one_row CHECK (only_row),
    last_id  bigint  NOT NULL
);
INSERT INTO call_event_position (last_id) VALUES (0);

-- The callback outbox: the delivery of a call's terminal event (one per
-- call), inserted by the statement that ends the call. Claimed like calls
-- (`FOR UPDATE SKIP LOCKED`, earliest due first) once its event has an id,
-- which is its `webhook-id`.
CREATE TABLE call_deliveries (
    call_id    uuid        PRIMARY KEY,
    event_seq  bigint      NOT NULL,
    url        text        NOT NULL,
    state      text        NOT NULL
        CONSTRAINT call_deliveries_state_known CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
    -- Tries started so far.
    attempts   integer     NOT NULL CHECK (attempts >= 0),
    -- While PENDING: when it is next due (its retry time, or the end of the
    -- lease of the try holding it).
    due_at     timestamptz,
    last_error text,
    CONSTRAINT call_deliveries_due_while_pending CHECK ((state = 'PENDING') = (due_at IS NOT NULL))
);
CREATE INDEX call_deliveries_due ON call_deliveries (due_at) WHERE state = 'PENDING';

-- The call as an event carries it: the JSON of `orchestrator_core::Call`
-- (camelCase; optional fields absent or null), with the `callback` a call
-- with a callback URL shows at the moment of a change of status (PENDING,
-- no tries: its delivery, if any, is created by that very change).
CREATE FUNCTION call_event_json(c calls) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', c.id,
        'payload', CASE WHEN c.metadata IS NULL
                        THEN json_build_object('to', c.to_number, 'scriptId', c.script_id)
                        ELSE json_build_object('to', c.to_number, 'scriptId', c.script_id,
                                               'metadata', c.metadata) END,
        'status', c.status,
        'attempts', c.attempts,
        'lastError', c.last_error,
        'createdAt', c.created_at,
        'startedAt', c.started_at,
        'endedAt', c.ended_at,
        'notBefore', c.not_before,
        'expiresAt', c.expires_at,
        'nextAttemptAt', c.next_attempt_at,
        'leaseExpiresAt', c.lease_expires_at,
        'providerCallId', c.provider_call_id,
        'durationSec', c.duration_sec,
        'retryOf', c.retry_of,
        'cancelRequestedAt', c.cancel_requested_at,
        'cancelReason', c.cancel_reason,
        'callbackUrl', c.callback_url,
        'callback', CASE WHEN c.callback_url IS NOT NULL
                         THEN json_build_object('state', 'PENDING', 'attempts', 0) END)
$$;
