//! Holds: a reservation of part of a customer account's available balance for a service client
//! (a card authorization), later captured (fully or partly: the captured part is posted to a
//! system account), voided or expired (released), and refunded after a capture.

use time::OffsetDateTime;
use uuid::Uuid;

use super::account::SystemType;

/// Where a hold is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    /// Reserving its amount (counted in the account's `held`).
    Active,
    /// Captured (the rest released); refunds may follow.
    Captured,
    /// Released by its creator.
    Voided,
    /// Released at its expiry.
    Expired,
}

impl HoldStatus {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Captured => "captured",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }

    /// The status of a stored name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Active, Self::Captured, Self::Voided, Self::Expired].into_iter().find(|s| s.as_str() == name)
    }
}

/// A hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Id.
    pub id: Uuid,
    /// The reserving account.
    pub account: Uuid,
    /// Reserved minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Captured so far.
    pub captured: i64,
    /// Refunded so far.
    pub refunded: i64,
    /// Status.
    pub status: HoldStatus,
    /// The system account a capture goes to.
    pub counterparty: SystemType,
    /// The creating principal (only it may act on the hold).
    pub created_by: String,
    /// The creator's reference (unique per creator: a repeat answers the same hold).
    pub reference: String,
    /// Description (of the capture in the history).
    pub description: String,
    /// When it expires if still active.
    pub expires_at: OffsetDateTime,
    /// The capture's transaction.
    pub capture_transaction: Option<Uuid>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// How a release ends a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Its creator voided it.
    Void,
    /// It reached its expiry.
    Expire,
}

impl Release {
    /// The status it leaves the hold in.
    #[must_use]
    pub const fn status(self) -> HoldStatus {
        match self {
            Self::Void => HoldStatus::Voided,
            Self::Expire => HoldStatus::Expired,
        }
    }
}

/// A refund made under a reference: (amount, transaction).
pub type RefundRecord = (i64, Uuid);
