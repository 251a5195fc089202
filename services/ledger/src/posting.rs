//! The posting engine: one journal transaction of two or more legs that sum to zero, applied with
//! every involved account row locked in a fixed order (account id), every rule checked under those
//! locks, balances and per-account hash chains updated in the same database transaction.

use std::collections::BTreeMap;

use bank_money::Amount;
use bank_platform::{ErrorCode, ServiceError};
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::storage::{self, AccountRow};

/// Why a posting was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A business rule refused it (answered to the client as is).
    #[error("{0}")]
    Refused(ServiceError),
    /// The database failed (serialization failures and deadlocks are retried by the caller).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Error {
    fn refused(code: ErrorCode, message: &str) -> Self {
        Self::Refused(ServiceError::new(code, message))
    }
}

/// One leg: a signed amount on an account (positive = credit).
#[derive(Debug, Clone, Copy)]
pub struct Leg {
    /// The account.
    pub account_id: Uuid,
    /// Signed minor units.
    pub amount: i64,
}

/// What to post.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// `transfer`, `deposit`, `withdrawal`, ...
    pub kind: &'a str,
    /// Shown in the history.
    pub description: &'a str,
    /// The principal (user id or client id).
    pub initiated_by: &'a str,
    /// The originating object's id.
    pub reference_id: &'a str,
    /// Administrator's reason.
    pub reason: &'a str,
    /// The currency of every leg.
    pub currency: &'a str,
    /// The legs (sum zero).
    pub legs: Vec<Leg>,
    /// For a reversal: the transaction it reverses.
    pub reverses: Option<Uuid>,
    /// A correction (reversal): status and available-balance rules are not applied to debits,
    /// and credits to frozen accounts are allowed; closed accounts still refuse everything.
    pub correction: bool,
}

/// A posted transaction with the accounts as they are after it.
#[derive(Debug, Clone)]
pub struct Posted {
    /// The transaction.
    pub transaction_id: Uuid,
    /// When.
    pub posted_at: OffsetDateTime,
    /// Entry id, account id, amount, balance after — per leg, in plan order.
    pub entries: Vec<(Uuid, Uuid, i64, i64)>,
    /// The accounts after posting.
    pub accounts: BTreeMap<Uuid, AccountRow>,
    /// Accounts whose available balance crossed below their low-balance threshold ([`publish`]
    /// writes their events).
    pub crossed_below: Vec<Uuid>,
}

/// What an entry's hash covers.
#[derive(Debug, Clone, Copy)]
pub struct EntryFacts<'a> {
    /// Entry id.
    pub entry_id: Uuid,
    /// Its transaction.
    pub transaction_id: Uuid,
    /// Its account.
    pub account_id: Uuid,
    /// Chain position.
    pub seq: i64,
    /// Signed minor units.
    pub amount: i64,
    /// Currency.
    pub currency: &'a str,
    /// Posted balance after it.
    pub balance_after: i64,
    /// Posting time in microseconds since the epoch.
    pub posted_at_micros: i128,
}

/// Hash of an entry in its account's chain: SHA-256 over the previous hash and the entry's facts.
#[must_use]
pub fn entry_hash(previous_hash: &str, facts: &EntryFacts<'_>) -> String {
    let EntryFacts {
        entry_id,
        transaction_id,
        account_id,
        seq,
        amount,
        currency,
        balance_after,
        posted_at_micros,
    } = *facts;
    let canonical = format!(
        "{entry_id}|{transaction_id}|{account_id}|{seq}|{amount}|{currency}|{balance_after}|{posted_at_micros}"
    );
    let mut hasher = Sha256::new();
    hasher.update(previous_hash.as_bytes());
    hasher.update(b"|");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// Locks the accounts (ascending id: a fixed order, so concurrent postings never deadlock on each
/// other) and answers them by id; a missing id answers NOT_FOUND.
///
/// # Errors
/// An account does not exist, or the database failed.
pub async fn lock(conn: &mut PgConnection, ids: &[Uuid]) -> Result<BTreeMap<Uuid, AccountRow>, Error> {
    let mut sorted: Vec<Uuid> = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let rows = storage::lock_accounts(conn, &sorted).await?;
    let accounts: BTreeMap<Uuid, AccountRow> = rows.into_iter().map(|r| (r.account_id, r)).collect();
    if accounts.len() != sorted.len() {
        return Err(Error::refused(ErrorCode::NotFound, "no such account"));
    }
    Ok(accounts)
}

/// Checks every rule on the locked `accounts` and posts `plan`. The caller writes the posting's
/// event with [`publish`] (which adds the low-balance events) in the same transaction.
///
/// Rules: legs sum to zero; every account in `plan.currency`; a debited customer account is active
/// and keeps `available >= -overdraft_limit`; a credited customer account is not closed, and not
/// frozen unless credits are allowed. System accounts take any amount.
///
/// # Errors
/// A rule refused the posting, or the database failed.
pub async fn post(
    conn: &mut PgConnection,
    accounts: &mut BTreeMap<Uuid, AccountRow>,
    plan: &Plan<'_>,
) -> Result<Posted, Error> {
    let prepared = prepare(accounts, plan)?;
    // One round trip: the transaction, its entries and the accounts' balances and chain heads.
    storage::write_posting(conn, &prepared.transaction, &prepared.rows).await?;
    Ok(prepared.posted)
}

/// A posting checked and computed but not written yet: the caller writes `transaction` and `rows`
/// in its transaction (with [`storage::write_posting`], or folded into a statement of its own, as
/// the transfer path does to save a round trip).
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The outcome, as it will be once written.
    pub posted: Posted,
    /// The transaction row.
    pub transaction: storage::NewTransaction<'a>,
    /// The entries and the accounts' new states.
    pub rows: storage::PostingRows,
}

