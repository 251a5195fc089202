//! The ledger's domain types and read models as contract messages (and the contract's enums as
//! domain types), and domain refusals as the errors clients see.

use bank_platform::{ErrorCode, FieldViolation, ServiceError};
pub(crate) use bank_proto::convert::{money, timestamp};
use bank_proto::{
    common::v1::Balances,
    events::v1 as events,
    ledger::v1::{
        Entry, Hold as HoldMessage, HoldStatus as HoldStatusMessage, LedgerAccount, LedgerAccountKind,
        LedgerAccountStatus, Posting, SystemAccountType, Transaction, TransactionKind as KindMessage,
        Transfer, TransferStatus,
    },
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        Account, AccountKind, AccountStatus, Hold, HoldStatus, Plan, Posted, Refusal, SystemType,
        TransactionKind,
    },
    storage::journal::{EntryRow, TransactionRow, TransferRow},
};

/// A domain refusal as the client's error (the stable reason, the domain's message).
pub(crate) fn refusal(refusal: Refusal) -> ServiceError {
    let code = match refusal {
        Refusal::NoSuchAccount | Refusal::NoSuchHold | Refusal::NoSuchTransaction => ErrorCode::NotFound,
        Refusal::CurrencyMismatch | Refusal::HoldCurrencyMismatch => ErrorCode::CurrencyMismatch,
        Refusal::AccountClosed => ErrorCode::AccountClosed,
        Refusal::AccountFrozen => ErrorCode::AccountFrozen,
        Refusal::InsufficientFunds => ErrorCode::InsufficientFunds,
        Refusal::OutOfRange => ErrorCode::ValidationFailed,
        Refusal::Malformed(what) => {
            tracing::error!(what, "a malformed posting was refused");
            ErrorCode::Internal
        }
        Refusal::HoldNotActive(_) => ErrorCode::HoldNotActive,
        Refusal::ExceedsHold(_) => ErrorCode::AmountExceedsAvailable,
        Refusal::RefundReferenceReused => ErrorCode::IdempotencyKeyReused,
        Refusal::NotReversible(_) => ErrorCode::NotReversible,
        Refusal::AlreadyReversed => ErrorCode::AlreadyReversed,
        Refusal::SameAccount => {
            return ServiceError::invalid(vec![FieldViolation::new(
                "to_account_id",
                "SAME_ACCOUNT",
                refusal.to_string(),
            )]);
        }
    };
    ServiceError::new(code, refusal.to_string())
}

/// The contract's system account type as the domain's (unspecified means cash, the default
/// counterparty of deposits and withdrawals).
pub(crate) const fn system_type(kind: SystemAccountType) -> SystemType {
    match kind {
        SystemAccountType::Unspecified | SystemAccountType::Cash => SystemType::Cash,
        SystemAccountType::CardSettlement => SystemType::CardSettlement,
        SystemAccountType::ExternalClearing => SystemType::ExternalClearing,
        SystemAccountType::FxPosition => SystemType::FxPosition,
        SystemAccountType::InterestExpense => SystemType::InterestExpense,
        SystemAccountType::FeeIncome => SystemType::FeeIncome,
        SystemAccountType::Equity => SystemType::Equity,
        SystemAccountType::Suspense => SystemType::Suspense,
    }
}

/// The domain's system account type as the contract's.
pub(crate) const fn system_type_message(kind: SystemType) -> SystemAccountType {
    match kind {
        SystemType::Cash => SystemAccountType::Cash,
        SystemType::CardSettlement => SystemAccountType::CardSettlement,
        SystemType::ExternalClearing => SystemAccountType::ExternalClearing,
        SystemType::FxPosition => SystemAccountType::FxPosition,
        SystemType::InterestExpense => SystemAccountType::InterestExpense,
        SystemType::FeeIncome => SystemAccountType::FeeIncome,
        SystemType::Equity => SystemAccountType::Equity,
        SystemType::Suspense => SystemAccountType::Suspense,
    }
}

