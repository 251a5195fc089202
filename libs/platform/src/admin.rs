//! The admin HTTP port: `/metrics` (Prometheus text), `/health/live`, `/health/ready`.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::health::Readiness;

/// The admin router.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(readiness)
}

async fn metrics() -> impl IntoResponse {
    let handle = crate::metrics::handle();
    handle.run_upkeep();
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}

/// Liveness: the process is up and its runtime answers.
pub async fn live() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Readiness: every critical dependency answered at the last check and the process is not shutting
/// down. The body's first line is `ready` or `not ready`; one line per dependency follows
/// (`redis: down (degraded: served through fallbacks)`).
pub async fn ready(State(readiness): State<Readiness>) -> impl IntoResponse {
    let ready = readiness.is_ready();
    let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
    for dependency in readiness.dependencies() {
        let state = match (dependency.up, dependency.critical) {
            (true, _) => "up",
            (false, true) => "down",
            (false, false) => "down (degraded: served through fallbacks)",
        };
        body.push_str(dependency.name);
        body.push_str(": ");
        body.push_str(state);
        body.push('\n');
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body)
}
