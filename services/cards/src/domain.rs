//! The card rules, pure: PANs (Luhn), CVVs, expiry, statuses, limits and the authorization
//! decision. No tonic, no sqlx. Types that hold a PAN or a CVV print redacted.

use rand::Rng as _;

/// A full card number. Never printed: `Debug` shows the last four digits only, and there is no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(String);

impl std::fmt::Debug for Pan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pan(****{})", self.last_four())
    }
}

impl Pan {
    /// A fresh PAN: `bin`, random digits, and the Luhn check digit, `length` digits in all.
    #[must_use]
    pub fn generate(bin: &str, length: usize) -> Self {
        let mut rng = rand::thread_rng();
        let mut digits: Vec<u8> = bin.bytes().map(|b| b - b'0').collect();
        while digits.len() < length - 1 {
            digits.push(rng.gen_range(0..10));
        }
        digits.push(luhn_check_digit(&digits));
        Self(digits.iter().map(|d| char::from(b'0' + d)).collect())
    }

    /// Parses stored digits (from the vault), checking the Luhn digit.
    ///
    /// # Errors
    /// Not 13 to 19 digits, or a wrong check digit.
    pub fn parse(digits: &str) -> Result<Self, &'static str> {
        if !(13..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a PAN is 13 to 19 digits");
        }
        if !luhn_valid(digits) {
            return Err("the PAN's check digit is wrong");
        }
        Ok(Self(digits.to_owned()))
    }

    /// The digits (to seal in the vault or to answer the owner, nowhere else).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four digits.
    #[must_use]
    pub fn last_four(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }
}

/// A card verification value: shown once at issuance, never stored. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvv(String);

impl std::fmt::Debug for Cvv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cvv([REDACTED])")
    }
}

impl Cvv {
    /// Three random digits.
    #[must_use]
    pub fn generate() -> Self {
        Self(format!("{:03}", rand::thread_rng().gen_range(0..1000)))
    }

    /// The digits (for the issuance response only).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

pub use bank_money::card_number::{luhn_check_digit, luhn_valid};

/// The month a card expires in (valid through its last day, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry {
    /// Four digits.
    pub year: i32,
    /// 1 to 12.
    pub month: u8,
}

impl Expiry {
    /// `years` after the month of `now`.
    #[must_use]
    pub fn after(now: time::OffsetDateTime, years: u8) -> Self {
        Self { year: now.year() + i32::from(years), month: u8::from(now.month()) }
    }

    /// Whether the card has expired at `now` (after the last day of the expiry month, UTC).
    #[must_use]
    pub fn is_past(self, now: time::OffsetDateTime) -> bool {
        (now.year(), u8::from(now.month())) > (self.year, self.month)
    }
}

/// A card's stored status (`Expired` is never stored: it is decided from the expiry date).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Usable.
    Active,
    /// Blocked by the owner for now.
    Frozen,
    /// Reported lost or stolen (terminal).
    Lost,
    /// Closed (terminal).
    Closed,
    /// Past its expiry month (terminal; never stored).
    Expired,
}

impl Status {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Frozen => "frozen",
            Self::Lost => "lost",
            Self::Closed => "closed",
            Self::Expired => "expired",
        }
    }
}

impl TryFrom<String> for Status {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "active" => Ok(Self::Active),
            "frozen" => Ok(Self::Frozen),
            "lost" => Ok(Self::Lost),
            "closed" => Ok(Self::Closed),
            "expired" => Ok(Self::Expired),
            other => Err(format!("unknown card status {other:?}")),
        }
    }
}

/// The status a card has now: a live card past its expiry month is `Expired`.
#[must_use]
pub fn effective_status(stored: Status, expiry: Expiry, now: time::OffsetDateTime) -> Status {
    match stored {
        Status::Active | Status::Frozen if expiry.is_past(now) => Status::Expired,
        other @ (Status::Active | Status::Frozen | Status::Lost | Status::Closed | Status::Expired) => other,
    }
}

