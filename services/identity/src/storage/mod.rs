//! The only module that talks SQL. Functions take `&mut PgConnection` so the caller owns the
//! transaction; queries are runtime-checked (see docs/adr/0006) and covered by the service tests.

pub mod audit;
pub mod clients;
pub mod email_tokens;
pub mod keys;
pub mod mfa;
pub mod outbox;
pub mod revocation_journal;
pub mod sessions;
pub mod users;
