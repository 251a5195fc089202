//! Layered, typed configuration.
//!
//! Precedence, lowest first: serde defaults in the typed struct -> `config/<env>.toml` ->
//! `BANK_...` environment variables (`__` separates levels: `BANK_DATABASE__MAX_CONNECTIONS`) ->
//! secret files (`BANK_DATABASE__URL_FILE=/run/secrets/db-url` sets `database.url` from the file).
//!
//! Which file: `BANK_CONFIG_FILE` if set (must exist), else `<BANK_CONFIG_DIR or "config">/<BANK_ENV
//! or "local">.toml` (optional for `local`, required for any other environment).
//!
//! Unknown keys are rejected (`deny_unknown_fields` on every struct); [`Validate::validate`] runs
//! before anything starts. Secrets are [`SecretString`] and print as `[REDACTED]`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Format as _, Serialized, Toml},
    value::{Dict, Map, Value},
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, de::DeserializeOwned};

/// Environment variables that select *which* configuration to load, not values inside it.
const META_VARS: [&str; 3] = ["BANK_ENV", "BANK_CONFIG_DIR", "BANK_CONFIG_FILE"];
const PREFIX: &str = "BANK_";
const FILE_SUFFIX: &str = "_FILE";

/// A configuration problem, always naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file, an env var or a secret file has a bad or unknown key or value.
    #[error("{0}")]
    Parse(String),
    /// A secret file named by a `*_FILE` variable cannot be read.
    #[error("{var}: cannot read secret file {path}: {source}")]
    SecretFile {
        /// The environment variable naming the file.
        var: String,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The explicitly selected config file does not exist.
    #[error("{var}: config file {path} does not exist")]
    MissingFile {
        /// The variable that selected it.
        var: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A value is out of range or inconsistent.
    #[error("{setting}: {message}")]
    Invalid {
        /// Dotted path of the setting, e.g. `database.url`.
        setting: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// An invalid-setting error.
    pub fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { setting: setting.into(), message: message.into() }
    }
}

impl From<figment::Error> for Error {
    fn from(err: figment::Error) -> Self {
        // One line per problem; figment already names the key path and the source (file / env).
        let lines: Vec<String> = err.into_iter().map(|e| describe(&e)).collect();
        Error::Parse(lines.join("; "))
    }
}

fn describe(err: &figment::Error) -> String {
    let key = if err.path.is_empty() { String::new() } else { format!("{}: ", err.path.join(".")) };
    let source = match (&err.metadata, err.metadata.as_ref().and_then(|m| m.source.as_ref())) {
        // Environment variables and overrides are merged as serialized values.
        (_, Some(figment::Source::Code(_))) => " (from the environment)".to_owned(),
        (_, Some(source)) => format!(" (from {source})"),
        (Some(meta), None) => format!(" (from {})", meta.name),
        (None, None) => String::new(),
    };
    format!("{key}{}{source}", err.kind)
}

/// Checks a loaded configuration before the service starts.
pub trait Validate {
    /// Returns the first problem found, naming the setting.
    ///
    /// # Errors
    /// When a value is out of range or settings are inconsistent.
    fn validate(&self) -> Result<(), Error>;
}

/// The deployment environment (`BANK_ENV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment(pub String);

impl Environment {
    /// `true` for `production` and `staging`, where dev conveniences are refused.
    #[must_use]
    pub fn is_production_like(&self) -> bool {
        matches!(self.0.as_str(), "production" | "staging")
    }
}

/// Where configuration comes from; [`Sources::from_process`] in binaries, explicit values in tests.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Environment variables (all of them; only `BANK_*` are used).
    pub env: BTreeMap<String, String>,
    /// Extra values merged last (tests use this to point at a fresh database or port 0).
    pub overrides: Vec<(String, Value)>,
}

impl Sources {
    /// The process environment.
    #[must_use]
    pub fn from_process() -> Self {
        Self { env: std::env::vars().collect(), overrides: Vec::new() }
    }

    /// Adds an override by dotted key, e.g. `("database.url", "postgres://...")`.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.overrides.push((key.to_owned(), value.into()));
        self
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The environment name (`BANK_ENV`, default `local`).
    #[must_use]
    pub fn environment(&self) -> Environment {
        Environment(self.var("BANK_ENV").unwrap_or("local").to_owned())
    }
}

