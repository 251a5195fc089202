//! Database transactions with internal retries, and the errors handlers map to statuses: the one
//! implementation every service uses ([`run`] for a closure over a pool, [`run_with`] for a
//! dedicated connection, state the attempts share, and a retry policy of the caller's).

use std::{future::Future, time::Duration};

use crate::{ErrorCode, ServiceError, idempotency};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres};

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule refused the request (answered to the client as is; the transaction rolled back).
    #[error("{0}")]
    Refused(ServiceError),
    /// The database failed (serialization failures and deadlocks are retried before this).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<ServiceError> for Error {
    fn from(err: ServiceError) -> Self {
        Self::Refused(err)
    }
}

impl From<idempotency::Error> for Error {
    fn from(err: idempotency::Error) -> Self {
        match err.client_error() {
            Some(client) => Self::Refused(client),
            None => match err {
                idempotency::Error::Database(db) => Self::Database(db),
                idempotency::Error::Reused => Self::Refused(ServiceError::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this idempotency key was used with a different request",
                )),
            },
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Refused(refused) => refused.into(),
            Error::Database(db) => ServiceError::internal(&db).into(),
        }
    }
}

/// Serialization failures and deadlocks: the transaction may simply run again.
#[must_use]
pub fn is_retryable(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|code| code == "40001" || code == "40P01")
}

/// When a failed attempt runs again.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Whether a database error means "run the transaction again" ([`is_retryable`] by default;
    /// the ledger adds an idempotency key stored meanwhile by a concurrent first use).
    pub retryable: fn(&sqlx::Error) -> bool,
    /// Called before every retry (a metric).
    pub on_retry: fn(),
    /// Attempts in all, the first included.
    pub rounds: u32,
}

impl Retry {
    /// Serialization failures and deadlocks, ten attempts, no hook.
    pub const DEFAULT: Self = Self { retryable: is_retryable, on_retry: || {}, rounds: 10 };
}

impl Default for Retry {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where transactions start: a pool (each attempt on a pooled connection) or one dedicated
/// connection.
pub trait Begin: Send {
    /// Starts a transaction.
    fn begin(&mut self) -> impl Future<Output = Result<sqlx::Transaction<'_, Postgres>, sqlx::Error>> + Send;
}

impl Begin for &PgPool {
    async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        // Known unreachable: answer at once rather than wait the acquire timeout.
        if crate::db::known_down(self) {
            return Err(sqlx::Error::PoolTimedOut);
        }
        PgPool::begin(*self).await
    }
}

impl Begin for PgConnection {
    async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        sqlx::Connection::begin(self).await
    }
}

/// Runs `attempt` in a fresh transaction that commits when it answers `Ok`, retrying
/// serialization failures and deadlocks (never surfaced to clients).
///
/// # Errors
/// The refusal `attempt` answered, a database failure, or `UNAVAILABLE` after ten rounds.
pub async fn run<T, F>(mut pool: &PgPool, mut attempt: F) -> Result<T, Error>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, Error>>,
{
    run_with(&mut pool, &mut (), &Retry::DEFAULT, |conn, ()| attempt(conn)).await
}

/// [`run`] on `source`, with `state` lent to every attempt (so an attempt's future may borrow it)
/// and the retry policy `retry`. Backoff between attempts: 2 ms, doubling, at most 100 ms.
///
/// # Errors
/// The refusal `attempt` answered, a database failure, or `UNAVAILABLE` after `retry.rounds`.
pub async fn run_with<B, S, T, F>(
    source: &mut B,
    state: &mut S,
    retry: &Retry,
    mut attempt: F,
) -> Result<T, Error>
where
    B: Begin + ?Sized,
    S: Send + ?Sized,
    F: for<'c> FnMut(&'c mut PgConnection, &'c mut S) -> BoxFuture<'c, Result<T, Error>>,
{
    let mut backoff = Duration::from_millis(2);
    for round in 1..=retry.rounds {
        let mut tx = source.begin().await?;
        match attempt(&mut tx, state).await {
            Ok(value) => match tx.commit().await {
                Ok(()) => return Ok(value),
                Err(err) if (retry.retryable)(&err) && round < retry.rounds => {}
                Err(err) => return Err(err.into()),
            },
            Err(Error::Database(err)) if (retry.retryable)(&err) && round < retry.rounds => {}
            Err(err) => return Err(err),
        }
        (retry.on_retry)();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
    Err(Error::Refused(ServiceError::new(ErrorCode::Unavailable, "the service is busy, retry")))
}
