//! Accounts: products, the status lifecycle, owner-supplied labels, and which administrative or
//! owner actions each status allows.
//!
//! ```text
//!   opening ──(ledger account created)──▶ active ◀──unfreeze── frozen
//!                                          │  └────freeze────▶   │
//!                                          └──close──▶ closed ◀──┘ (force close only)
//! ```
//! `closed` is terminal. An `opening` account accepts no change until the open saga has finished.

use std::fmt;

/// Account products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// Current/checking account: transfers, cards, optional overdraft.
    Checking,
    /// Savings account: no overdraft.
    Savings,
}

impl Product {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Checking => "checking",
            Self::Savings => "savings",
        }
    }

    /// From the stored name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "checking" => Some(Self::Checking),
            "savings" => Some(Self::Savings),
            _ => None,
        }
    }
}

/// Where an account is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The open saga has not finished: the ledger account may not exist yet.
    Opening,
    /// Open.
    Active,
    /// Debits refused; credits only if the freeze allows them.
    Frozen,
    /// Terminal.
    Closed,
}

impl Status {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Opening => "opening",
            Self::Active => "active",
            Self::Frozen => "frozen",
            Self::Closed => "closed",
        }
    }

    /// From the stored name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "opening" => Some(Self::Opening),
            "active" => Some(Self::Active),
            "frozen" => Some(Self::Frozen),
            "closed" => Some(Self::Closed),
            _ => None,
        }
    }
}

/// A stored name that is not one of the enum's (the database's CHECK constraints prevent it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name {0:?}")]
pub struct UnknownName(pub String);

impl TryFrom<String> for Product {
    type Error = UnknownName;

    fn try_from(name: String) -> Result<Self, UnknownName> {
        Self::from_name(&name).ok_or(UnknownName(name))
    }
}

impl TryFrom<String> for Status {
    type Error = UnknownName;

    fn try_from(name: String) -> Result<Self, UnknownName> {
        Self::from_name(&name).ok_or(UnknownName(name))
    }
}

/// Why a label or reason is refused; `code()` is the stable field-violation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Required but empty.
    #[error("is required")]
    Required,
    /// Longer than allowed.
    #[error("is too long")]
    TooLong,
    /// Contains control characters.
    #[error("must not contain control characters")]
    ControlCharacters,
}

impl TextError {
    /// The stable code for field violations.
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::Required => "REQUIRED",
            Self::TooLong => "TOO_LONG",
            Self::ControlCharacters => "INVALID_CHARACTERS",
        }
    }
}

fn text(input: &str, required: bool, max_chars: usize) -> Result<String, TextError> {
    let value = input.trim();
    if required && value.is_empty() {
        return Err(TextError::Required);
    }
    if value.chars().count() > max_chars {
        return Err(TextError::TooLong);
    }
    if value.chars().any(char::is_control) {
        return Err(TextError::ControlCharacters);
    }
    // A card number typed into a label or a reason is kept to its last four (PCI DSS 3.5.1).
    Ok(bank_money::card_number::mask_card_numbers(value).into_owned())
}

/// The owner's label of an account: 0-50 characters after trimming, no control characters
/// (empty = no label), card numbers masked to their last four.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nickname(String);

impl Nickname {
    /// Longest label.
    pub const MAX_CHARS: usize = 50;

    /// Parses a label.
    ///
    /// # Errors
    /// Too long or containing control characters.
    pub fn parse(input: &str) -> Result<Self, TextError> {
        text(input, false, Self::MAX_CHARS).map(Self)
    }

    /// The label.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An administrator's audited reason: 1-500 characters after trimming, no control characters,
/// card numbers masked to their last four.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    /// Longest reason.
    pub const MAX_CHARS: usize = 500;

    /// Parses a reason.
    ///
    /// # Errors
    /// Empty, too long or containing control characters.
    pub fn parse(input: &str) -> Result<Self, TextError> {
        text(input, true, Self::MAX_CHARS).map(Self)
    }

    /// The reason.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// No reason (the owner closing their own account).
    #[must_use]
    pub const fn none() -> Self {
        Self(String::new())
    }
}

/// A change of an account that the ledger mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Administrator: refuse debits (and credits unless allowed).
    Freeze {
        /// Whether credits stay allowed.
        credits_allowed: bool,
    },
    /// Administrator: lift a freeze.
    Unfreeze,
    /// Owner: close at zero balance.
    Close,
    /// Administrator: close at zero balance, also when frozen.
    ForceClose,
    /// Administrator: how far `available` may go below zero (checking accounts).
    SetOverdraftLimit {
        /// Minor units of the account's currency, `>= 0`.
        limit: i64,
    },
}

