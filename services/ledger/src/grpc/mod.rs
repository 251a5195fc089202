//! The tonic implementations of the ledger's contracts: `public` (`LedgerService`: users, and
//! services with their scopes) and `admin` (`LedgerAdminService`: staff with a recent second
//! factor, and services with `ledger:cash`). Handlers authorise first, parse the request into
//! domain types (answering `VALIDATION_FAILED` with every field violation), call one use case
//! (`transfers`, `cash`, `holds`, `reversals`, `accounts`, `history`, `integrity`) and answer.
//!
//! Not built yet (they answer `UNIMPLEMENTED`, the generated default): scheduled and external
//! transfers, FX quotes and interest postings (see the README status table).

mod admin;
mod public;

use std::sync::Arc;

use bank_auth::{Principal, Subject};
use bank_money::{Amount, Currency, card_number};
use bank_platform::{
    FieldViolation, ServiceError,
    grpc::fields::{self, invalid},
    pagination::Page,
};
use bank_proto::{
    common::v1::{Money, PageRequest},
    convert::instant,
    ledger::v1::{EntryDirection, EntrySort},
};
use sqlx::PgPool;
use tonic::{Response, Status};

use crate::{
    config::TransferConfig,
    domain::Account,
    engine::Engine,
    history,
    storage::journal::{EntryFilter, EntryOrder},
};

type Answer<T> = Result<Response<T>, Status>;

/// The ledger API (user-facing, service and admin RPCs).
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pool: PgPool,
    engine: Engine,
    transfers: Arc<TransferConfig>,
}

impl Api {
    /// The API over `pool` and the posting `engine`, with the transfer settings.
    pub(crate) fn new(pool: PgPool, engine: Engine, transfers: TransferConfig) -> Self {
        Self { pool, engine, transfers: Arc::new(transfers) }
    }
}

fn not_found() -> Status {
    fields::refused(bank_platform::ErrorCode::NotFound, "no such account")
}

/// A positive amount in a supported currency (`CURRENCY_NOT_SUPPORTED` for an unknown code).
fn money_field(field: &str, money: Option<&Money>) -> Result<(Currency, Amount), Status> {
    let money = money.ok_or_else(|| invalid(field, "REQUIRED", "is required"))?;
    let mut violations = Vec::new();
    let currency = Currency::parse(&money.currency).map_err(|e| {
        violations.push(FieldViolation::new(format!("{field}.currency"), e.code(), e.to_string()));
    });
    let amount = Amount::new(money.minor_units).map_err(|e| {
        violations.push(FieldViolation::new(format!("{field}.minor_units"), e.code(), e.to_string()));
    });
    match (currency, amount) {
        (Ok(currency), Ok(amount)) => Ok((currency, amount)),
        _ => Err(ServiceError::invalid(violations).into()),
    }
}

/// A supported currency.
fn currency_field(field: &str, code: &str) -> Result<Currency, Status> {
    Currency::parse(code).map_err(|e| invalid(field, e.code(), &e.to_string()))
}

/// A description: trimmed, at most 140 characters, no control characters, card numbers masked
/// to their last four (PCI DSS 3.5.1: the description is stored, sent in events and mailed).
fn description_field(value: &str) -> Result<String, Status> {
    let value = value.trim();
    if value.chars().count() > 140 {
        return Err(invalid("description", "TOO_LONG", "at most 140 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("description", "INVALID_CHARACTERS", "must not contain control characters"));
    }
    Ok(card_number::mask_card_numbers(value).into_owned())
}

/// Who may read an account: its owner, or a service with `ledger:read`.
fn may_read(principal: &Principal, account: &Account) -> bool {
    match &principal.subject {
        Subject::User(user) => account.owner == Some(*user),
        Subject::Service(_) => principal.has("ledger:read"),
    }
}

/// Parses a history query (`ListEntries` and `AdminListEntries` share it).
fn entry_query(
    account_id: &str,
    page: Option<&PageRequest>,
    (from_time, to_time): (Option<&pbjson_types::Timestamp>, Option<&pbjson_types::Timestamp>),
    direction: i32,
    (min, max): (i64, i64),
    sort: i32,
) -> Result<history::Query, Status> {
    let account = fields::uuid("account_id", account_id)?;
    // The allowlist: each sort maps to constant SQL and a page-token kind of its own (a token of
    // one order is refused by another).
    let (order, kind) = match EntrySort::try_from(sort) {
        Ok(EntrySort::Unspecified | EntrySort::PostedAtDesc) => {
            (EntryOrder::PostedAtDesc, "entries-time-desc")
        }
        Ok(EntrySort::PostedAtAsc) => (EntryOrder::PostedAtAsc, "entries-time-asc"),
        Ok(EntrySort::AmountDesc) => (EntryOrder::AmountDesc, "entries-amount-desc"),
        Ok(EntrySort::AmountAsc) => (EntryOrder::AmountAsc, "entries-amount-asc"),
        Err(_) => return Err(invalid("sort", "INVALID", "unknown sort order")),
    };
    let page_request = page.cloned().unwrap_or_default();
    let page = Page::parse(page_request.page_size, &page_request.page_token, kind, 50, 200)?;
    let mut violations = Vec::new();
    if min < 0 {
        violations.push(FieldViolation::new("min_amount_minor_units", "NEGATIVE", "must not be negative"));
    }
    if max < 0 {
        violations.push(FieldViolation::new("max_amount_minor_units", "NEGATIVE", "must not be negative"));
    }
    if min > 0 && max > 0 && min > max {
        violations.push(FieldViolation::new(
            "max_amount_minor_units",
            "BELOW_MIN",
            "must not be below the minimum",
        ));
    }
    let credits = match EntryDirection::try_from(direction) {
        Ok(EntryDirection::Credit) => Some(true),
        Ok(EntryDirection::Debit) => Some(false),
        Ok(EntryDirection::Unspecified) => None,
        Err(_) => {
            violations.push(FieldViolation::new("direction", "INVALID", "unknown direction"));
            None
        }
    };
    let from = from_time.map(|t| instant(t).ok_or(())).transpose();
    let to = to_time.map(|t| instant(t).ok_or(())).transpose();
    let (Ok(from), Ok(to)) = (from, to) else {
        violations.push(FieldViolation::new("from_time", "OUT_OF_RANGE", "invalid time range"));
        return Err(ServiceError::invalid(violations).into());
    };
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        violations.push(FieldViolation::new("to_time", "BEFORE_FROM", "must be after from_time"));
    }
    if !violations.is_empty() {
        return Err(ServiceError::invalid(violations).into());
    }
    Ok(history::Query {
        account,
        page,
        order,
        kind,
        filter: EntryFilter {
            from,
            to,
            credits,
            min_abs: (min > 0).then_some(min),
            max_abs: (max > 0).then_some(max),
        },
    })
}