/// Why an authorization was declined: stable codes, shown to the owner and the security feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decline {
    /// Available balance (plus overdraft) too low (the ledger decided).
    InsufficientFunds,
    /// The daily limit would be exceeded.
    DailyLimitExceeded,
    /// Above the per-transaction limit.
    TransactionLimitExceeded,
    /// The card is frozen.
    CardFrozen,
    /// The card has expired.
    CardExpired,
    /// Reported lost or stolen.
    CardLost,
    /// Closed.
    CardClosed,
    /// Another currency than the card's.
    CurrencyMismatch,
    /// The account is frozen (the ledger decided).
    AccountFrozen,
    /// The account is closed (the ledger decided).
    AccountClosed,
    /// The ledger could not be reached in time.
    IssuerUnavailable,
}

impl Decline {
    /// Every reason (metrics are registered for each).
    pub const ALL: [Self; 11] = [
        Self::InsufficientFunds,
        Self::DailyLimitExceeded,
        Self::TransactionLimitExceeded,
        Self::CardFrozen,
        Self::CardExpired,
        Self::CardLost,
        Self::CardClosed,
        Self::CurrencyMismatch,
        Self::AccountFrozen,
        Self::AccountClosed,
        Self::IssuerUnavailable,
    ];

    /// The stable code (stored, in metrics, equal to the contract's enum value name).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::DailyLimitExceeded => "DAILY_LIMIT_EXCEEDED",
            Self::TransactionLimitExceeded => "TRANSACTION_LIMIT_EXCEEDED",
            Self::CardFrozen => "CARD_FROZEN",
            Self::CardExpired => "CARD_EXPIRED",
            Self::CardLost => "CARD_LOST",
            Self::CardClosed => "CARD_CLOSED",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
            Self::AccountFrozen => "ACCOUNT_FROZEN",
            Self::AccountClosed => "ACCOUNT_CLOSED",
            Self::IssuerUnavailable => "ISSUER_UNAVAILABLE",
        }
    }

    /// Parses a stored code.
    #[must_use]
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == code)
    }
}

/// What the card side knows when a charge arrives (the ledger decides funds and account status).
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The card's effective status.
    pub status: Status,
    /// The card's currency.
    pub card_currency: &'a str,
    /// The charge's currency.
    pub currency: &'a str,
    /// The charge (minor units, positive).
    pub amount: i64,
    /// The card's per-transaction limit.
    pub per_transaction_limit: i64,
    /// The card's daily limit.
    pub daily_limit: i64,
    /// Approved and in-flight amounts of the current card day.
    pub spent_today: i64,
}

/// The card-side checks, in the contract's order: status (and expiry), currency, per-transaction
/// limit, daily limit. `Ok` means: ask the ledger for the hold.
///
/// # Errors
/// The decline reason.
pub fn decide(charge: &Charge<'_>) -> Result<(), Decline> {
    match charge.status {
        Status::Active => {}
        Status::Frozen => return Err(Decline::CardFrozen),
        Status::Lost => return Err(Decline::CardLost),
        Status::Closed => return Err(Decline::CardClosed),
        Status::Expired => return Err(Decline::CardExpired),
    }
    if charge.currency != charge.card_currency {
        return Err(Decline::CurrencyMismatch);
    }
    if charge.amount > charge.per_transaction_limit {
        return Err(Decline::TransactionLimitExceeded);
    }
    match charge.spent_today.checked_add(charge.amount) {
        Some(total) if total <= charge.daily_limit => Ok(()),
        _ => Err(Decline::DailyLimitExceeded),
    }
}

/// A card's status change by its owner or an administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Owner: freeze (no-op when frozen).
    Freeze,
    /// Owner: lift a freeze (no-op when active).
    Unfreeze,
    /// Owner: report lost or stolen (terminal).
    ReportLost,
    /// Owner or administrator: close (terminal; no-op when closed).
    Close,
}

/// Why a change is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The card is lost.
    #[error("the card was reported lost")]
    Lost,
    /// The card is closed.
    #[error("the card is closed")]
    Closed,
    /// The card has expired.
    #[error("the card has expired")]
    Expired,
}

