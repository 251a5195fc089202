//! The gateway over real HTTP, with an isolated Redis namespace and, where a route is exercised end
//! to end, a real identity service (fresh database) behind it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/client.rs"]
mod client;
#[path = "support/gateway.rs"]
mod gateway;

use std::{collections::BTreeSet, path::Path};

use bank_gateway::Gateway;
use bank_testkit::{
    TestApp, TestIdentity,
    identity::{ADMIN_EMAIL, ADMIN_PASSWORD, USER_PASSWORD},
    probe::http_get,
};
use client::Http;
use http::Method;
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};

async fn gateway_for(identity: &TestIdentity) -> TestApp {
    bank_testkit::spawn_with::<Gateway>(gateway::options(Some(identity))).await
}

#[tokio::test]
async fn answers_health_and_metrics_and_problem_json_for_unknown_routes() {
    let app = bank_testkit::spawn_with::<Gateway>(gateway::options(None)).await;
    assert_eq!(http_get(app.addr, "/health/live").await.0, 200);
    assert_eq!(http_get(app.addr, "/health/ready").await.0, 200);
    assert_eq!(http_get(app.admin_addr, "/metrics").await.0, 200);

    let (status, body) = http_get(app.addr, "/api/v1/nope").await;
    assert_eq!(status, 404);
    let problem: serde_json::Value = serde_json::from_str(&body).expect("problem+json body");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["reason"], "ROUTE_NOT_FOUND");
    assert_eq!(problem["code"], "NOT_FOUND");
    assert_eq!(problem["detail"], "no route for /api/v1/nope");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_card_number_in_a_path_is_masked_in_the_access_log() {
    let capture = bank_testkit::logs::Capture::install("gateway");
    let app = bank_testkit::spawn_with::<Gateway>(gateway::options(None)).await;
    // A route (answered 401: no token) and no route (404).
    for (path, status) in
        [("/api/v1/cards/4111111111111111", 401), ("/api/v1/x/4000%200566%205566%205556", 404)]
    {
        assert_eq!(http_get(app.addr, path).await.0, status);
    }
    app.shutdown().await.expect("clean shutdown");
    let logs = capture.text();
    assert!(logs.contains("/api/v1/cards/************1111"), "the masked path is logged");
    assert!(logs.contains("/api/v1/x/**** **** **** 5556"), "the masked path is logged");
    for pan in ["4111111111111111", "4000 0566 5566 5556", "4000%200566%205566%205556"] {
        bank_testkit::assert_nowhere(&logs, pan, "gateway log");
    }
}

