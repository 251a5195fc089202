//! The ledger's settings: the shared sections plus `[transfers]`.

use std::collections::BTreeMap;

use bank_auth::AuthConfig;
use bank_money::Currency;
use bank_platform::config::{self, DatabaseConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use serde::Deserialize;

/// Everything the ledger reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The ledger's own database.
    pub database: DatabaseConfig,
    /// The shared Redis (revocation checks).
    pub redis: RedisConfig,
    /// Token verification (and `auth.step_up_max_age`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Customer transfers.
    #[serde(default)]
    pub transfers: TransferConfig,
    /// The posting engine (batching, ADR 0029).
    #[serde(default)]
    pub engine: EngineConfig,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.auth.validate()?;
        self.transfers.validate()?;
        self.engine.validate()
    }
}

/// The posting engine: how many batches may be in the database at once, and how large one is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Batch workers, each with a database connection of its own (besides the pool). More than
    /// the database has cores rarely helps: batches of one account serialise on its row lock.
    pub workers: usize,
    /// Most postings in one batch (one transaction, two statements).
    pub max_batch: usize,
    /// Postings that may wait for a worker; a full queue makes callers wait.
    pub queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { workers: 2, max_batch: 256, queue: 4096 }
    }
}

impl Validate for EngineConfig {
    fn validate(&self) -> Result<(), config::Error> {
        if !(1..=32).contains(&self.workers) {
            return Err(config::Error::invalid("engine.workers", "must be 1 to 32"));
        }
        if !(1..=1024).contains(&self.max_batch) {
            return Err(config::Error::invalid("engine.max_batch", "must be 1 to 1024"));
        }
        if self.queue < self.max_batch || self.queue > 1_000_000 {
            return Err(config::Error::invalid(
                "engine.queue",
                "must be at least engine.max_batch, at most 1000000",
            ));
        }
        Ok(())
    }
}

/// Customer transfers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// A transfer of more than this many minor units of its currency needs a recent second factor
    /// (`STEP_UP_REQUIRED` otherwise), per ISO 4217 code: `{ EUR = 100000, JPY = 150000 }`.
    pub step_up_above: BTreeMap<String, i64>,
    /// The same for currencies `step_up_above` does not name (100000 = 1,000.00 in a currency
    /// with two decimals).
    pub step_up_above_default: i64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self { step_up_above: BTreeMap::new(), step_up_above_default: 100_000 }
    }
}

impl TransferConfig {
    /// The largest amount of `currency` that needs no step-up.
    #[must_use]
    pub fn step_up_above(&self, currency: &str) -> i64 {
        self.step_up_above.get(currency).copied().unwrap_or(self.step_up_above_default)
    }
}

impl Validate for TransferConfig {
    fn validate(&self) -> Result<(), config::Error> {
        if self.step_up_above_default < 0 {
            return Err(config::Error::invalid("transfers.step_up_above_default", "must not be negative"));
        }
        for (code, limit) in &self.step_up_above {
            if Currency::parse(code).is_err() {
                return Err(config::Error::invalid(
                    "transfers.step_up_above",
                    "keys are ISO 4217 currency codes",
                ));
            }
            if *limit < 0 {
                return Err(config::Error::invalid(
                    "transfers.step_up_above",
                    "amounts must not be negative",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_per_currency_with_a_default() {
        let config = TransferConfig {
            step_up_above: BTreeMap::from([("JPY".to_owned(), 150_000)]),
            ..Default::default()
        };
        assert_eq!(config.step_up_above("JPY"), 150_000);
        assert_eq!(config.step_up_above("EUR"), 100_000);
        assert!(config.validate().is_ok());
        let bad =
            TransferConfig { step_up_above: BTreeMap::from([("EURO".to_owned(), 1)]), ..Default::default() };
        assert!(bad.validate().is_err());
    }
}
