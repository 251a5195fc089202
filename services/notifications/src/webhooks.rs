//! Webhook delivery: the target check (no loopback, private, link-local or other internal targets
//! unless `webhooks.allowed_networks` says so — checked when an endpoint is saved and again on every
//! attempt against the addresses the name resolves to, and the connection goes to the address that
//! was checked, so a DNS answer cannot swap in an internal one), the signature, one HTTP attempt,
//! and the dispatcher with retries, dead letters and the per-endpoint circuit breaker.
//!
//! Signature: `Bankmesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! with a second `v1=` while a rotated secret is still valid. Redirects are not followed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bank_proto::events::v1 as events;
use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    catalog::Template,
    config::{Network, WebhookConfig},
    inbox::{self, Settings},
    mailer::backoff,
};

/// A parsed, acceptable endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https` or `http`.
    pub https: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

/// The target rules, from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    allow_http: bool,
    allowed: Vec<Network>,
}

impl Policy {
    /// From `webhooks.*` (validated at start).
    #[must_use]
    pub fn new(config: &WebhookConfig) -> Self {
        Self {
            allow_http: config.allow_http,
            allowed: config.allowed_networks.iter().filter_map(|n| Network::parse(n).ok()).collect(),
        }
    }

    /// Parses and checks a URL as an endpoint owner sends it. The message says what is wrong.
    ///
    /// # Errors
    /// Not an absolute http(s) URL, plain HTTP where not allowed, credentials in the URL, or an
    /// internal address.
    pub fn check_url(&self, url: &str) -> Result<Target, String> {
        if url.len() > 2048 {
            return Err("the URL is longer than 2048 characters".to_owned());
        }
        let uri: http::Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_http => false,
            Some("http") => return Err("the URL must use https".to_owned()),
            _ => return Err("the URL must be an absolute https URL".to_owned()),
        };
        let authority = uri.authority().ok_or_else(|| "the URL has no host".to_owned())?;
        if authority.as_str().contains('@') {
            return Err("the URL must not contain credentials".to_owned());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err("the URL has no host".to_owned());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
        } else if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost")
        {
            self.check_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        }
        let path = uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str).to_owned();
        Ok(Target { https, host, port, path })
    }

    /// Whether deliveries may reach `ip`.
    ///
    /// # Errors
    /// An internal address outside `allowed_networks`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if internal(ip) && !self.allowed.iter().any(|n| n.contains(ip)) {
            return Err(format!("{ip} is an internal address (loopback, private, link-local or reserved)"));
        }
        Ok(())
    }

    /// Resolves the target's host and checks every address it answers; the first one is used.
    ///
    /// # Errors
    /// The name does not resolve, or resolves to an internal address.
    pub async fn resolve(&self, target: &Target) -> Result<SocketAddr, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|_| format!("{} does not resolve", target.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} does not resolve", target.host));
        }
        for addr in &addrs {
            self.check_ip(addr.ip())?;
        }
        Ok(addrs[0])
    }
}

/// Loopback, private, link-local, unspecified, multicast, broadcast, shared (CGNAT), documentation,
/// benchmarking and reserved ranges, and IPv6 forms that wrap an IPv4 address judged the same.
#[must_use]
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) wraps an IPv4 address too.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                let v4 = Ipv4Addr::new(a, b, c, d);
                return internal_v4(v4);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
                || (s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated) and ::/96
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240 // reserved
}

/// `t=<t>,v1=<hex>[,v1=<hex>]` over `"<t>.<body>"`.
#[must_use]
pub fn signature(secrets: &[&str], t: i64, body: &str) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&sign(secret, t, body));
    }
    header
}