/// Loads, merges and validates a configuration of type `T`.
///
/// # Errors
/// A missing or unreadable file, an unknown key, a bad value, or a failed [`Validate::validate`] —
/// always naming the setting.
pub fn load<T: DeserializeOwned + Validate>(sources: &Sources) -> Result<T, Error> {
    let env = sources.environment();
    let mut figment = Figment::new();

    match (sources.var("BANK_CONFIG_FILE"), sources.var("BANK_CONFIG_DIR")) {
        (Some(file), _) => {
            let path = PathBuf::from(file);
            if !path.is_file() {
                return Err(Error::MissingFile { var: "BANK_CONFIG_FILE", path });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        (None, dir) => {
            let path = Path::new(dir.unwrap_or("config")).join(format!("{}.toml", env.0));
            if path.is_file() {
                figment = figment.merge(Toml::file_exact(path));
            } else if env.0 != "local" {
                return Err(Error::MissingFile { var: "BANK_ENV", path });
            }
        }
    }

    let (plain, secrets) = split_env(&sources.env);
    figment = figment.merge(Serialized::globals(plain));
    for (var, key, path) in secrets {
        let raw = std::fs::read_to_string(&path).map_err(|source| Error::SecretFile {
            var: var.clone(),
            path: path.clone(),
            source,
        })?;
        let value = raw.strip_suffix('\n').map_or(raw.as_str(), |v| v.strip_suffix('\r').unwrap_or(v));
        figment = figment.merge(Serialized::global(&key, value));
    }
    for (key, value) in &sources.overrides {
        figment = figment.merge(Serialized::global(key, value.clone()));
    }

    let config: T = figment.extract()?;
    config.validate()?;
    Ok(config)
}

/// Splits `BANK_*` variables into a nested dict of plain values and a list of secret files.
fn split_env(env: &BTreeMap<String, String>) -> (Dict, Vec<(String, String, PathBuf)>) {
    let mut plain = Dict::new();
    let mut secrets = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        if META_VARS.contains(&name.as_str()) || rest.is_empty() {
            continue;
        }
        if let Some(key) = rest.strip_suffix(FILE_SUFFIX) {
            secrets.push((name.clone(), key_of(key), PathBuf::from(value)));
        } else {
            insert_nested(&mut plain, &key_of(rest), parse_env_value(value));
        }
    }
    (plain, secrets)
}

fn key_of(var_rest: &str) -> String {
    var_rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".")
}

fn parse_env_value(raw: &str) -> Value {
    // Same rules as figment's Env provider: numbers, booleans and arrays parse, the rest is a string.
    raw.parse::<Value>().unwrap_or_else(|_| Value::from(raw.to_owned()))
}

fn insert_nested(dict: &mut Dict, dotted: &str, value: Value) {
    let mut parts = dotted.split('.').peekable();
    let mut current = dict;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let entry =
            current.entry(part.to_owned()).or_insert_with(|| Value::from(Map::<String, Value>::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Map::<String, Value>::new());
        }
        let Value::Dict(_, next) = entry else { return };
        current = next;
    }
}

// ---------------------------------------------------------------------------------------------
// The sections every service shares. A service's own config struct embeds the ones it uses.
// ---------------------------------------------------------------------------------------------

