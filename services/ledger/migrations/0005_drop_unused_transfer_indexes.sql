-- Transfers are listed by `seq` (transfers_from_seq / transfers_to_seq); the created_at indexes have
-- no reader and only cost every transfer insert.
DROP INDEX transfers_from;
DROP INDEX transfers_to;
