//! The accounts service's configuration. Every setting is listed in the README ("Settings").

use std::time::Duration;

use bank_auth::AuthConfig;
use bank_platform::config::{
    self, DatabaseConfig, ReconcilerConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate, positive,
};
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
        config::http_url("ledger_url", &self.ledger_url)?;
        positive("ledger_timeout", self.ledger_timeout)?;
        if self.ledger_timeout > Duration::from_secs(60) {
            return Err(config::Error::invalid("ledger_timeout", "must be at most 1m"));
        }
        self.reconciler.validate()?;
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