/// Hex HMAC-SHA256 of `"<t>.<body>"`.
#[must_use]
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The receiver's check (the documented algorithm): a `v1` that matches one of the secrets and a
/// timestamp within `tolerance` of `now`.
#[must_use]
pub fn verify(header: &str, body: &str, secret: &str, now: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance {
        return false;
    }
    let expected = sign(secret, t, body);
    candidates.iter().any(|c| constant_eq(c.as_bytes(), expected.as_bytes()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new signing secret: `whsec_` and 32 random bytes, base64url.
#[must_use]
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("whsec_{}", base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes))
}

/// One attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it started.
    pub started_at: OffsetDateTime,
    /// Milliseconds.
    pub duration_ms: i32,
    /// HTTP status (0 = none).
    pub http_status: i32,
    /// Transport error or refusal.
    pub error: String,
    /// The first KiB of the answer.
    pub excerpt: String,
}

impl Attempt {
    /// A 2xx answer.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.http_status)
    }
}

/// What one delivery sends.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Endpoint URL.
    pub url: &'a str,
    /// Current secret and, while valid, the previous one.
    pub secrets: Vec<&'a str>,
    /// JSON body.
    pub body: &'a str,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: &'a str,
    /// Delivery id.
    pub delivery_id: Uuid,
    /// Attempt number.
    pub attempt: i32,
}

/// The TLS client configuration (Mozilla's roots, bundled: no system store needed).
#[must_use]
pub fn tls() -> Arc<tokio_rustls::rustls::ClientConfig> {
    let roots = tokio_rustls::rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    #[allow(clippy::expect_used)]
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Sends one signed POST; never panics, never follows redirects.
pub async fn attempt(
    policy: &Policy,
    tls: &Arc<tokio_rustls::rustls::ClientConfig>,
    timeout: Duration,
    request: &Request<'_>,
) -> Attempt {
    let started_at = OffsetDateTime::now_utc();
    let clock = Instant::now();
    let outcome = tokio::time::timeout(timeout, post(policy, tls, request)).await;
    let duration_ms = i32::try_from(clock.elapsed().as_millis()).unwrap_or(i32::MAX);
    let (http_status, error, excerpt) = match outcome {
        Ok(Ok((status, excerpt))) => (i32::from(status), String::new(), excerpt),
        Ok(Err(error)) => (0, error, String::new()),
        Err(_) => (0, format!("no answer within {}s", timeout.as_secs()), String::new()),
    };
    Attempt { started_at, duration_ms, http_status, error, excerpt }
}

async fn post(
    policy: &Policy,
    tls: &Arc<tokio_rustls::rustls::ClientConfig>,
    request: &Request<'_>,
) -> Result<(u16, String), String> {
    let target = policy.check_url(request.url)?;
    let addr = policy.resolve(&target).await?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {}", e.kind()))?;
    let t = OffsetDateTime::now_utc().unix_timestamp();
    let host_header = if (target.https && target.port == 443) || (!target.https && target.port == 80) {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let http_request = http::Request::post(target.path.as_str())
        .header(http::header::HOST, host_header)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "bankmesh-webhooks/1")
        .header("bankmesh-signature", signature(&request.secrets, t, request.body))
        .header("bankmesh-event-id", request.event_id.to_string())
        .header("bankmesh-event-type", request.event_type)
        .header("bankmesh-delivery-id", request.delivery_id.to_string())
        .header("bankmesh-delivery-attempt", request.attempt.to_string())
        .body(Full::new(Bytes::copy_from_slice(request.body.as_bytes())))
        .map_err(|_| "building the request failed".to_owned())?;
    if target.https {
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|_| "invalid TLS server name".to_owned())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(TokioIo::new(stream), http_request).await
    } else {
        exchange(TokioIo::new(tcp), http_request).await
    }
}

