//! Idempotency keys for mutating RPCs, shared by every service that moves money or state.
//!
//! A key comes from the `idempotency-key` metadata (the gateway maps `Idempotency-Key` to it), is
//! scoped by principal and RPC, and is stored with a SHA-256 of the request **in the same
//! transaction as the effect**:
//!
//! * first use: [`begin`] inserts the key (the row lock is held until the caller commits), the
//!   caller applies the effect, [`complete`] stores the encoded response, the caller commits;
//! * same key, same request: the stored response ([`Begin::Replay`]) — no second effect;
//! * same key, different request: `IDEMPOTENCY_KEY_REUSED`;
//! * a concurrent duplicate waits on the first one's row lock, then replays its response (or, if
//!   the first rolled back, proceeds as the first);
//! * another principal's identical key is a different key.
//!
//! Every service that uses it creates the table with the DDL in [`TABLE_DDL`] in its own migration.

use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

use crate::{ErrorCode, FieldViolation, ServiceError};

/// The metadata key.
pub const METADATA_KEY: &str = "idempotency-key";
/// Marks a replayed answer (response metadata).
pub const REPLAYED: &str = "idempotent-replay";

/// The table every service creates (copy into a migration; the columns are what this module uses).
pub const TABLE_DDL: &str = "CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    rpc          text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, rpc, key)
)";

/// A scoped key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Who (user id or service client id).
    pub principal: String,
    /// Which RPC (`/bank.ledger.v1.LedgerService/CreateTransfer`).
    pub rpc: &'static str,
    /// The client's key.
    pub key: String,
}

/// Reads and checks the key of a call. `required`: a missing key is `IDEMPOTENCY_KEY_REQUIRED`.
///
/// # Errors
/// Missing (when required) or malformed (empty, over 255 characters, not printable ASCII).
pub fn key_of(
    metadata: &tonic::metadata::MetadataMap,
    principal: &str,
    rpc: &'static str,
    required: bool,
) -> Result<Option<Key>, ServiceError> {
    let Some(value) = metadata.get(METADATA_KEY) else {
        return if required {
            Err(ServiceError::new(ErrorCode::IdempotencyKeyRequired, "an idempotency key is required"))
        } else {
            Ok(None)
        };
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(Key { principal: principal.to_owned(), rpc, key: key.to_owned() })),
        None => Err(ServiceError::invalid(vec![FieldViolation::new(
            METADATA_KEY,
            "INVALID_FORMAT",
            "1 to 255 printable ASCII characters",
        )])),
    }
}

/// SHA-256 of the encoded request.
#[must_use]
pub fn request_hash(encoded_request: &[u8]) -> Vec<u8> {
    Sha256::digest(encoded_request).to_vec()
}

/// What to do with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First use: apply the effect, then [`complete`].
    New,
    /// Seen before with the same request: answer this (the encoded response) and do nothing else.
    Replay(Vec<u8>),
}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key was used for a different request.
    #[error("idempotency key reused with a different request")]
    Reused,
    /// The database failed.
    #[error("idempotency: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// The error for the client, or `None` for a database error (the caller maps it: retry or
    /// internal).
    #[must_use]
    pub fn client_error(&self) -> Option<ServiceError> {
        match self {
            Self::Reused => Some(ServiceError::new(
                ErrorCode::IdempotencyKeyReused,
                "this idempotency key was used with a different request",
            )),
            Self::Database(_) => None,
        }
    }
}

/// Claims `key` inside the caller's transaction. See the module docs.
///
/// # Errors
/// [`Error::Reused`], or the database failed.
pub async fn begin(conn: &mut PgConnection, key: &Key, request_hash: &[u8]) -> Result<Begin, Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (principal, rpc, key, request_hash) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&key.principal)
    .bind(key.rpc)
    .bind(&key.key)
    .bind(request_hash)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Begin::New);
    }
    existing(conn, key, request_hash).await
}

/// What a key already claimed means for this request (the second half of [`begin`], for callers
/// that fold the claiming `INSERT ... ON CONFLICT DO NOTHING` into a statement of their own and
/// found it did not insert — or do not know).
///
/// # Errors
/// `Reused` for the same key with another request; the database failed.
pub async fn existing(conn: &mut PgConnection, key: &Key, request_hash: &[u8]) -> Result<Begin, Error> {
    let (stored_hash, response): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE principal = $1 AND rpc = $2 AND key = $3",
    )
    .bind(&key.principal)
    .bind(key.rpc)
    .bind(&key.key)
    .fetch_one(conn)
    .await?;
    if stored_hash != request_hash {
        return Err(Error::Reused);
    }
    // A row without a response was claimed by a caller that commits the claim before finishing the
    // effect (a saga: accounts commits the claim, calls the ledger, then stores the response). For
    // such callers "no response yet" means "resume": `Begin::New`, and they find their own pending
    // work by the key. Callers that claim and finish in one transaction never leave such a row
    // (except their own, uncommitted, which they see as `New` too).
    Ok(response.map_or(Begin::New, Begin::Replay))
}

/// Stores the response of a first use, in the caller's transaction.
///
/// # Errors
/// The database failed.
pub async fn complete(
    conn: &mut PgConnection,
    key: &Key,
    encoded_response: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET response = $4 WHERE principal = $1 AND rpc = $2 AND key = $3")
        .bind(&key.principal)
        .bind(key.rpc)
        .bind(&key.key)
        .bind(encoded_response)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes keys older than `retention`; answers how many.
///
/// # Errors
/// The database failed.
pub async fn purge(pool: &sqlx::PgPool, retention: std::time::Duration) -> Result<u64, sqlx::Error> {
    let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let done =
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)")
            .bind(seconds)
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// Runs [`purge`] hourly until `stop` (a background task every service with idempotency keys runs).
pub async fn purge_periodically(
    pool: sqlx::PgPool,
    retention: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match purge(&pool, retention).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "idempotency keys past retention deleted"),
            Err(err) => tracing::warn!(error = %err, "purging idempotency keys failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_scoped_and_checked() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(
            key_of(&metadata, "u1", "/x/Y", true).unwrap_err().code,
            ErrorCode::IdempotencyKeyRequired
        );
        assert_eq!(key_of(&metadata, "u1", "/x/Y", false).unwrap(), None);
        metadata.insert(METADATA_KEY, "abc-123".parse().unwrap());
        let key = key_of(&metadata, "u1", "/x/Y", true).unwrap().unwrap();
        assert_eq!((key.principal.as_str(), key.rpc, key.key.as_str()), ("u1", "/x/Y", "abc-123"));
        metadata.insert(METADATA_KEY, "a b".parse().unwrap());
        assert_eq!(key_of(&metadata, "u1", "/x/Y", true).unwrap_err().code, ErrorCode::ValidationFailed);
    }
}
