//! The ledger's rules, pure: no SQL, no gRPC, no protobuf. Typed accounts, holds and postings
//! ([`account`], [`hold`], [`posting`]), the in-memory book of one batch that applies postings in
//! arrival order under the batch's locks ([`book`]), who may transfer what ([`transfer`]), and the
//! walk that verifies an account's hash chain ([`chain`]).

pub mod account;
pub mod book;
pub mod chain;
pub mod hold;
pub mod posting;
pub mod transfer;

pub use account::{Account, AccountKind, AccountStatus, GENESIS_HASH, SystemType};
pub use book::{Book, Original, Posted};
pub use hold::{Hold, HoldStatus, Release};
pub use posting::{Leg, Plan, Refusal, TransactionKind};
pub use transfer::Destination;