/// 401s carry a challenge a client can act on (RFC 6750 / RFC 9470): a stale second factor is
/// `insufficient_user_authentication` with `acr_values` and `max_age` (step up, do not refresh); a
/// revoked token is `invalid_token`. A customer with no factor at all gets 403
/// `MFA_ENROLMENT_REQUIRED` from StepUp, and enrolling steps the session up.
#[tokio::test]
async fn a_stale_second_factor_answers_an_rfc_9470_challenge_distinct_from_an_expired_token() {
    let identity = TestIdentity::spawn().await;
    let app = gateway_for(&identity).await;
    let http = Http::new(app.addr);
    let user = identity.user("stepper@example.com").await;
    let password_only = user.tokens.access_token.clone();

    // No factor enrolled: StepUp is a dead end, and says so.
    let step_up =
        http.post("/api/v1/auth/step-up", &json!({"totpCode": "123456"}), Some(&password_only)).await;
    step_up.problem(403, "MFA_ENROLMENT_REQUIRED");

    // Enrolled since this session began: changing the password needs a step-up (401 + challenge).
    identity.enrol_mfa(&password_only).await;
    let change =
        json!({"currentPassword": USER_PASSWORD, "newPassword": "a brand new passphrase, orange kettles 42"});
    let refused = http.post("/api/v1/me/password", &change, Some(&password_only)).await;
    let problem = refused.problem(401, "STEP_UP_REQUIRED");
    assert_eq!(
        refused.header("www-authenticate"),
        Some(
            r#"Bearer realm="bankmesh", error="insufficient_user_authentication", error_description="a recent second factor is required", acr_values="mfa", max_age=300"#
        )
    );
    assert_eq!((problem["acrValues"].as_str(), problem["maxAge"].as_str()), (Some("mfa"), Some("300")));

    // A revoked token: invalid_token, the "refresh or log in again" case.
    let logout = http.post("/api/v1/auth/logout", &json!({}), Some(&password_only)).await;
    assert_eq!(logout.status, 200, "{}", String::from_utf8_lossy(&logout.body));
    let revoked = http.get("/api/v1/me", Some(&password_only)).await;
    revoked.problem(401, "TOKEN_REVOKED");
    assert_eq!(revoked.header("www-authenticate"), Some(r#"Bearer realm="bankmesh", error="invalid_token""#));
    let anonymous = http.get("/api/v1/me", None).await;
    anonymous.problem(401, "UNAUTHENTICATED");
    assert_eq!(anonymous.header("www-authenticate"), Some(r#"Bearer realm="bankmesh""#));
}

#[tokio::test]
async fn with_redis_down_the_gateway_stays_ready_and_reports_redis_degraded() {
    let redis_addr: std::net::SocketAddr = bank_testkit::redis_url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("the test Redis must be reached over TCP as host:port");
    let proxy = bank_testkit::TcpProxy::start(redis_addr).await;
    let namespace = bank_testkit::TestRedis::new();
    let app = bank_testkit::spawn_with::<Gateway>(
        gateway::options(None)
            .redis(false)
            .set("redis.url", format!("redis://{}", proxy.addr()))
            .set("redis.key_prefix", namespace.prefix())
            .set("redis.timeout", "500ms"),
    )
    .await;
    assert_eq!(http_get(app.addr, "/health/ready").await.0, 200);

    // Redis is a cache with fallbacks (local limits, identity for revocation): its outage must not
    // take the gateway out of its Service.
    proxy.cut();
    let degraded = wait_for_body(app.addr, "redis: down (degraded").await;
    assert_eq!(degraded.0, 200, "still ready: {}", degraded.1);
    assert!(degraded.1.starts_with("ready\n"), "{}", degraded.1);
    assert!(app.readiness().is_ready());
    let (_, metrics) = http_get(app.admin_addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with("dependency_up{dependency=\"redis\"") && l.ends_with(" 0")),
        "{metrics}"
    );
    assert_eq!(http_get(app.addr, "/health/live").await.0, 200);

    proxy.restore();
    let back = wait_for_body(app.addr, "redis: up").await;
    assert_eq!(back.0, 200);
}

/// Polls `/health/ready` until its body contains `text` (10 s at most).
async fn wait_for_body(addr: std::net::SocketAddr, text: &str) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = http_get(addr, "/health/ready").await;
        if last.1.contains(text) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/health/ready never said {text:?}; last: {last:?}");
}

/// Sign up, verify, log in, read and change the profile, list and revoke sessions, refresh and
/// the JWKS — all through REST, answers in canonical proto3 JSON.
#[tokio::test]
async fn a_user_signs_up_and_manages_their_account_through_rest() {
    let identity = TestIdentity::spawn().await;
    let gateway = gateway_for(&identity).await;
    let http = Http::new(gateway.addr);
    let email = "alice@example.com";

    // Register answers 200 with the empty message (as grpc-gateway does), not 201.
    let answer = http
        .post(
            "/api/v1/auth/register",
            &json!({"email": email, "password": USER_PASSWORD, "givenName": "Alice"}),
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.json(), json!({}));

    let user_id = identity.user_id(email).await;
    let token = identity.verification_token(&user_id).await;
    // The original snake_case names are accepted too.
    let answer = http.post("/api/v1/auth/verify-email", &json!({"token": token}), None).await;
    assert_eq!(answer.status, 200, "{}", answer.json());

    let answer = http
        .post(
            "/api/v1/auth/login",
            &json!({"email": email, "password": USER_PASSWORD, "device_name": "laptop"}),
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json());
    let login = answer.json();
    let tokens = &login["tokens"];
    assert_eq!(tokens["tokenType"], "Bearer");
    assert!(is_rfc3339_utc(&tokens["accessTokenExpiresAt"]), "{tokens}");
    let access = tokens["accessToken"].as_str().expect("accessToken").to_owned();
    let refresh = tokens["refreshToken"].as_str().expect("refreshToken").to_owned();
    let session_id = tokens["sessionId"].as_str().expect("sessionId").to_owned();

    // The profile: enums as value names, timestamps as RFC 3339, defaults omitted.
    let me = http.get("/api/v1/me", Some(&access)).await;
    assert_eq!(me.status, 200, "{}", me.json());
    let user = &me.json()["user"];
    assert_eq!(user["userId"], user_id.as_str());
    assert_eq!(user["email"], email);
    assert_eq!(user["emailVerified"], true);
    assert_eq!(user["status"], "USER_STATUS_ACTIVE");
    assert_eq!(user["roles"], json!(["ROLE_CUSTOMER"]));
    assert!(is_rfc3339_utc(&user["createdAt"]), "{user}");
    assert!(user.get("mfaEnabled").is_none(), "false is a default and omitted: {user}");
    assert!(user.get("lockedUntil").is_none(), "{user}");

    let answer = http.json(Method::PATCH, "/api/v1/me", &json!({"givenName": "Alicia"}), Some(&access)).await;
    assert_eq!(answer.status, 200, "{}", answer.json());
    assert_eq!(answer.json()["user"]["givenName"], "Alicia");
    assert_eq!(answer.json()["user"]["familyName"], Value::Null, "empty strings are omitted");

    // A second session, listed with a nested query parameter, then revoked through a path variable.
    let second = identity.login(email, USER_PASSWORD).await.expect("second login");
    let sessions = http.get("/api/v1/me/sessions?page.pageSize=10", Some(&access)).await;
    assert_eq!(sessions.status, 200, "{}", sessions.json());
    let listed = sessions.json()["sessions"].as_array().expect("sessions").clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().any(|s| s["sessionId"] == session_id.as_str() && s["current"] == true));
    assert!(listed.iter().any(|s| s["sessionId"] == second.session_id.as_str() && s["deviceName"].is_null()));
    let snake = http.get("/api/v1/me/sessions?page.page_size=1", Some(&access)).await;
    assert_eq!(snake.json()["sessions"].as_array().map(Vec::len), Some(1));
    assert!(snake.json()["pageInfo"]["nextPageToken"].is_string(), "{}", snake.json());

    let revoked = http
        .send(
            Method::DELETE,
            &format!("/api/v1/me/sessions/{}", second.session_id),
            &[("authorization", &format!("Bearer {access}")), ("idempotency-key", "revoke-1")],
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", String::from_utf8_lossy(&revoked.body));
    assert_eq!(revoked.json(), json!({}));
    let after = http.get("/api/v1/me/sessions", Some(&access)).await;
    assert_eq!(after.json()["sessions"].as_array().map(Vec::len), Some(1));

    // int64 renders as a string: the admin search sets page_info.total_size. Enum and bool query
    // parameters are converted to their JSON types.
    let admin = identity.admin().await;
    let users = http
        .get(
            "/api/v1/admin/users?status=USER_STATUS_ACTIVE&lockedOnly=false&page.pageSize=50",
            Some(&admin.access_token),
        )
        .await;
    assert_eq!(users.status, 200, "{}", users.json());
    let total = &users.json()["pageInfo"]["totalSize"];
    assert!(total.is_string(), "int64 must be a JSON string: {total}");
    assert_eq!(total, "2", "the admin and alice");

    // Refresh rotates; the JWKS is served under the API and the well-known alias alike.
    let refreshed = http.post("/api/v1/auth/refresh", &json!({"refreshToken": refresh}), None).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.json());
    assert_ne!(refreshed.json()["tokens"]["refreshToken"], refresh.as_str());
    let jwks = http.get("/api/v1/auth/jwks", None).await;
    let well_known = http.get("/.well-known/jwks.json", None).await;
    assert_eq!(well_known.status, 200);
    assert_eq!(jwks.json(), well_known.json());
    let keys = well_known.json()["keys"].as_array().expect("a JWK Set").clone();
    assert!(
        keys.iter().all(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519" && k["kid"].is_string()),
        "{keys:?}"
    );
}

/// Every failure — the gateway's own and the services' — is the one problem+json shape.
#[tokio::test]
async fn every_failure_is_one_problem_shape() {
    let identity = TestIdentity::spawn().await;
    let gateway = gateway_for(&identity).await;
    let http = Http::new(gateway.addr);

    // 401 from the service, without a token and with a forged one.
    let answer = http.get("/api/v1/me", None).await;
    let problem = answer.problem(401, "UNAUTHENTICATED");
    assert_eq!(problem["code"], "UNAUTHENTICATED");
    assert_eq!(problem["title"], "Unauthorized");
    http.get("/api/v1/me", Some("not-a-jwt")).await.problem(401, "UNAUTHENTICATED");

    // 401 for wrong credentials, the reason from the service's ErrorInfo.
    let answer = http
        .post("/api/v1/auth/login", &json!({"email": ADMIN_EMAIL, "password": "wrong password 123"}), None)
        .await;
    answer.problem(401, "INVALID_CREDENTIALS");

    // 400 with every policy violation for a weak password.
    let answer = http
        .post(
            "/api/v1/auth/register",
            &json!({"email": "bob@example.com", "password": "short", "givenName": "Bob"}),
            None,
        )
        .await;
    let problem = answer.problem(400, "PASSWORD_POLICY_VIOLATION");
    assert_eq!(problem["code"], "INVALID_ARGUMENT");
    let violations = problem["violations"].as_array().expect("violations");
    assert!(!violations.is_empty());
    assert!(
        violations
            .iter()
            .all(|v| v["field"].is_string() && v["code"].is_string() && v["description"].is_string())
    );
    assert!(violations.iter().any(|v| v["field"] == "password"), "{violations:?}");

    // 400 naming an unknown JSON field (pbjson refuses it before any call).
    let answer = http
        .post(
            "/api/v1/auth/login",
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "isAdmin": true}),
            None,
        )
        .await;
    let problem = answer.problem(400, "VALIDATION_FAILED");
    assert_eq!(problem["detail"], "unknown field `isAdmin`");
    assert_eq!(problem["violations"][0]["field"], "isAdmin");
    assert_eq!(problem["violations"][0]["code"], "UNKNOWN_FIELD");

    // 400 for a value of the wrong JSON type, naming the field.
    let answer = http.post("/api/v1/auth/login", &json!({"email": 42}), None).await;
    let problem = answer.problem(400, "VALIDATION_FAILED");
    assert_eq!(problem["violations"][0]["field"], "email");

    // 400 for malformed JSON and for a body that is not an object.
    let answer = http
        .send(
            Method::POST,
            "/api/v1/auth/login",
            &[("content-type", "application/json")],
            Some(b"{\"email\":".to_vec()),
        )
        .await;
    let problem = answer.problem(400, "VALIDATION_FAILED");
    assert!(problem["detail"].as_str().unwrap().starts_with("the body is not valid JSON"), "{problem}");
    http.post("/api/v1/auth/login", &json!(["email"]), None).await.problem(400, "VALIDATION_FAILED");

    // 400 for a path variable sent in the body too, and for bad or unknown query parameters.
    let admin = identity.admin().await;
    let auth = format!("Bearer {}", admin.access_token);
    let answer = http
        .json(
            Method::POST,
            "/api/v1/admin/users/abc/unlock",
            &json!({"userId": "other", "reason": "x"}),
            Some(&admin.access_token),
        )
        .await;
    assert_eq!(answer.problem(400, "VALIDATION_FAILED")["violations"][0]["code"], "SET_BY_PATH");
    let answer = http.get("/api/v1/me/sessions?page.pageSize=ten&debug=1", Some(&admin.access_token)).await;
    let problem = answer.problem(400, "VALIDATION_FAILED");
    let fields: Vec<&str> =
        problem["violations"].as_array().unwrap().iter().filter_map(|v| v["field"].as_str()).collect();
    assert_eq!(fields, ["page.pageSize", "debug"]);
    let answer = http.get("/api/v1/admin/users?status=NOT_A_STATUS", Some(&admin.access_token)).await;
    assert_eq!(answer.problem(400, "VALIDATION_FAILED")["violations"][0]["field"], "status");

    // 400 from the service for a malformed path variable.
    let answer = http
        .send(Method::DELETE, "/api/v1/me/sessions/not-a-uuid", &[("authorization", auth.as_str())], None)
        .await;
    answer.problem(400, "VALIDATION_FAILED");

    // 415 for anything but JSON.
    let answer = http
        .send(
            Method::POST,
            "/api/v1/auth/login",
            &[("content-type", "text/plain")],
            Some(b"email=a".to_vec()),
        )
        .await;
    let problem = answer.problem(415, "UNSUPPORTED_MEDIA_TYPE");
    assert_eq!(problem["title"], "Unsupported Media Type");

    // 413 past the body limit.
    let huge = format!("{{\"email\": \"{}\"}}", "a".repeat(bank_gateway::MAX_BODY_BYTES + 1));
    let answer = http
        .send(
            Method::POST,
            "/api/v1/auth/login",
            &[("content-type", "application/json")],
            Some(huge.into_bytes()),
        )
        .await;
    answer.problem(413, "PAYLOAD_TOO_LARGE");

    // 404 for an unknown route, 405 (with Allow) for a known path with another method.
    http.get("/api/v1/nope", None).await.problem(404, "ROUTE_NOT_FOUND");
    let answer = http.send(Method::DELETE, "/api/v1/auth/login", &[], None).await;
    let problem = answer.problem(405, "ROUTE_NOT_FOUND");
    assert_eq!(problem["title"], "Method Not Allowed");
    assert_eq!(answer.header("allow"), Some("POST"));

    // The caller's request id is echoed in the header and the document; otherwise one is made.
    let answer = http.send(Method::GET, "/api/v1/me", &[("x-request-id", "req-abc-123")], None).await;
    assert_eq!(answer.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(answer.problem(401, "UNAUTHENTICATED")["request_id"], "req-abc-123");
    let answer = http.send(Method::GET, "/api/v1/me", &[("x-request-id", "bad id with spaces")], None).await;
    let made = answer.header("x-request-id").expect("a request id");
    assert_eq!(made.len(), 36, "a UUID: {made}");
    let ok = http.get("/api/v1/auth/jwks", None).await;
    assert_eq!(ok.status, 200);
    assert!(ok.header("x-request-id").is_some());
}

/// An upstream that is down answers 503 UNAVAILABLE, without the transport's details; reads are
/// retried; after `breaker_failures` failures the circuit opens and answers 503 with
/// `Retry-After` without calling, and the breaker's state is a metric.
#[tokio::test]
async fn an_unreachable_upstream_is_a_generic_503_and_opens_its_circuit() {
    let identity = TestIdentity::spawn().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(Some(&identity))
            .set("upstreams.accounts", format!("http://{closed}"))
            .set("upstreams.connect_timeout", "500ms")
            .set("upstreams.retries", 1)
            .set("upstreams.retry_backoff", "1ms")
            .set("upstreams.breaker_failures", 4)
            .set("upstreams.breaker_open_for", "30s"),
    )
    .await;
    let http = Http::new(gateway.addr);
    let admin = identity.admin().await;
    let token = Some(admin.access_token.as_str());
    // Two reads, each tried twice: four failures open the circuit.
    for _ in 0..2 {
        let answer = http.get("/api/v1/accounts?includeClosed=true", token).await;
        let problem = answer.problem(503, "UNAVAILABLE");
        assert_eq!(problem["code"], "UNAVAILABLE");
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.contains("127.0.0.1") && !detail.contains("connect"), "{detail}");
    }
    let open = http.get("/api/v1/accounts", token).await;
    open.problem(503, "UNAVAILABLE");
    let wait: u64 = open.header("retry-after").expect("Retry-After while open").parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    let (_, metrics) = http_get(gateway.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"gateway_circuit_breaker_state{upstream="accounts"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"gateway_upstream_retries_total{upstream="accounts"}"#), "{metrics}");
    // Other upstreams are not affected.
    assert_eq!(http.get("/api/v1/me", token).await.status, 200);
}

