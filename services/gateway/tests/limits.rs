//! Rate limits, authentication at the edge, CORS, security headers and readiness on upstreams —
//! over real HTTP against a real gateway, a real identity service, PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/client.rs"]
#[allow(dead_code, reason = "shared by the test files; each uses part of it")]
mod client;
#[path = "support/gateway.rs"]
mod gateway;

use std::time::Duration;

use bank_gateway::Gateway;
use bank_testkit::{
    TestIdentity, TestRedis,
    identity::{ADMIN_EMAIL, ADMIN_PASSWORD, USER_PASSWORD},
    probe::http_get,
};
use client::{Answer, Http};
use http::Method;
use serde_json::json;

async fn bad_login(http: &Http, email: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let body = serde_json::to_vec(&json!({"email": email, "password": "not the password 123"})).unwrap();
    http.send(Method::POST, "/api/v1/auth/login", &all, Some(body)).await
}

fn seconds(answer: &Answer, header: &str) -> u64 {
    answer
        .header(header)
        .unwrap_or_else(|| panic!("{header} missing"))
        .parse()
        .unwrap_or_else(|_| panic!("{header} is not a number of seconds"))
}

/// The sixth failed login from one IP within a minute answers 429 with a numeric Retry-After
/// computed from the limiter (about 12 s: five per minute), and RateLimit-* headers; the limit is
/// in Redis, so it still holds after the gateway restarts. The right password does not get past it.
#[tokio::test]
async fn six_bad_logins_from_one_ip_are_limited_across_a_restart() {
    let identity = TestIdentity::spawn().await;
    let namespace = TestRedis::new();
    let start = || {
        bank_testkit::spawn_with::<Gateway>(
            gateway::options(Some(&identity))
                .redis(false)
                .set("redis.key_prefix", namespace.prefix())
                .set("rate_limits.auth_per_ip.limit", 1000),
        )
    };
    let first = start().await;
    let http = Http::new(first.addr);
    for attempt in 1..=5 {
        let answer = bad_login(&http, &format!("nobody{attempt}@example.com"), &[]).await;
        answer.problem(401, "INVALID_CREDENTIALS");
        assert_eq!(seconds(&answer, "ratelimit-limit"), 5);
        assert_eq!(seconds(&answer, "ratelimit-remaining"), 5 - attempt);
    }
    let limited = bad_login(&http, "nobody6@example.com", &[]).await;
    limited.problem(429, "RATE_LIMITED");
    let retry = seconds(&limited, "retry-after");
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    assert_eq!(seconds(&limited, "ratelimit-remaining"), 0);
    assert!((50..=60).contains(&seconds(&limited, "ratelimit-reset")));
    first.shutdown().await.expect("clean shutdown");

    let second = start().await;
    let http = Http::new(second.addr);
    let body = serde_json::to_vec(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).unwrap();
    let answer = http
        .send(Method::POST, "/api/v1/auth/login", &[("content-type", "application/json")], Some(body))
        .await;
    answer.problem(429, "RATE_LIMITED");
}

/// A locked account: a wrong password answers like any failure (401), the right one says it is
/// locked, until when (`lockedUntil`) and how long to wait (`Retry-After`: the lock's real
/// remaining time, not a rate-limit bucket's), and does not use up the failed-login allowance.
#[tokio::test]
async fn the_right_password_on_a_locked_account_says_locked_until_when() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("locked.out@example.com").await;
    for _ in 0..5 {
        identity.login(&user.email, "not the password 123").await.unwrap_err();
    }
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(Some(&identity)).set("rate_limits.auth_per_ip.limit", 1000),
    )
    .await;
    let http = Http::new(gateway.addr);
    bad_login(&http, &user.email, &[]).await.problem(401, "INVALID_CREDENTIALS");
    let body = serde_json::to_vec(&json!({"email": user.email, "password": USER_PASSWORD})).unwrap();
    for _ in 0..6 {
        let answer = http
            .send(
                Method::POST,
                "/api/v1/auth/login",
                &[("content-type", "application/json")],
                Some(body.clone()),
            )
            .await;
        let problem = answer.problem(423, "ACCOUNT_LOCKED");
        let retry = seconds(&answer, "retry-after");
        assert!((14 * 60..=15 * 60).contains(&retry), "Retry-After is the lock's wait: {retry}");
        let until = problem["lockedUntil"].as_str().expect("lockedUntil");
        assert!(problem["detail"].as_str().unwrap().contains(until), "{problem}");
        // Charged while it runs (4 -> 3), refunded after: the allowance never goes lower.
        assert_eq!(seconds(&answer, "ratelimit-remaining"), 3, "a locked answer is not a failure");
    }
}

