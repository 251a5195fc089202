//! bank-gateway: the REST/JSON edge of the mesh. Owns nothing durable; Redis holds rate limits and
//! the token blocklist.
//!
//! Must not depend on any service crate: it reaches services through their gRPC contracts only.
//!
//! The REST routes are generated at build time (`build/`) from the `google.api.http` annotations of
//! the contracts: one typed handler per annotated RPC that transcodes canonical proto3 JSON to the
//! request message, calls the service's tonic client and answers the response as proto3 JSON
//! (`transcode`); every failure is one problem+json shape ([`Problem`]); the OpenAPI 3.1 document
//! of the same routes is served at `/api/v1/openapi.json`. Hand-written routes: the OpenAPI
//! document and the `/.well-known/jwks.json` alias.
//!
//! A request passes, outermost first: `context` (request id, trace, access log, metrics) ->
//! `edge` (client IP, HTTPS redirect, CORS, load shedding, timeout, security headers) -> routing
//! -> `gate` (rate limits in Redis, authentication with `bank-auth`) -> the generated handler
//! (transcoding, retries of reads, the upstream's circuit breaker).

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    response::{IntoResponse as _, Response},
};
use bank_platform::{App, AppBuilder, BoxError, ErrorCode, Service, config::TelemetryConfig, health, redis};
use bank_proto::identity::v1::{
    GetJwksRequest, GetJwksResponse, identity_service_client::IdentityServiceClient,
};
use futures::future::BoxFuture;
use http::StatusCode;

mod breaker;
mod client_ip;
mod config;
mod context;
mod edge;
mod gate;
mod origin;
mod problem;
mod ratelimit;
mod transcode;
mod upstream;
mod upstreams;

pub use config::{Config, EdgeConfig, UpstreamsConfig};
pub use problem::{Problem, Violation};
pub use ratelimit::{Quota, RateLimitConfig};
pub use routes::ROUTES;
pub use transcode::{MAX_BODY_BYTES, RouteInfo};

use transcode::{BodySpec, RouteSpec, Upstream, Upstreams, unary};

/// The generated handlers and route table (`OUT_DIR/routes.rs`, written by `build/codegen.rs`).
#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
mod routes {
    #[allow(unused_imports, reason = "what the generated code needs depends on the contracts")]
    use crate::transcode::{
        BodySpec, Kind, PathParam, QueryParam, RouteInfo, RouteSpec, Upstream, Upstreams, each_item,
        each_value, http_body_response, json_response, json_response_with, unary, z_normalize,
    };

    include!(concat!(env!("OUT_DIR"), "/routes.rs"));
}

/// The names of the routed RPCs (`OUT_DIR/route_rpcs.rs`), a leaf so that config does not depend
/// on the handlers.
mod route_rpcs {
    include!(concat!(env!("OUT_DIR"), "/route_rpcs.rs"));
}

/// The OpenAPI 3.1 document of every generated route (`OUT_DIR/openapi.json`, `build/openapi.rs`).
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The gateway as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Gateway;

impl Service for Gateway {
    const NAME: &'static str = "gateway";
    type Config = Config;

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: Config) -> Result<App, BoxError> {
        let redis = redis::connect(&config.redis).await?;
        let upstreams = Upstreams::connect_lazy(&config.upstreams, &config.edge)?;
        // The gateway calls `principal_for` itself; its public routes are in the route table.
        let authenticator = bank_auth::setup::remote(&config.auth, &redis, &[])?;
        let limiter = ratelimit::Limiter::new(config.rate_limits.clone(), Some(redis.clone()));
        let gate = gate::Gate::new(ROUTES, limiter, authenticator, config.edge.max_body_bytes);
        let edge = edge::Edge::new(&config.edge, &config.server).map_err(|e| format!("edge: {e}"))?;
        let mut app =
            AppBuilder::http(Self::NAME, &config.server, router(upstreams.clone(), gate, edge)).redis(redis);
        for upstream in Upstream::ALL {
            if config.upstreams.required_for_readiness.iter().any(|name| name == upstream.name()) {
                app = app.check(UpstreamHealth {
                    name: upstream.name(),
                    channel: upstreams.channel(upstream).clone(),
                });
            }
        }
        app.bind().await
    }
}