/// The status after `change` from `current` (effective), or why not. Answers `None` for a no-op.
///
/// # Errors
/// The refusal.
pub fn apply(current: Status, change: Change) -> Result<Option<Status>, Refusal> {
    use Change as C;
    use Status as S;
    match (change, current) {
        (C::Close, S::Closed)
        | (C::ReportLost, S::Lost)
        | (C::Freeze, S::Frozen)
        | (C::Unfreeze, S::Active) => Ok(None),
        (C::Close, _) => Ok(Some(S::Closed)),
        (_, S::Closed) => Err(Refusal::Closed),
        (_, S::Lost) => Err(Refusal::Lost),
        (C::ReportLost, _) => Ok(Some(S::Lost)),
        (_, S::Expired) => Err(Refusal::Expired),
        (C::Freeze, S::Active) => Ok(Some(S::Frozen)),
        (C::Unfreeze, S::Frozen) => Ok(Some(S::Active)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pans_pass_luhn_and_start_with_the_bin() {
        for _ in 0..200 {
            let pan = Pan::generate("400000", 16);
            assert_eq!(pan.expose().len(), 16);
            assert!(pan.expose().starts_with("400000"));
            assert!(luhn_valid(pan.expose()), "{:?}", pan);
            assert!(Pan::parse(pan.expose()).is_ok());
        }
        let long = Pan::generate("45678901", 19);
        assert_eq!(long.expose().len(), 19);
        assert!(luhn_valid(long.expose()));
    }

    #[test]
    fn a_stored_pan_must_pass_luhn() {
        assert!(Pan::parse("4111111111111111").is_ok());
        assert!(Pan::parse("4111111111111112").is_err());
    }

    #[test]
    fn pans_and_cvvs_never_print() {
        let pan = Pan::parse("4111111111111111").unwrap_or_else(|_| unreachable!());
        assert_eq!(format!("{pan:?}"), "Pan(****1111)");
        let cvv = Cvv::generate();
        assert!(!format!("{cvv:?}").contains(cvv.expose()));
        assert_eq!(cvv.expose().len(), 3);
    }

    #[test]
    fn a_card_expires_after_its_expiry_month() {
        let expiry = Expiry { year: 2030, month: 6 };
        assert!(!expiry.is_past(time::macros::datetime!(2030-06-30 23:59 UTC)));
        assert!(expiry.is_past(time::macros::datetime!(2030-07-01 00:00 UTC)));
        assert_eq!(
            effective_status(Status::Frozen, expiry, time::macros::datetime!(2031-01-01 0:00 UTC)),
            Status::Expired
        );
        assert_eq!(
            effective_status(Status::Lost, expiry, time::macros::datetime!(2031-01-01 0:00 UTC)),
            Status::Lost
        );
    }

    fn charge(amount: i64, spent_today: i64) -> Charge<'static> {
        Charge {
            status: Status::Active,
            card_currency: "EUR",
            currency: "EUR",
            amount,
            per_transaction_limit: 500,
            daily_limit: 1000,
            spent_today,
        }
    }

    #[test]
    fn checks_run_in_the_contract_order() {
        assert_eq!(decide(&charge(100, 900)), Ok(()));
        assert_eq!(decide(&charge(100, 901)), Err(Decline::DailyLimitExceeded));
        assert_eq!(decide(&charge(501, 0)), Err(Decline::TransactionLimitExceeded));
        assert_eq!(decide(&Charge { currency: "USD", ..charge(501, 0) }), Err(Decline::CurrencyMismatch));
        assert_eq!(decide(&Charge { status: Status::Frozen, ..charge(1, 0) }), Err(Decline::CardFrozen));
        assert_eq!(decide(&Charge { status: Status::Expired, ..charge(1, 0) }), Err(Decline::CardExpired));
        assert_eq!(decide(&charge(i64::MAX, 1)), Err(Decline::TransactionLimitExceeded));
        for reason in Decline::ALL {
            assert_eq!(Decline::parse(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn status_changes() {
        assert_eq!(apply(Status::Active, Change::Freeze), Ok(Some(Status::Frozen)));
        assert_eq!(apply(Status::Frozen, Change::Freeze), Ok(None));
        assert_eq!(apply(Status::Lost, Change::Unfreeze), Err(Refusal::Lost));
        assert_eq!(apply(Status::Closed, Change::ReportLost), Err(Refusal::Closed));
        assert_eq!(apply(Status::Lost, Change::Close), Ok(Some(Status::Closed)));
        assert_eq!(apply(Status::Expired, Change::Freeze), Err(Refusal::Expired));
    }
}
