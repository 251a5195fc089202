//! Postings: a journal transaction of two or more legs that sum to zero, the rules a posting must
//! pass on the accounts it touches, each entry's link in its account's hash chain, and the
//! low-balance crossing rule.

use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::account::{Account, AccountKind, AccountStatus};

/// Why a posting (or a hold operation, or a reversal) is refused. The message is what the client
/// reads; the use cases map each to its stable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The account does not exist, or is not one the caller may use (answered alike).
    #[error("no such account")]
    NoSuchAccount,
    /// An account is in another currency than the posting.
    #[error("the account is in another currency")]
    CurrencyMismatch,
    /// A customer account is closed.
    #[error("the account is closed")]
    AccountClosed,
    /// A debit (or a credit a freeze does not allow) on a frozen account.
    #[error("the account is frozen")]
    AccountFrozen,
    /// The debit would take the available balance below the overdraft limit.
    #[error("insufficient funds")]
    InsufficientFunds,
    /// An amount or balance left the range of 64-bit minor units.
    #[error("amount out of range")]
    OutOfRange,
    /// A malformed posting (a bug in the caller, never client input).
    #[error("{0}")]
    Malformed(&'static str),
    /// The hold does not exist or belongs to another client.
    #[error("no such hold")]
    NoSuchHold,
    /// The hold is in another currency than the request.
    #[error("the hold is in another currency")]
    HoldCurrencyMismatch,
    /// The hold is not in a state that allows the operation.
    #[error("{0}")]
    HoldNotActive(&'static str),
    /// More than the hold (or its captured part) allows.
    #[error("{0}")]
    ExceedsHold(&'static str),
    /// A refund reference already used for another amount.
    #[error("that refund reference had another amount")]
    RefundReferenceReused,
    /// The transaction to reverse does not exist.
    #[error("no such transaction")]
    NoSuchTransaction,
    /// That transaction cannot be reversed.
    #[error("{0}")]
    NotReversible(&'static str),
    /// That transaction has been reversed already.
    #[error("the transaction has already been reversed")]
    AlreadyReversed,
    /// A transfer from an account to itself.
    #[error("source and destination are the same account")]
    SameAccount,
}

/// What a journal transaction records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionKind {
    /// Between two customer accounts.
    Transfer,
    /// Cash in.
    Deposit,
    /// Cash out.
    Withdrawal,
    /// A hold's captured part.
    HoldCapture,
    /// A refund of a captured hold.
    HoldRefund,
    /// Interest paid.
    Interest,
    /// The mirror image of an earlier transaction.
    Reversal,
}

impl TransactionKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::Transfer,
        Self::Deposit,
        Self::Withdrawal,
        Self::HoldCapture,
        Self::HoldRefund,
        Self::Interest,
        Self::Reversal,
    ];

    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::HoldCapture => "hold_capture",
            Self::HoldRefund => "hold_refund",
            Self::Interest => "interest",
            Self::Reversal => "reversal",
        }
    }

    /// The kind of a stored name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One leg: a signed amount on an account (positive = credit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    /// The account.
    pub account: Uuid,
    /// Signed minor units.
    pub amount: i64,
}

/// What to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What it records.
    pub kind: TransactionKind,
    /// Shown in the history.
    pub description: String,
    /// The principal (user id or client id).
    pub initiated_by: String,
    /// The originating object's id.
    pub reference: String,
    /// An administrator's reason.
    pub reason: String,
    /// The currency of every leg.
    pub currency: String,
    /// The legs (two or more, summing to zero).
    pub legs: Vec<Leg>,
    /// For a reversal: the transaction it reverses.
    pub reverses: Option<Uuid>,
    /// A correction (a reversal): status and available-balance rules do not apply to debits, and
    /// credits to frozen accounts are allowed; closed accounts still refuse everything.
    pub correction: bool,
}

