//! The identity service's configuration. Every setting is listed in the README.

use std::time::Duration;

use bank_auth::AuthConfig;
use bank_platform::config::{self, DatabaseConfig, RedisConfig, ServerConfig, TelemetryConfig, Validate};
use secrecy::SecretString;
use serde::Deserialize;

use crate::{domain::password::PolicyConfig, hashing::HashParams};

/// Everything identity reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Identity's own database.
    pub database: DatabaseConfig,
    /// The shared Redis: revocation keys.
    pub redis: RedisConfig,
    /// Issuer, audience and the shared revocation key prefix (the same values every verifier uses).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Token lifetimes.
    #[serde(default)]
    pub tokens: TokenConfig,
    /// Signing keys.
    pub keys: KeyConfig,
    /// Password rules.
    #[serde(default)]
    pub password: PolicyConfig,
    /// Password hashing.
    #[serde(default)]
    pub hashing: HashingConfig,
    /// Brute-force lockout.
    #[serde(default)]
    pub lockout: LockoutConfig,
    /// Email tokens.
    #[serde(default)]
    pub email: EmailConfig,
    /// Idempotent start-up provisioning (first admin, service clients).
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    /// Second factors (TOTP, recovery codes) and who must use them.
    #[serde(default)]
    pub mfa: MfaConfig,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), config::Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.auth.validate()?;
        self.tokens.validate()?;
        self.keys.validate()?;
        self.password.validate().map_err(|m| config::Error::invalid("password", m))?;
        self.hashing.validate()?;
        self.lockout.validate()?;
        self.mfa.validate()
    }
}

/// Token lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Access token lifetime.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// A refresh token dies when unused this long (idle expiry).
    #[serde(with = "humantime_serde")]
    pub refresh_idle_ttl: Duration,
    /// A session dies this long after login, however it is used (absolute expiry).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// A rotated refresh token presented again this soon after its rotation (two tabs refreshing
    /// at once, a retry after a lost answer) gets the same successor pair; later it is reuse and
    /// revokes the session. `0s` turns the interval off (ADR 0008).
    #[serde(with = "humantime_serde")]
    pub refresh_reuse_interval: Duration,
    /// Service token lifetime.
    #[serde(with = "humantime_serde")]
    pub service_token_ttl: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_idle_ttl: Duration::from_secs(7 * 24 * 3600),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_interval: Duration::from_secs(5),
            service_token_ttl: Duration::from_secs(5 * 60),
        }
    }
}

impl Validate for TokenConfig {
    fn validate(&self) -> Result<(), config::Error> {
        if self.access_ttl < Duration::from_secs(30) || self.access_ttl > Duration::from_secs(3600) {
            return Err(config::Error::invalid("tokens.access_ttl", "must be between 30s and 1h"));
        }
        if self.refresh_idle_ttl < self.access_ttl {
            return Err(config::Error::invalid(
                "tokens.refresh_idle_ttl",
                "must be at least tokens.access_ttl",
            ));
        }
        if self.session_ttl < self.refresh_idle_ttl {
            return Err(config::Error::invalid(
                "tokens.session_ttl",
                "must be at least tokens.refresh_idle_ttl",
            ));
        }
        if self.refresh_reuse_interval > Duration::from_secs(60) {
            return Err(config::Error::invalid("tokens.refresh_reuse_interval", "must be at most 1m"));
        }
        if self.service_token_ttl < Duration::from_secs(60)
            || self.service_token_ttl > Duration::from_secs(3600)
        {
            return Err(config::Error::invalid("tokens.service_token_ttl", "must be between 1m and 1h"));
        }
        Ok(())
    }
}

/// Signing keys: encryption at rest and rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key-encryption key: 32 random bytes, base64. Required; set it from a mounted secret
    /// file with `BANK_KEYS__KEK_FILE`.
    pub kek: SecretString,
    /// The active key is replaced (next -> active) this long after it started signing.
    #[serde(default = "default_rotation_interval", with = "humantime_serde")]
    pub rotation_interval: Duration,
    /// How often each replica re-reads the key table (picks up rotations done elsewhere).
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_rotation_interval() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(30)
}

impl Validate for KeyConfig {
    fn validate(&self) -> Result<(), config::Error> {
        crate::keys::Kek::parse(&self.kek).map_err(|m| config::Error::invalid("keys.kek", m))?;
        if self.rotation_interval < Duration::from_secs(3600) {
            return Err(config::Error::invalid("keys.rotation_interval", "must be at least 1h"));
        }
        if self.reload_interval.is_zero() || self.reload_interval > Duration::from_secs(300) {
            return Err(config::Error::invalid("keys.reload_interval", "must be between 1ms and 5m"));
        }
        Ok(())
    }
}

