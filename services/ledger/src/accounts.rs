//! Ledger accounts: created by the accounts service (`ledger:accounts`, idempotent by id), their
//! status, overdraft limit and low-balance threshold (each under the account's row lock, in a
//! transaction of its own), and reading them.

use bank_money::Currency;
use bank_platform::{ErrorCode, ServiceError, tx};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    convert,
    domain::{Account, AccountStatus, Refusal},
    storage::{self, journal},
};

fn refused(refusal: Refusal) -> tx::Error {
    tx::Error::Refused(convert::refusal(refusal))
}

/// Creates the customer account `account_id` unless it exists with the same data (a repeat).
///
/// # Errors
/// `ALREADY_EXISTS` when the id exists with other data or the number belongs to another account.
pub(crate) async fn create(
    pool: &PgPool,
    account_id: Uuid,
    number: &str,
    owner: Uuid,
    currency: Currency,
) -> Result<Account, ServiceError> {
    let mut conn = pool.acquire().await.map_err(|e| ServiceError::internal(&e))?;
    let account = storage::insert_customer(&mut conn, account_id, number, owner, currency.code())
        .await
        .map_err(|e| match e.as_database_error().and_then(sqlx::error::DatabaseError::code) {
            Some(code) if code == "23505" => {
                ServiceError::new(ErrorCode::AlreadyExists, "that account number belongs to another account")
            }
            _ => ServiceError::internal(&e),
        })?;
    let same = account.is_customer()
        && account.number.as_deref() == Some(number)
        && account.owner == Some(owner)
        && account.currency == currency.code();
    if same {
        Ok(account)
    } else {
        Err(ServiceError::new(ErrorCode::AlreadyExists, "the account exists with other data"))
    }
}

/// Sets a customer account's status (credits stay allowed unless a freeze says otherwise). Closing
/// needs a zero balance and no holds; a closed account stays closed.
///
/// # Errors
/// `NOT_FOUND`, `ACCOUNT_CLOSED`, `BALANCE_NOT_ZERO`.
pub(crate) async fn set_status(
    pool: &PgPool,
    account_id: Uuid,
    status: AccountStatus,
    credits_allowed: bool,
) -> Result<Account, tx::Error> {
    let credits_allowed = status != AccountStatus::Frozen || credits_allowed;
    tx::run(pool, |conn| {
        Box::pin(async move {
            let mut account = storage::lock_account(conn, account_id)
                .await?
                .filter(Account::is_customer)
                .ok_or_else(|| refused(Refusal::NoSuchAccount))?;
            if account.status == AccountStatus::Closed && status != AccountStatus::Closed {
                return Err(refused(Refusal::AccountClosed));
            }
            if status == AccountStatus::Closed
                && account.status != AccountStatus::Closed
                && (account.posted != 0 || account.held != 0)
            {
                return Err(tx::Error::Refused(ServiceError::new(
                    ErrorCode::BalanceNotZero,
                    "the balance and holds must be zero to close",
                )));
            }
            storage::set_status(conn, account_id, status, credits_allowed).await?;
            account.status = status;
            account.credits_allowed = credits_allowed;
            Ok(account)
        })
    })
    .await
}

/// Sets a customer account's overdraft limit (in its currency); refused when the available
/// balance is already below the new limit.
///
/// # Errors
/// `NOT_FOUND`, `CURRENCY_MISMATCH`, `FAILED_PRECONDITION`.
pub(crate) async fn set_overdraft_limit(
    pool: &PgPool,
    account_id: Uuid,
    currency: Currency,
    limit: i64,
) -> Result<Account, tx::Error> {
    tx::run(pool, |conn| {
        Box::pin(async move {
            let mut account = storage::lock_account(conn, account_id)
                .await?
                .filter(Account::is_customer)
                .ok_or_else(|| refused(Refusal::NoSuchAccount))?;
            if account.currency != currency.code() {
                return Err(tx::Error::Refused(ServiceError::new(
                    ErrorCode::CurrencyMismatch,
                    "the limit is in another currency",
                )));
            }
            if account.available() < -limit {
                return Err(tx::Error::Refused(ServiceError::new(
                    ErrorCode::FailedPrecondition,
                    "the available balance is already below the new limit",
                )));
            }
            storage::set_overdraft_limit(conn, account_id, limit).await?;
            account.overdraft_limit = limit;
            Ok(account)
        })
    })
    .await
}

/// Who asks to set a low-balance threshold.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ThresholdCaller {
    /// The owner (only their own accounts).
    User(Uuid),
    /// A service; `allowed` when it holds `ledger:accounts`.
    Service {
        /// Holds the scope.
        allowed: bool,
    },
}

/// Sets (or clears) a customer account's low-balance threshold (ADR 0015). Someone else's
/// account answers like a missing one.
///
/// # Errors
/// `NOT_FOUND`, `CURRENCY_MISMATCH`.
pub(crate) async fn set_low_balance_threshold(
    pool: &PgPool,
    account_id: Uuid,
    caller: ThresholdCaller,
    threshold: Option<(Currency, i64)>,
) -> Result<Account, tx::Error> {
    tx::run(pool, |conn| {
        Box::pin(async move {
            let account = storage::lock_account(conn, account_id).await?;
            let mut account = account
                .filter(|a| {
                    a.is_customer()
                        && match caller {
                            ThresholdCaller::User(user) => a.owner == Some(user),
                            ThresholdCaller::Service { allowed } => allowed,
                        }
                })
                .ok_or_else(|| refused(Refusal::NoSuchAccount))?;
            if let Some((currency, _)) = &threshold
                && currency.code() != account.currency
            {
                return Err(tx::Error::Refused(ServiceError::new(
                    ErrorCode::CurrencyMismatch,
                    "the threshold is in another currency",
                )));
            }
            let value = threshold.map(|(_, minor)| minor);
            storage::set_low_balance_threshold(conn, account_id, value).await?;
            account.low_balance_threshold = value;
            Ok(account)
        })
    })
    .await
}

/// One account (`None`: no such account).
///
/// # Errors
/// The database failed.
pub(crate) async fn get(pool: &PgPool, account_id: Uuid) -> Result<Option<Account>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    storage::account(&mut conn, account_id).await
}

/// The posted balance of `account` from the journal, before `as_of`.
///
/// # Errors
/// The database failed.
pub(crate) async fn posted_before(
    pool: &PgPool,
    account: Uuid,
    as_of: OffsetDateTime,
) -> Result<i64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    journal::posted_before(&mut conn, account, as_of).await
}

/// A page of system accounts (optionally of one currency).
///
/// # Errors
/// The database failed.
pub(crate) async fn system_accounts(
    pool: &PgPool,
    currency: Option<Currency>,
    offset: i64,
    limit: i64,
) -> Result<Vec<Account>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    storage::system_accounts(&mut conn, currency.map(Currency::code), offset, limit).await
}
