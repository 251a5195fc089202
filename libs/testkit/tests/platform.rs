//! The platform's shared behaviour, on a small probe service built with the very same stack every
//! service uses: readiness that follows PostgreSQL, drain on shutdown, load shedding, request ids,
//! stripped internal metadata and request metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bank_platform::{
    App, AppBuilder, BoxError, Service,
    config::{BaseConfig, TelemetryConfig},
    db,
    grpc::GrpcServices,
};
use bank_proto::identity::v1::{
    GetJwksRequest, GetJwksResponse, GetMyProfileRequest,
    identity_service_client::IdentityServiceClient,
    identity_service_server::{IdentityService, IdentityServiceServer},
};
use bank_testkit::{Options, TcpProxy, TestDatabase, probe};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// A service whose `GetJwks` takes 300 ms and refuses to answer if it ever sees caller-supplied
/// `x-user-id` metadata; every other RPC keeps the generated `UNIMPLEMENTED`.
struct Probe;

#[derive(Debug, Clone, Copy)]
struct SlowApi;

#[tonic::async_trait]
impl IdentityService for SlowApi {
    async fn get_jwks(
        &self,
        request: tonic::Request<GetJwksRequest>,
    ) -> Result<tonic::Response<GetJwksResponse>, tonic::Status> {
        if request.metadata().contains_key("x-user-id") {
            return Err(tonic::Status::permission_denied("internal metadata reached the handler"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(tonic::Response::new(GetJwksResponse::default()))
    }
}

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

impl Service for Probe {
    const NAME: &'static str = "probe";
    type Config = BaseConfig;

    fn telemetry(config: &BaseConfig) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: BaseConfig) -> Result<App, BoxError> {
        let pool = db::connect(&config.database, &NO_MIGRATIONS).await?;
        let services = GrpcServices::new()
            .serve(IdentityServiceServer::new(SlowApi))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        AppBuilder::grpc(Self::NAME, &config.server, services).database(pool).bind().await
    }
}

#[tokio::test]
async fn readiness_follows_postgres_and_recovers_without_a_restart() {
    let database = TestDatabase::create().await;
    let proxy = TcpProxy::start(bank_testkit::postgres_addr()).await;
    let app = bank_testkit::spawn_with::<Probe>(
        Options::default().database(false).set("database.url", database.url_via(proxy.addr())),
    )
    .await;
    let channel = app.channel().await;
    assert_eq!(probe::health(channel.clone(), "").await.unwrap(), ServingStatus::Serving);

    proxy.cut();
    assert!(app.wait_ready(false, Duration::from_secs(5)).await, "not NOT_SERVING within 5 s");
    assert_eq!(probe::health(channel.clone(), "").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(
        probe::health(channel.clone(), "bank.identity.v1.IdentityService").await.unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(probe::health(channel.clone(), "liveness").await.unwrap(), ServingStatus::Serving);
    assert_eq!(probe::http_get(app.admin_addr, "/health/ready").await.0, 503);
    assert_eq!(probe::http_get(app.admin_addr, "/health/live").await.0, 200);

    proxy.restore();
    assert!(app.wait_ready(true, Duration::from_secs(10)).await, "did not recover");
    assert_eq!(probe::health(channel, "").await.unwrap(), ServingStatus::Serving);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_call_in_flight_at_shutdown_completes_and_new_calls_are_refused() {
    let app = bank_testkit::spawn_with::<Probe>(Options::default().set("server.shutdown_grace", "5s")).await;
    let addr = app.addr;
    let mut client = IdentityServiceClient::new(app.channel().await);
    let in_flight = tokio::spawn(async move { client.get_jwks(GetJwksRequest::default()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    app.begin_shutdown();
    assert!(app.wait_ready(false, Duration::from_millis(200)).await, "readiness must turn off first");
    let answer = in_flight.await.unwrap();
    assert!(answer.is_ok(), "in-flight call failed: {answer:?}");
    app.shutdown().await.expect("run ends cleanly");

    let refused = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await;
    assert!(!matches!(refused, Ok(Ok(_))), "still accepting connections after shutdown");
}

#[tokio::test]
async fn readiness_is_off_while_the_shutdown_delay_runs() {
    let app = bank_testkit::spawn_with::<Probe>(Options::default().set("server.shutdown_delay", "1s")).await;
    let channel = app.channel().await;
    app.begin_shutdown();
    // Still serving (so in-flight balancers can notice), but reporting NOT_SERVING.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe::health(channel, "").await.unwrap(), ServingStatus::NotServing);
    app.shutdown().await.unwrap();
}

/// Item: an open health-watch stream (a load balancer or a client following the status) does not
/// hold the shutdown for the whole grace period: it sees NOT_SERVING, then ends when draining starts.
#[tokio::test]
async fn an_open_health_watch_ends_when_draining_starts() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let app = bank_testkit::spawn_with::<Probe>(Options::default().set("server.shutdown_grace", "60s")).await;
    let mut watch = HealthClient::new(app.channel().await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);

    // A hang guard far below the 60 s grace, not a speed assertion.
    let done = tokio::time::timeout(Duration::from_secs(20), async move {
        let shutdown = tokio::spawn(app.shutdown());
        let mut seen = Vec::new();
        while let Ok(Some(message)) = watch.message().await {
            seen.push(message.status());
        }
        (shutdown.await.unwrap(), seen)
    })
    .await
    .expect("the shutdown did not wait for the watch stream");
    done.0.expect("run ends cleanly");
    assert_eq!(done.1, vec![ServingStatus::NotServing], "the watcher saw the drain");
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_with_resource_exhausted() {
    let app =
        bank_testkit::spawn_with::<Probe>(Options::default().set("server.max_concurrent_requests", 1)).await;
    let channel = app.channel().await;
    let mut first = IdentityServiceClient::new(channel.clone());
    let mut second = IdentityServiceClient::new(channel.clone());
    let slow = tokio::spawn(async move { first.get_jwks(GetJwksRequest::default()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = second.get_jwks(GetJwksRequest::default()).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert_eq!(bank_platform::error::reason_of(&shed), Some(bank_platform::ErrorCode::ResourceExhausted));
    assert!(slow.await.unwrap().is_ok());
    // Health is never shed.
    assert_eq!(probe::health(channel, "").await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn request_ids_are_echoed_or_created_and_internal_metadata_never_reaches_handlers() {
    let app = bank_testkit::spawn::<Probe>().await;
    let mut client = IdentityServiceClient::new(app.channel().await);

    let mut request = tonic::Request::new(GetJwksRequest::default());
    request.metadata_mut().insert("x-request-id", "req-123".parse().unwrap());
    request.metadata_mut().insert("x-user-id", "00000000-0000-0000-0000-000000000001".parse().unwrap());
    let response = client.get_jwks(request).await.expect("x-user-id is stripped before the handler");
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-123");

    let response = client.get_jwks(GetJwksRequest::default()).await.unwrap();
    let created = response.metadata().get("x-request-id").expect("a request id is created").to_str().unwrap();
    assert!(uuid::Uuid::parse_str(created).is_ok(), "{created}");
}

#[tokio::test]
async fn unbuilt_rpcs_answer_unimplemented_and_every_call_is_counted() {
    let app = bank_testkit::spawn::<Probe>().await;
    let mut client = IdentityServiceClient::new(app.channel().await);
    let status = client.get_my_profile(GetMyProfileRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    let (_, metrics) = probe::http_get(app.admin_addr, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("grpc_server_requests_total")
                && l.contains("GetMyProfile")
                && l.contains("code=\"Unimplemented\"")
        })
        .unwrap_or_else(|| panic!("no counter for the call in:\n{metrics}"));
    assert!(line.contains("service=\"probe\""), "{line}");
    assert!(metrics.contains("grpc_server_request_duration_seconds_bucket"), "no latency histogram");
}

#[tokio::test]
async fn a_pool_with_generic_plans_sets_them_on_every_connection() {
    let database = TestDatabase::create().await;
    let config = bank_platform::config::DatabaseConfig {
        url: secrecy::SecretString::from(database.url().to_owned()),
        max_connections: 3,
        acquire_timeout: Duration::from_secs(5),
        run_migrations: true,
    };
    let show = |pool: sqlx::PgPool| async move {
        let mut seen = Vec::new();
        // Three connections at once: each must carry the setting.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = pool.acquire().await.unwrap();
            let mode: String =
                sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&mut *conn).await.unwrap();
            seen.push(mode);
            held.push(conn);
        }
        seen
    };
    let generic = db::connect_with(&config, &NO_MIGRATIONS, db::Plans::Generic).await.unwrap();
    assert_eq!(show(generic).await, ["force_generic_plan"; 3]);
    let auto = db::connect(&config, &NO_MIGRATIONS).await.unwrap();
    assert_eq!(show(auto).await, ["auto"; 3]);
}

/// The outbox table every producing service creates (the same migration in each).
const OUTBOX_SQL: &str = include_str!("../../../services/ledger/migrations/0001_outbox.sql");

#[tokio::test]
async fn the_outbox_relay_publishes_in_order_survives_a_redis_outage_and_purges_after_the_window() {
    use bank_platform::outbox::{self, RelayOptions};
    use bank_proto::events::v1::MfaEnabled;
    use prost::Message as _;

    let database = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(database.url()).await.unwrap();
    sqlx::raw_sql(OUTBOX_SQL).execute(&pool).await.unwrap();
    let namespace = bank_testkit::TestRedis::new();
    let proxy = TcpProxy::start(bank_testkit::redis_addr()).await;
    let client = ::redis::Client::open(format!("redis://{}", proxy.addr())).unwrap();
    let config = ::redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1);
    let mut redis = ::redis::aio::ConnectionManager::new_with_config(client, config).await.unwrap();
    let options = RelayOptions {
        source: "test",
        stream: format!("{}events", namespace.prefix()),
        batch: 2,
        idle: Duration::from_millis(10),
        retain: Duration::from_secs(3600),
        max_len: 1000,
    };
    let publish = |n: usize| {
        let pool = pool.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let mut conn = pool.acquire().await.unwrap();
                let event = MfaEnabled { user_id: format!("u{i}"), email: String::new() };
                ids.push(outbox::publish(&mut conn, &format!("users/u{i}"), &event).await.unwrap());
            }
            ids
        }
    };
    let mut ids = publish(3).await;

    // Redis is unreachable: a round fails and nothing is marked published.
    proxy.cut();
    assert!(outbox::relay_once(&pool, &mut redis, &options).await.is_err());
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unpublished, 3);
    ids.extend(publish(2).await);

    // Back: every row goes out in order, a batch per round, each once.
    proxy.restore();
    let mut published = 0;
    for _ in 0..50 {
        match outbox::relay_once(&pool, &mut redis, &options).await {
            Ok(0) if published == 5 => break,
            Ok(n) => published += n,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(published, 5);
    let entries: ::redis::streams::StreamRangeReply =
        ::redis::cmd("XRANGE").arg(&options.stream).arg("-").arg("+").query_async(&mut redis).await.unwrap();
    let streamed: Vec<String> = entries.ids.iter().map(|e| e.get::<String>("id").unwrap()).collect();
    assert_eq!(
        streamed,
        ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "outbox order, no gaps, no repeats"
    );
    let first = &entries.ids[0];
    assert_eq!(first.get::<String>("type").unwrap(), "bank.events.v1.MfaEnabled");
    assert_eq!(first.get::<String>("source").unwrap(), "test");
    assert_eq!(first.get::<String>("subject").unwrap(), "users/u0");
    let payload: Vec<u8> = first.get("payload").unwrap();
    assert_eq!(MfaEnabled::decode(payload.as_slice()).unwrap().user_id, "u0");

    // Published rows stay for the replay window, then go.
    assert_eq!(outbox::purge_published(&pool, Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(outbox::purge_published(&pool, Duration::ZERO).await.unwrap(), 5);
}