/// Listeners, timeouts, load shedding and shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The main listener (gRPC for services, HTTP for the gateway).
    pub listen_addr: SocketAddr,
    /// The admin HTTP listener: `/metrics`, `/health/live`, `/health/ready`.
    pub admin_addr: SocketAddr,
    /// Upper bound for one request; a shorter client deadline (`grpc-timeout`) wins.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once; more are shed at once with `RESOURCE_EXHAUSTED`.
    pub max_concurrent_requests: usize,
    /// How long in-flight calls may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long to keep serving after readiness went NOT_SERVING on SIGTERM, so load balancers
    /// stop routing first (0 locally; a few seconds behind a Kubernetes Service).
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// How often readiness re-checks dependencies (Postgres, Redis).
    #[serde(with = "humantime_serde")]
    pub readiness_interval: Duration,
    /// How long one dependency check may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub readiness_timeout: Duration,
    /// gRPC services: the peers (IPs, CIDR blocks) whose `x-forwarded-for` and
    /// `x-forwarded-user-agent` are believed — the gateway's network. Empty (the default): from
    /// nobody; the client address is the TCP peer.
    pub trusted_forwarders: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::ZERO,
            readiness_interval: Duration::from_secs(1),
            readiness_timeout: Duration::from_secs(2),
            trusted_forwarders: Vec::new(),
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.listen_addr.port() != 0 && self.listen_addr == self.admin_addr {
            return Err(Error::invalid("server.admin_addr", "must differ from server.listen_addr"));
        }
        positive("server.request_timeout", self.request_timeout)?;
        positive("server.shutdown_grace", self.shutdown_grace)?;
        positive("server.readiness_interval", self.readiness_interval)?;
        positive("server.readiness_timeout", self.readiness_timeout)?;
        if self.max_concurrent_requests == 0 {
            return Err(Error::invalid("server.max_concurrent_requests", "must be at least 1"));
        }
        crate::net::AddressBlocks::parse(&self.trusted_forwarders)
            .map_err(|why| Error::invalid("server.trusted_forwarders", why))?;
        Ok(())
    }
}

/// PostgreSQL connection pool and migrations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host:port/database`. A secret: prefer `BANK_DATABASE__URL_FILE`.
    pub url: SecretString,
    /// Pool size.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long to wait for a pooled connection (and for the first connection at start-up).
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Run the embedded migrations at start (under an advisory lock). Turn off when a separate
    /// migration job runs them.
    #[serde(default = "default_true")]
    pub run_migrations: bool,
}

fn default_max_connections() -> u32 {
    10
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}

impl Validate for DatabaseConfig {
    fn validate(&self) -> Result<(), Error> {
        let url = self.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::invalid("database.url", "must be a postgres:// URL"));
        }
        if self.max_connections == 0 {
            return Err(Error::invalid("database.max_connections", "must be at least 1"));
        }
        positive("database.acquire_timeout", self.acquire_timeout)
    }
}