/// The shape rules of a plan: two or more legs, no zero leg, summing to zero without overflow.
///
/// # Errors
/// The rule the plan breaks.
pub fn check_legs(legs: &[Leg]) -> Result<(), Refusal> {
    if legs.len() < 2 {
        return Err(Refusal::Malformed("a transaction needs two legs"));
    }
    if legs.iter().any(|leg| leg.amount == 0) {
        return Err(Refusal::Malformed("a leg of zero"));
    }
    let sum =
        legs.iter().try_fold(0i64, |sum, leg| sum.checked_add(leg.amount)).ok_or(Refusal::OutOfRange)?;
    if sum == 0 { Ok(()) } else { Err(Refusal::Malformed("legs do not sum to zero")) }
}

/// Whether `account` may take `amount` (signed) in a posting in `currency`, given the balance it
/// has at that point of the batch. System accounts take anything in their currency.
///
/// # Errors
/// The rule that refuses it.
pub fn check_leg(account: &Account, amount: i64, currency: &str, correction: bool) -> Result<(), Refusal> {
    if account.currency != currency {
        return Err(Refusal::CurrencyMismatch);
    }
    if !account.is_customer() {
        return Ok(());
    }
    if account.status == AccountStatus::Closed {
        return Err(Refusal::AccountClosed);
    }
    if correction {
        return Ok(());
    }
    if amount < 0 {
        if account.status == AccountStatus::Frozen {
            return Err(Refusal::AccountFrozen);
        }
        check_available(account, amount.checked_neg().ok_or(Refusal::OutOfRange)?)
    } else if account.status == AccountStatus::Frozen && !account.credits_allowed {
        Err(Refusal::AccountFrozen)
    } else {
        Ok(())
    }
}

/// Whether `debit` (positive minor units) leaves `available >= -overdraft_limit`.
///
/// # Errors
/// `InsufficientFunds`, or `OutOfRange` on overflow.
pub fn check_available(account: &Account, debit: i64) -> Result<(), Refusal> {
    let amount = bank_money::Amount::new(debit).map_err(|_| Refusal::OutOfRange)?;
    match bank_money::can_debit(account.posted, account.held, account.overdraft_limit, amount) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal::InsufficientFunds),
        Err(_) => Err(Refusal::OutOfRange),
    }
}

/// The debit rules for a reservation (a hold): a customer account, in the currency, active, with
/// enough available balance.
///
/// # Errors
/// The rule that refuses it (a system account answers like a missing one).
pub fn check_reserve(account: &Account, currency: &str, amount: i64) -> Result<(), Refusal> {
    if account.kind != AccountKind::Customer {
        return Err(Refusal::NoSuchAccount);
    }
    if account.currency != currency {
        return Err(Refusal::CurrencyMismatch);
    }
    match account.status {
        AccountStatus::Closed => Err(Refusal::AccountClosed),
        AccountStatus::Frozen => Err(Refusal::AccountFrozen),
        AccountStatus::Active => check_available(account, amount),
    }
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
    /// Posting time.
    pub posted_at: OffsetDateTime,
}

