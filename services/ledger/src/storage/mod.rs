//! The only module that talks SQL. Functions take `&mut PgConnection`: the caller owns the
//! transaction. Rows are read into private row types and answered as [`crate::domain`] types (a
//! stored value the domain does not know is a decode error, never a guess). Queries are
//! runtime-checked (docs/adr/0006) and covered by the service tests.
//!
//! * this file: ledger accounts and their administrative changes;
//! * [`batch`]: the posting engine's statements (lock a batch, write a batch);
//! * [`journal`]: history, transactions, transfers, summaries and the integrity queries;
//! * [`holds`]: holds as reads.

pub(crate) mod batch;
pub(crate) mod holds;
pub(crate) mod journal;

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Account, AccountKind, AccountStatus, SystemType};

/// A stored value the domain does not know (a bug or a tampered row): a decode error.
fn corrupt(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("ledger: stored {what} {value:?} is not one this version knows").into())
}

/// A `ledger_accounts` row.
#[derive(Debug, sqlx::FromRow)]
struct AccountRow {
    account_id: Uuid,
    kind: String,
    system_type: Option<String>,
    account_number: Option<String>,
    owner_user_id: Option<Uuid>,
    currency: String,
    status: String,
    credits_allowed: bool,
    overdraft_limit: i64,
    posted: i64,
    held: i64,
    entry_count: i64,
    last_hash: String,
    created_at: OffsetDateTime,
    low_balance_threshold: Option<i64>,
}

impl TryFrom<AccountRow> for Account {
    type Error = sqlx::Error;

    fn try_from(row: AccountRow) -> Result<Self, sqlx::Error> {
        let kind = match (row.kind.as_str(), row.system_type.as_deref()) {
            ("customer", _) => AccountKind::Customer,
            ("system", Some(name)) => {
                AccountKind::System(SystemType::from_name(name).ok_or_else(|| corrupt("system type", name))?)
            }
            (kind, _) => return Err(corrupt("account kind", kind)),
        };
        Ok(Self {
            id: row.account_id,
            kind,
            number: row.account_number,
            owner: row.owner_user_id,
            currency: row.currency,
            status: AccountStatus::from_name(&row.status).ok_or_else(|| corrupt("status", &row.status))?,
            credits_allowed: row.credits_allowed,
            overdraft_limit: row.overdraft_limit,
            posted: row.posted,
            held: row.held,
            entry_count: row.entry_count,
            last_hash: row.last_hash,
            created_at: row.created_at,
            low_balance_threshold: row.low_balance_threshold,
        })
    }
}

fn accounts(rows: Vec<AccountRow>) -> Result<Vec<Account>, sqlx::Error> {
    rows.into_iter().map(Account::try_from).collect()
}

const ACCOUNT_COLUMNS: &str = "account_id, kind, system_type, account_number, owner_user_id, currency::text AS currency, \
                               status, credits_allowed, overdraft_limit, posted, held, entry_count, last_hash, created_at, \
                               low_balance_threshold";

/// Locks one account for the rest of the transaction (administrative changes of one account;
/// postings lock through [`batch::lock`]).
pub(crate) async fn lock_account(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Option<Account>, sqlx::Error> {
    let row: Option<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE account_id = $1 FOR UPDATE"
    )))
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    row.map(Account::try_from).transpose()
}

/// One account, unlocked.
pub(crate) async fn account(
    conn: &mut PgConnection,
    account_id: Uuid,
) -> Result<Option<Account>, sqlx::Error> {
    let row: Option<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE account_id = $1"
    )))
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    row.map(Account::try_from).transpose()
}

/// System accounts (optionally of one currency) by type and currency, `offset` rows in (a small set:
/// one per type and currency, never deleted, so offsets are stable).
pub(crate) async fn system_accounts(
    conn: &mut PgConnection,
    currency: Option<&str>,
    offset: i64,
    limit: i64,
) -> Result<Vec<Account>, sqlx::Error> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts WHERE kind = 'system' AND ($1::text IS NULL OR currency = $1) \
         ORDER BY system_type, currency OFFSET $2 LIMIT $3"
    )))
    .bind(currency)
    .bind(offset)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    accounts(rows)
}

/// Creates a customer account unless the id exists; answers the stored row either way.
pub(crate) async fn insert_customer(
    conn: &mut PgConnection,
    account_id: Uuid,
    number: &str,
    owner: Uuid,
    currency: &str,
) -> Result<Account, sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_accounts (account_id, kind, account_number, owner_user_id, currency) \
         VALUES ($1, 'customer', $2, $3, $4) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account_id)
    .bind(number)
    .bind(owner)
    .bind(currency)
    .execute(&mut *conn)
    .await?;
    account(conn, account_id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// The system account of `system_type` in `currency`, created on first use (its own statement,
/// committed at once: system accounts are never deleted, so their ids can be cached).
pub(crate) async fn ensure_system_account(
    conn: &mut PgConnection,
    system_type: SystemType,
    currency: &str,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_accounts (account_id, kind, system_type, currency) VALUES ($1, 'system', $2, $3) \
         ON CONFLICT (system_type, currency) WHERE kind = 'system' DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(system_type.as_str())
    .bind(currency)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar(
        "SELECT account_id FROM ledger_accounts WHERE kind = 'system' AND system_type = $1 AND currency = $2",
    )
    .bind(system_type.as_str())
    .bind(currency)
    .fetch_one(conn)
    .await
}

/// Sets status and credit permission of a locked account.
pub(crate) async fn set_status(
    conn: &mut PgConnection,
    account_id: Uuid,
    status: AccountStatus,
    credits_allowed: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ledger_accounts SET status = $2, credits_allowed = $3 WHERE account_id = $1")
        .bind(account_id)
        .bind(status.as_str())
        .bind(credits_allowed)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets the overdraft limit of a locked account.
pub(crate) async fn set_overdraft_limit(
    conn: &mut PgConnection,
    account_id: Uuid,
    limit: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ledger_accounts SET overdraft_limit = $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(limit)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets the low-balance threshold of a locked account.
pub(crate) async fn set_low_balance_threshold(
    conn: &mut PgConnection,
    account_id: Uuid,
    threshold: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ledger_accounts SET low_balance_threshold = $2 WHERE account_id = $1")
        .bind(account_id)
        .bind(threshold)
        .execute(conn)
        .await?;
    Ok(())
}
