//! The gateway's configuration.

use std::time::Duration;

use bank_platform::config::{self, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use serde::Deserialize;

/// The gateway's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners (the main one speaks HTTP), timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Rate limits and the token blocklist.
    pub redis: RedisConfig,
    /// Where the gRPC services are, and how long a call may take.
    #[serde(default)]
    pub upstreams: UpstreamsConfig,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.redis.validate()?;
        self.upstreams.validate()
    }
}

/// The gRPC services behind the gateway: one lazily connected channel each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamsConfig {
    /// Identity's gRPC URL.
    pub identity: String,
    /// Accounts' gRPC URL.
    pub accounts: String,
    /// Ledger's gRPC URL.
    pub ledger: String,
    /// Cards' gRPC URL.
    pub cards: String,
    /// Notifications' gRPC URL.
    pub notifications: String,
    /// How long establishing a connection may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The deadline of every upstream call (sent as `grpc-timeout`); past it the client gets 504.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for UpstreamsConfig {
    fn default() -> Self {
        Self {
            identity: "http://127.0.0.1:50051".to_owned(),
            accounts: "http://127.0.0.1:50052".to_owned(),
            ledger: "http://127.0.0.1:50053".to_owned(),
            cards: "http://127.0.0.1:50054".to_owned(),
            notifications: "http://127.0.0.1:50055".to_owned(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl UpstreamsConfig {
    fn validate(&self) -> Result<(), config::Error> {
        for (name, url) in [
            ("identity", &self.identity),
            ("accounts", &self.accounts),
            ("ledger", &self.ledger),
            ("cards", &self.cards),
            ("notifications", &self.notifications),
        ] {
            let setting = format!("upstreams.{name}");
            let uri: http::Uri =
                url.parse().map_err(|e| config::Error::invalid(&setting, format!("not a URL: {e}")))?;
            // TLS to upstreams needs tonic's TLS feature, which the workspace does not build yet.
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(config::Error::invalid(setting, "must be an http://host:port URL"));
            }
        }
        if self.connect_timeout.is_zero() {
            return Err(config::Error::invalid("upstreams.connect_timeout", "must be positive"));
        }
        if self.request_timeout.is_zero() {
            return Err(config::Error::invalid("upstreams.request_timeout", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_dev_ports_and_validate() {
        let config = UpstreamsConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.notifications, "http://127.0.0.1:50055");
    }

    #[test]
    fn bad_urls_name_the_setting() {
        let config =
            UpstreamsConfig { ledger: "https://ledger:443".to_owned(), ..UpstreamsConfig::default() };
        assert!(config.validate().unwrap_err().to_string().starts_with("upstreams.ledger:"));
        let config = UpstreamsConfig { cards: "not a url".to_owned(), ..UpstreamsConfig::default() };
        assert!(config.validate().unwrap_err().to_string().starts_with("upstreams.cards:"));
    }
}