/// The REST router: the generated routes, the hand-written ones, and the one error shape for
/// unknown paths (404) and known paths with another method (405).
fn router(upstreams: Upstreams, gate: gate::Gate, edge: edge::Edge) -> Router {
    routes::register(Router::new())
        .route("/api/v1/openapi.json", axum::routing::get(openapi))
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        // Rate limits and authentication: on routes only (after routing, before the handler).
        .route_layer(axum::middleware::from_fn_with_state(Arc::new(gate), gate::layer))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(upstreams)
        .layer(axum::middleware::from_fn_with_state(Arc::new(edge), edge::layer))
        // Outermost: every answer, 404 and 405 included, carries the request id and is logged.
        .layer(axum::middleware::from_fn(context::layer))
}

/// Readiness: an upstream's grpc.health.v1 answers SERVING (for the whole server, `""`).
struct UpstreamHealth {
    name: &'static str,
    channel: tonic::transport::Channel,
}

impl health::Check for UpstreamHealth {
    fn name(&self) -> &'static str {
        self.name
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut client = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
            let answer = client
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map_err(|status| format!("{}: {}", self.name, status.code()))?;
            let serving = answer.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if serving { Ok(()) } else { Err(format!("{} is not serving", self.name)) }
        })
    }
}

async fn not_found(uri: http::Uri) -> Problem {
    Problem::new(ErrorCode::RouteNotFound, format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> Problem {
    // There is no METHOD_NOT_ALLOWED reason in the contract: "no route for this path and method".
    Problem::new(ErrorCode::RouteNotFound, format!("{} is not allowed on {} (see Allow)", method, uri.path()))
        .with_status(405)
}

async fn openapi() -> Response {
    transcode::json_bytes(StatusCode::OK, OPENAPI_JSON.as_bytes().to_vec(), "no-cache")
}

static JWKS: RouteSpec = RouteSpec {
    rpc: "/bank.identity.v1.IdentityService/GetJwks",
    upstream: Upstream::Identity,
    idempotent: true,
    body: BodySpec::None,
    path_params: &[],
    query: &[],
    update_mask: None,
};

/// `GET /.well-known/jwks.json`: identity's `GetJwks` as a JWK Set (`keys` always present).
async fn jwks(State(upstreams): State<Upstreams>, request: Request) -> Response {
    let channel = upstreams.identity.clone();
    unary(
        &JWKS,
        &upstreams,
        request,
        move |request: tonic::Request<GetJwksRequest>| {
            let channel = channel.clone();
            async move { IdentityServiceClient::new(channel).get_jwks(request).await }
        },
        jwk_set,
    )
    .await
}

fn jwk_set(response: GetJwksResponse) -> Response {
    let keys: Result<Vec<serde_json::Value>, _> =
        response.keys.into_iter().map(serde_json::to_value).collect();
    match keys.and_then(|keys| serde_json::to_vec(&serde_json::json!({ "keys": keys }))) {
        Ok(body) => transcode::json_bytes(StatusCode::OK, body, "public, max-age=60"),
        Err(err) => {
            tracing::error!(error = %err, "cannot render the JWK Set");
            Problem::new(ErrorCode::Internal, "internal error").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn the_routed_rpc_names_are_the_route_tables_rpcs() {
        let from_routes: BTreeSet<&str> = super::ROUTES.iter().map(|r| r.rpc).collect();
        let names: BTreeSet<&str> = super::route_rpcs::ROUTE_RPCS.iter().copied().collect();
        assert_eq!(from_routes, names);
        assert!(!names.is_empty());
    }
}
