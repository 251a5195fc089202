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
}

impl Validate for Config {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.auth.validate()?;
        self.transfers.validate()
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
