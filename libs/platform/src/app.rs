//! Wiring a process: listeners, the gRPC stack (or an HTTP router), health, admin port, readiness,
//! and the shutdown sequence. Binaries and tests start the very same [`App`].

use std::{future::Future, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt as _, wrappers::TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::{
    admin,
    config::{self, ServerConfig, TelemetryConfig, Validate},
    grpc::{
        Authenticate, GrpcServices,
        layers::{AuthLayer, ForwardedLayer, LoadShedLayer, RequestContextLayer},
    },
    health::{Check, PostgresCheck, Readiness, RedisCheck},
    redis::Redis,
    telemetry,
};

/// A boxed error for start-up failures; its `Display` is the one line printed before exiting.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the process serves on its main listener.
#[derive(Debug)]
enum Main {
    Grpc(GrpcServices),
    Http(axum::Router),
}

/// Describes a process before its listeners are bound.
pub struct AppBuilder {
    name: &'static str,
    server: ServerConfig,
    main: Main,
    pool: Option<sqlx::PgPool>,
    redis: Option<Redis>,
    authenticator: Option<Arc<AuthSlot>>,
    tasks: Vec<Task>,
    checks: Vec<Box<dyn Check>>,
}

/// A background task of the process: started with the server, told to stop (its token is
/// cancelled) when draining starts, and awaited before the pool closes.
type Task = Box<dyn FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

struct Tasks<'a>(&'a [Task]);

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("name", &self.name)
            .field("main", &self.main)
            .field("authenticator", &self.authenticator)
            .field("tasks", &Tasks(&self.tasks))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Tasks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tasks", self.0.len())
    }
}

/// Wrapper so `AppBuilder` can derive `Debug`.
struct AuthSlot(Arc<dyn Authenticate>);

impl std::fmt::Debug for AuthSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticate")
    }
}

impl AppBuilder {
    /// A gRPC service process.
    #[must_use]
    pub fn grpc(name: &'static str, server: &ServerConfig, services: GrpcServices) -> Self {
        Self::new(name, server, Main::Grpc(services))
    }

    /// An HTTP process (the gateway). `/health/live` and `/health/ready` are added to the router.
    #[must_use]
    pub fn http(name: &'static str, server: &ServerConfig, router: axum::Router) -> Self {
        Self::new(name, server, Main::Http(router))
    }