/// [`post`] without the write: checks every rule on the locked `accounts`, computes the entries,
/// balances and chain links, and updates `accounts` in memory.
///
/// # Errors
/// A rule refused the posting.
pub fn prepare<'a>(
    accounts: &mut BTreeMap<Uuid, AccountRow>,
    plan: &Plan<'a>,
) -> Result<Prepared<'a>, Error> {
    if plan.legs.len() < 2 {
        return Err(Error::refused(ErrorCode::Internal, "a transaction needs two legs"));
    }
    let mut sum: i64 = 0;
    for leg in &plan.legs {
        sum = sum
            .checked_add(leg.amount)
            .ok_or_else(|| Error::refused(ErrorCode::ValidationFailed, "amount out of range"))?;
    }
    if sum != 0 {
        return Err(Error::refused(ErrorCode::Internal, "legs do not sum to zero"));
    }
    for leg in &plan.legs {
        let account = accounts
            .get(&leg.account_id)
            .ok_or_else(|| Error::refused(ErrorCode::NotFound, "no such account"))?;
        if account.currency != plan.currency {
            return Err(Error::refused(ErrorCode::CurrencyMismatch, "the account is in another currency"));
        }
        if account.kind != "customer" {
            continue;
        }
        if account.status == "closed" {
            return Err(Error::refused(ErrorCode::AccountClosed, "the account is closed"));
        }
        if plan.correction {
            continue;
        }
        if leg.amount < 0 {
            if account.status == "frozen" {
                return Err(Error::refused(ErrorCode::AccountFrozen, "the account is frozen"));
            }
            let debit = Amount::new(leg.amount.checked_neg().unwrap_or(i64::MAX))
                .map_err(|_| Error::refused(ErrorCode::ValidationFailed, "amount out of range"))?;
            let allowed = bank_money::can_debit(account.posted, account.held, account.overdraft_limit, debit)
                .map_err(|_| Error::refused(ErrorCode::ValidationFailed, "amount out of range"))?;
            if !allowed {
                return Err(Error::refused(ErrorCode::InsufficientFunds, "insufficient funds"));
            }
        } else if account.status == "frozen" && !account.credits_allowed {
            return Err(Error::refused(ErrorCode::AccountFrozen, "the account is frozen"));
        }
    }

    let available_before: BTreeMap<Uuid, i64> =
        accounts.values().map(|a| (a.account_id, a.posted.saturating_sub(a.held))).collect();
    let transaction_id = Uuid::now_v7();
    let now = OffsetDateTime::now_utc();
    let posted_at = now.replace_nanosecond(now.nanosecond() / 1000 * 1000).unwrap_or(now);
    let mut entries = Vec::with_capacity(plan.legs.len());
    let mut rows = storage::PostingRows::default();
    for leg in &plan.legs {
        let account = accounts
            .get_mut(&leg.account_id)
            .ok_or_else(|| Error::refused(ErrorCode::NotFound, "no such account"))?;
        let balance_after = bank_money::add(account.posted, leg.amount)
            .map_err(|_| Error::refused(ErrorCode::ValidationFailed, "balance out of range"))?;
        let seq = account.entry_count + 1;
        let entry_id = Uuid::now_v7();
        let hash = entry_hash(
            &account.last_hash,
            &EntryFacts {
                entry_id,
                transaction_id,
                account_id: account.account_id,
                seq,
                amount: leg.amount,
                currency: plan.currency,
                balance_after,
                posted_at_micros: posted_at.unix_timestamp_nanos() / 1000,
            },
        );
        rows.entry(entry_id, account.account_id, leg.amount, balance_after, seq, &account.last_hash, &hash);
        account.posted = balance_after;
        account.entry_count = seq;
        account.last_hash = hash;
        entries.push((entry_id, account.account_id, leg.amount, balance_after));
    }
    for account in accounts.values() {
        if plan.legs.iter().any(|l| l.account_id == account.account_id) {
            rows.account(account.account_id, account.posted, account.entry_count, &account.last_hash);
        }
    }
    let transaction = storage::NewTransaction {
        transaction_id,
        kind: plan.kind,
        description: plan.description,
        posted_at,
        initiated_by: plan.initiated_by,
        reference_id: plan.reference_id,
        reason: plan.reason,
        currency: plan.currency,
        reverses: plan.reverses,
    };
    let crossed_below = accounts
        .values()
        .filter(|account| {
            account.low_balance_threshold.is_some_and(|threshold| {
                let before = available_before.get(&account.account_id).copied().unwrap_or_default();
                crossed(before, account.posted.saturating_sub(account.held), threshold)
            })
        })
        .map(|account| account.account_id)
        .collect();
    Ok(Prepared {
        posted: Posted { transaction_id, posted_at, entries, accounts: accounts.clone(), crossed_below },
        transaction,
        rows,
    })
}

