//! Ledger accounts: customer accounts (mirrors of the accounts service's, with their owner and
//! number) and system accounts (the bank's own side: cash, card settlement, ...), their status and
//! their maintained balances.

use time::OffsetDateTime;
use uuid::Uuid;

/// The bank's own accounts, one per type and currency, created on first use. They take any
/// amount (they may go negative): the rules protect customers' money, not the bank's books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemType {
    /// Vault cash: counterparty of teller deposits and withdrawals.
    Cash,
    /// Card network settlement: counterparty of card captures and refunds.
    CardSettlement,
    /// ACH/wire clearing.
    ExternalClearing,
    /// FX position.
    FxPosition,
    /// Interest expense.
    InterestExpense,
    /// Fee income.
    FeeIncome,
    /// Equity.
    Equity,
    /// Suspense.
    Suspense,
}

impl SystemType {
    /// Every type.
    pub const ALL: [Self; 8] = [
        Self::Cash,
        Self::CardSettlement,
        Self::ExternalClearing,
        Self::FxPosition,
        Self::InterestExpense,
        Self::FeeIncome,
        Self::Equity,
        Self::Suspense,
    ];

    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cash => "cash",
            Self::CardSettlement => "card_settlement",
            Self::ExternalClearing => "external_clearing",
            Self::FxPosition => "fx_position",
            Self::InterestExpense => "interest_expense",
            Self::FeeIncome => "fee_income",
            Self::Equity => "equity",
            Self::Suspense => "suspense",
        }
    }

    /// The type of a stored name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// Whose account it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A customer's account (the accounts service owns its number, owner and product).
    Customer,
    /// One of the bank's own accounts.
    System(SystemType),
}

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Takes debits and credits.
    Active,
    /// Refuses debits; credits only when the freeze allows them.
    Frozen,
    /// Refuses everything (terminal).
    Closed,
}

impl AccountStatus {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Frozen => "frozen",
            Self::Closed => "closed",
        }
    }

    /// The status of a stored name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Active, Self::Frozen, Self::Closed].into_iter().find(|s| s.as_str() == name)
    }
}

/// The hash a chain starts from (before an account's first entry).
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A ledger account with its maintained balances and chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Id (the accounts service's id for customer accounts).
    pub id: Uuid,
    /// Customer or system.
    pub kind: AccountKind,
    /// The customer account's number.
    pub number: Option<String>,
    /// The customer account's owner.
    pub owner: Option<Uuid>,
    /// ISO 4217 code.
    pub currency: String,
    /// Status.
    pub status: AccountStatus,
    /// While frozen: whether credits are still allowed.
    pub credits_allowed: bool,
    /// How far below zero the available balance may go (minor units, >= 0).
    pub overdraft_limit: i64,
    /// Posted balance (the sum of the account's entries).
    pub posted: i64,
    /// Sum of active holds.
    pub held: i64,
    /// Entries so far: the chain position of the newest.
    pub entry_count: i64,
    /// Hash of the newest entry ([`GENESIS_HASH`] before the first).
    pub last_hash: String,
    /// Created.
    pub created_at: OffsetDateTime,
    /// The owner's low-balance threshold (minor units), if set.
    pub low_balance_threshold: Option<i64>,
}

impl Account {
    /// Posted minus held.
    #[must_use]
    pub const fn available(&self) -> i64 {
        self.posted.saturating_sub(self.held)
    }

    /// A customer's account.
    #[must_use]
    pub const fn is_customer(&self) -> bool {
        matches!(self.kind, AccountKind::Customer)
    }

    /// The last four characters of the number (what messages to people may show).
    #[must_use]
    pub fn number_last_four(&self) -> String {
        let number = self.number.as_deref().unwrap_or_default();
        number.get(number.len().saturating_sub(4)..).unwrap_or_default().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in SystemType::ALL {
            assert_eq!(SystemType::from_name(t.as_str()), Some(t));
        }
        for s in [AccountStatus::Active, AccountStatus::Frozen, AccountStatus::Closed] {
            assert_eq!(AccountStatus::from_name(s.as_str()), Some(s));
        }
        assert_eq!(SystemType::from_name("vault"), None);
    }
}