/// Successful logins do not use up the failed-login allowance; failures for one username are
/// limited whatever IP they come from (trusted proxies forward the client IP), existing or not;
/// X-Forwarded-For from an untrusted peer is ignored.
#[tokio::test]
async fn failed_logins_are_limited_per_username_and_successes_are_free() {
    let identity = TestIdentity::spawn().await;
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(Some(&identity))
            .set("edge.trusted_proxies", vec!["127.0.0.1".to_owned()])
            .set("rate_limits.auth_per_ip.limit", 1000),
    )
    .await;
    let http = Http::new(gateway.addr);
    let good = serde_json::to_vec(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).unwrap();
    for _ in 0..8 {
        let answer = http
            .send(
                Method::POST,
                "/api/v1/auth/login",
                &[("content-type", "application/json"), ("x-forwarded-for", "198.51.100.1")],
                Some(good.clone()),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    }
    for i in 1..=5 {
        let ip = format!("203.0.113.{i}");
        bad_login(&http, "Victim@Example.com", &[("x-forwarded-for", &ip)])
            .await
            .problem(401, "INVALID_CREDENTIALS");
    }
    // A sixth address, the same username (in another case): limited.
    bad_login(&http, "victim@example.com", &[("x-forwarded-for", "203.0.113.99")])
        .await
        .problem(429, "RATE_LIMITED");
    // Another username from a fresh address is not.
    bad_login(&http, "someone@example.com", &[("x-forwarded-for", "203.0.113.100")])
        .await
        .problem(401, "INVALID_CREDENTIALS");

    // Without trusted proxies, X-Forwarded-For cannot buy a fresh allowance.
    let strict = bank_testkit::spawn_with::<Gateway>(
        gateway::options(Some(&identity)).set("rate_limits.auth_per_ip.limit", 1000),
    )
    .await;
    let http = Http::new(strict.addr);
    for i in 1..=5 {
        let ip = format!("192.0.2.{i}");
        bad_login(&http, &format!("u{i}@example.com"), &[("x-forwarded-for", &ip)])
            .await
            .problem(401, "INVALID_CREDENTIALS");
    }
    bad_login(&http, "u6@example.com", &[("x-forwarded-for", "192.0.2.77")])
        .await
        .problem(429, "RATE_LIMITED");
}

