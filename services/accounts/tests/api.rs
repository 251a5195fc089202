//! The `accounts` service through real gRPC clients, against a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

bank_testkit::standard_service_tests!(
    bank_accounts::Accounts,
    bank_accounts::MIGRATOR,
    ["bank.accounts.v1.AccountsService", "bank.accounts.v1.AccountsAdminService"]
);