/// Whether a change of the available balance from `before` to `after` crosses below `threshold`
/// (fires once per crossing: a balance already below does not fire again until it has risen back
/// to the threshold).
#[must_use]
pub const fn crossed(before: i64, after: i64, threshold: i64) -> bool {
    before >= threshold && after < threshold
}

/// Writes the event of a posting and, for every account the posting took below its low-balance
/// threshold, a `LowBalanceDetected` caused by that event — all in the posting's transaction, so the
/// alert exists exactly when the posting does. Answers the posting event's id.
///
/// # Errors
/// The database failed.
pub async fn publish<M: prost::Message + prost::Name>(
    conn: &mut PgConnection,
    posted: &Posted,
    subject: &str,
    payload: &M,
) -> Result<Uuid, sqlx::Error> {
    let cause = bank_platform::outbox::publish(conn, subject, payload).await?;
    publish_low_balance(conn, posted, cause).await?;
    Ok(cause)
}

/// The `LowBalanceDetected` events of a posting whose own event (`cause`) the caller writes itself
/// (the transfer path folds it into its last statement). No statement when nothing crossed.
///
/// # Errors
/// The database failed.
pub async fn publish_low_balance(
    conn: &mut PgConnection,
    posted: &Posted,
    cause: Uuid,
) -> Result<(), sqlx::Error> {
    for account in posted.crossed_below.iter().filter_map(|id| posted.accounts.get(id)) {
        let Some(threshold) = account.low_balance_threshold else { continue };
        let number = account.account_number.clone().unwrap_or_default();
        let last_four = number.get(number.len().saturating_sub(4)..).unwrap_or_default().to_owned();
        let money =
            |minor_units| bank_proto::common::v1::Money { currency: account.currency.clone(), minor_units };
        bank_platform::outbox::publish(
            conn,
            &format!("accounts/{}", account.account_id),
            &bank_proto::events::v1::LowBalanceDetected {
                account_id: account.account_id.to_string(),
                owner_user_id: account.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                account_number_last_four: last_four,
                threshold: Some(money(threshold)),
                available: Some(money(account.posted.saturating_sub(account.held))),
                cause_event_id: cause.to_string(),
            },
        )
        .await?;
    }
    Ok(())
}

/// Whether an error is one that running the transaction again resolves: a serialization failure,
/// a deadlock, or an idempotency key stored by a concurrent first use after this attempt looked for
/// it (a transfer stores its key last, ADR 0028; the next attempt finds it and replays or refuses).
#[must_use]
pub fn is_retryable(err: &sqlx::Error) -> bool {
    bank_platform::tx::is_retryable(err)
        || err.as_database_error().is_some_and(|db| {
            db.code().as_deref() == Some("23505") && db.constraint() == Some("idempotency_keys_pkey")
        })
}

#[cfg(test)]
mod tests {
    use super::crossed;

    #[test]
    fn a_threshold_fires_once_per_crossing_below() {
        assert!(crossed(100, 99, 100), "from at the threshold to below");
        assert!(crossed(500, -20, 0), "into the overdraft");
        assert!(!crossed(99, 50, 100), "already below: no second event");
        assert!(!crossed(200, 100, 100), "reaching it is not below it");
        assert!(!crossed(50, 150, 100), "rising never fires");
    }
}
