//! Rows as contract messages. Never a PAN: cards carry the last four digits only.

use bank_proto::cards::v1::{
    Authorization, AuthorizationStatus, Card, CardLimits, CardProduct, CardStatus, DeclineReason, Merchant,
};

use crate::{
    domain::{Decline, Status},
    storage::{AuthRow, AuthStatus, CardRow},
};

pub(crate) use bank_proto::convert::{money, timestamp};

/// The contract's card status.
pub(crate) const fn card_status(status: Status) -> CardStatus {
    match status {
        Status::Active => CardStatus::Active,
        Status::Frozen => CardStatus::Frozen,
        Status::Lost => CardStatus::Lost,
        Status::Closed => CardStatus::Closed,
        Status::Expired => CardStatus::Expired,
    }
}

/// The contract's decline reason.
pub(crate) const fn decline_reason(decline: Decline) -> DeclineReason {
    match decline {
        Decline::InsufficientFunds => DeclineReason::InsufficientFunds,
        Decline::DailyLimitExceeded => DeclineReason::DailyLimitExceeded,
        Decline::TransactionLimitExceeded => DeclineReason::TransactionLimitExceeded,
        Decline::CardFrozen => DeclineReason::CardFrozen,
        Decline::CardExpired => DeclineReason::CardExpired,
        Decline::CardLost => DeclineReason::CardLost,
        Decline::CardClosed => DeclineReason::CardClosed,
        Decline::CurrencyMismatch => DeclineReason::CurrencyMismatch,
        Decline::AccountFrozen => DeclineReason::AccountFrozen,
        Decline::AccountClosed => DeclineReason::AccountClosed,
        Decline::IssuerUnavailable => DeclineReason::IssuerUnavailable,
    }
}

/// The product maximum limits (minor units of any card currency).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxLimits {
    pub(crate) daily: i64,
    pub(crate) per_transaction: i64,
}

/// A card as the owner and staff see it.
pub(crate) fn card(row: &CardRow, max: MaxLimits) -> Card {
    let currency = row.currency.as_str();
    Card {
        card_id: row.card_id.to_string(),
        account_id: row.account_id.to_string(),
        owner_user_id: row.owner_user_id.to_string(),
        product: CardProduct::Debit as i32,
        status: card_status(row.effective_status()) as i32,
        last_four: row.last_four.clone(),
        expiry_month: row.expiry_month,
        expiry_year: row.expiry_year,
        cardholder_name: row.cardholder_name.clone(),
        currency: row.currency.clone(),
        limits: Some(CardLimits {
            daily_limit: Some(money(currency, row.daily_limit)),
            per_transaction_limit: Some(money(currency, row.per_transaction_limit)),
        }),
        max_limits: Some(CardLimits {
            daily_limit: Some(money(currency, max.daily)),
            per_transaction_limit: Some(money(currency, max.per_transaction)),
        }),
        spent_today: Some(money(currency, row.spent_today)),
        time_zone: row.time_zone.clone(),
        replaces_card_id: row.replaces_card_id.map(|id| id.to_string()).unwrap_or_default(),
        replaced_by_card_id: row.replaced_by_card_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

/// The contract's status of an authorization (a pending one is answered as declined with
/// `ISSUER_UNAVAILABLE`: nothing is approved until the hold exists).
pub(crate) const fn auth_status(status: AuthStatus) -> AuthorizationStatus {
    match status {
        AuthStatus::Pending | AuthStatus::Declined => AuthorizationStatus::Declined,
        AuthStatus::Approved => AuthorizationStatus::Approved,
        AuthStatus::Captured => AuthorizationStatus::Captured,
        AuthStatus::Voided => AuthorizationStatus::Voided,
        AuthStatus::Expired => AuthorizationStatus::Expired,
    }
}

/// An authorization.
pub(crate) fn authorization(row: &AuthRow) -> Authorization {
    let currency = row.currency.as_str();
    let decline = match row.status {
        AuthStatus::Pending => DeclineReason::IssuerUnavailable,
        AuthStatus::Approved
        | AuthStatus::Declined
        | AuthStatus::Captured
        | AuthStatus::Voided
        | AuthStatus::Expired => row.decline().map_or(DeclineReason::Unspecified, decline_reason),
    };
    Authorization {
        authorization_id: row.authorization_id.to_string(),
        card_id: row.card_id.to_string(),
        account_id: row.account_id.to_string(),
        card_last_four: row.card_last_four.clone(),
        merchant: Some(Merchant {
            name: row.merchant_name.clone(),
            category_code: row.merchant_category_code.clone(),
            merchant_id: row.merchant_id.clone(),
            city: row.merchant_city.clone(),
            country: row.merchant_country.clone(),
        }),
        amount: Some(money(currency, row.amount)),
        status: auth_status(row.status) as i32,
        decline_reason: decline as i32,
        captured_amount: Some(money(currency, row.captured_amount)),
        refunded_amount: Some(money(currency, row.refunded_amount)),
        hold_id: row.hold_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
        expires_at: matches!(row.status, AuthStatus::Approved).then(|| timestamp(row.expires_at)),
        captured_at: row.captured_at.map(timestamp),
        updated_at: Some(timestamp(row.updated_at)),
    }
}
