-- The double-entry ledger: accounts with maintained balances, an immutable journal with a hash chain
-- per account, holds, internal transfers and idempotency keys.

CREATE TABLE ledger_accounts (
    account_id       uuid        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('customer', 'system')),
    -- System accounts: which one (cash, card_settlement, ...); one per type and currency.
    system_type      text,
    account_number   text        UNIQUE,
    owner_user_id    uuid,
    currency         char(3)     NOT NULL,
    status           text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen', 'closed')),
    credits_allowed  boolean     NOT NULL DEFAULT true,
    overdraft_limit  bigint      NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    -- Maintained in the posting transaction, under this row's lock.
    posted           bigint      NOT NULL DEFAULT 0,
    held             bigint      NOT NULL DEFAULT 0 CHECK (held >= 0),
    -- The account's hash chain: position and hash of its newest entry.
    entry_count      bigint      NOT NULL DEFAULT 0,
    last_hash        text        NOT NULL DEFAULT '0000000000000000000000000000000000000000000000000000000000000000',
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'customer') = (owner_user_id IS NOT NULL AND account_number IS NOT NULL)),
    CHECK ((kind = 'system') = (system_type IS NOT NULL))
);

CREATE UNIQUE INDEX ledger_accounts_system ON ledger_accounts (system_type, currency) WHERE kind = 'system';
CREATE INDEX ledger_accounts_owner ON ledger_accounts (owner_user_id);

CREATE TABLE transactions (
    transaction_id           uuid        PRIMARY KEY,
    kind                     text        NOT NULL,
    description              text        NOT NULL DEFAULT '',
    posted_at                timestamptz NOT NULL DEFAULT now(),
    initiated_by             text        NOT NULL,
    reference_id             text        NOT NULL DEFAULT '',
    -- At most one reversal per transaction.
    reverses_transaction_id  uuid        UNIQUE REFERENCES transactions (transaction_id),
    reason                   text        NOT NULL DEFAULT ''
);

CREATE TABLE entries (
    entry_id        uuid        PRIMARY KEY,
    transaction_id  uuid        NOT NULL REFERENCES transactions (transaction_id),
    account_id      uuid        NOT NULL REFERENCES ledger_accounts (account_id),
    -- Signed minor units: positive = credit, negative = debit.
    amount          bigint      NOT NULL CHECK (amount <> 0),
    currency        char(3)     NOT NULL,
    balance_after   bigint      NOT NULL,
    -- Position in the account's chain (1, 2, ...) and the chain hashes.
    account_seq     bigint      NOT NULL,
    previous_hash   text        NOT NULL,
    entry_hash      text        NOT NULL,
    posted_at       timestamptz NOT NULL,
    -- Global order for history and statements.
    sequence        bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    UNIQUE (account_id, account_seq)
);

CREATE INDEX entries_account_time ON entries (account_id, posted_at, sequence);
CREATE INDEX entries_transaction ON entries (transaction_id);

-- Posted entries and transactions are never updated or deleted: corrections are reversals.
CREATE FUNCTION journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION journal_is_append_only();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only();

CREATE TABLE transfers (
    transfer_id        uuid        PRIMARY KEY,
    from_account_id    uuid        NOT NULL REFERENCES ledger_accounts (account_id),
    to_account_id      uuid        NOT NULL REFERENCES ledger_accounts (account_id),
    amount             bigint      NOT NULL CHECK (amount > 0),
    currency           char(3)     NOT NULL,
    description        text        NOT NULL DEFAULT '',
    transaction_id     uuid        NOT NULL REFERENCES transactions (transaction_id),
    initiated_by       text        NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX transfers_from ON transfers (from_account_id, created_at DESC);
CREATE INDEX transfers_to ON transfers (to_account_id, created_at DESC);

CREATE TABLE holds (
    hold_id                 uuid        PRIMARY KEY,
    account_id              uuid        NOT NULL REFERENCES ledger_accounts (account_id),
    amount                  bigint      NOT NULL CHECK (amount > 0),
    currency                char(3)     NOT NULL,
    captured_amount         bigint      NOT NULL DEFAULT 0,
    refunded_amount         bigint      NOT NULL DEFAULT 0,
    status                  text        NOT NULL CHECK (status IN ('active', 'captured', 'voided', 'expired')),
    counterparty            text        NOT NULL,
    created_by              text        NOT NULL,
    reference_id            text        NOT NULL,
    description             text        NOT NULL DEFAULT '',
    expires_at              timestamptz NOT NULL,
    capture_transaction_id  uuid        REFERENCES transactions (transaction_id),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (created_by, reference_id)
);

CREATE INDEX holds_active_expiry ON holds (expires_at) WHERE status = 'active';

CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    rpc          text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, rpc, key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
