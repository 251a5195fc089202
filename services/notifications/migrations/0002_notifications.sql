-- Notifications (ARCHITECTURE.md, "notifications"). Everything a consumed event causes is written in
-- the transaction that records its id in processed_events, so a redelivered event has no second
-- effect. Sending (SMTP, HTTP) happens afterwards from these tables, at least once per row.

-- Projections of other services' events: who a user is (for emails) and who owns an account.
CREATE TABLE users (
    user_id    uuid        PRIMARY KEY,
    email      text        NOT NULL,
    given_name text        NOT NULL DEFAULT '',
    locale     text        NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    account_id       uuid PRIMARY KEY,
    owner_user_id    uuid NOT NULL,
    number_last_four text NOT NULL,
    currency         text NOT NULL
);
CREATE INDEX accounts_owner ON accounts (owner_user_id);

-- Channel choices per user and event type; absent rows mean the catalogue's defaults.
CREATE TABLE preferences (
    user_id    uuid        NOT NULL,
    event_type text        NOT NULL,
    email      boolean     NOT NULL,
    webhook    boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, event_type)
);

-- The user-facing low-balance alert; the ledger detects the crossing (ADR 0015) and this row
-- mirrors its threshold and shows whether the next crossing will fire.
CREATE TABLE low_balance_alerts (
    account_id        uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL,
    currency          text        NOT NULL,
    threshold         bigint      NOT NULL CHECK (threshold >= 0),
    enabled           boolean     NOT NULL,
    armed             boolean     NOT NULL DEFAULT true,
    last_triggered_at timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX low_balance_alerts_user ON low_balance_alerts (user_id, account_id);

-- One record per event and user it concerns: what reached (or will reach) them, on which channels.
CREATE TABLE notifications (
    event_id    uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    event_type  text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    channels    text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, user_id)
);

-- Emails: queued in the event's transaction, sent by the mailer. Bodies are dropped once sent.
CREATE TABLE emails (
    email_id        uuid        PRIMARY KEY,
    event_id        uuid,
    user_id         uuid,
    recipient       text        NOT NULL,
    template        text        NOT NULL,
    subject         text        NOT NULL,
    body_text       text,
    body_html       text,
    status          text        NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX emails_due ON emails (next_attempt_at) WHERE status = 'queued';
CREATE INDEX emails_newest ON emails (created_at DESC, email_id DESC);

CREATE TABLE webhook_endpoints (
    endpoint_id                uuid        PRIMARY KEY,
    owner_user_id              uuid,
    owner_client_id            text,
    url                        text        NOT NULL,
    description                text        NOT NULL DEFAULT '',
    event_types                text[]      NOT NULL DEFAULT '{}',
    status                     text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'failing')),
    disabled_reason            text        NOT NULL DEFAULT '',
    consecutive_failures       integer     NOT NULL DEFAULT 0,
    secret                     text        NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    secret_rotated_at          timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CHECK ((owner_user_id IS NULL) <> (owner_client_id IS NULL))
);
CREATE INDEX webhook_endpoints_user ON webhook_endpoints (owner_user_id) WHERE owner_user_id IS NOT NULL;
CREATE INDEX webhook_endpoints_client ON webhook_endpoints (owner_client_id) WHERE owner_client_id IS NOT NULL;

CREATE TABLE webhook_deliveries (
    delivery_id     uuid        PRIMARY KEY,
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    body            text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'succeeded', 'retrying', 'failed')),
    attempt_count   integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    redelivery_of   uuid,
    test            boolean     NOT NULL DEFAULT false
);
-- An event reaches an endpoint once, whatever the redeliveries of the stream (manual redeliveries
-- and replays are new rows that name the delivery they repeat).
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (endpoint_id, event_id)
    WHERE redelivery_of IS NULL AND NOT test;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX webhook_deliveries_newest ON webhook_deliveries (endpoint_id, created_at DESC, delivery_id DESC);

CREATE TABLE webhook_attempts (
    delivery_id      uuid        NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempt_number   integer     NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer     NOT NULL,
    http_status      integer     NOT NULL,
    error            text        NOT NULL DEFAULT '',
    response_excerpt text        NOT NULL DEFAULT '',
    PRIMARY KEY (delivery_id, attempt_number)
);

-- Webhook-eligible events as delivered (JSON), kept for ReplayWebhookEvents.
CREATE TABLE event_archive (
    event_id    uuid        PRIMARY KEY,
    event_type  text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    user_ids    uuid[]      NOT NULL,
    body        text        NOT NULL
);
CREATE INDEX event_archive_time ON event_archive (occurred_at);

-- The security feed, in consumption order (seq is the resumable cursor).
CREATE TABLE security_events (
    seq            bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    event_type     text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    user_id        uuid,
    summary        text        NOT NULL,
    ip_address     text        NOT NULL DEFAULT '',
    user_agent     text        NOT NULL DEFAULT '',
    card_last_four text        NOT NULL DEFAULT '',
    decline_reason integer     NOT NULL DEFAULT 0,
    currency       text,
    minor_units    bigint
);
CREATE INDEX security_events_user ON security_events (user_id, seq DESC);

-- Why a stream entry failed, while it is retried (for the dead letter's last_error).
CREATE TABLE consumer_failures (
    stream          text        NOT NULL,
    entry_id        text        NOT NULL,
    last_error      text        NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, entry_id)
);

-- Poison stream entries and exhausted webhook deliveries, for operators.
CREATE TABLE dead_letters (
    dead_letter_id   uuid        PRIMARY KEY,
    stream           text        NOT NULL,
    consumer_group   text        NOT NULL,
    entry_id         text,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    delivery_id      uuid,
    attempts         integer     NOT NULL,
    last_error       text        NOT NULL,
    fields           jsonb,
    first_failed_at  timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'retried'))
);
CREATE INDEX dead_letters_newest ON dead_letters (dead_lettered_at DESC, dead_letter_id DESC);

CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    rpc          text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, rpc, key)
);

-- notifications' own events (webhook failures, disabled endpoints) for other consumers; the same
-- table as every producing service's outbox (0001_outbox.sql of identity).
CREATE TABLE outbox (
    seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    event_type   text        NOT NULL CHECK (event_type <> ''),
    subject      text        NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    traceparent  text,
    payload      bytea       NOT NULL,
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
