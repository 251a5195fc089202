//! An account's history as its readers see it: keyset pages of entries in every allowlisted order
//! with filters (ADR 0014), and period summaries for statements.

use bank_platform::{ErrorCode, FieldViolation, ServiceError, pagination::Page};
use bank_proto::ledger::v1::PeriodSummary;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    convert::{money, timestamp},
    domain::Account,
    storage::{
        self,
        journal::{self, EntryFilter, EntryOrder, EntryRow},
    },
};

/// A parsed history query (`ListEntries` and `AdminListEntries` share it).
#[derive(Debug, Clone)]
pub(crate) struct Query {
    /// The account.
    pub(crate) account: Uuid,
    /// The page.
    pub(crate) page: Page,
    /// The order.
    pub(crate) order: EntryOrder,
    /// The page-token kind of that order (a token of one order is refused by another).
    pub(crate) kind: &'static str,
    /// Filters.
    pub(crate) filter: EntryFilter,
}

fn no_such_account() -> ServiceError {
    ServiceError::new(ErrorCode::NotFound, "no such account")
}

fn internal(err: &sqlx::Error) -> ServiceError {
    ServiceError::internal(err)
}

/// One page of the account's entries and the next page's token, if `may_see` the account (else
/// `NOT_FOUND`, like a missing account).
///
/// # Errors
/// `NOT_FOUND`, a page token of another position (`VALIDATION_FAILED`), or the database failed.
pub(crate) async fn page(
    pool: &PgPool,
    query: &Query,
    may_see: impl Fn(&Account) -> bool,
) -> Result<(Vec<EntryRow>, String), ServiceError> {
    let mut conn = pool.acquire().await.map_err(|e| internal(&e))?;
    let account = storage::account(&mut conn, query.account)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(no_such_account)?;
    if !may_see(&account) {
        return Err(no_such_account());
    }
    let after = if query.page.position == 0 {
        None
    } else {
        let (posted_at, abs) = journal::entry_cursor(&mut conn, query.account, query.page.position)
            .await
            .map_err(|e| internal(&e))?
            .ok_or_else(|| {
                ServiceError::invalid(vec![FieldViolation::new(
                    "page.page_token",
                    "INVALID",
                    "page_token is not valid here",
                )])
            })?;
        Some((query.page.position, posted_at, abs))
    };
    let rows = journal::entries(&mut conn, query.account, query.order, after, query.page.size, &query.filter)
        .await
        .map_err(|e| internal(&e))?;
    let next = query.page.next_token(query.kind, rows.len(), rows.last().map_or(0, |r| r.sequence));
    Ok((rows, next))
}

/// The account's opening and closing balances, credits, debits and entry counts per consecutive
/// pair of `boundaries` (ascending), from the journal.
///
/// # Errors
/// `NOT_FOUND`, or the database failed.
pub(crate) async fn summaries(
    pool: &PgPool,
    account: Uuid,
    boundaries: &[OffsetDateTime],
) -> Result<Vec<PeriodSummary>, ServiceError> {
    let mut conn = pool.acquire().await.map_err(|e| internal(&e))?;
    let account =
        storage::account(&mut conn, account).await.map_err(|e| internal(&e))?.ok_or_else(no_such_account)?;
    let rows =
        journal::period_summaries(&mut conn, account.id, boundaries).await.map_err(|e| internal(&e))?;
    let currency = account.currency.as_str();
    let mut periods = Vec::with_capacity(rows.len());
    for (start, end, opening, credits, debits, count) in rows {
        let closing = bank_money::add(opening, credits)
            .and_then(|b| bank_money::sub(b, debits))
            .map_err(|e| ServiceError::internal(&e))?;
        periods.push(PeriodSummary {
            period_start: Some(timestamp(start)),
            period_end: Some(timestamp(end)),
            opening_balance: Some(money(currency, opening)),
            closing_balance: Some(money(currency, closing)),
            total_credits: Some(money(currency, credits)),
            total_debits: Some(money(currency, debits)),
            entry_count: count,
        });
    }
    Ok(periods)
}
