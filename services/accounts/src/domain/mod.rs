//! The accounts service's rules and types: pure, no tonic, no sqlx.

pub mod account;
pub mod statement;

pub use account::{Action, Nickname, Product, Reason, Refusal, Status};
pub use bank_money::account_number::{self as number, AccountNumber, NumberPrefix};