/// A transaction kind (or a stored name the domain does not know) as the contract's.
pub(crate) fn kind(kind: Option<TransactionKind>) -> KindMessage {
    match kind {
        Some(TransactionKind::Transfer) => KindMessage::Transfer,
        Some(TransactionKind::Deposit) => KindMessage::Deposit,
        Some(TransactionKind::Withdrawal) => KindMessage::Withdrawal,
        Some(TransactionKind::HoldCapture) => KindMessage::HoldCapture,
        Some(TransactionKind::HoldRefund) => KindMessage::HoldRefund,
        Some(TransactionKind::Interest) => KindMessage::Interest,
        Some(TransactionKind::Reversal) => KindMessage::Reversal,
        None => KindMessage::Unspecified,
    }
}

/// An account's balances now.
pub(crate) fn balances(account: &Account) -> Balances {
    Balances {
        posted: Some(money(&account.currency, account.posted)),
        held: Some(money(&account.currency, account.held)),
        available: Some(money(&account.currency, account.available())),
        as_of: Some(timestamp(OffsetDateTime::now_utc())),
    }
}

/// A ledger account as services and staff see it.
pub(crate) fn ledger_account(account: &Account) -> LedgerAccount {
    let (kind, system) = match account.kind {
        AccountKind::Customer => (LedgerAccountKind::Customer, SystemAccountType::Unspecified),
        AccountKind::System(system) => (LedgerAccountKind::System, system_type_message(system)),
    };
    LedgerAccount {
        account_id: account.id.to_string(),
        kind: kind as i32,
        system_type: system as i32,
        account_number: account.number.clone().unwrap_or_default(),
        owner_user_id: account.owner.map(|u| u.to_string()).unwrap_or_default(),
        currency: account.currency.clone(),
        status: match account.status {
            AccountStatus::Active => LedgerAccountStatus::Active,
            AccountStatus::Frozen => LedgerAccountStatus::Frozen,
            AccountStatus::Closed => LedgerAccountStatus::Closed,
        } as i32,
        credits_allowed: account.credits_allowed,
        overdraft_limit: Some(money(&account.currency, account.overdraft_limit)),
        balances: Some(balances(account)),
        created_at: Some(timestamp(account.created_at)),
        low_balance_threshold: account.low_balance_threshold.map(|t| money(&account.currency, t)),
    }
}

/// The owner's user id as events carry it (empty for system accounts).
pub(crate) fn owner(account: &Account) -> String {
    account.owner.map(|u| u.to_string()).unwrap_or_default()
}

/// One line of an account's history.
pub(crate) fn entry(row: &EntryRow) -> Entry {
    Entry {
        entry_id: row.entry_id.to_string(),
        transaction_id: row.transaction_id.to_string(),
        account_id: row.account_id.to_string(),
        kind: kind(TransactionKind::from_name(&row.kind)) as i32,
        amount: Some(money(&row.currency, row.amount)),
        balance_after: Some(money(&row.currency, row.balance_after)),
        description: row.description.clone(),
        counterparty: String::new(),
        posted_at: Some(timestamp(row.posted_at)),
        sequence: row.sequence,
    }
}

/// A transaction just posted.
pub(crate) fn transaction(posted: &Posted, plan: &Plan) -> Transaction {
    Transaction {
        transaction_id: posted.transaction_id.to_string(),
        kind: kind(Some(plan.kind)) as i32,
        description: plan.description.clone(),
        postings: posted
            .entries
            .iter()
            .map(|(entry_id, account_id, amount, after)| Posting {
                entry_id: entry_id.to_string(),
                account_id: account_id.to_string(),
                amount: Some(money(&plan.currency, *amount)),
                balance_after: Some(money(&plan.currency, *after)),
            })
            .collect(),
        posted_at: Some(timestamp(posted.posted_at)),
        initiated_by: plan.initiated_by.clone(),
        reference_id: plan.reference.clone(),
        reverses_transaction_id: plan.reverses.map(|t| t.to_string()).unwrap_or_default(),
        reversed_by_transaction_id: String::new(),
        reason: plan.reason.clone(),
    }
}

