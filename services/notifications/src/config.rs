//! The notifications service's configuration. Every setting is listed in the README ("Settings").

use std::{net::IpAddr, time::Duration};

use bank_auth::AuthConfig;
use bank_platform::config::{self, DatabaseConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use secrecy::SecretString;
use serde::Deserialize;

/// Everything notifications reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The notifications database.
    pub database: DatabaseConfig,
    /// The shared Redis: revocation checks, the event streams it consumes, its own stream.
    pub redis: RedisConfig,
    /// Token verification, and this service's client credentials (notifications mirrors low-balance
    /// alerts into the ledger with scope `ledger:accounts`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// The ledger's gRPC address.
    #[serde(default = "default_ledger_url")]
    pub ledger_url: String,
    /// Upper bound of one call to the ledger.
    #[serde(default = "default_ledger_timeout", with = "humantime_serde")]
    pub ledger_timeout: Duration,
    /// Reading the event streams.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// Sending email.
    #[serde(default)]
    pub email: EmailConfig,
    /// Delivering webhooks.
    #[serde(default)]
    pub webhooks: WebhookConfig,
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

/// The consumer group on the producing services' streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// The streams (full keys: `<producer's redis.key_prefix>events`).
    pub streams: Vec<String>,
    /// The consumer group.
    pub group: String,
    /// This replica's consumer name (empty = the host name, else a random one).
    pub consumer: String,
    /// Entries read per call.
    pub batch: usize,
    /// How long one read waits for new entries.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// An entry pending this long (its consumer died, or processing failed) is claimed again.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// Deliveries of one entry before it is dead-lettered.
    pub max_attempts: u32,
    /// The dead-letter stream (appended to `redis.key_prefix`).
    pub dead_letter_stream: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            streams: ["identity", "accounts", "ledger", "cards"]
                .iter()
                .map(|s| format!("bank:{s}:events"))
                .collect(),
            group: "notifications".to_owned(),
            consumer: String::new(),
            batch: 100,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            max_attempts: 5,
            dead_letter_stream: "dead-letters".to_owned(),
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a local sink only; refused in production).
    None,
    /// STARTTLS on a plain connection (required).
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// Email over SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// SMTP host.
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// Transport security.
    pub smtp_tls: SmtpTls,
    /// SMTP user (empty = no authentication).
    pub smtp_username: String,
    /// SMTP password. A secret: prefer `BANK_EMAIL__SMTP_PASSWORD_FILE`.
    pub smtp_password: Option<SecretString>,
    /// The sender, e.g. `bankmesh <no-reply@bank.example>`.
    pub from: String,
    /// Where the links in emails point (the web frontend), e.g. `https://app.bank.example`.
    pub link_base_url: String,
    /// Upper bound of one SMTP conversation.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Send attempts before an email is marked failed.
    pub max_attempts: u32,
    /// First retry delay (doubles per attempt, with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How often the mailer looks for due emails.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_host: "127.0.0.1".to_owned(),
            smtp_port: 587,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: String::new(),
            smtp_password: None,
            from: "bankmesh <no-reply@bankmesh.invalid>".to_owned(),
            link_base_url: "http://127.0.0.1:8080".to_owned(),
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            max_backoff: Duration::from_secs(600),
            interval: Duration::from_millis(500),
        }
    }
}

/// Webhook delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Accept `http://` endpoint URLs (development only; refused in production).
    pub allow_http: bool,
    /// Networks (CIDR, e.g. `127.0.0.0/8`) that deliveries may reach although they are loopback,
    /// private, link-local or otherwise internal. Empty in production.
    pub allowed_networks: Vec<String>,
    /// Upper bound of one HTTP attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per delivery before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (doubles per attempt, full jitter).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Consecutive failed attempts that trip an endpoint's breaker (status FAILING).
    pub breaker_threshold: u32,
    /// Endpoints per owner.
    pub max_endpoints: u32,
    /// How often the dispatcher looks for due deliveries.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Deliveries attempted at once.
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            allow_http: false,
            allowed_networks: Vec::new(),
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_base: Duration::from_secs(10),
            max_backoff: Duration::from_secs(3600),
            breaker_threshold: 20,
            max_endpoints: 10,
            interval: Duration::from_millis(250),
            concurrency: 16,
        }
    }
}

/// A CIDR network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n` or `x::y/n` (a bare address is a /32 or /128).
    ///
    /// # Errors
    /// Not an address, or a prefix too long for it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{text:?} is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| format!("{text:?}: bad prefix length"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("{text:?}: prefix longer than {max}"));
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.auth.validate()?;
        if self.consumer.streams.is_empty() || self.consumer.streams.iter().any(String::is_empty) {
            return Err(config::Error::invalid("consumer.streams", "list at least one stream"));
        }
        if self.consumer.group.is_empty() {
            return Err(config::Error::invalid("consumer.group", "must not be empty"));
        }
        if self.consumer.batch == 0 || self.consumer.max_attempts == 0 {
            return Err(config::Error::invalid("consumer", "batch and max_attempts must be at least 1"));
        }
        if self.consumer.block >= self.redis.timeout {
            return Err(config::Error::invalid("consumer.block", "must be shorter than redis.timeout"));
        }
        if self.email.max_attempts == 0
            || self.webhooks.max_attempts == 0
            || self.webhooks.breaker_threshold == 0
        {
            return Err(config::Error::invalid(
                "email/webhooks",
                "attempts and thresholds must be at least 1",
            ));
        }
        if self.webhooks.concurrency == 0 {
            return Err(config::Error::invalid("webhooks.concurrency", "must be at least 1"));
        }
        for network in &self.webhooks.allowed_networks {
            Network::parse(network).map_err(|m| config::Error::invalid("webhooks.allowed_networks", &m))?;
        }
        if !self.email.link_base_url.starts_with("http://")
            && !self.email.link_base_url.starts_with("https://")
        {
            return Err(config::Error::invalid("email.link_base_url", "must be an http(s) URL"));
        }
        Ok(())
    }
}

impl Config {
    /// Settings that are fine on a laptop and dangerous in production.
    ///
    /// # Errors
    /// The first such setting found.
    pub fn check_production(&self) -> Result<(), String> {
        if self.webhooks.allow_http {
            return Err("webhooks.allow_http: refused in production".to_owned());
        }
        if !self.webhooks.allowed_networks.is_empty() {
            return Err("webhooks.allowed_networks: internal targets are refused in production".to_owned());
        }
        if self.email.smtp_tls == SmtpTls::None {
            return Err("email.smtp_tls = \"none\": refused in production".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_what_they_should() {
        let lo = Network::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.0.0.1".parse().unwrap()));
        assert!(lo.contains("127.255.1.2".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        let one = Network::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all = Network::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("example.com/8").is_err());
    }
}
