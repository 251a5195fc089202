-- Fewer index entries per posting (ADR 0028). Every index entry is a WAL record, and after each
-- checkpoint the first one on a page carries the whole page.

-- "At most one reversal per transaction" needs only the reversals in its index: the plain UNIQUE
-- constraint also indexed the NULL of every ordinary transaction.
ALTER TABLE transactions DROP CONSTRAINT transactions_reverses_transaction_id_key;
CREATE UNIQUE INDEX transactions_one_reversal ON transactions (reverses_transaction_id)
    WHERE reverses_transaction_id IS NOT NULL;

-- The retention cleanup is the only reader of created_at, and rows arrive in created_at order:
-- a BRIN index (one summary per range of pages) replaces a B-tree entry per key.
DROP INDEX idempotency_keys_created_at;
CREATE INDEX idempotency_keys_created_at ON idempotency_keys USING brin (created_at);

-- A transaction's entries are read by transaction id (postings, reversals), never by entry id
-- alone: the primary key leads with the transaction and the separate transaction index goes.
-- Entry ids are UUIDv7 minted by the ledger, now unique per transaction in the schema. On a large
-- populated journal, build the new key's index CONCURRENTLY first and attach it (USING INDEX).
ALTER TABLE entries DROP CONSTRAINT entries_pkey;
ALTER TABLE entries ADD CONSTRAINT entries_pkey PRIMARY KEY (transaction_id, entry_id);
DROP INDEX entries_transaction;