/// With Redis unreachable every request is still answered (no stall past its timeout) and the
/// limits hold per process — stricter on auth routes — and a metric says so.
#[tokio::test]
async fn without_redis_limits_hold_per_process_and_nothing_stalls() {
    let identity = TestIdentity::spawn().await;
    let proxy = bank_testkit::TcpProxy::start(bank_testkit::redis_addr()).await;
    let namespace = TestRedis::new();
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(Some(&identity))
            .redis(false)
            .set("redis.url", format!("redis://{}", proxy.addr()))
            .set("redis.key_prefix", namespace.prefix())
            .set("redis.timeout", "200ms")
            .set("rate_limits.redis_timeout", "30ms")
            .set("rate_limits.auth_per_ip.limit", 1000),
    )
    .await;
    let http = Http::new(gateway.addr);
    proxy.cut();

    // Per process, auth buckets are halved: 5 failed logins become 2.
    let bound = Duration::from_secs(5);
    for attempt in 1..=2 {
        let answer =
            tokio::time::timeout(bound, bad_login(&http, "x@example.com", &[])).await.expect("answered");
        answer.problem(401, "INVALID_CREDENTIALS");
        assert_eq!(seconds(&answer, "ratelimit-limit"), 2, "attempt {attempt}");
    }
    let limited =
        tokio::time::timeout(bound, bad_login(&http, "y@example.com", &[])).await.expect("answered");
    limited.problem(429, "RATE_LIMITED");
    assert!(seconds(&limited, "retry-after") >= 1);
    // Public non-auth routes are answered too.
    let openapi =
        tokio::time::timeout(bound, http.get("/api/v1/openapi.json", None)).await.expect("answered");
    assert_eq!(openapi.status, 200);

    let (_, metrics) = http_get(gateway.admin_addr, "/metrics").await;
    assert!(metrics.contains("gateway_rate_limit_fallback_total"), "{metrics}");
    assert!(metrics.contains("gateway_rate_limit_degraded 1"), "{metrics}");
    assert!(metrics.contains(r#"source="local""#), "{metrics}");

    // Redis back: decisions are shared again (the per-process state is not carried over).
    proxy.restore();
    let mut shared = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = bad_login(&http, "z@example.com", &[]).await;
        if answer.status == 401 && answer.header("ratelimit-limit") == Some("5") {
            shared = true;
            break;
        }
    }
    assert!(shared, "the limiter did not return to Redis");
}

/// Authentication happens at the gateway: no token, a forged token and a revoked token never
/// reach an upstream (here: one that does not exist); a valid token does.
#[tokio::test]
async fn tokens_are_checked_before_any_upstream_call() {
    let identity = TestIdentity::spawn().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(Some(&identity)).set("upstreams.ledger", format!("http://{closed}")),
    )
    .await;
    let http = Http::new(gateway.addr);
    let path = "/api/v1/accounts/0190b7a2-6c1e-7d4a-9a51-3f2c8e4b1d20/balance";
    http.get(path, None).await.problem(401, "UNAUTHENTICATED");
    http.get(path, Some("eyJhbGciOiJub25lIn0.e30.")).await.problem(401, "UNAUTHENTICATED");

    let user = identity.user("carol@example.com").await;
    // Valid: the gateway lets it through and the (missing) upstream answers 503.
    http.get(path, Some(&user.tokens.access_token)).await.problem(503, "UNAVAILABLE");
    // Revoked (logout revokes the session): refused by the gateway itself.
    let mut client = identity.client().await;
    client
        .logout(bank_testkit::identity::bearer(
            bank_proto::identity::v1::LogoutRequest::default(),
            &user.tokens.access_token,
        ))
        .await
        .expect("logout");
    http.get(path, Some(&user.tokens.access_token)).await.problem(401, "TOKEN_REVOKED");

    // 403 from the service for a customer on an admin route; 409 for a duplicate.
    http.get("/api/v1/admin/users", Some(&identity.user("dave@example.com").await.tokens.access_token))
        .await
        .problem(403, "PERMISSION_DENIED");
    let admin = identity.admin().await;
    let create = |key: &'static str| {
        let http = http.clone();
        let auth = format!("Bearer {}", admin.access_token);
        async move {
            let body = serde_json::to_vec(
                &json!({"name": "batch-job", "scopes": ["ledger:read"], "reason": "test"}),
            )
            .unwrap();
            http.send(
                Method::POST,
                "/api/v1/admin/service-clients",
                &[("content-type", "application/json"), ("authorization", &auth), ("idempotency-key", key)],
                Some(body),
            )
            .await
        }
    };
    assert_eq!(create("k1").await.status, 200);
    create("k2").await.problem(409, "ALREADY_EXISTS");
}

