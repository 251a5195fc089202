-- One database per service (docker compose, development only). Runs once, when the postgres volume
-- is first initialised; the services migrate their own schema at start.
CREATE DATABASE bank_identity;
CREATE DATABASE bank_accounts;
CREATE DATABASE bank_ledger;
CREATE DATABASE bank_cards;
CREATE DATABASE bank_notifications;