/// Password hashing (argon2id) and its bounded pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HashingConfig {
    /// argon2id parameters (`hashing.argon2.memory_kib`, `.iterations`, `.parallelism`).
    pub argon2: HashParams,
    /// Hashes computed at once (default: the number of CPUs).
    pub max_concurrent: usize,
    /// Calls that may wait for a slot; beyond that they are refused with RESOURCE_EXHAUSTED.
    pub max_waiting: usize,
}

impl Default for HashingConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self { argon2: HashParams::default(), max_concurrent: cpus, max_waiting: cpus * 16 }
    }
}

impl Validate for HashingConfig {
    fn validate(&self) -> Result<(), config::Error> {
        self.argon2.validate().map_err(|m| config::Error::invalid("hashing.argon2", m))?;
        if self.max_concurrent == 0 {
            return Err(config::Error::invalid("hashing.max_concurrent", "must be at least 1"));
        }
        Ok(())
    }
}

/// Durable lockout after consecutive failed logins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Consecutive failures that lock the password.
    pub threshold: u32,
    /// The first lock's length; each further lock in a row doubles it.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The longest lock.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self { threshold: 5, base: Duration::from_secs(15 * 60), cap: Duration::from_secs(24 * 3600) }
    }
}

impl Validate for LockoutConfig {
    fn validate(&self) -> Result<(), config::Error> {
        if self.threshold < 3 {
            return Err(config::Error::invalid("lockout.threshold", "must be at least 3"));
        }
        if self.base.is_zero() || self.cap < self.base {
            return Err(config::Error::invalid("lockout.cap", "must be at least lockout.base (> 0)"));
        }
        Ok(())
    }
}

/// Email tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Lifetime of verification tokens.
    #[serde(with = "humantime_serde")]
    pub verification_ttl: Duration,
    /// Lifetime of password reset tokens.
    #[serde(with = "humantime_serde")]
    pub reset_ttl: Duration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self { verification_ttl: Duration::from_secs(24 * 3600), reset_ttl: Duration::from_secs(15 * 60) }
    }
}

/// Start-up provisioning. Both are secrets: set them from mounted files with
/// `BANK_BOOTSTRAP__ADMIN_FILE` and `BANK_BOOTSTRAP__SERVICE_CLIENTS_FILE`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// `email:password` of the first admin. When set and no admin exists yet, identity creates this
    /// user (verified, roles customer + admin) at start. Idempotent.
    pub admin: Option<SecretString>,
    /// Service clients, one per line: `client_id:secret:scope1,scope2` (`#` starts a comment). Each is
    /// created or updated (scopes, secret) at start. Idempotent.
    pub service_clients: Option<SecretString>,
}

/// Second factors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MfaConfig {
    /// The issuer authenticator apps show next to the code.
    pub issuer: String,
    /// Roles that must enrol: their admin RPCs are refused (`MFA_REQUIRED`) until they have, and
    /// they cannot disable MFA.
    pub required_roles: Vec<String>,
    /// How long the MFA-pending token of a login lives.
    #[serde(with = "humantime_serde")]
    pub challenge_ttl: Duration,
    /// Wrong codes one MFA-pending token takes before it is void (each also counts toward the
    /// lockout).
    pub challenge_attempts: u32,
    /// How long an enrolment waits for its first code.
    #[serde(with = "humantime_serde")]
    pub enrollment_ttl: Duration,
}

impl Default for MfaConfig {
    fn default() -> Self {
        Self {
            issuer: "bankmesh".to_owned(),
            required_roles: vec!["admin".to_owned(), "support".to_owned()],
            challenge_ttl: Duration::from_secs(5 * 60),
            challenge_attempts: 5,
            enrollment_ttl: Duration::from_secs(15 * 60),
        }
    }
}

impl Validate for MfaConfig {
    fn validate(&self) -> Result<(), config::Error> {
        if self.issuer.trim().is_empty() || self.issuer.contains(':') {
            return Err(config::Error::invalid("mfa.issuer", "must be non-empty without ':'"));
        }
        if self.challenge_ttl < Duration::from_secs(30) || self.challenge_ttl > Duration::from_secs(900) {
            return Err(config::Error::invalid("mfa.challenge_ttl", "must be between 30s and 15m"));
        }
        if !(1..=10).contains(&self.challenge_attempts) {
            return Err(config::Error::invalid("mfa.challenge_attempts", "must be between 1 and 10"));
        }
        if self.enrollment_ttl < Duration::from_secs(60)
            || self.enrollment_ttl > Duration::from_secs(24 * 3600)
        {
            return Err(config::Error::invalid("mfa.enrollment_ttl", "must be between 1m and 24h"));
        }
        Ok(())
    }
}
