-- Customer accounts, the log of state changes mirrored to the ledger (the saga log and audit trail
-- of administrative actions), and idempotency keys.

CREATE TABLE accounts (
    account_id       uuid        PRIMARY KEY,
    -- Keyset pagination order (oldest first).
    seq              bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- 16 digits ending in ISO 7064 MOD 97-10 check digits (domain::number). "C" collation: the
    -- unique index also serves prefix searches (LIKE '4210%'). Never reused: rows are never deleted.
    account_number   text        COLLATE "C" NOT NULL UNIQUE CHECK (account_number ~ '^[0-9]{16}$'),
    owner_user_id    uuid        NOT NULL,
    product          text        NOT NULL CHECK (product IN ('checking', 'savings')),
    currency         char(3)     NOT NULL,
    -- opening: the open-account saga has not finished (no ledger account yet, or not confirmed).
    status           text        NOT NULL CHECK (status IN ('opening', 'active', 'frozen', 'closed')),
    nickname         text        NOT NULL DEFAULT '',
    -- Mirrors the ledger's limit (the ledger enforces it); minor units of `currency`.
    overdraft_limit  bigint      NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    -- While frozen: whether credits are still accepted, when, by whom and why.
    credits_allowed  boolean     NOT NULL DEFAULT true,
    frozen_at        timestamptz,
    frozen_by        uuid,
    freeze_reason    text,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz,
    -- The administrator of a forced close; NULL when the owner closed the account.
    closed_by        uuid,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The reconciler's schedule while opening: attempts so far and when to try next.
    saga_attempts    integer     NOT NULL DEFAULT 0,
    saga_retry_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'frozen') = (frozen_at IS NOT NULL)),
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

-- ListMyAccounts: one owner's accounts in keyset order.
CREATE INDEX accounts_owner ON accounts (owner_user_id, seq);
-- The reconciler's scan: only unfinished openings, by due time.
CREATE INDEX accounts_opening ON accounts (saga_retry_at) WHERE status = 'opening';

-- A state change of an account that the ledger must mirror (freeze, unfreeze, close, overdraft
-- limit). Written as `pending` before the ledger is called, then `applied` (together with the
-- account's new state and its event) or `abandoned` (the ledger refused). A pending change left by
-- a crash or an unreachable ledger is finished by the reconciler. At most one pending change per
-- account, so changes never overlap. Applied rows are the audit trail of who did what and why.
CREATE TABLE account_changes (
    change_id        uuid        PRIMARY KEY,
    account_id       uuid        NOT NULL REFERENCES accounts (account_id),
    action           text        NOT NULL
                     CHECK (action IN ('freeze', 'unfreeze', 'close', 'force_close', 'set_overdraft_limit')),
    -- freeze: whether credits stay allowed; set_overdraft_limit: the new limit.
    credits_allowed  boolean     NOT NULL DEFAULT false,
    overdraft_limit  bigint      NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    -- The acting user (owner or administrator) and the audited reason.
    actor            uuid        NOT NULL,
    reason           text        NOT NULL DEFAULT '',
    -- The idempotency key of the request that asked for it (principal, rpc, key).
    key_principal    text        NOT NULL,
    key_rpc          text        NOT NULL,
    key              text        NOT NULL,
    state            text        NOT NULL CHECK (state IN ('pending', 'applied', 'abandoned')),
    -- Why it was abandoned (the ledger's reason).
    outcome          text        NOT NULL DEFAULT '',
    requested_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    retry_at         timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX account_changes_one_pending ON account_changes (account_id) WHERE state = 'pending';
CREATE INDEX account_changes_due ON account_changes (retry_at) WHERE state = 'pending';
CREATE INDEX account_changes_key ON account_changes (account_id, key_principal, key_rpc, key);
CREATE INDEX account_changes_account ON account_changes (account_id, requested_at);

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
