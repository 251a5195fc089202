//! The gateway's configuration.

use std::time::Duration;

use bank_auth::AuthConfig;
use bank_platform::config::{self, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use serde::Deserialize;

use crate::{client_ip::TrustedProxies, ratelimit::RateLimitConfig, upstream::Upstream};

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
    /// Where the gRPC services are, how long a call may take, retries and circuit breakers.
    #[serde(default)]
    pub upstreams: UpstreamsConfig,
    /// Token verification (the same `[auth]` section as every service).
    #[serde(default)]
    pub auth: AuthConfig,
    /// CORS, security headers, HTTPS redirect, trusted proxies, body and JSON limits.
    #[serde(default)]
    pub edge: EdgeConfig,
    /// Rate limits (in Redis, per process while Redis cannot answer).
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.redis.validate()?;
        self.upstreams.validate()?;
        self.auth.validate()?;
        self.edge.validate()?;
        self.rate_limits.validate()
    }
}

/// The edge: what the gateway enforces before routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Origins (`https://app.example.com`, exact match) allowed to call the API from a browser,
    /// with credentials. Empty (the default): no cross-origin access. `*` and `null` are refused.
    pub cors_allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub cors_max_age: Duration,
    /// Send `Strict-Transport-Security` (turn off only for plain-HTTP local development).
    pub hsts: bool,
    /// `max-age` of `Strict-Transport-Security`.
    #[serde(with = "humantime_serde")]
    pub hsts_max_age: Duration,
    /// Answer 308 to `https://` when a trusted proxy says the client spoke plain HTTP
    /// (`X-Forwarded-Proto: http`).
    pub https_redirect: bool,
    /// Peers (IP addresses or CIDR blocks) whose `X-Forwarded-For` / `X-Forwarded-Proto` are
    /// believed. Empty: the client IP is always the socket peer.
    pub trusted_proxies: Vec<String>,
    /// The largest request body (larger: 413).
    pub max_body_bytes: usize,
    /// The deepest JSON nesting a body may have (deeper: 400).
    pub max_json_depth: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            cors_allowed_origins: Vec::new(),
            cors_max_age: Duration::from_secs(600),
            hsts: true,
            hsts_max_age: Duration::from_secs(365 * 24 * 3600),
            https_redirect: false,
            trusted_proxies: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_json_depth: 32,
        }
    }
}

impl EdgeConfig {
    fn validate(&self) -> Result<(), config::Error> {
        for origin in &self.cors_allowed_origins {
            crate::origin::parse_origin(origin).map_err(|why| {
                config::Error::invalid("edge.cors_allowed_origins", format!("{origin:?}: {why}"))
            })?;
        }
        TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|why| config::Error::invalid("edge.trusted_proxies", why))?;
        if self.max_body_bytes == 0 || self.max_body_bytes > 64 * 1024 * 1024 {
            return Err(config::Error::invalid("edge.max_body_bytes", "must be between 1 and 64 MiB"));
        }
        if !(1..=512).contains(&self.max_json_depth) {
            return Err(config::Error::invalid("edge.max_json_depth", "must be between 1 and 512"));
        }
        Ok(())
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
    /// Per-route deadlines overriding `request_timeout`, by RPC
    /// (`"bank.accounts.v1.AccountsService/DownloadStatement" = "30s"`).
    #[serde(with = "route_timeouts")]
    pub route_timeouts: std::collections::BTreeMap<String, Duration>,
    /// Extra attempts for reads (GET) that failed with UNAVAILABLE; writes are never retried.
    pub retries: u32,
    /// The first retry's backoff; doubled each time, with full jitter.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Consecutive failures (unavailable, deadline passed) that open an upstream's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit fails fast before one trial call is let through.
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
    /// The upstreams whose gRPC health readiness follows (default: all five).
    pub required_for_readiness: Vec<String>,
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
            route_timeouts: std::collections::BTreeMap::new(),
            retries: 2,
            retry_backoff: Duration::from_millis(25),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(5),
            required_for_readiness: Upstream::ALL.map(|u| u.name().to_owned()).to_vec(),
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
        for (rpc, timeout) in &self.route_timeouts {
            if !crate::route_rpcs::ROUTE_RPCS.contains(&rpc.as_str()) {
                return Err(config::Error::invalid(
                    "upstreams.route_timeouts",
                    format!("{rpc:?} is not an RPC with a REST route (package.Service/Method)"),
                ));
            }
            if timeout.is_zero() {
                return Err(config::Error::invalid(
                    "upstreams.route_timeouts",
                    format!("{rpc}: must be positive"),
                ));
            }
        }
        if self.retries > 5 {
            return Err(config::Error::invalid("upstreams.retries", "must be at most 5"));
        }
        if self.breaker_failures == 0 {
            return Err(config::Error::invalid("upstreams.breaker_failures", "must be at least 1"));
        }
        for name in &self.required_for_readiness {
            if !Upstream::ALL.iter().any(|u| u.name() == name) {
                return Err(config::Error::invalid(
                    "upstreams.required_for_readiness",
                    format!("{name:?} is not an upstream"),
                ));
            }
        }
        if self.breaker_open_for.is_zero() {
            return Err(config::Error::invalid("upstreams.breaker_open_for", "must be positive"));
        }
        Ok(())
    }
}

/// `{rpc = "30s"}` as durations.
mod route_timeouts {
    use std::{collections::BTreeMap, time::Duration};

    use serde::{Deserialize as _, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(deserializer)?;
        raw.into_iter()
            .map(|(rpc, text)| {
                humantime_serde::re::humantime::parse_duration(&text)
                    .map(|d| (rpc, d))
                    .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
            })
            .collect()
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
    fn route_timeouts_name_known_rpcs() {
        let mut config = UpstreamsConfig::default();
        config
            .route_timeouts
            .insert("bank.accounts.v1.AccountsService/DownloadStatement".to_owned(), Duration::from_secs(30));
        assert!(config.validate().is_ok());
        config.route_timeouts.insert("bank.nope.v1.Nope/Nope".to_owned(), Duration::from_secs(1));
        assert!(config.validate().unwrap_err().to_string().starts_with("upstreams.route_timeouts:"));
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
