//! Spawning a service in-process, exactly as its binary builds it.

use std::{net::SocketAddr, time::Duration};

use bank_platform::{App, BoxError, Service, config, health::Readiness};
use figment::value::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::{TestDatabase, TestRedis};

/// How to spawn a service: which dependencies it gets and any extra settings.
#[derive(Debug)]
pub struct Options {
    database: bool,
    redis: bool,
    namespace: Option<TestRedis>,
    settings: Vec<(String, Value)>,
}

impl Default for Options {
    fn default() -> Self {
        Self { database: true, redis: false, namespace: None, settings: Vec::new() }
    }
}

impl Options {
    /// A fresh database (the default) or none (`false`: the test sets `database.url` itself, or the
    /// service has no database).
    #[must_use]
    pub fn database(mut self, fresh: bool) -> Self {
        self.database = fresh;
        self
    }

    /// An isolated Redis namespace (`redis.url` + a unique `redis.key_prefix`).
    #[must_use]
    pub fn redis(mut self, isolated: bool) -> Self {
        self.redis = isolated;
        self
    }

    /// Use this Redis namespace (`redis.url` + `redis.key_prefix`).
    #[must_use]
    pub fn redis_namespace(mut self, namespace: TestRedis) -> Self {
        self.namespace = Some(namespace);
        self
    }

    /// Settings applied before the others (the caller's `set` wins).
    #[must_use]
    pub fn defaults(mut self, defaults: &[(&str, Value)]) -> Self {
        let mut settings: Vec<(String, Value)> =
            defaults.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        settings.append(&mut self.settings);
        self.settings = settings;
        self
    }

    /// Any setting by its dotted key, applied last (e.g. `("server.shutdown_grace", "2s")`).
    #[must_use]
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.settings.push((key.to_owned(), value.into()));
        self
    }
}

/// A running service and what it was given. Dropping it starts its shutdown and drops its database.
#[derive(Debug)]
pub struct TestApp {
    /// The gRPC (or, for the gateway, HTTP) address.
    pub addr: SocketAddr,
    /// The admin HTTP address (`/metrics`, `/health/*`).
    pub admin_addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), BoxError>>>,
    redis: Option<TestRedis>,
    // Last: dropped after the service has been told to stop.
    database: Option<TestDatabase>,
}

/// Spawns `S` with a fresh database and default settings, and waits until it is ready.
pub async fn spawn<S: Service>() -> TestApp {
    spawn_with::<S>(Options::default()).await
}

/// Spawns `S` with `options` and waits until it is ready (or panics after 10 s).
pub async fn spawn_with<S: Service>(options: Options) -> TestApp {
    let database = if options.database { Some(TestDatabase::create().await) } else { None };
    let redis = options.namespace.or_else(|| options.redis.then(TestRedis::new));

    let mut sources = config::Sources::default()
        .with("server.listen_addr", "127.0.0.1:0")
        .with("server.admin_addr", "127.0.0.1:0")
        .with("server.readiness_interval", "100ms")
        .with("server.readiness_timeout", "1s")
        // Tests' gateways and callers are on loopback, like `make dev`'s (production: the gateway's network).
        .with("server.trusted_forwarders", vec!["127.0.0.1"])
        .with("telemetry.log_format", "pretty");
    if let Some(db) = &database {
        sources = sources.with("database.url", db.url());
    }
    if let Some(redis) = &redis {
        sources = sources.with("redis.url", redis.url()).with("redis.key_prefix", redis.prefix());
    }
    for (key, value) in options.settings {
        sources = sources.with(&key, value);
    }

    let config = config::load::<S::Config>(&sources).unwrap_or_else(|e| panic!("{} config: {e}", S::NAME));
    let app: App = S::build(config).await.unwrap_or_else(|e| panic!("{} failed to start: {e}", S::NAME));
    let addr = app.local_addr();
    let admin_addr = app.admin_addr();
    let readiness = app.readiness();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));

    let this = TestApp { addr, admin_addr, readiness, shutdown, task: Some(task), redis, database };
    assert!(this.wait_ready(true, Duration::from_secs(10)).await, "{} did not become ready", S::NAME);
    this
}

impl TestApp {
    /// A connected channel to the main listener (for any generated client).
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the spawned service")
    }

    /// The service's readiness.
    #[must_use]
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Waits until readiness equals `ready`; `false` if it did not within `within`.
    pub async fn wait_ready(&self, ready: bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.readiness.is_ready() != ready {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The fresh database, when the service got one.
    #[must_use]
    pub fn database(&self) -> Option<&TestDatabase> {
        self.database.as_ref()
    }

    /// The Redis namespace, when the service got one.
    #[must_use]
    pub fn redis(&self) -> Option<&TestRedis> {
        self.redis.as_ref()
    }

    /// Starts the shutdown sequence (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts the service down and returns how its run ended.
    ///
    /// # Errors
    /// The server failed while running or shutting down.
    pub async fn shutdown(mut self) -> Result<(), BoxError> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(BoxError::from)?,
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