/// A stored transaction with its postings: (entry, account, amount, currency, balance after).
pub(crate) fn stored_transaction(
    header: &TransactionRow,
    postings: &[(Uuid, Uuid, i64, String, i64)],
) -> Transaction {
    Transaction {
        transaction_id: header.transaction_id.to_string(),
        kind: kind(TransactionKind::from_name(&header.kind)) as i32,
        description: header.description.clone(),
        postings: postings
            .iter()
            .map(|(entry_id, account_id, amount, currency, after)| Posting {
                entry_id: entry_id.to_string(),
                account_id: account_id.to_string(),
                amount: Some(money(currency, *amount)),
                balance_after: Some(money(currency, *after)),
            })
            .collect(),
        posted_at: Some(timestamp(header.posted_at)),
        initiated_by: header.initiated_by.clone(),
        reference_id: header.reference_id.clone(),
        reverses_transaction_id: header.reverses_transaction_id.map(|t| t.to_string()).unwrap_or_default(),
        reversed_by_transaction_id: header
            .reversed_by_transaction_id
            .map(|t| t.to_string())
            .unwrap_or_default(),
        reason: header.reason.clone(),
    }
}

/// A hold as its creator sees it.
pub(crate) fn hold(hold: &Hold) -> HoldMessage {
    HoldMessage {
        hold_id: hold.id.to_string(),
        account_id: hold.account.to_string(),
        amount: Some(money(&hold.currency, hold.amount)),
        captured_amount: Some(money(&hold.currency, hold.captured)),
        refunded_amount: Some(money(&hold.currency, hold.refunded)),
        status: match hold.status {
            HoldStatus::Active => HoldStatusMessage::Active,
            HoldStatus::Captured => HoldStatusMessage::Captured,
            HoldStatus::Voided => HoldStatusMessage::Voided,
            HoldStatus::Expired => HoldStatusMessage::Expired,
        } as i32,
        counterparty: system_type_message(hold.counterparty) as i32,
        reference_id: hold.reference.clone(),
        description: hold.description.clone(),
        expires_at: Some(timestamp(hold.expires_at)),
        created_at: Some(timestamp(hold.created_at)),
        updated_at: Some(timestamp(hold.updated_at)),
        capture_transaction_id: hold.capture_transaction.map(|t| t.to_string()).unwrap_or_default(),
    }
}

/// A stored transfer as `viewer` sees it: the credited account's id only for its owner.
pub(crate) fn transfer(row: &TransferRow, viewer: Uuid) -> Transfer {
    let amount = Some(money(&row.currency, row.amount));
    Transfer {
        transfer_id: row.transfer_id.to_string(),
        from_account_id: row.from_account_id.to_string(),
        to_account_id: if row.to_owner == Some(viewer) {
            row.to_account_id.to_string()
        } else {
            String::new()
        },
        to_account_number: row.to_account_number.clone().unwrap_or_default(),
        amount: amount.clone(),
        credited_amount: amount,
        description: row.description.clone(),
        status: if row.reversed_by.is_some() { TransferStatus::Reversed } else { TransferStatus::Posted }
            as i32,
        transaction_id: row.transaction_id.to_string(),
        fx_quote_id: String::new(),
        scheduled_transfer_id: String::new(),
        created_at: Some(timestamp(row.created_at)),
    }
}

/// The `LowBalanceDetected` event of an account a posting took below its threshold (caused by the
/// posting's own event `cause`); `None` without a threshold.
pub(crate) fn low_balance(account: &Account, cause: Uuid) -> Option<events::LowBalanceDetected> {
    let threshold = account.low_balance_threshold?;
    Some(events::LowBalanceDetected {
        account_id: account.id.to_string(),
        owner_user_id: owner(account),
        account_number_last_four: account.number_last_four(),
        threshold: Some(money(&account.currency, threshold)),
        available: Some(money(&account.currency, account.available())),
        cause_event_id: cause.to_string(),
    })
}
