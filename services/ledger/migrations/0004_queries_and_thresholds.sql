-- Keyset order of transfers (ListTransfers, newest first) and the low-balance threshold.

-- A stable keyset position for transfers (existing rows get numbers in physical order).
ALTER TABLE transfers ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE;
CREATE INDEX transfers_from_seq ON transfers (from_account_id, seq DESC);
CREATE INDEX transfers_to_seq ON transfers (to_account_id, seq DESC);

-- The owner's low-balance threshold (minor units of the account's currency); NULL = none. A posting
-- that takes the available balance from >= threshold to < threshold writes a LowBalanceDetected
-- event in the same transaction.
ALTER TABLE ledger_accounts ADD COLUMN low_balance_threshold bigint CHECK (low_balance_threshold >= 0);

-- Historical balances and statements sum an account's entries up to an instant.
CREATE INDEX entries_account_posted_amount ON entries (account_id, posted_at) INCLUDE (amount);
