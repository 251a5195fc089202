//! The cards service's configuration. Every setting is listed in the README ("Settings").

use std::time::Duration;

use bank_auth::AuthConfig;
use bank_platform::config::{
    self, DatabaseConfig, ReconcilerConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate, http_url,
    positive,
};
use secrecy::SecretString;
use serde::Deserialize;

/// Everything cards reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The cards database.
    pub database: DatabaseConfig,
    /// The shared Redis (revocation checks, the outbox stream).
    pub redis: RedisConfig,
    /// Token verification, and this service's client credentials: cards calls the ledger with a
    /// service token (scope `ledger:holds`), so `auth.client_id` and `auth.client_secret` are
    /// required.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The PAN vault.
    pub vault: VaultConfig,
    /// The ledger's gRPC address (holds).
    #[serde(default = "default_ledger_url")]
    pub ledger_url: String,
    /// The accounts service's gRPC address (the account a card is issued on, read with the
    /// owner's own token).
    #[serde(default = "default_accounts_url")]
    pub accounts_url: String,
    /// Upper bound of one call to the ledger, accounts or identity.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Card products, limits and authorizations.
    #[serde(default)]
    pub cards: CardsConfig,
    /// The background task that finishes interrupted authorizations and expires old ones.
    #[serde(default)]
    pub reconciler: ReconcilerConfig,
    /// How long idempotency keys are kept.
    #[serde(default = "default_idempotency_retention", with = "humantime_serde")]
    pub idempotency_retention: Duration,
}

fn default_ledger_url() -> String {
    "http://127.0.0.1:50053".to_owned()
}

fn default_accounts_url() -> String {
    "http://127.0.0.1:50052".to_owned()
}

const fn default_upstream_timeout() -> Duration {
    Duration::from_secs(5)
}

const fn default_idempotency_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The PAN vault's key-encryption keys (KEKs). Each is 32 random bytes in base64; the list comes
/// from a mounted secret file (`BANK_VAULT__KEKS_FILE`), never from a value in a config file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `id=base64[,id=base64...]`: every KEK this process may unwrap data keys with. The first
    /// one is the primary for a new vault; after that the primary is the vault's own state
    /// (changed by `RotateKeyEncryptionKey`). Required: without it cards refuses to start.
    pub keks: SecretString,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig").field("keks", &"[REDACTED]").finish()
    }
}

/// Card products, limits and authorization rules. Amounts are minor units of the card's currency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CardsConfig {
    /// The issuer identification number (6 or 8 digits) every PAN starts with.
    pub bin: String,
    /// PAN length (16 to 19, including the Luhn check digit).
    pub pan_length: usize,
    /// How many years a new card is valid (through the end of the expiry month).
    pub validity_years: u8,
    /// The daily limit of a new card unless the request sets one.
    pub default_daily_limit: i64,
    /// The product's maximum daily limit.
    pub max_daily_limit: i64,
    /// The per-transaction limit of a new card unless the request sets one.
    pub default_per_transaction_limit: i64,
    /// The product's maximum per-transaction limit.
    pub max_per_transaction_limit: i64,
    /// How long an approved authorization may be captured; after that it expires and its hold
    /// is released.
    #[serde(with = "humantime_serde")]
    pub authorization_ttl: Duration,
    /// The card day's time zone when the owner's profile has none (IANA name).
    pub default_time_zone: String,
    /// Reveal-PAN calls allowed per user per hour.
    pub reveals_per_hour: u32,
    /// Allow the card owner (a user token) to call the charge RPCs: development and tests only.
    pub allow_owner_charges: bool,
}