    fn new(name: &'static str, server: &ServerConfig, main: Main) -> Self {
        Self {
            name,
            server: server.clone(),
            main,
            pool: None,
            redis: None,
            authenticator: None,
            tasks: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Readiness depends on this pool, and it is closed on shutdown.
    #[must_use]
    pub fn database(mut self, pool: sqlx::PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Readiness depends on Redis.
    #[must_use]
    pub fn redis(mut self, redis: Redis) -> Self {
        self.redis = Some(redis);
        self
    }

    /// Relays the service's transactional outbox to its Redis stream (`<redis.key_prefix>events`)
    /// as a background task ([`crate::outbox::relay`]). Call after [`database`](Self::database) and
    /// [`redis`](Self::redis); without both it changes nothing.
    #[must_use]
    pub fn relay_outbox(mut self) -> Self {
        if let (Some(pool), Some(redis)) = (self.pool.clone(), self.redis.clone()) {
            let options = crate::outbox::RelayOptions::new(self.name, &redis);
            self.tasks.push(Box::new(move |stop| {
                Box::pin(crate::outbox::relay(pool, redis.conn.clone(), options, stop))
            }));
        }
        self
    }

    /// Deletes idempotency keys older than `retention` every hour ([`crate::idempotency::purge`]).
    /// Call after [`database`](Self::database); without a pool it changes nothing.
    #[must_use]
    pub fn purge_idempotency(mut self, retention: Duration) -> Self {
        if let Some(pool) = self.pool.clone() {
            self.tasks.push(Box::new(move |stop| {
                Box::pin(crate::idempotency::purge_periodically(pool, retention, stop))
            }));
        }
        self
    }

    /// Fills the authentication slot of the gRPC stack.
    #[must_use]
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticate>) -> Self {
        self.authenticator = Some(Arc::new(AuthSlot(authenticator)));
        self
    }

    /// Readiness also depends on `check` (the gateway: every upstream's gRPC health).
    #[must_use]
    pub fn check(mut self, check: impl Check) -> Self {
        self.checks.push(Box::new(check));
        self
    }

    /// Adds a background task (key rotation, outbox relay, ...).
    #[must_use]
    pub fn task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(Box::new(move |stop| Box::pin(task(stop))));
        self
    }

    /// Binds both listeners (port 0 picks a free port; see [`App::local_addr`]).
    ///
    /// # Errors
    /// A listener cannot be bound; the message names the setting.
    pub async fn bind(self) -> Result<App, BoxError> {
        // Install the metrics recorder before the first request is counted.
        let _ = crate::metrics::handle();
        let listener = TcpListener::bind(self.server.listen_addr)
            .await
            .map_err(|e| format!("server.listen_addr: cannot listen on {}: {e}", self.server.listen_addr))?;
        let admin_listener = TcpListener::bind(self.server.admin_addr)
            .await
            .map_err(|e| format!("server.admin_addr: cannot listen on {}: {e}", self.server.admin_addr))?;
        let local_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (reporter, _) = tonic_health::server::health_reporter();
        // Started when draining starts; ends open health-watch streams, which would otherwise hold
        // the shutdown for the whole grace period.
        let drain_started = CancellationToken::new();
        let health_service =
            tonic_health::pb::health_server::HealthServer::new(crate::health::DrainingHealth::new(
                tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
                drain_started.clone(),
            ));
        let mut this = self;
        let names = match &mut this.main {
            Main::Grpc(services) => {
                services.routes.add_service(health_service);
                services.names.clone()
            }
            Main::Http(_) => Vec::new(),
        };
        let readiness = Readiness::new(reporter, names).await;
        Ok(App { builder: this, listener, admin_listener, local_addr, admin_addr, readiness, drain_started })
    }
}

/// A bound process, ready to [`run`](App::run).
pub struct App {
    builder: AppBuilder,
    listener: TcpListener,
    admin_listener: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    readiness: Readiness,
    drain_started: CancellationToken,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.builder.name)
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The main listener's address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The readiness state (tests watch it).
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves until `shutdown` is cancelled, then: NOT_SERVING -> (`server.shutdown_delay`) -> stop
    /// accepting -> drain in-flight calls within `server.shutdown_grace` -> close the pool.
    ///
    /// # Errors
    /// The server failed while running.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BoxError> {
        let App { builder, listener, admin_listener, readiness, drain_started, .. } = self;
        let AppBuilder { name, server, main, pool, redis, authenticator, tasks, checks: extra_checks } =
            builder;
        let tasks_stop = CancellationToken::new();
        let tasks: Vec<_> = tasks.into_iter().map(|task| tokio::spawn(task(tasks_stop.clone()))).collect();

        // Readiness: checked in the background until shutdown starts.
        let mut checks: Vec<Box<dyn Check>> = Vec::new();
        if let Some(pool) = &pool {
            checks.push(Box::new(PostgresCheck(pool.clone())));
        }
        if let Some(redis) = redis {
            checks.push(Box::new(RedisCheck(redis)));
        }
        checks.extend(extra_checks);
        let monitor_stop = CancellationToken::new();
        let monitor = tokio::spawn(readiness.clone().monitor(
            checks,
            server.readiness_interval,
            server.readiness_timeout,
            monitor_stop.clone(),
        ));

        // Admin port: up until the very end so /metrics can be scraped while draining.
        let admin_stop = CancellationToken::new();
        let admin = {
            let stop = admin_stop.clone();
            let router = admin::router(readiness.clone());
            tokio::spawn(async move {
                axum::serve(admin_listener, router).with_graceful_shutdown(stop.cancelled_owned()).await
            })
        };

        // The drain signal: readiness off first, then (after the delay) stop accepting.
        let drain_signal = {
            let shutdown = shutdown.clone();
            let readiness = readiness.clone();
            let drain_started = drain_started.clone();
            let delay = server.shutdown_delay;
            async move {
                shutdown.cancelled().await;
                monitor_stop.cancel();
                readiness.set(false).await;
                tracing::info!(delay = ?delay, "draining: readiness is NOT_SERVING");
                tokio::time::sleep(delay).await;
                drain_started.cancel();
            }
        };

