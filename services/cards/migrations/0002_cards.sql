-- Cards, the PAN vault, authorizations (the saga log with the ledger's holds), refunds, PAN
-- reveals (audit and rate limit), administrative actions and idempotency keys.

-- The vault's state: which key-encryption key (KEK) wraps new data keys. One row.
CREATE TABLE vault_state (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    primary_kek_id text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Data keys, each wrapped (AES-256-GCM) by a KEK that lives only in a mounted secret file. The
-- key material in the database is unreadable without it. `index`: the one HMAC key of PAN
-- fingerprints (uniqueness without a readable PAN); `pan`: one per card.
CREATE TABLE vault_keys (
    key_id       uuid        PRIMARY KEY,
    purpose      text        NOT NULL CHECK (purpose IN ('index', 'pan')),
    kek_id       text        NOT NULL,
    -- 12-byte nonce || ciphertext+tag of the 32-byte data key; associated data: the key id.
    wrapped      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz
);

CREATE UNIQUE INDEX vault_keys_one_index ON vault_keys (purpose) WHERE purpose = 'index';
CREATE INDEX vault_keys_kek ON vault_keys (kek_id);

-- The PANs: encrypted under the card's data key (associated data: the card id), plus an HMAC
-- fingerprint under the index key so that no PAN is issued twice. The CVV is never stored.
CREATE TABLE vault_pans (
    card_id     uuid  PRIMARY KEY,
    key_id      uuid  NOT NULL REFERENCES vault_keys (key_id),
    -- 12-byte nonce || ciphertext+tag of the PAN digits.
    sealed      bytea NOT NULL,
    fingerprint bytea NOT NULL UNIQUE
);

CREATE TABLE cards (
    card_id               uuid        PRIMARY KEY REFERENCES vault_pans (card_id),
    -- Keyset pagination order.
    seq                   bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    owner_user_id         uuid        NOT NULL,
    account_id            uuid        NOT NULL,
    product               text        NOT NULL CHECK (product IN ('debit')),
    -- expired is decided from the expiry date when read (effective status), not stored.
    status                text        NOT NULL CHECK (status IN ('active', 'frozen', 'lost', 'closed')),
    last_four             char(4)     NOT NULL CHECK (last_four ~ '^[0-9]{4}$'),
    expiry_month          integer     NOT NULL CHECK (expiry_month BETWEEN 1 AND 12),
    expiry_year           integer     NOT NULL,
    cardholder_name       text        NOT NULL,
    currency              char(3)     NOT NULL,
    -- Minor units of `currency`.
    daily_limit           bigint      NOT NULL CHECK (daily_limit > 0),
    per_transaction_limit bigint      NOT NULL CHECK (per_transaction_limit > 0),
    -- IANA name; the card day runs from midnight to midnight here (PostgreSQL's tz database).
    time_zone             text        NOT NULL,
    replaces_card_id      uuid,
    replaced_by_card_id   uuid UNIQUE,
    stolen                boolean     NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    closed_at             timestamptz,
    -- The administrator of a forced close (NULL when the owner closed it).
    closed_by             uuid
);

CREATE INDEX cards_owner ON cards (owner_user_id, seq);
CREATE INDEX cards_account ON cards (account_id);
CREATE INDEX cards_last_four ON cards (last_four);

-- Every authorization (charge), declines included. The authorization id is the saga key: the
-- ledger hold is created with reference_id = authorization_id.
--   pending  -> the record is committed, the ledger hold not confirmed yet (saga step 2 in
--               flight, or interrupted: the reconciler finishes it)
--   approved -> hold confirmed;  declined (terminal, nothing held)
--   captured (refunds may follow), voided, expired (terminal; hold released)
CREATE TABLE authorizations (
    authorization_id       uuid        PRIMARY KEY,
    seq                    bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    card_id                uuid        NOT NULL REFERENCES cards (card_id),
    account_id             uuid        NOT NULL,
    owner_user_id          uuid        NOT NULL,
    status                 text        NOT NULL
                           CHECK (status IN ('pending', 'approved', 'declined', 'captured', 'voided', 'expired')),
    decline_reason         text,
    currency               char(3)     NOT NULL,
    amount                 bigint      NOT NULL CHECK (amount > 0),
    captured_amount        bigint      NOT NULL DEFAULT 0,
    refunded_amount        bigint      NOT NULL DEFAULT 0,
    merchant_name          text        NOT NULL,
    merchant_category_code char(4)     NOT NULL,
    merchant_id            text        NOT NULL DEFAULT '',
    merchant_city          text        NOT NULL DEFAULT '',
    merchant_country       text        NOT NULL DEFAULT '',
    acquirer_reference     text        NOT NULL DEFAULT '',
    -- The card day this authorization counts against (the daily limit).
    card_day               date        NOT NULL,
    hold_id                uuid,
    capture_transaction_id uuid,
    -- The idempotency key of the request (principal, rpc, key): a retry finds its authorization.
    key_principal          text        NOT NULL,
    key_rpc                text        NOT NULL,
    key                    text        NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    expires_at             timestamptz NOT NULL,
    captured_at            timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- The reconciler's schedule while pending.
    saga_attempts          integer     NOT NULL DEFAULT 0,
    saga_retry_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'declined') = (decline_reason IS NOT NULL)),
    CHECK (status NOT IN ('approved', 'captured') OR hold_id IS NOT NULL),
    CHECK (captured_amount <= amount AND refunded_amount <= captured_amount)
);

CREATE UNIQUE INDEX authorizations_key ON authorizations (key_principal, key_rpc, key);
CREATE INDEX authorizations_card ON authorizations (card_id, seq);
-- The daily limit: what a card has approved (or has in flight) on one card day.
CREATE INDEX authorizations_card_day ON authorizations (card_id, card_day)
    WHERE status IN ('pending', 'approved', 'captured');
CREATE INDEX authorizations_pending ON authorizations (saga_retry_at) WHERE status = 'pending';
CREATE INDEX authorizations_expiring ON authorizations (expires_at) WHERE status = 'approved';
CREATE INDEX authorizations_declined ON authorizations (seq) WHERE status = 'declined';

-- Refunds of captured authorizations (the ledger's refund reference is the refund id).
CREATE TABLE refunds (
    refund_id        uuid        PRIMARY KEY,
    authorization_id uuid        NOT NULL REFERENCES authorizations (authorization_id),
    amount           bigint      NOT NULL CHECK (amount > 0),
    transaction_id   uuid        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX refunds_authorization ON refunds (authorization_id);

-- Every PAN reveal (audit, and the per-user hourly limit).
CREATE TABLE pan_reveals (
    reveal_id   uuid        PRIMARY KEY,
    card_id     uuid        NOT NULL REFERENCES cards (card_id),
    user_id     uuid        NOT NULL,
    ip_address  text        NOT NULL DEFAULT '',
    user_agent  text        NOT NULL DEFAULT '',
    revealed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX pan_reveals_user ON pan_reveals (user_id, revealed_at);

-- Administrative actions with their actor and reason (forced close, KEK rotation).
CREATE TABLE admin_actions (
    action_id  uuid        PRIMARY KEY,
    actor      uuid        NOT NULL,
    action     text        NOT NULL CHECK (action IN ('force_close', 'rotate_kek')),
    target     text        NOT NULL,
    reason     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- bank_platform::idempotency::TABLE_DDL.
CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    rpc          text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, rpc, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