/// The OpenAPI document lists exactly the annotated RPCs (recomputed here from the descriptors,
/// independently of the generator) plus the two hand-written routes, and is valid OpenAPI 3.1.
#[tokio::test]
async fn the_openapi_document_covers_every_annotated_rpc() {
    let gateway = bank_testkit::spawn_with::<Gateway>(gateway::options(None)).await;
    let http = Http::new(gateway.addr);
    let answer = http.get("/api/v1/openapi.json", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let document = answer.json();
    assert_eq!(document["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    let mut hand_written = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            match operation["x-grpc-method"].as_str() {
                Some(rpc) => {
                    documented.insert((method.clone(), path.clone(), rpc.to_owned()));
                }
                None => {
                    hand_written.insert((method.clone(), path.clone()));
                }
            }
            let public = operation["security"] == json!([]);
            let refs: Vec<&str> = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["$ref"].as_str())
                .collect();
            let idempotent = refs.contains(&"#/components/parameters/IdempotencyKey");
            assert_eq!(idempotent, method != "GET", "{method} {path}: Idempotency-Key");
            for status in ["400", "401", "403", "404", "409", "422", "429", "500", "503"] {
                assert!(operation["responses"][status]["$ref"].is_string(), "{method} {path}: {status}");
            }
            if !public {
                assert_eq!(operation["security"], json!([{"bearerAuth": []}]), "{method} {path}");
            }
        }
    }
    let annotated = annotated_rpcs();
    assert_eq!(documented, annotated, "the documented routes differ from the annotations");
    assert_eq!(
        hand_written,
        BTreeSet::from([
            ("GET".to_owned(), "/.well-known/jwks.json".to_owned()),
            ("GET".to_owned(), "/api/v1/openapi.json".to_owned())
        ])
    );

    // The problem responses share one schema; int64 is a string, enums are names, timestamps date-time.
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        document["components"]["responses"]["BadRequest"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    assert_eq!(schemas["bank.common.v1.Money"]["properties"]["minorUnits"]["type"], "string");
    assert_eq!(schemas["bank.identity.v1.User"]["properties"]["createdAt"]["format"], "date-time");
    assert_eq!(schemas["bank.identity.v1.UserStatus"]["type"], "string");
    assert!(
        schemas["bank.identity.v1.UserStatus"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("USER_STATUS_ACTIVE"))
    );
    assert_eq!(document["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");

    validate_with_python(&answer.body);
}

/// What the document calls public is what identity lets in without a token, route by route: every
/// other identity route answers an anonymous call with 401 UNAUTHENTICATED.
#[tokio::test]
async fn only_the_documented_public_routes_answer_without_a_token() {
    let identity = TestIdentity::spawn().await;
    let gateway = gateway_for(&identity).await;
    let http = Http::new(gateway.addr);
    let document: Value = serde_json::from_str(bank_gateway::OPENAPI_JSON).unwrap();
    let mut public = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(rpc) = operation["x-grpc-method"].as_str() else { continue };
            if !rpc.starts_with("bank.identity.v1.") {
                continue;
            }
            let path: String = path
                .split('/')
                .map(|s| if s.starts_with('{') { "0190b7a2-6c1e-7d4a-9a51-3f2c8e4b1d20" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = if method == Method::GET || method == Method::DELETE {
                http.send(method, &path, &[], None).await
            } else {
                http.json(method, &path, &json!({}), None).await
            };
            if operation["security"] == json!([]) {
                public += 1;
                let reason = if answer.status == 200 { Value::Null } else { answer.json()["reason"].clone() };
                assert_ne!(reason, "UNAUTHENTICATED", "{rpc} is documented public but wants a token");
            } else {
                answer.problem(401, "UNAUTHENTICATED");
            }
        }
    }
    assert_eq!(
        public, 10,
        "register, verify email, resend, login, MFA login, refresh, reset, confirm, JWKS, token"
    );
}

/// The generated route table is the annotations, too.
#[test]
fn the_route_table_is_the_annotations() {
    let table: BTreeSet<(String, String, String)> = bank_gateway::ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned(), r.rpc.to_owned()))
        .collect();
    assert_eq!(table.len(), bank_gateway::ROUTES.len(), "a route twice");
    assert_eq!(table, annotated_rpcs());
}

