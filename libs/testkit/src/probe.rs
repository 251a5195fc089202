//! Standard-client probes of the surface every service has: grpc.health.v1, reflection (v1 and
//! v1alpha) and the admin HTTP port.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
/// The grpc.health.v1 status a probe answers.
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::{v1, v1alpha};

/// The grpc.health.v1 status of `service` (`""` is the whole server).
pub async fn health(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response =
        HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() }).await?;
    Ok(response.into_inner().status())
}

/// The services listed by reflection v1.
pub async fn reflected_services(channel: Channel) -> Vec<String> {
    use v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = stream.message().await.expect("reflection v1 answer").expect("one answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

/// The services listed by reflection v1alpha (older clients such as some grpcurl builds).
pub async fn reflected_services_v1alpha(channel: Channel) -> Vec<String> {
    use v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let response = stream.message().await.expect("reflection v1alpha answer").expect("one answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    tokio_stream::once(item)
}

/// A plain HTTP/1.0 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A plain HTTP/1.0 request with an optional bearer token and JSON body; returns the status code
/// and the body (for services and tests that reach the gateway without its own test client).
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Asserts what every gRPC service must offer: SERVING for the server and each of `services`,
/// `liveness` SERVING, each service (and health) listed by reflection v1 and v1alpha, and the admin
/// port answering `/health/live`, `/health/ready` and `/metrics`.
pub async fn assert_standard_surface(app: &crate::TestApp, services: &[&str]) {
    let channel = app.channel().await;
    assert_eq!(health(channel.clone(), "").await.expect("health"), ServingStatus::Serving);
    assert_eq!(health(channel.clone(), "liveness").await.expect("liveness"), ServingStatus::Serving);
    let listed = reflected_services(channel.clone()).await;
    let listed_alpha = reflected_services_v1alpha(channel.clone()).await;
    for service in services.iter().copied().chain(["grpc.health.v1.Health"]) {
        if service != "grpc.health.v1.Health" {
            assert_eq!(
                health(channel.clone(), service).await.expect("service health"),
                ServingStatus::Serving,
                "{service}"
            );
        }
        assert!(listed.iter().any(|s| s == service), "{service} not in reflection v1: {listed:?}");
        assert!(
            listed_alpha.iter().any(|s| s == service),
            "{service} not in reflection v1alpha: {listed_alpha:?}"
        );
    }
    assert_eq!(http_get(app.admin_addr, "/health/live").await.0, 200);
    assert_eq!(http_get(app.admin_addr, "/health/ready").await.0, 200);
    let (status, metrics) = http_get(app.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("grpc_server_requests_total"), "metrics: {metrics}");
}

/// Every RPC of `services` (fully-qualified names) as `(path, server_streaming)`, from the
/// contracts' descriptor set.
#[must_use]
pub fn rpcs(services: &[&str]) -> Vec<(String, bool)> {
    use prost::Message as _;
    let set =
        prost_types::FileDescriptorSet::decode(bank_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            if services.contains(&full.as_str()) {
                for method in &service.method {
                    out.push((format!("/{full}/{}", method.name()), method.server_streaming()));
                }
            }
        }
    }
    assert!(!out.is_empty(), "no RPCs found for {services:?}");
    out
}

/// Calls `path` with an empty message and an optional bearer token; answers the status (OK when the
/// call succeeded).
pub async fn call_empty(
    channel: Channel,
    path: &str,
    server_streaming: bool,
    token: Option<&str>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path: http::uri::PathAndQuery = path.parse().expect("path");
    let answer = if server_streaming {
        match grpc.server_streaming(request, path, codec).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(std::time::Duration::from_millis(500), stream.message()).await {
                    Ok(Err(status)) => Err(status),
                    Ok(Ok(_)) | Err(_) => Ok(()),
                }
            }
            Err(status) => Err(status),
        }
    } else {
        grpc.unary(request, path, codec).await.map(|_| ())
    };
    answer.err().unwrap_or_else(|| tonic::Status::ok("answered"))
}

/// Asserts that no RPC of `services` answers without a valid token (or with a forged one), except
/// the `public` paths.
pub async fn assert_every_rpc_needs_a_token(channel: Channel, services: &[&str], public: &[&str]) {
    let forged = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6Im5vcGUifQ.eyJzdWIiOiJ4In0.c2ln";
    for (path, streaming) in rpcs(services) {
        if public.contains(&path.as_str()) {
            continue;
        }
        for token in [None, Some(forged), Some("not-a-jwt")] {
            let status = call_empty(channel.clone(), &path, streaming, token).await;
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{path} with token {token:?} answered {:?}: {}",
                status.code(),
                status.message()
            );
        }
    }
}

/// Asserts that every embedded migration (`expected` of them) was applied to the app's database.
pub async fn assert_migrations_applied(app: &crate::TestApp, expected: usize) {
    let url = app.database().expect("fresh database").url().to_owned();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.expect("connect");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .expect("migrations table");
    assert_eq!(applied, i64::try_from(expected).expect("count"));
    assert!(applied >= 1);
}

/// The tests every authenticated gRPC service gets (spawned with a real identity it trusts): the
/// standard surface (health, reflection, admin port), no RPC answering without a valid token, and
/// its migrations applied at start.
///
/// ```ignore
/// bank_testkit::standard_service_tests!(bank_ledger::Ledger, bank_ledger::MIGRATOR,
///     ["bank.ledger.v1.LedgerService", "bank.ledger.v1.LedgerAdminService"]);
/// ```
#[macro_export]
macro_rules! standard_service_tests {
    ($service:ty, $migrator:path, [$($name:literal),+ $(,)?]) => {
        $crate::standard_service_tests!($service, $migrator, [$($name),+], |options| options);
    };
    // `$settings` adds what the service needs beyond identity's trust (e.g. a secret file's value).
    ($service:ty, $migrator:path, [$($name:literal),+ $(,)?], $settings:expr) => {
        const SERVICES: &[&str] = &[$($name),+];

        async fn spawn_trusting() -> ($crate::TestIdentity, $crate::TestApp) {
            let identity = $crate::TestIdentity::spawn().await;
            let settings: fn($crate::Options) -> $crate::Options = $settings;
            let app = $crate::spawn_with::<$service>(settings(identity.trust($crate::Options::default()))).await;
            (identity, app)
        }

        #[tokio::test]
        async fn serves_health_reflection_and_the_admin_port() {
            let (_identity, app) = spawn_trusting().await;
            $crate::probe::assert_standard_surface(&app, SERVICES).await;
            app.shutdown().await.expect("clean shutdown");
        }

        #[tokio::test]
        async fn no_rpc_answers_without_a_valid_token() {
            let (_identity, app) = spawn_trusting().await;
            $crate::probe::assert_every_rpc_needs_a_token(app.channel().await, SERVICES, &[]).await;
        }

        #[tokio::test]
        async fn runs_its_migrations_on_start() {
            let (_identity, app) = spawn_trusting().await;
            $crate::probe::assert_migrations_applied(&app, $migrator.iter().count()).await;
        }
    };
}
