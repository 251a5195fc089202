-- The processed-event inbox (ARCHITECTURE.md, "Events"). A consumer inserts the event id in the same
-- transaction as the event's effect; a redelivered event hits the primary key and has no second effect.
CREATE TABLE processed_events (
    event_id     uuid        PRIMARY KEY,
    source       text        NOT NULL,
    event_type   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX processed_events_processed_at ON processed_events (processed_at);