async fn exchange<IO>(io: IO, request: http::Request<Full<Bytes>>) -> Result<(u16, String), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("http: {e}"))?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| format!("http: {e}"));
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut excerpt = Vec::new();
            while excerpt.len() < 1024 {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            excerpt.extend_from_slice(data);
                        }
                    }
                    _ => break,
                }
            }
            excerpt.truncate(1024);
            Ok((status, String::from_utf8_lossy(&excerpt).into_owned()))
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The dispatcher's shared state.
#[derive(Clone)]
pub struct Dispatcher {
    /// The database.
    pub pool: PgPool,
    /// Settings.
    pub config: Arc<WebhookConfig>,
    /// Target rules.
    pub policy: Arc<Policy>,
    /// TLS.
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// For the owner emails.
    pub settings: Arc<Settings>,
    /// The mailer's wake-up.
    pub wake_mail: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// Delivery.
    pub delivery_id: Uuid,
    /// Endpoint.
    pub endpoint_id: Uuid,
    /// Event.
    pub event_id: Uuid,
    /// Type.
    pub event_type: String,
    /// JSON.
    pub body: String,
    /// Attempts before this one.
    pub attempt_count: i32,
    /// URL.
    pub url: String,
    /// Current secret.
    pub secret: String,
    /// Previous secret while valid.
    pub previous_secret: Option<String>,
    /// Owner user.
    pub owner_user_id: Option<Uuid>,
    /// Owner client.
    pub owner_client_id: Option<String>,
}

/// The columns of [`Claimed`] over `webhook_deliveries d` joined with `webhook_endpoints e`.
pub const CLAIMED_COLUMNS: &str = "d.delivery_id, d.endpoint_id, d.event_id, d.event_type, d.body, d.attempt_count, e.url, \
     e.secret, CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS previous_secret, \
     e.owner_user_id, e.owner_client_id";