/// Hash of an entry in its account's chain: SHA-256 over the previous hash and the entry's facts.
#[must_use]
pub fn entry_hash(previous_hash: &str, facts: &EntryFacts<'_>) -> String {
    let EntryFacts { entry_id, transaction_id, account_id, seq, amount, currency, balance_after, posted_at } =
        *facts;
    let micros = posted_at.unix_timestamp_nanos() / 1000;
    let canonical = format!(
        "{entry_id}|{transaction_id}|{account_id}|{seq}|{amount}|{currency}|{balance_after}|{micros}"
    );
    let mut hasher = Sha256::new();
    hasher.update(previous_hash.as_bytes());
    hasher.update(b"|");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether a change of the available balance from `before` to `after` crosses below `threshold`
/// (fires once per crossing: a balance already below does not fire again until it has risen back
/// to the threshold).
#[must_use]
pub const fn crossed(before: i64, after: i64, threshold: i64) -> bool {
    before >= threshold && after < threshold
}

/// An instant at the journal's precision (microseconds, PostgreSQL's `timestamptz`).
#[must_use]
pub fn journal_time(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn customer(posted: i64, held: i64, overdraft: i64) -> Account {
        Account {
            id: Uuid::now_v7(),
            kind: AccountKind::Customer,
            number: Some("DE01".into()),
            owner: Some(Uuid::now_v7()),
            currency: "EUR".into(),
            status: AccountStatus::Active,
            credits_allowed: true,
            overdraft_limit: overdraft,
            posted,
            held,
            entry_count: 0,
            last_hash: super::super::account::GENESIS_HASH.into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            low_balance_threshold: None,
        }
    }

    #[test]
    fn a_threshold_fires_once_per_crossing_below() {
        assert!(crossed(100, 99, 100), "from at the threshold to below");
        assert!(crossed(500, -20, 0), "into the overdraft");
        assert!(!crossed(99, 50, 100), "already below: no second event");
        assert!(!crossed(200, 100, 100), "reaching it is not below it");
        assert!(!crossed(50, 150, 100), "rising never fires");
    }

    #[test]
    fn legs_must_balance() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(check_legs(&[Leg { account: a, amount: -5 }, Leg { account: b, amount: 5 }]), Ok(()));
        assert!(check_legs(&[Leg { account: a, amount: -5 }]).is_err());
        assert!(check_legs(&[Leg { account: a, amount: -5 }, Leg { account: b, amount: 4 }]).is_err());
        assert_eq!(
            check_legs(&[Leg { account: a, amount: i64::MAX }, Leg { account: b, amount: 1 }]),
            Err(Refusal::OutOfRange)
        );
    }

    #[test]
    fn debits_respect_status_and_the_overdraft_and_corrections_skip_them() {
        let mut account = customer(100, 30, 50);
        assert_eq!(check_leg(&account, -120, "EUR", false), Ok(()), "70 available + 50 overdraft");
        assert_eq!(check_leg(&account, -121, "EUR", false), Err(Refusal::InsufficientFunds));
        assert_eq!(check_leg(&account, -1, "USD", false), Err(Refusal::CurrencyMismatch));
        account.status = AccountStatus::Frozen;
        account.credits_allowed = false;
        assert_eq!(check_leg(&account, -1, "EUR", false), Err(Refusal::AccountFrozen));
        assert_eq!(check_leg(&account, 1, "EUR", false), Err(Refusal::AccountFrozen));
        assert_eq!(check_leg(&account, -1_000, "EUR", true), Ok(()), "a correction");
        account.credits_allowed = true;
        assert_eq!(check_leg(&account, 1, "EUR", false), Ok(()));
        account.status = AccountStatus::Closed;
        assert_eq!(check_leg(&account, 1, "EUR", true), Err(Refusal::AccountClosed));
        assert_eq!(check_reserve(&account, "EUR", 1), Err(Refusal::AccountClosed));
    }

    proptest! {
        #[test]
        fn a_debit_is_allowed_exactly_when_it_keeps_the_overdraft(
            posted in -1_000_000i64..1_000_000,
            held in 0i64..1_000_000,
            overdraft in 0i64..1_000_000,
            debit in 1i64..3_000_000,
        ) {
            let account = customer(posted, held, overdraft);
            let allowed = check_leg(&account, -debit, "EUR", false).is_ok();
            prop_assert_eq!(allowed, posted - held - debit >= -overdraft);
        }

        #[test]
        fn an_entry_hash_depends_on_every_fact(amount in -1_000i64..1_000, seq in 1i64..1_000) {
            let facts = EntryFacts {
                entry_id: Uuid::nil(),
                transaction_id: Uuid::nil(),
                account_id: Uuid::nil(),
                seq,
                amount,
                currency: "EUR",
                balance_after: amount,
                posted_at: OffsetDateTime::UNIX_EPOCH,
            };
            let hash = entry_hash("prev", &facts);
            prop_assert_ne!(&hash, &entry_hash("other", &facts));
            prop_assert_ne!(&hash, &entry_hash("prev", &EntryFacts { seq: seq + 1, ..facts }));
            prop_assert_ne!(&hash, &entry_hash("prev", &EntryFacts { amount: amount + 1, ..facts }));
        }
    }
}