/// `(METHOD, path, rpc)` of every `google.api.http` annotation, read with prost-reflect.
fn annotated_rpcs() -> BTreeSet<(String, String, String)> {
    let pool = DescriptorPool::decode(bank_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let from_crate = annotations(&pool);
    if !from_crate.is_empty() {
        return from_crate;
    }
    // bank-proto writes `file_descriptor_set().encode_to_vec()`, which drops extension options;
    // read the annotations from the sources instead (still independent of the generator).
    eprintln!(
        "note: bank_proto::FILE_DESCRIPTOR_SET has no google.api.http options; compiling the .proto sources"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut files = Vec::new();
    collect(&root.join("bank"), &root, &mut files);
    let bytes = protox::Compiler::new([root.clone(), root.join("third_party")])
        .unwrap()
        .include_imports(true)
        .open_files(files)
        .unwrap()
        .encode_file_descriptor_set();
    let pool = DescriptorPool::decode(bytes.as_slice()).unwrap();
    // Same services and methods as the crate's set.
    let names = |pool: &DescriptorPool| -> BTreeSet<String> {
        pool.services()
            .flat_map(|s| s.methods().map(|m| m.full_name().to_owned()).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(names(&pool), names(&DescriptorPool::decode(bank_proto::FILE_DESCRIPTOR_SET).unwrap()));
    annotations(&pool)
}

fn annotations(pool: &DescriptorPool) -> BTreeSet<(String, String, String)> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else { return BTreeSet::new() };
    let mut out = BTreeSet::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let rule = options.get_extension(&http);
            let rule = rule.as_message().unwrap();
            for verb in ["get", "put", "post", "patch", "delete"] {
                if rule.has_field_by_name(verb) {
                    let path = rule.get_field_by_name(verb).unwrap().as_str().unwrap().to_owned();
                    out.insert((
                        verb.to_uppercase(),
                        path,
                        format!("{}/{}", service.full_name(), method.name()),
                    ));
                }
            }
        }
    }
    out
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path.strip_prefix(root).unwrap().to_owned());
        }
    }
}

/// Validates the document with `openapi-spec-validator` (PyPI) when it is installed.
fn validate_with_python(document: &[u8]) {
    let available = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!(
            "note: openapi-spec-validator is not installed (pip install openapi-spec-validator); skipped"
        );
        return;
    }
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), document).unwrap();
    let output = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `2026-01-02T03:04:05Z` or with fractional seconds.
fn is_rfc3339_utc(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.len() >= 20 && s.ends_with('Z') && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T'
    })
}