impl Dispatcher {
    /// Runs until `stop`.
    pub async fn run(self, wake: Arc<tokio::sync::Notify>, stop: CancellationToken) {
        let mut last_gauges =
            Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
        loop {
            if last_gauges.elapsed() >= Duration::from_secs(15) {
                last_gauges = Instant::now();
                self.breaker_gauges().await;
            }
            let worked = match self.round().await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = %err, "webhook dispatcher round failed");
                    0
                }
            };
            if worked > 0 {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// `notifications_webhook_endpoints{status}`: how many endpoints are active, disabled by their
    /// owner, or failing (breaker open); and the deliveries waiting.
    async fn breaker_gauges(&self) {
        let counts: Result<Vec<(String, i64)>, _> =
            sqlx::query_as("SELECT status, count(*) FROM webhook_endpoints GROUP BY status")
                .fetch_all(&self.pool)
                .await;
        if let Ok(counts) = counts {
            for status in ["active", "disabled", "failing"] {
                let n = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("notifications_webhook_endpoints", "status" => status).set(n as f64);
            }
        }
        let waiting: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE status IN ('pending', 'retrying')",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok(n) = waiting {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("notifications_webhook_deliveries_waiting").set(n as f64);
        }
    }

    /// Claims due deliveries of active endpoints (leased past the attempt timeout) and attempts
    /// them concurrently. Answers how many.
    ///
    /// # Errors
    /// The database failed.
    pub async fn round(&self) -> Result<usize, sqlx::Error> {
        let lease = i64::try_from((self.config.timeout * 2).as_secs()).unwrap_or(60).max(30);
        let claimed: Vec<Claimed> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH due AS (SELECT d.delivery_id FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id) \
                          WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= now() AND e.status = 'active' \
                          ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED), \
                  leased AS (UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2) \
                             FROM due WHERE d.delivery_id = due.delivery_id RETURNING d.*) \
             SELECT {CLAIMED_COLUMNS} FROM leased d JOIN webhook_endpoints e USING (endpoint_id)"
        )))
        .bind(i64::try_from(self.config.concurrency).unwrap_or(16))
        .bind(lease)
        .fetch_all(&self.pool)
        .await?;
        let count = claimed.len();
        let results = futures::future::join_all(claimed.iter().map(|c| self.deliver(c))).await;
        for result in results {
            result?;
        }
        Ok(count)
    }

    /// Attempts one claimed delivery now and records the outcome.
    ///
    /// # Errors
    /// The database failed.
    pub async fn deliver(&self, c: &Claimed) -> Result<Attempt, sqlx::Error> {
        let number = c.attempt_count + 1;
        let mut secrets = vec![c.secret.as_str()];
        if let Some(previous) = &c.previous_secret {
            secrets.push(previous);
        }
        let request = Request {
            url: &c.url,
            secrets,
            body: &c.body,
            event_id: c.event_id,
            event_type: &c.event_type,
            delivery_id: c.delivery_id,
            attempt: number,
        };
        let outcome = attempt(&self.policy, &self.tls, self.config.timeout, &request).await;
        metrics::histogram!("notifications_webhook_attempt_seconds")
            .record(Duration::from_millis(u64::try_from(outcome.duration_ms).unwrap_or(0)).as_secs_f64());
        self.record(c, number, &outcome).await?;
        Ok(outcome)
    }

    async fn record(&self, c: &Claimed, number: i32, outcome: &Attempt) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt_number, started_at, duration_ms, http_status, error, \
               response_excerpt) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(c.delivery_id)
        .bind(number)
        .bind(outcome.started_at)
        .bind(outcome.duration_ms)
        .bind(outcome.http_status)
        .bind(&outcome.error)
        .bind(&outcome.excerpt)
        .execute(&mut *tx)
        .await?;
        if outcome.succeeded() {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'succeeded', attempt_count = $2, completed_at = now(), \
                   next_attempt_at = NULL WHERE delivery_id = $1",
            )
            .bind(c.delivery_id)
            .bind(number)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE endpoint_id = $1")
                .bind(c.endpoint_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            metrics::counter!("notifications_deliveries_total", "channel" => "webhook", "result" => "succeeded").increment(1);
            return Ok(());
        }
        let attempts = u32::try_from(number).unwrap_or(u32::MAX);
        let exhausted = attempts >= self.config.max_attempts;
        let delay = backoff(self.config.retry_base, self.config.max_backoff, attempts);
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE webhook_deliveries SET attempt_count = $2, \
               status = CASE WHEN $3 THEN 'failed' ELSE 'retrying' END, \
               completed_at = CASE WHEN $3 THEN now() END, \
               next_attempt_at = CASE WHEN $3 THEN NULL ELSE now() + make_interval(secs => $4::double precision / 1000) END \
             WHERE delivery_id = $1",
        )
        .bind(c.delivery_id)
        .bind(number)
        .bind(exhausted)
        .bind(delay_ms)
        .execute(&mut *tx)
        .await?;
        let (failures, status): (i32, String) = sqlx::query_as(
            "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1 WHERE endpoint_id = $1 \
             RETURNING consecutive_failures, status",
        )
        .bind(c.endpoint_id)
        .fetch_one(&mut *tx)
        .await?;
        if exhausted {
            sqlx::query(
                "INSERT INTO dead_letters (dead_letter_id, stream, consumer_group, event_id, event_type, delivery_id, \
                   attempts, last_error, first_failed_at) \
                 SELECT $1, 'webhooks', 'notifications', $2, $3, $4, $5, $6, MIN(started_at) FROM webhook_attempts \
                 WHERE delivery_id = $4",
            )
            .bind(Uuid::now_v7())
            .bind(c.event_id.to_string())
            .bind(&c.event_type)
            .bind(c.delivery_id)
            .bind(number)
            .bind(last_error(outcome))
            .execute(&mut *tx)
            .await?;
            let payload = events::WebhookDeliveryFailed {
                endpoint_id: c.endpoint_id.to_string(),
                owner_user_id: c.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                owner_client_id: c.owner_client_id.clone().unwrap_or_default(),
                delivery_id: c.delivery_id.to_string(),
                event_id: c.event_id.to_string(),
                event_type: c.event_type.clone(),
                attempts: number,
                last_http_status: outcome.http_status,
            };
            let subject = format!("webhook-endpoints/{}", c.endpoint_id);
            inbox::own_event(
                &mut tx,
                &self.settings,
                &subject,
                c.owner_user_id,
                Template::WebhookFailed,
                &payload,
            )
            .await?;
            metrics::counter!("notifications_dead_lettered_total", "stream" => "webhooks").increment(1);
        }
        let threshold = i32::try_from(self.config.breaker_threshold).unwrap_or(i32::MAX);
        if failures >= threshold && status == "active" {
            let reason = format!("{failures} consecutive failed deliveries; last: {}", last_error(outcome));
            sqlx::query(
                "UPDATE webhook_endpoints SET status = 'failing', disabled_reason = $2, updated_at = now() \
                 WHERE endpoint_id = $1",
            )
            .bind(c.endpoint_id)
            .bind(&reason)
            .execute(&mut *tx)
            .await?;
            let payload = events::WebhookEndpointDisabled {
                endpoint_id: c.endpoint_id.to_string(),
                owner_user_id: c.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                owner_client_id: c.owner_client_id.clone().unwrap_or_default(),
                consecutive_failures: failures,
                reason,
            };
            let subject = format!("webhook-endpoints/{}", c.endpoint_id);
            inbox::own_event(
                &mut tx,
                &self.settings,
                &subject,
                c.owner_user_id,
                Template::WebhookDisabled,
                &payload,
            )
            .await?;
            metrics::counter!("notifications_webhook_breaker_trips_total").increment(1);
            tracing::warn!(endpoint_id = %c.endpoint_id, failures, "webhook endpoint disabled by its circuit breaker");
        }
        tx.commit().await?;
        if exhausted || failures >= threshold {
            self.wake_mail.notify_one();
        }
        let result = if exhausted { "failed" } else { "retrying" };
        metrics::counter!("notifications_deliveries_total", "channel" => "webhook", "result" => result)
            .increment(1);
        Ok(())
    }
}

