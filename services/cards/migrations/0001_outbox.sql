-- The transactional outbox (ARCHITECTURE.md, "Events"). A row is written in the same transaction as
-- the change it reports; the relay publishes rows in `seq` order to this service's Redis stream and
-- stamps `published_at`. Published rows are kept for the replay window, then deleted by the relay.
CREATE TABLE outbox (
    seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    event_type   text        NOT NULL CHECK (event_type <> ''),
    -- The user or account the event is about (for routing and per-subject ordering).
    subject      text        NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    -- W3C trace context of the request that caused the event, so consumers join its trace.
    traceparent  text,
    -- An encoded bank.events.v1 payload.
    payload      bytea       NOT NULL,
    published_at timestamptz
);

-- The relay's scan: the oldest unpublished rows, cheaply, however many published rows are kept.
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
