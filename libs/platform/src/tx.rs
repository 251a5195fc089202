//! Database transactions with internal retries, and the errors handlers map to statuses: the one
//! implementation accounts and cards share (the ledger's `in_transaction` adds its own metrics and
//! retries).

use std::time::Duration;

use crate::{ErrorCode, ServiceError, idempotency};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

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

/// Runs `attempt` in a fresh transaction that commits when it answers `Ok`, retrying
/// serialization failures and deadlocks (never surfaced to clients).
///
/// # Errors
/// The refusal `attempt` answered, a database failure, or `UNAVAILABLE` after ten rounds.
pub async fn run<T, F>(pool: &PgPool, mut attempt: F) -> Result<T, Error>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, Error>>,
{
    const ROUNDS: u32 = 10;
    let mut backoff = Duration::from_millis(2);
    for round in 1..=ROUNDS {
        let mut tx = pool.begin().await?;
        match attempt(&mut tx).await {
            Ok(value) => match tx.commit().await {
                Ok(()) => return Ok(value),
                Err(err) if is_retryable(&err) && round < ROUNDS => {}
                Err(err) => return Err(err.into()),
            },
            Err(Error::Database(err)) if is_retryable(&err) && round < ROUNDS => {}
            Err(err) => return Err(err),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
    Err(Error::Refused(ServiceError::new(ErrorCode::Unavailable, "the service is busy, retry")))
}
