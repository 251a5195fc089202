//! The edge, before routing: client IP, HTTPS redirect, load shedding, the per-request timeout,
//! CORS and the security headers every answer carries.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use bank_platform::{ErrorCode, config::ServerConfig};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::sync::Semaphore;

use crate::{
    client_ip::{ClientIp, TrustedProxies},
    config::EdgeConfig,
    origin::parse_origin,
    problem::Problem,
};

/// Request headers a browser may send cross-origin.
const ALLOWED_HEADERS: &str =
    "authorization, content-type, idempotency-key, x-request-id, traceparent, tracestate";
/// Response headers a browser may read cross-origin.
const EXPOSED_HEADERS: &str = "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset, \
     idempotent-replay, content-disposition, www-authenticate, location";
const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";

/// The edge's settings, resolved once.
#[derive(Debug)]
pub(crate) struct Edge {
    origins: Vec<String>,
    cors_max_age: HeaderValue,
    hsts: Option<HeaderValue>,
    https_redirect: bool,
    pub(crate) proxies: TrustedProxies,
    request_timeout: Duration,
    slots: Arc<Semaphore>,
}

impl Edge {
    pub(crate) fn new(config: &EdgeConfig, server: &ServerConfig) -> Result<Self, String> {
        let origins =
            config.cors_allowed_origins.iter().map(|o| parse_origin(o)).collect::<Result<_, _>>()?;
        Ok(Self {
            origins,
            cors_max_age: HeaderValue::from(config.cors_max_age.as_secs()),
            hsts: config.hsts.then(|| {
                HeaderValue::from_str(&format!(
                    "max-age={}; includeSubDomains",
                    config.hsts_max_age.as_secs()
                ))
                .unwrap_or(HeaderValue::from_static("max-age=31536000; includeSubDomains"))
            }),
            https_redirect: config.https_redirect,
            proxies: TrustedProxies::parse(&config.trusted_proxies)?,
            request_timeout: server.request_timeout,
            slots: Arc::new(Semaphore::new(server.max_concurrent_requests.max(1))),
        })
    }

    /// The allowed origin the request came from, if it came from one.
    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
        let normalized = parse_origin(origin).ok()?;
        self.origins.contains(&normalized).then(|| HeaderValue::from_str(origin).ok()).flatten()
    }
}

/// See the module documentation.
pub(crate) async fn layer(State(edge): State<Arc<Edge>>, mut request: Request, next: Next) -> Response {
    // Client IP: the socket peer, or the trusted proxies' X-Forwarded-For.
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(peer) = peer {
        let client = edge.proxies.client_ip(peer, request.headers());
        request.extensions_mut().insert(ClientIp(client));
    }

    if edge.https_redirect
        && peer.is_some_and(|p| edge.proxies.trusts(p))
        && request
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"http"))
    {
        return secured(&edge, redirect_to_https(&request), None);
    }

    let origin = edge.allowed_origin(request.headers());
    let has_origin = request.headers().contains_key(header::ORIGIN);
    if request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let response = match &origin {
            Some(_) => {
                let mut response = StatusCode::NO_CONTENT.into_response();
                let headers = response.headers_mut();
                headers
                    .insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
                headers
                    .insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, edge.cors_max_age.clone());
                response
            }
            None => {
                metrics::counter!("gateway_cors_refusals_total").increment(1);
                Problem::new(ErrorCode::PermissionDenied, "this origin may not call the API").into_response()
            }
        };
        return secured(&edge, response, origin.filter(|_| has_origin));
    }

    // Load shedding: a full house answers 503 at once instead of queueing.
    let Ok(_slot) = edge.slots.clone().try_acquire_owned() else {
        metrics::counter!("gateway_requests_shed_total").increment(1);
        let mut problem =
            Problem::new(ErrorCode::ResourceExhausted, "the gateway is at capacity; retry shortly");
        problem.retry_after = Some(1);
        return secured(&edge, problem.into_response(), origin);
    };

    let response = match tokio::time::timeout(edge.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            Problem::new(ErrorCode::DeadlineExceeded, "the request took too long; its outcome is unknown")
                .into_response()
        }
    };
    secured(&edge, response, origin)
}

/// 308 to the same path on `https://` (the Host header, when it is a plain host name).
fn redirect_to_https(request: &Request) -> Response {
    let host =
        request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| {
            !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
    let Some(host) = host else {
        return Problem::new(ErrorCode::ValidationFailed, "a Host header is required").into_response();
    };
    let path = request.uri().path_and_query().map_or("/", http::uri::PathAndQuery::as_str);
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{path}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The headers every answer carries, plus CORS for an allowed origin.
fn secured(edge: &Edge, mut response: Response, origin: Option<HeaderValue>) -> Response {
    let headers = response.headers_mut();
    if let Some(hsts) = &edge.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized_and_wildcards_refused() {
        assert_eq!(parse_origin("https://App.Example.com").unwrap(), "https://app.example.com");
        assert_eq!(parse_origin("https://app.example.com:443").unwrap(), "https://app.example.com");
        assert_eq!(parse_origin("http://localhost:3000").unwrap(), "http://localhost:3000");
        for bad in [
            "*",
            "null",
            "NULL",
            "ftp://x",
            "https://a.com/path",
            "https://u@a.com",
            "a.com",
            "https://a.com/",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn look_alike_origins_do_not_match() {
        let config = EdgeConfig {
            cors_allowed_origins: vec!["https://bank.example.com".to_owned()],
            ..EdgeConfig::default()
        };
        let edge = Edge::new(&config, &ServerConfig::default()).unwrap();
        let headers = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            h
        };
        assert!(edge.allowed_origin(&headers("https://bank.example.com")).is_some());
        assert!(edge.allowed_origin(&headers("https://BANK.example.com:443")).is_some());
        for other in [
            "https://bank.example.com.evil.com",
            "https://evilbank.example.com",
            "http://bank.example.com",
            "https://bank.example.com:8443",
            "null",
        ] {
            assert!(edge.allowed_origin(&headers(other)).is_none(), "{other}");
        }
    }
}