fn last_error(outcome: &Attempt) -> String {
    if outcome.http_status != 0 { format!("HTTP {}", outcome.http_status) } else { outcome.error.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> Policy {
        Policy { allow_http: false, allowed: Vec::new() }
    }

    #[test]
    fn internal_targets_are_refused() {
        for url in [
            "https://127.0.0.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://10.1.2.3/",
            "https://192.168.0.1/",
            "https://172.16.5.4/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://localhost/",
        ] {
            assert!(strict().check_url(url).is_err(), "{url} accepted");
        }
        assert!(strict().check_url("https://93.184.216.34/hook").is_ok());
        assert!(strict().check_url("https://[2606:2800:220:1::]/hook").is_ok());
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(strict().check_url("http://example.com/").unwrap_err(), "the URL must use https");
        assert!(strict().check_url("ftp://example.com/").is_err());
        assert!(strict().check_url("https://user:pw@example.com/").is_err());
        assert!(strict().check_url("/relative").is_err());
        let t = strict().check_url("https://hooks.example.com:8443/in?x=1").unwrap();
        assert_eq!(
            t,
            Target { https: true, host: "hooks.example.com".into(), port: 8443, path: "/in?x=1".into() }
        );
        let dev = Policy { allow_http: true, allowed: vec![Network::parse("127.0.0.0/8").unwrap()] };
        assert!(dev.check_url("http://127.0.0.1:9000/").is_ok());
        assert!(dev.check_url("http://169.254.169.254/").is_err(), "only the allowed network");
    }

    #[test]
    fn signatures_verify_and_expire() {
        let body = r#"{"id":"1"}"#;
        let header = signature(&["whsec_new", "whsec_old"], 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.matches("v1=").count(), 2);
        assert!(verify(&header, body, "whsec_new", 1_700_000_100, 300));
        assert!(verify(&header, body, "whsec_old", 1_700_000_100, 300));
        assert!(!verify(&header, body, "whsec_other", 1_700_000_100, 300));
        assert!(!verify(&header, body, "whsec_new", 1_700_000_301, 300), "too old");
        assert!(!verify(&header, "{}", "whsec_new", 1_700_000_000, 300), "body changed");
        // HMAC-SHA256 known answer (RFC 4231 style check of our framing).
        assert_eq!(sign("key", 1, "x").len(), 64);
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with("whsec_") && a.len() > 40);
        assert_ne!(a, b);
    }
}