/// Every authenticated route is limited per user; the headers show the allowance.
#[tokio::test]
async fn authenticated_routes_are_limited_per_user() {
    let identity = TestIdentity::spawn().await;
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(Some(&identity)).set("rate_limits.per_user.limit", 3),
    )
    .await;
    let http = Http::new(gateway.addr);
    let user = identity.user("erin@example.com").await;
    for remaining in (0..3).rev() {
        let answer = http.get("/api/v1/me", Some(&user.tokens.access_token)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(seconds(&answer, "ratelimit-remaining"), remaining);
    }
    let limited = http.get("/api/v1/me", Some(&user.tokens.access_token)).await;
    limited.problem(429, "RATE_LIMITED");
    assert!((1..=20).contains(&seconds(&limited, "retry-after")));
    // Another user has their own allowance.
    let other = identity.user("frank@example.com").await;
    assert_eq!(http.get("/api/v1/me", Some(&other.tokens.access_token)).await.status, 200);
}

/// CORS: an allowed origin gets its preflight and credentials; an unlisted or look-alike origin
/// and `null` get no Access-Control-Allow-Origin. Security headers are on every answer.
#[tokio::test]
async fn cors_allows_only_listed_origins_and_every_answer_is_hardened() {
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(None)
            .set("edge.hsts", true)
            .set("edge.cors_allowed_origins", vec!["https://app.bank.example".to_owned()]),
    )
    .await;
    let http = Http::new(gateway.addr);
    let preflight = |origin: &'static str| {
        let http = http.clone();
        async move {
            http.send(
                Method::OPTIONS,
                "/api/v1/accounts",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "authorization, content-type, idempotency-key"),
                ],
                None,
            )
            .await
        }
    };
    let allowed = preflight("https://app.bank.example").await;
    assert_eq!(allowed.status, 204);
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://app.bank.example"));
    assert_eq!(allowed.header("access-control-allow-credentials"), Some("true"));
    assert!(allowed.header("access-control-allow-headers").unwrap().contains("idempotency-key"));
    assert!(allowed.header("access-control-allow-methods").unwrap().contains("POST"));

    for origin in
        ["https://evil.example", "https://app.bank.example.evil.example", "null", "http://app.bank.example"]
    {
        let refused = preflight(origin).await;
        assert!(refused.header("access-control-allow-origin").is_none(), "{origin}");
        refused.problem(403, "PERMISSION_DENIED");
    }

    // An actual cross-origin request from the listed origin can read the answer (and its headers).
    let answer =
        http.send(Method::GET, "/api/v1/openapi.json", &[("origin", "https://app.bank.example")], None).await;
    assert_eq!(answer.header("access-control-allow-origin"), Some("https://app.bank.example"));
    let exposed = answer.header("access-control-expose-headers").unwrap().to_owned();
    for name in
        ["retry-after", "x-request-id", "idempotent-replay", "ratelimit-remaining", "content-disposition"]
    {
        assert!(exposed.split(", ").any(|h| h == name), "{name} is readable by a browser: {exposed}");
    }
    let answer =
        http.send(Method::GET, "/api/v1/openapi.json", &[("origin", "https://evil.example")], None).await;
    assert!(answer.header("access-control-allow-origin").is_none());

    for answer in [http.get("/api/v1/nope", None).await, http.get("/api/v1/accounts", None).await] {
        assert!(answer.header("strict-transport-security").unwrap().starts_with("max-age="));
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    }
}

