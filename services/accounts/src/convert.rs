//! Rows and domain types as protobuf messages (and back, for request enums).

use bank_proto::{
    accounts::v1::{Account, AccountProduct, AccountStatus, Freeze},
    common::v1::Balances,
};

use crate::{
    domain::{Product, Status},
    storage::AccountRow,
};

/// Who looks at an account: its owner, or staff (who also see the freeze's reason and actor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    Owner,
    Staff,
}

pub(crate) use bank_proto::convert::{money, timestamp};

pub(crate) const fn product(product: Product) -> AccountProduct {
    match product {
        Product::Checking => AccountProduct::Checking,
        Product::Savings => AccountProduct::Savings,
    }
}

pub(crate) const fn status(status: Status) -> AccountStatus {
    match status {
        Status::Opening => AccountStatus::Pending,
        Status::Active => AccountStatus::Active,
        Status::Frozen => AccountStatus::Frozen,
        Status::Closed => AccountStatus::Closed,
    }
}

/// The account as `view` may see it, with its balances (absent while opening).
pub(crate) fn account(row: &AccountRow, balances: Option<Balances>, view: View) -> Account {
    let freeze = (row.status == Status::Frozen).then(|| Freeze {
        credits_allowed: row.credits_allowed,
        frozen_at: row.frozen_at.map(timestamp),
        reason: match view {
            View::Staff => row.freeze_reason.clone().unwrap_or_default(),
            View::Owner => String::new(),
        },
        frozen_by: match view {
            View::Staff => row.frozen_by.map(|u| u.to_string()).unwrap_or_default(),
            View::Owner => String::new(),
        },
    });
    Account {
        account_id: row.account_id.to_string(),
        account_number: row.account_number.clone(),
        owner_user_id: row.owner_user_id.to_string(),
        product: product(row.product) as i32,
        currency: row.currency.clone(),
        status: status(row.status) as i32,
        nickname: row.nickname.clone(),
        balances: if row.status == Status::Opening { None } else { balances },
        overdraft_limit: Some(money(&row.currency, row.overdraft_limit)),
        freeze,
        opened_at: Some(timestamp(row.opened_at)),
        closed_at: row.closed_at.map(timestamp),
        updated_at: Some(timestamp(row.updated_at)),
    }
}
