//! Redis: one auto-reconnecting connection manager per process.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret as _;

use crate::config::RedisConfig;

/// Redis could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `redis.url` does not parse.
    #[error("redis.url: invalid URL: {0}")]
    Url(#[source] redis::RedisError),
    /// The first connection failed.
    #[error("redis.url: cannot connect to {target}: {source}")]
    Connect {
        /// `host:port` (never the password).
        target: String,
        /// The cause.
        source: redis::RedisError,
    },
}

/// A connection manager plus the key prefix every key of this service must start with.
#[derive(Clone)]
pub struct Redis {
    /// The multiplexed, reconnecting connection.
    pub conn: ConnectionManager,
    /// Prefix for every key (`redis.key_prefix`).
    pub key_prefix: String,
    /// The bound of one call on a request path (`redis.timeout`).
    pub timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("key_prefix", &self.key_prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// `prefix + key`.
    #[must_use]
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// Awaits one command or pipeline for at most `redis.timeout`. The connection manager's own
    /// response timeout does not bound a call that waits for a reconnection, and a call on a
    /// request path must never hang on Redis: an elapsed bound answers an `Io` error.
    ///
    /// # Errors
    /// Redis failed, or did not answer within the bound.
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "no answer within redis.timeout"))),
        }
    }
}

/// Connects, failing fast when Redis is unreachable.
///
/// # Errors
/// An invalid URL or an unreachable server.
pub async fn connect(config: &RedisConfig) -> Result<Redis, Error> {
    let client = redis::Client::open(config.url.expose_secret()).map_err(Error::Url)?;
    let info = client.get_connection_info();
    let target = info.addr().to_string();
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout));
    let conn = ConnectionManager::new_with_config(client, manager_config)
        .await
        .map_err(|source| Error::Connect { target, source })?;
    Ok(Redis { conn, key_prefix: config.key_prefix.clone(), timeout: config.timeout })
}