/// Redis connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. A secret: prefer `BANK_REDIS__URL_FILE`.
    pub url: SecretString,
    /// Prefix of every key this service writes, so services and tests can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Connection and response timeout.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_key_prefix() -> String {
    "bank:".to_owned()
}
fn default_redis_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), Error> {
        let url = self.url.expose_secret();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::invalid("redis.url", "must be a redis:// or rediss:// URL"));
        }
        positive("redis.timeout", self.timeout)
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable (local development).
    Pretty,
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info,sqlx=warn`. `RUST_LOG` overrides it.
    pub log_filter: String,
    /// OTLP/gRPC collector endpoint. `OTEL_EXPORTER_OTLP_ENDPOINT` also sets it.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_format: LogFormat::Json, log_filter: "info".to_owned(), otlp_endpoint: None }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), Error> {
        if let Some(endpoint) = &self.otlp_endpoint {
            http_url("telemetry.otlp_endpoint", endpoint)?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_filter)
            .map(|_| ())
            .map_err(|e| Error::invalid("telemetry.log_filter", e.to_string()))
    }
}

/// The configuration of a service that needs nothing beyond the shared sections: listeners,
/// telemetry, its database and (optionally) Redis. A service that grows its own settings defines its
/// own struct with these fields plus its own; until then it uses this one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseConfig {
    /// Listeners, timeouts, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The service's own PostgreSQL database.
    pub database: DatabaseConfig,
    /// Redis, for the services that use it.
    pub redis: Option<RedisConfig>,
}

impl Validate for BaseConfig {
    fn validate(&self) -> Result<(), Error> {
        self.server.validate()?;
        self.telemetry.validate()?;
        self.database.validate()?;
        self.redis.as_ref().map_or(Ok(()), Validate::validate)
    }
}

/// The reconciler of a saga (accounts: openings and mirrored changes; cards: authorizations):
/// finishes work a crash or an unreachable peer left unfinished, with exponential backoff per item.
/// Read from `[reconciler]`.
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

impl Validate for ReconcilerConfig {
    fn validate(&self) -> Result<(), Error> {
        positive("reconciler.interval", self.interval)?;
        positive("reconciler.stuck_after", self.stuck_after)?;
        if self.max_backoff < self.stuck_after {
            return Err(Error::invalid("reconciler.max_backoff", "must be at least reconciler.stuck_after"));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(Error::invalid("reconciler.batch_size", "must be 1 to 1000"));
        }
        Ok(())
    }
}

/// A duration setting that must not be zero.
///
/// # Errors
/// `setting` is zero.
pub fn positive(setting: &str, value: Duration) -> Result<(), Error> {
    if value.is_zero() { Err(Error::invalid(setting, "must be greater than zero")) } else { Ok(()) }
}

/// A URL setting that must be `http://` or `https://` (a peer's gRPC address, a collector).
///
/// # Errors
/// Another scheme.
pub fn http_url(setting: &str, value: &str) -> Result<(), Error> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(())
    } else {
        Err(Error::invalid(setting, "must be an http:// or https:// URL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        #[serde(default)]
        server: ServerConfig,
        database: DatabaseConfig,
    }

    impl Validate for TestConfig {
        fn validate(&self) -> Result<(), Error> {
            self.server.validate()?;
            self.database.validate()
        }
    }

    fn sources(vars: &[(&str, &str)]) -> Sources {
        Sources {
            env: vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            overrides: Vec::new(),
        }
    }

    #[test]
    fn env_overrides_file_and_secret_file_overrides_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("local.toml"),
            "[server]\nmax_concurrent_requests = 7\nrequest_timeout = \"3s\"\n[database]\nurl = \"postgres://file/db\"\n",
        )
        .unwrap();
        let secret = dir.path().join("db-url");
        std::fs::write(&secret, "postgres://secret/db\n").unwrap();
        let dir_str = dir.path().to_str().unwrap();
        let secret_str = secret.to_str().unwrap();

        let cfg: TestConfig = load(&sources(&[
            ("BANK_CONFIG_DIR", dir_str),
            ("BANK_SERVER__MAX_CONCURRENT_REQUESTS", "9"),
            ("BANK_DATABASE__URL", "postgres://env/db"),
            ("BANK_DATABASE__URL_FILE", secret_str),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        assert_eq!(cfg.server.max_concurrent_requests, 9);
        assert_eq!(cfg.server.request_timeout, Duration::from_secs(3));
        assert_eq!(cfg.database.url.expose_secret(), "postgres://secret/db");
    }

    #[test]
    fn unknown_key_is_rejected_naming_it() {
        let err = load::<TestConfig>(&sources(&[
            ("BANK_DATABASE__URL", "postgres://h/db"),
            ("BANK_DATABASE__COLOUR", "blue"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn missing_secret_file_names_the_variable() {
        let err = load::<TestConfig>(&sources(&[("BANK_DATABASE__URL_FILE", "/nonexistent/secret")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("BANK_DATABASE__URL_FILE: cannot read secret file"), "{err}");
    }

    #[test]
    fn missing_required_setting_is_named() {
        let err = load::<TestConfig>(&sources(&[])).unwrap_err().to_string();
        assert!(err.contains("database"), "{err}");
        let err =
            load::<TestConfig>(&sources(&[("BANK_DATABASE__MAX_CONNECTIONS", "3")])).unwrap_err().to_string();
        assert!(err.contains("database") && err.contains("url"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        let err = load::<TestConfig>(&sources(&[("BANK_DATABASE__URL", "mysql://h/db")])).unwrap_err();
        assert_eq!(err.to_string(), "database.url: must be a postgres:// URL");
    }

    #[test]
    fn non_local_environment_requires_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load::<TestConfig>(&sources(&[
            ("BANK_ENV", "production"),
            ("BANK_CONFIG_DIR", dir.path().to_str().unwrap()),
            ("BANK_DATABASE__URL", "postgres://h/db"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("BANK_ENV: config file"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let cfg: TestConfig =
            load(&sources(&[("BANK_DATABASE__URL", "postgres://user:hunter2@h/db")])).unwrap();
        let dump = format!("{cfg:?}");
        assert!(!dump.contains("hunter2"), "{dump}");
    }
}