        tracing::info!(service = name, addr = %listener.local_addr()?, "serving");
        let serve: std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> = match main {
            Main::Grpc(services) => {
                let incoming = TcpListenerStream::new(listener).map(|conn| {
                    if let Ok(stream) = &conn {
                        let _ = stream.set_nodelay(true);
                    }
                    conn
                });
                let GrpcServices { mut routes, names, descriptor_sets } = services;
                add_reflection(&mut routes, &names, &descriptor_sets)?;
                let authenticator = authenticator.map(|slot| slot.0.clone());
                let trusted_forwarders = crate::net::AddressBlocks::parse(&server.trusted_forwarders)
                    .map_err(|why| format!("server.trusted_forwarders: {why}"))?;
                // Outermost first. Each layer says why it sits where it does.
                let stack = ServiceBuilder::new()
                    // Request id, trace context, access log, metrics: outermost, so that calls the
                    // layers below reject are still logged and counted.
                    .layer(RequestContextLayer::new(name))
                    // Forwarded client facts from untrusted peers are dropped before anything reads them.
                    .layer(ForwardedLayer::new(trusted_forwarders))
                    // Shed before doing any work (auth may hit Redis) when at capacity.
                    .layer(LoadShedLayer::new(server.max_concurrent_requests))
                    // Authentication last: only admitted calls pay for it, and handlers see the principal.
                    .layer(AuthLayer::new(authenticator))
                    .into_inner();
                let router = tonic::transport::Server::builder()
                    // Per-request deadline; a shorter client `grpc-timeout` wins.
                    .timeout(server.request_timeout)
                    .layer(stack)
                    .add_routes(routes.routes());
                Box::pin(async move {
                    router.serve_with_incoming_shutdown(incoming, drain_signal).await.map_err(BoxError::from)
                })
            }
            Main::Http(router) => {
                let router = router
                    .route("/health/live", axum::routing::get(admin::live))
                    .route("/health/ready", axum::routing::get(admin::ready).with_state(readiness.clone()));
                use axum::serve::ListenerExt as _;
                let listener = listener.tap_io(|stream| {
                    let _ = stream.set_nodelay(true);
                });
                Box::pin(async move {
                    // The peer address reaches handlers as `ConnectInfo<SocketAddr>` (client IP).
                    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                        .with_graceful_shutdown(drain_signal)
                        .await
                        .map_err(BoxError::from)
                })
            }
        };

        // Serve; once draining starts, in-flight calls get `shutdown_grace` to finish.
        let grace = server.shutdown_grace;
        let deadline = async {
            drain_started.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = serve => result,
            () = deadline => {
                tracing::warn!(grace = ?grace, "grace period elapsed: abandoning calls still in flight");
                Ok(())
            }
        };

        monitor.abort();
        tasks_stop.cancel();
        for task in tasks {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("a background task did not stop within 5s");
            }
        }
        if let Some(pool) = pool {
            pool.close().await;
        }
        admin_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
        result
    }
}

fn add_reflection(
    routes: &mut tonic::service::RoutesBuilder,
    names: &[&'static str],
    descriptor_sets: &[&'static [u8]],
) -> Result<(), BoxError> {
    let build = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection");
        for set in descriptor_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for name in names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    routes.add_service(build().build_v1()?);
    routes.add_service(build().build_v1alpha()?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The thin `main` every binary shares.
// ---------------------------------------------------------------------------------------------

/// A bankmesh process: how to configure and build it.
pub trait Service {
    /// The process name: `identity`, `ledger`, ...
    const NAME: &'static str;
    /// Its typed configuration.
    type Config: DeserializeOwned + Validate + Send + 'static;
    /// Its telemetry section.
    fn telemetry(config: &Self::Config) -> &TelemetryConfig;
    /// Connects to dependencies, runs migrations, binds listeners.
    fn build(config: Self::Config) -> impl Future<Output = Result<App, BoxError>> + Send;
}

/// Everything `main` does: load config, init telemetry, build, run until SIGTERM/SIGINT, shut down.
///
/// Start-up failures print one line naming the setting (`<service>: <setting>: <problem>`) to
/// stderr and exit non-zero: 2 for bad configuration, 1 for anything else. Never a panic.
#[must_use]
pub fn run_service<S: Service>() -> ExitCode {
    let config = match config::load::<S::Config>(&config::Sources::from_process()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: configuration error: {err}", S::NAME);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{}: cannot start the async runtime: {err}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = match telemetry::init(S::NAME, S::telemetry(&config)) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("{}: configuration error: {err}", S::NAME);
                return ExitCode::from(2);
            }
        };
        let app = match S::build(config).await {
            Ok(app) => app,
            Err(err) => {
                eprintln!("{}: start-up failed: {err}", S::NAME);
                telemetry.shutdown();
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(grpc = %app.local_addr(), admin = %app.admin_addr(), "started");
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signal(shutdown.clone());
        let result = app.run(shutdown).await;
        telemetry.shutdown();
        match result {
            Ok(()) => {
                tracing::info!("shutdown complete");
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!(error = %err, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
