-- History pages (account, posted_at, sequence) and historical sums (account, posted_at -> amount)
-- share one index: every posting wrote two index entries per leg for the same leading columns.
CREATE INDEX entries_account_time_amount ON entries (account_id, posted_at, sequence) INCLUDE (amount);
DROP INDEX entries_account_time;
DROP INDEX entries_account_posted_amount;
