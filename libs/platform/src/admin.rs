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

/// Readiness: every dependency answered at the last check and the process is not shutting down.
pub async fn ready(State(readiness): State<Readiness>) -> impl IntoResponse {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