impl Default for CardsConfig {
    fn default() -> Self {
        Self {
            bin: "400000".to_owned(),
            pan_length: 16,
            validity_years: 4,
            default_daily_limit: 100_000,
            max_daily_limit: 500_000,
            default_per_transaction_limit: 50_000,
            max_per_transaction_limit: 250_000,
            authorization_ttl: Duration::from_secs(7 * 24 * 3600),
            default_time_zone: "UTC".to_owned(),
            reveals_per_hour: 5,
            allow_owner_charges: false,
        }
    }
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
                "cards needs client credentials (auth.client_id and auth.client_secret) to call the ledger",
            ));
        }
        crate::vault::Keyring::parse(&self.vault.keks)
            .map_err(|m| config::Error::invalid("vault.keks", m))?;
        http_url("ledger_url", &self.ledger_url)?;
        http_url("accounts_url", &self.accounts_url)?;
        positive("upstream_timeout", self.upstream_timeout)?;
        if self.upstream_timeout > Duration::from_secs(60) {
            return Err(config::Error::invalid("upstream_timeout", "must be at most 1m"));
        }
        let cards = &self.cards;
        if !(cards.bin.len() == 6 || cards.bin.len() == 8) || !cards.bin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(config::Error::invalid("cards.bin", "must be 6 or 8 digits"));
        }
        if !(16..=19).contains(&cards.pan_length) || cards.pan_length < cards.bin.len() + 8 {
            return Err(config::Error::invalid("cards.pan_length", "must be 16 to 19"));
        }
        if !(1..=10).contains(&cards.validity_years) {
            return Err(config::Error::invalid("cards.validity_years", "must be 1 to 10"));
        }
        for (setting, default, max) in [
            ("cards.default_daily_limit", cards.default_daily_limit, cards.max_daily_limit),
            (
                "cards.default_per_transaction_limit",
                cards.default_per_transaction_limit,
                cards.max_per_transaction_limit,
            ),
        ] {
            if default <= 0 || default > max {
                return Err(config::Error::invalid(setting, "must be positive and at most the maximum"));
            }
        }
        if cards.authorization_ttl < Duration::from_secs(60)
            || cards.authorization_ttl > Duration::from_secs(30 * 24 * 3600)
        {
            return Err(config::Error::invalid("cards.authorization_ttl", "must be 1m to 30 days"));
        }
        if cards.default_time_zone.is_empty()
            || !cards.default_time_zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        {
            return Err(config::Error::invalid("cards.default_time_zone", "must be an IANA time zone name"));
        }
        if cards.reveals_per_hour == 0 {
            return Err(config::Error::invalid("cards.reveals_per_hour", "must be at least 1"));
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

    const KEK: &str = "kek-1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn sources() -> Sources {
        Sources::default()
            .with("database.url", "postgres://postgres@127.0.0.1:5432/bank_cards")
            .with("redis.url", "redis://127.0.0.1:6379")
            .with("auth.client_id", "cards")
            .with("auth.client_secret", "s3cret")
            .with("vault.keks", KEK)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config: Config = config::load(&sources()).unwrap();
        assert_eq!(config.ledger_url, "http://127.0.0.1:50053");
        assert_eq!(config.accounts_url, "http://127.0.0.1:50052");
        assert_eq!(config.cards.bin, "400000");
        assert_eq!(config.cards.authorization_ttl, Duration::from_secs(7 * 86_400));
        assert!(!config.cards.allow_owner_charges);
        assert!(!format!("{config:?}").contains("AAECAwQF"), "the KEK never prints");
    }

    #[test]
    fn bad_settings_are_named() {
        let without_kek = Sources::default()
            .with("database.url", "postgres://postgres@127.0.0.1:5432/bank_cards")
            .with("redis.url", "redis://127.0.0.1:6379")
            .with("auth.client_id", "cards")
            .with("auth.client_secret", "s3cret");
        let err = config::load::<Config>(&without_kek).unwrap_err().to_string();
        assert!(err.contains("vault"), "cards refuses to start without a KEK: {err}");
        let err = config::load::<Config>(&sources().with("vault.keks", "kek-1=c2hvcnQ=")).unwrap_err();
        assert!(err.to_string().starts_with("vault.keks:"), "{err}");
        assert!(!err.to_string().contains("c2hvcnQ"), "the key never prints: {err}");
        let err = config::load::<Config>(&sources().with("cards.bin", "12ab56")).unwrap_err();
        assert!(err.to_string().starts_with("cards.bin:"), "{err}");
        let err =
            config::load::<Config>(&sources().with("cards.default_daily_limit", 10_000_000)).unwrap_err();
        assert!(err.to_string().starts_with("cards.default_daily_limit:"), "{err}");
    }
}
