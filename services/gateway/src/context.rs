//! The outermost layer: every request gets a request id (the caller's `X-Request-Id` when valid,
//! else a new UUIDv7), a span joined to the caller's `traceparent`, one access-log line (card
//! numbers in the path masked), and the id echoed on the answer. Problem documents read the id from a task-local.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use bank_money::card_number;
use bank_platform::telemetry;
use http::HeaderValue;
use tracing::Instrument as _;

/// The request id header, read from clients, sent upstream and echoed back.
pub(crate) const REQUEST_ID: &str = "x-request-id";

tokio::task_local! {
    static CURRENT: String;
}

/// The request id of the request being handled, if any.
pub(crate) fn current_request_id() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The request id, as a request extension for handlers.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// See the module documentation.
pub(crate) async fn layer(mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(request_id.clone()));

    let method = request.method().clone();
    // The path as logged and traced: a card number in it (spaces arrive as %20) is masked to its
    // last four (PCI DSS 3.5.1); the route label below is the template and holds none.
    let path = card_number::masked(request.uri().path().replace("%20", " "));
    // The route template (bounded label values); unknown paths share one label.
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let span = tracing::info_span!(
        "http",
        http.method = %method,
        http.path = %path,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        otel.kind = "server",
        otel.name = %method,
    );
    let trace_id = telemetry::adopt_remote_parent(&span, telemetry::extract_context(request.headers()));
    span.record("trace_id", trace_id.as_str());

    let start = Instant::now();
    let mut response = CURRENT.scope(request_id.clone(), next.run(request)).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    metrics::counter!(
        "gateway_http_requests_total",
        "route" => route.clone(),
        "method" => method.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("gateway_http_request_duration_seconds", "route" => route, "method" => method.to_string())
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(http.status = status, elapsed_us, "request");
        } else {
            tracing::info!(http.status = status, elapsed_us, "request");
        }
    });
    response
}

/// The same rule as the gRPC services: 1-128 visible ASCII characters.
fn valid_request_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}
