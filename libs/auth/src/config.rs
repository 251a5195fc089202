//! Auth settings (`[auth]`), and the configuration shape of a service that needs nothing beyond the
//! shared sections plus authentication.

use std::time::Duration;

use bank_platform::config::{self, DatabaseConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use secrecy::SecretString;
use serde::Deserialize;

/// How tokens are verified and revocation is checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Expected `iss` of every token (identity signs with the same value).
    pub issuer: String,
    /// Expected `aud` of every token.
    pub audience: String,
    /// Identity's gRPC address: the JWKS and, when Redis cannot answer, token status come from it.
    pub identity_url: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The JWKS is refreshed when older than this (so emergency-revoked keys drop out).
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// An unknown `kid` triggers at most one refetch per this interval.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch: Duration,
    /// Prefix of the shared revocation keys in Redis (the same in every service).
    pub redis_prefix: String,
    /// This service's client id, for service tokens (calls to other services, token-status
    /// fallback). Without it the fallback is unavailable and a Redis outage answers UNAVAILABLE.
    pub client_id: Option<String>,
    /// This service's client secret. A secret: set it with `BANK_AUTH__CLIENT_SECRET_FILE`.
    pub client_secret: Option<SecretString>,
    /// How long after a second-factor authentication (`auth_time` of an `acr=mfa` token) step-up
    /// actions are allowed: every admin RPC, large transfers, password and email changes.
    #[serde(with = "humantime_serde")]
    pub step_up_max_age: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "bankmesh-identity".to_owned(),
            audience: "bankmesh".to_owned(),
            identity_url: "http://127.0.0.1:50051".to_owned(),
            leeway: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(10),
            redis_prefix: "bank:auth:".to_owned(),
            client_id: None,
            client_secret: None,
            step_up_max_age: Duration::from_secs(300),
        }
    }
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), config::Error> {
        if self.issuer.is_empty() {
            return Err(config::Error::invalid("auth.issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(config::Error::invalid("auth.audience", "must not be empty"));
        }
        config::http_url("auth.identity_url", &self.identity_url)?;
        if self.leeway > Duration::from_secs(300) {
            return Err(config::Error::invalid("auth.leeway", "must be at most 5m"));
        }
        if self.step_up_max_age < Duration::from_secs(30) || self.step_up_max_age > Duration::from_secs(3600)
        {
            return Err(config::Error::invalid("auth.step_up_max_age", "must be between 30s and 1h"));
        }
        if self.client_id.is_some() != self.client_secret.is_some() {
            return Err(config::Error::invalid(
                "auth.client_secret",
                "auth.client_id and auth.client_secret are set together",
            ));
        }
        Ok(())
    }
}

/// The configuration of a service that needs the shared sections and authentication only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Listeners, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The service's own database.
    pub database: DatabaseConfig,
    /// The shared Redis (revocation checks).
    pub redis: RedisConfig,
    /// Token verification.
    #[serde(default)]
    pub auth: AuthConfig,
}

impl Validate for ServiceConfig {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.auth.validate()
    }
}
