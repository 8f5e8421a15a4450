-- The durable delivery queue (package deliver, queue.go). A delivery that
-- has failed for GROUPHOOK_PARK_AFTER is written here, with the event's
-- fields, so that the replication slot can move on; queue workers on every
-- replica retry it on GROUPHOOK_RETRY_SCHEDULE. Delivered rows are deleted;
-- dead ones are kept for GROUPHOOK_DEAD_RETENTION.

-- Endpoint health. grouphook sets enabled = false itself when an endpoint
-- answers 410 Gone or fails without a success for GROUPHOOK_DISABLE_AFTER,
-- and says why here.
ALTER TABLE grouphook.endpoints
    ADD COLUMN disabled_reason text NULL,
    ADD COLUMN disabled_at     timestamptz NULL,
    -- Last success seen by the queue, or by the in-memory path after a
    -- failure (the happy path writes nothing per event).
    ADD COLUMN last_success_at timestamptz NULL,
    -- First failure since the last success, as far as the queue knows.
    ADD COLUMN failing_since   timestamptz NULL;

-- Re-enabling an endpoint clears why and since when it was failing, so it
-- gets a fresh GROUPHOOK_DISABLE_AFTER.
CREATE FUNCTION grouphook.endpoints_reenabled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.enabled AND NOT OLD.enabled THEN
        NEW.disabled_reason := NULL;
        NEW.disabled_at := NULL;
        NEW.failing_since := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER endpoints_reenabled
    BEFORE UPDATE OF enabled ON grouphook.endpoints
    FOR EACH ROW EXECUTE FUNCTION grouphook.endpoints_reenabled();

-- One row per (event, endpoint) delivery that left memory. A lane is the
-- pending rows of one (endpoint_id, group_key), in id order; only its head
-- (head = true, at most one per lane) may be attempted, so an endpoint gets
-- a group's events in commit order across every replica.
CREATE TABLE grouphook.deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The webhook-id, kept on every retry and replay.
    event_id         text NOT NULL,
    endpoint_id      bigint NOT NULL REFERENCES grouphook.endpoints (id) ON DELETE CASCADE,
    group_key        text NOT NULL,
    -- The event, stored so that the body is rebuilt byte for byte: the JSON
    -- objects are text, not jsonb, which would reorder keys.
    event_type       text NOT NULL CHECK (event_type IN ('CREATE', 'UPDATE', 'DELETE')),
    table_name       text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    row_json         text NULL,
    key_json         text NULL,
    previous_json    text NULL,
    tenant           text NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
    head             boolean NOT NULL DEFAULT false CHECK (NOT head OR status = 'pending'),
    -- Every attempt, in memory before parking and from the queue.
    attempts         integer NOT NULL DEFAULT 0,
    -- Delays of GROUPHOOK_RETRY_SCHEDULE used up.
    retries          integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    first_failure_at timestamptz NULL,
    last_error       text NULL,
    -- The lease of the worker attempting the row (claimed with FOR UPDATE
    -- SKIP LOCKED in a short transaction; the HTTP call runs outside it).
    locked_until     timestamptz NULL,
    locked_by        text NULL,
    dead_at          timestamptz NULL,
    dead_reason      text NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'dead') = (dead_at IS NOT NULL))
);

-- The claim: due lane heads, oldest first.
CREATE INDEX deliveries_due_idx ON grouphook.deliveries (next_attempt_at)
    WHERE status = 'pending' AND head;
-- At most one head per lane: two rows of a lane are never in flight at once.
CREATE UNIQUE INDEX deliveries_lane_head_idx ON grouphook.deliveries (endpoint_id, group_key)
    WHERE status = 'pending' AND head;
-- A lane in order: the next head, "is this lane empty", the held lanes.
CREATE INDEX deliveries_lane_idx ON grouphook.deliveries (endpoint_id, group_key, id)
    WHERE status = 'pending';
-- An endpoint's deliveries (CLI, replay, ON DELETE CASCADE, disabling).
CREATE INDEX deliveries_endpoint_idx ON grouphook.deliveries (endpoint_id, id);
-- Dead-letter retention.
CREATE INDEX deliveries_dead_idx ON grouphook.deliveries (dead_at) WHERE status = 'dead';

-- The history of failed attempts of a queued delivery. The attempts made in
-- memory before parking are summed up in one row (the last error).
CREATE TABLE grouphook.delivery_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES grouphook.deliveries (id) ON DELETE CASCADE,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    -- NULL when no response arrived (timeout, connection error).
    status_code   integer NULL,
    -- NULL for the summary of the attempts made in memory.
    duration      interval NULL,
    error         text NOT NULL,
    -- The first 4 KiB of the response body.
    response_body bytea NULL
);

CREATE INDEX delivery_attempts_delivery_idx ON grouphook.delivery_attempts (delivery_id, id);
