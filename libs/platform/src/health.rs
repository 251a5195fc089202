//! Readiness follows what the process cannot serve without; liveness only says the process is up.
//!
//! A background task checks every dependency (Postgres `SELECT 1`, Redis `PING`) each
//! `server.readiness_interval`, each check bounded by `server.readiness_timeout`. A *critical*
//! dependency (PostgreSQL; the gateway's upstreams) sets the grpc.health.v1 status of `""` (the whole
//! server) and of every served service, and `/health/ready` on the admin port. A *degraded* one
//! (Redis: every use of it has a fallback) never does — taking every pod out of its Service because
//! a cache is down would turn a cache outage into a full outage — and is reported instead by the
//! gauge `dependency_up{dependency}`, by the health service name `dependency/<name>`, by the body of
//! `/health/ready`, and by the `BankmeshDependencyDown` alert. The health service name `liveness` is
//! always SERVING while the process runs (for Kubernetes' gRPC liveness probe).

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

/// The grpc.health.v1 service name that always answers SERVING while the process is up.
pub const LIVENESS: &str = "liveness";

/// One dependency readiness depends on.
pub trait Check: Send + Sync + 'static {
    /// A short name for logs (`postgres`, `redis`).
    fn name(&self) -> &'static str;
    /// `Ok` when the dependency answers.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Whether the process cannot serve without it (readiness follows it). A dependency whose every
    /// use has a working fallback answers `false`: it is reported, not followed.
    fn critical(&self) -> bool {
        true
    }
}

/// `SELECT 1` on the pool.
#[derive(Debug, Clone)]
pub struct PostgresCheck(pub sqlx::PgPool);

impl Check for PostgresCheck {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let outcome =
                sqlx::query("SELECT 1").execute(&self.0).await.map(|_| ()).map_err(|e| e.to_string());
            crate::db::mark(&self.0, outcome.is_ok());
            outcome
        })
    }
}

/// `PING` on the connection manager.
#[derive(Debug, Clone)]
pub struct RedisCheck(pub crate::redis::Redis);

impl Check for RedisCheck {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut conn = self.0.conn.clone();
            redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| e.to_string())
        })
    }
    /// Revocation asks identity, rate limits hold per process, the outbox waits in PostgreSQL.
    fn critical(&self) -> bool {
        false
    }
}

/// The readiness state shared by the gRPC health service and the admin HTTP port.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    services: Arc<Vec<&'static str>>,
    ready_tx: Arc<watch::Sender<bool>>,
    /// Each dependency's state at the last check, by name.
    dependencies: Arc<std::sync::Mutex<Vec<Dependency>>>,
}

/// One dependency's state at the last check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// `postgres`, `redis`, …
    pub name: &'static str,
    /// Whether readiness follows it.
    pub critical: bool,
    /// Whether it answered.
    pub up: bool,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("ready", &*self.ready_tx.borrow()).finish_non_exhaustive()
    }
}

impl Readiness {
    pub(crate) async fn new(reporter: HealthReporter, services: Vec<&'static str>) -> Self {
        reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
        let (ready_tx, _) = watch::channel(false);
        let this = Self {
            reporter,
            services: Arc::new(services),
            ready_tx: Arc::new(ready_tx),
            dependencies: Arc::default(),
        };
        this.set(false).await;
        this
    }

    /// Whether the process is ready to take traffic.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        *self.ready_tx.borrow()
    }

    /// Each dependency's state at the last check (empty before the first).
    #[must_use]
    pub fn dependencies(&self) -> Vec<Dependency> {
        self.dependencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) async fn set(&self, ready: bool) {
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status("", status).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(name, status).await;
        }
        self.ready_tx.send_replace(ready);
    }

    /// Runs the checks until `stop` is cancelled, updating the status on every change.
    pub(crate) async fn monitor(
        self,
        checks: Vec<Box<dyn Check>>,
        interval: Duration,
        timeout: Duration,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<bool> = None;
        let mut previous: std::collections::HashMap<&'static str, bool> = std::collections::HashMap::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let mut failure = None;
            let mut states = Vec::with_capacity(checks.len());
            for check in &checks {
                let outcome = match tokio::time::timeout(timeout, check.check()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                let (name, critical) = (check.name(), check.critical());
                let before = previous.get(name).copied();
                let up = outcome.is_ok();
                metrics::gauge!("dependency_up", "dependency" => name).set(if up { 1.0 } else { 0.0 });
                if before != Some(up) {
                    let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
                    self.reporter.set_service_status(format!("dependency/{name}"), status).await;
                    match (&outcome, critical) {
                        (Ok(()), _) if before.is_some() => {
                            tracing::info!(dependency = name, "dependency answers again");
                        }
                        (Err(error), false) => tracing::warn!(
                            dependency = name,
                            error,
                            "degraded: dependency check failed; serving through fallbacks, readiness unchanged"
                        ),
                        // A first success says nothing; a critical failure is logged with the
                        // readiness change below.
                        (Ok(()), _) | (Err(_), true) => {}
                    }
                    previous.insert(name, up);
                }
                if let Err(error) = outcome
                    && critical
                    && failure.is_none()
                {
                    failure = Some((name, error));
                }
                states.push(Dependency { name, critical, up });
            }
            *self.dependencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = states;
            let ready = failure.is_none();
            if stop.is_cancelled() {
                return;
            }
            if last != Some(ready) {
                match &failure {
                    None => tracing::info!("ready: all dependencies answer"),
                    Some((dependency, error)) => {
                        tracing::warn!(dependency, error, "not ready: dependency check failed");
                    }
                }
                self.set(ready).await;
                last = Some(ready);
            }
        }
    }
}

/// The grpc.health.v1 service, whose `Watch` streams end when draining starts (after the last
/// status, NOT_SERVING, went out): an open watch would otherwise hold the shutdown for the whole
/// `server.shutdown_grace`.
pub(crate) struct DrainingHealth {
    inner: tonic_health::server::HealthService,
    drain: CancellationToken,
}

impl DrainingHealth {
    pub(crate) fn new(inner: tonic_health::server::HealthService, drain: CancellationToken) -> Self {
        Self { inner, drain }
    }
}

type WatchStream = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>
            + Send
            + 'static,
    >,
>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for DrainingHealth {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        use futures::StreamExt as _;
        let stream = self.inner.watch(request).await?.into_inner();
        let drain = self.drain.clone().cancelled_owned();
        Ok(tonic::Response::new(Box::pin(stream.take_until(drain))))
    }
}