impl Action {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Freeze { .. } => "freeze",
            Self::Unfreeze => "unfreeze",
            Self::Close => "close",
            Self::ForceClose => "force_close",
            Self::SetOverdraftLimit { .. } => "set_overdraft_limit",
        }
    }

    /// From the stored name and parameters.
    #[must_use]
    pub fn from_stored(name: &str, credits_allowed: bool, limit: i64) -> Option<Self> {
        match name {
            "freeze" => Some(Self::Freeze { credits_allowed }),
            "unfreeze" => Some(Self::Unfreeze),
            "close" => Some(Self::Close),
            "force_close" => Some(Self::ForceClose),
            "set_overdraft_limit" => Some(Self::SetOverdraftLimit { limit }),
            _ => None,
        }
    }

    /// The account's status once the change is applied.
    #[must_use]
    pub const fn status_after(self, before: Status) -> Status {
        match self {
            Self::Freeze { .. } => Status::Frozen,
            Self::Unfreeze => Status::Active,
            Self::Close | Self::ForceClose => Status::Closed,
            Self::SetOverdraftLimit { .. } => before,
        }
    }

    /// Whether `status` (of an account of `product`) allows this change.
    ///
    /// # Errors
    /// The refusal to answer.
    pub const fn check(self, status: Status, product: Product) -> Result<(), Refusal> {
        match (status, self) {
            (Status::Opening, _) => Err(Refusal::NotReady),
            (Status::Closed, _) => Err(Refusal::Closed),
            (Status::Active, Self::Unfreeze) => Err(Refusal::NotFrozen),
            (Status::Frozen, Self::Freeze { .. } | Self::Close) => Err(Refusal::Frozen),
            (Status::Active | Status::Frozen, Self::SetOverdraftLimit { .. })
                if matches!(product, Product::Savings) =>
            {
                Err(Refusal::NoOverdraft)
            }
            (
                Status::Active,
                Self::Freeze { .. } | Self::Close | Self::ForceClose | Self::SetOverdraftLimit { .. },
            )
            | (Status::Frozen, Self::Unfreeze | Self::ForceClose | Self::SetOverdraftLimit { .. }) => Ok(()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a change is refused by the account's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Still opening.
    #[error("the account is still being opened")]
    NotReady,
    /// Closed (terminal).
    #[error("the account is closed")]
    Closed,
    /// Frozen (a freeze of a frozen account, or the owner closing a frozen account).
    #[error("the account is frozen")]
    Frozen,
    /// Unfreezing an account that is not frozen.
    #[error("the account is not frozen")]
    NotFrozen,
    /// Overdrafts are for checking accounts only.
    #[error("savings accounts have no overdraft")]
    NoOverdraft,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ALL: [Status; 4] = [Status::Opening, Status::Active, Status::Frozen, Status::Closed];

    #[test]
    fn names_round_trip() {
        for status in ALL {
            assert_eq!(Status::from_name(status.as_str()), Some(status));
        }
        for product in [Product::Checking, Product::Savings] {
            assert_eq!(Product::from_name(product.as_str()), Some(product));
        }
        for action in [
            Action::Freeze { credits_allowed: true },
            Action::Unfreeze,
            Action::Close,
            Action::ForceClose,
            Action::SetOverdraftLimit { limit: 5 },
        ] {
            let (credits, limit) = match action {
                Action::Freeze { credits_allowed } => (credits_allowed, 0),
                Action::SetOverdraftLimit { limit } => (false, limit),
                Action::Unfreeze | Action::Close | Action::ForceClose => (false, 0),
            };
            assert_eq!(Action::from_stored(action.as_str(), credits, limit), Some(action));
        }
    }

    #[test]
    fn the_lifecycle_allows_only_its_transitions() {
        let freeze = Action::Freeze { credits_allowed: false };
        let checking = Product::Checking;
        for action in [freeze, Action::Unfreeze, Action::Close, Action::ForceClose] {
            assert_eq!(action.check(Status::Opening, checking), Err(Refusal::NotReady));
            assert_eq!(action.check(Status::Closed, checking), Err(Refusal::Closed));
        }
        assert_eq!(freeze.check(Status::Active, checking), Ok(()));
        assert_eq!(freeze.check(Status::Frozen, checking), Err(Refusal::Frozen));
        assert_eq!(Action::Unfreeze.check(Status::Frozen, checking), Ok(()));
        assert_eq!(Action::Unfreeze.check(Status::Active, checking), Err(Refusal::NotFrozen));
        assert_eq!(Action::Close.check(Status::Active, checking), Ok(()));
        assert_eq!(Action::Close.check(Status::Frozen, checking), Err(Refusal::Frozen));
        assert_eq!(Action::ForceClose.check(Status::Frozen, checking), Ok(()));
        let overdraft = Action::SetOverdraftLimit { limit: 100 };
        assert_eq!(overdraft.check(Status::Active, checking), Ok(()));
        assert_eq!(overdraft.check(Status::Frozen, checking), Ok(()));
        assert_eq!(overdraft.check(Status::Active, Product::Savings), Err(Refusal::NoOverdraft));
        assert_eq!(Action::Close.status_after(Status::Frozen), Status::Closed);
        assert_eq!(overdraft.status_after(Status::Frozen), Status::Frozen);
    }

    #[test]
    fn labels_and_reasons_are_trimmed_and_bounded() {
        assert_eq!(Nickname::parse("  Holidays ").unwrap().as_str(), "Holidays");
        assert_eq!(Nickname::parse("").unwrap().as_str(), "");
        assert_eq!(Nickname::parse(&"x".repeat(51)), Err(TextError::TooLong));
        assert_eq!(Nickname::parse("a\u{7}b"), Err(TextError::ControlCharacters));
        assert_eq!(Reason::parse("   "), Err(TextError::Required));
        assert_eq!(Reason::parse("fraud report #12").unwrap().as_str(), "fraud report #12");
        assert_eq!(Reason::parse(&"é".repeat(501)), Err(TextError::TooLong));
    }
}