/// Body and JSON limits are settings (413, 400); a trusted proxy's plain-HTTP request is
/// redirected to HTTPS; a full house answers 503 with Retry-After.
#[tokio::test]
async fn edge_limits_redirects_and_load_shedding() {
    let gateway = bank_testkit::spawn_with::<Gateway>(
        gateway::options(None)
            .set("edge.max_body_bytes", 64)
            .set("edge.max_json_depth", 4)
            .set("edge.https_redirect", true)
            .set("edge.trusted_proxies", vec!["127.0.0.0/8".to_owned()]),
    )
    .await;
    let http = Http::new(gateway.addr);
    let json = [("content-type", "application/json")];
    let big = serde_json::to_vec(&json!({"email": "a".repeat(100)})).unwrap();
    http.send(Method::POST, "/api/v1/auth/register", &json, Some(big))
        .await
        .problem(413, "PAYLOAD_TOO_LARGE");
    let deep = br#"{"email": [[[[["x"]]]]]}"#.to_vec();
    let problem = http
        .send(Method::POST, "/api/v1/auth/register", &json, Some(deep))
        .await
        .problem(400, "VALIDATION_FAILED");
    assert_eq!(problem["violations"][0]["code"], "TOO_DEEP");

    let answer = http
        .send(
            Method::GET,
            "/api/v1/openapi.json?x=1",
            &[("x-forwarded-proto", "http"), ("host", "api.bank.example")],
            None,
        )
        .await;
    assert_eq!(answer.status, 308);
    assert_eq!(answer.header("location"), Some("https://api.bank.example/api/v1/openapi.json?x=1"));
    // Already HTTPS: served.
    let answer =
        http.send(Method::GET, "/api/v1/openapi.json", &[("x-forwarded-proto", "https")], None).await;
    assert_eq!(answer.status, 200);

    // Load shedding: one slot, held by a slow upstream call, the second request is shed.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    tokio::spawn(async move {
        // Accept and never answer: the upstream call hangs until its deadline.
        let mut held = Vec::new();
        while let Ok((socket, _)) = slow.accept().await {
            held.push(socket);
        }
    });
    let shedding = bank_testkit::spawn_with::<Gateway>(
        gateway::options(None)
            .set("server.max_concurrent_requests", 1)
            .set("upstreams.identity", format!("http://{slow_addr}"))
            .set("upstreams.request_timeout", "3s")
            .set("upstreams.connect_timeout", "10s")
            .set("upstreams.retries", 0),
    )
    .await;
    let http = Http::new(shedding.addr);
    let hanging = {
        let http = http.clone();
        tokio::spawn(async move { http.get("/.well-known/jwks.json", None).await })
    };
    let mut shed = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = http.get("/api/v1/openapi.json", None).await;
        if answer.status == 503 {
            shed = Some(answer);
            break;
        }
    }
    let shed = shed.expect("a second request while the only slot is held is shed");
    shed.problem(503, "RESOURCE_EXHAUSTED");
    assert_eq!(seconds(&shed, "retry-after"), 1);
    hanging.await.unwrap().problem(504, "DEADLINE_EXCEEDED");
}

/// Readiness follows Redis and every configured upstream's gRPC health.
#[tokio::test]
async fn readiness_follows_the_upstreams() {
    let identity = TestIdentity::spawn().await;
    let ready = bank_testkit::spawn_with::<Gateway>(gateway::options(Some(&identity))).await;
    assert_eq!(http_get(ready.addr, "/health/ready").await.0, 200);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = bank_platform::config::Sources::default()
        .with("server.listen_addr", "127.0.0.1:0")
        .with("server.admin_addr", "127.0.0.1:0")
        .with("server.readiness_interval", "100ms")
        .with("server.readiness_timeout", "500ms")
        .with("redis.url", bank_testkit::redis_url())
        .with("upstreams.identity", identity.url())
        .with("upstreams.ledger", format!("http://{closed}"))
        .with("upstreams.connect_timeout", "200ms")
        .with("upstreams.required_for_readiness", vec!["identity".to_owned(), "ledger".to_owned()]);
    let config = bank_platform::config::load::<bank_gateway::Config>(&config).unwrap();
    let app = <Gateway as bank_platform::Service>::build(config).await.unwrap();
    let readiness = app.readiness();
    let addr = app.local_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!readiness.is_ready(), "ready although the ledger is down");
    assert_eq!(http_get(addr, "/health/ready").await.0, 503);
    stop.cancel();
    task.await.unwrap().unwrap();
}
