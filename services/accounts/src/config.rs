//! The accounts service's configuration. Every setting is listed in the README ("Settings").

use std::time::Duration;

use bank_auth::AuthConfig;
use bank_platform::config::{self, DatabaseConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use serde::Deserialize;

/// Everything accounts reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The accounts database.
    pub database: DatabaseConfig,
    /// The shared Redis (revocation checks).
    pub redis: RedisConfig,
    /// Token verification, and this service's client credentials: accounts calls the ledger with
    /// a service token (scopes `ledger:accounts` and `ledger:read`), so `auth.client_id` and
    /// `auth.client_secret` are required.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The ledger's gRPC address.
    #[serde(default = "default_ledger_url")]
    pub ledger_url: String,
    /// Upper bound of one call to the ledger (or to identity for a service token).
    #[serde(default = "default_ledger_timeout", with = "humantime_serde")]
    pub ledger_timeout: Duration,
    /// The background task that finishes interrupted sagas.
    #[serde(default)]
    pub reconciler: ReconcilerConfig,
    /// How long idempotency keys are kept.
    #[serde(default = "default_idempotency_retention", with = "humantime_serde")]
    pub idempotency_retention: Duration,
}

fn default_ledger_url() -> String {
    "http://127.0.0.1:50053".to_owned()
}

const fn default_ledger_timeout() -> Duration {
    Duration::from_secs(5)
}

const fn default_idempotency_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The reconciler: finishes accounts stuck in `opening` and account changes stuck in `pending`
/// (a crash between saga steps, or an unreachable ledger).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerConfig {
    /// How often it looks for unfinished work.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How old an unfinished step must be before the reconciler takes it over (the request that
    /// started it is normally done long before). Also the first retry delay; later retries of the
    /// same item back off exponentially up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub stuck_after: Duration,
    /// Longest delay between two attempts on the same item.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Items taken per round.
    pub batch_size: u32,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            stuck_after: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            batch_size: 100,
        }
    }
}

fn positive(setting: &str, value: Duration) -> Result<(), config::Error> {
    if value.is_zero() { Err(config::Error::invalid(setting, "must be greater than zero")) } else { Ok(()) }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.auth.validate()?;
        if self.auth.client_id.is_none() || self.auth.client_secret.is_none() {
            return Err(config::Error::invalid(
                "auth.client_id",
                "accounts needs client credentials (auth.client_id and auth.client_secret) to call the ledger",
            ));
        }
        if !(self.ledger_url.starts_with("http://") || self.ledger_url.starts_with("https://")) {
            return Err(config::Error::invalid("ledger_url", "must be an http:// or https:// URL"));
        }
        positive("ledger_timeout", self.ledger_timeout)?;
        if self.ledger_timeout > Duration::from_secs(60) {
            return Err(config::Error::invalid("ledger_timeout", "must be at most 1m"));
        }
        positive("reconciler.interval", self.reconciler.interval)?;
        positive("reconciler.stuck_after", self.reconciler.stuck_after)?;
        if self.reconciler.max_backoff < self.reconciler.stuck_after {
            return Err(config::Error::invalid(
                "reconciler.max_backoff",
                "must be at least reconciler.stuck_after",
            ));
        }
        if !(1..=1000).contains(&self.reconciler.batch_size) {
            return Err(config::Error::invalid("reconciler.batch_size", "must be 1 to 1000"));
        }
        if self.idempotency_retention < Duration::from_secs(3600) {
            return Err(config::Error::invalid("idempotency_retention", "must be at least 1h"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bank_platform::config::Sources;

    use super::*;

    fn sources() -> Sources {
        Sources::default()
            .with("database.url", "postgres://postgres@127.0.0.1:5432/bank_accounts")
            .with("redis.url", "redis://127.0.0.1:6379")
            .with("auth.client_id", "accounts")
            .with("auth.client_secret", "s3cret")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config: Config = config::load(&sources()).unwrap();
        assert_eq!(config.ledger_url, "http://127.0.0.1:50053");
        assert_eq!(config.ledger_timeout, Duration::from_secs(5));
        assert_eq!(config.reconciler.interval, Duration::from_secs(2));
        assert_eq!(config.reconciler.stuck_after, Duration::from_secs(10));
        assert_eq!(config.reconciler.max_backoff, Duration::from_secs(300));
        assert_eq!(config.reconciler.batch_size, 100);
        assert_eq!(config.idempotency_retention, Duration::from_secs(86_400));
    }

    #[test]
    fn bad_settings_are_named() {
        let without_credentials = Sources::default()
            .with("database.url", "postgres://postgres@127.0.0.1:5432/bank_accounts")
            .with("redis.url", "redis://127.0.0.1:6379");
        let err = config::load::<Config>(&without_credentials).unwrap_err().to_string();
        assert!(err.starts_with("auth.client_id:"), "{err}");
        let err = config::load::<Config>(&sources().with("ledger_url", "127.0.0.1:50053")).unwrap_err();
        assert!(err.to_string().starts_with("ledger_url:"), "{err}");
        let err = config::load::<Config>(&sources().with("reconciler.interval", "0s")).unwrap_err();
        assert!(err.to_string().starts_with("reconciler.interval:"), "{err}");
        let err = config::load::<Config>(&sources().with("ledger_urll", "http://x")).unwrap_err();
        assert!(err.to_string().contains("ledger_urll"), "unknown keys are refused: {err}");
    }
}
