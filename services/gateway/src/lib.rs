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
//! Not yet here (the gateway issue's later steps): authentication in the gateway itself (the
//! services authenticate every call), rate limits, CORS and security headers, circuit breakers.

use axum::{
    Router,
    extract::{Request, State},
    response::{IntoResponse as _, Response},
};
use bank_platform::{App, AppBuilder, BoxError, ErrorCode, Service, config::TelemetryConfig, redis};
use bank_proto::identity::v1::{
    GetJwksRequest, GetJwksResponse, identity_service_client::IdentityServiceClient,
};
use http::StatusCode;

mod config;
mod context;
mod problem;
mod transcode;

pub use config::{Config, UpstreamsConfig};
pub use problem::{Problem, Violation};
pub use routes::ROUTES;
pub use transcode::{MAX_BODY_BYTES, RouteInfo};

use transcode::{BodySpec, RouteSpec, Upstreams, unary};

/// The generated handlers and route table (`OUT_DIR/routes.rs`, written by `build/codegen.rs`).
#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
mod routes {
    #[allow(unused_imports, reason = "what the generated code needs depends on the contracts")]
    use crate::transcode::{
        BodySpec, Kind, PathParam, QueryParam, RouteInfo, RouteSpec, Upstreams, each_item, each_value,
        http_body_response, json_response, json_response_with, unary, z_normalize,
    };

    include!(concat!(env!("OUT_DIR"), "/routes.rs"));
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
        let upstreams = Upstreams::connect_lazy(&config.upstreams)?;
        AppBuilder::http(Self::NAME, &config.server, router(upstreams)).redis(redis).bind().await
    }
}

/// The REST router: the generated routes, the hand-written ones, and the one error shape for
/// unknown paths (404) and known paths with another method (405).
fn router(upstreams: Upstreams) -> Router {
    routes::register(Router::new())
        .route("/api/v1/openapi.json", axum::routing::get(openapi))
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(upstreams)
        // Outermost: every answer, 404 and 405 included, carries the request id and is logged.
        .layer(axum::middleware::from_fn(context::layer))
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
    body: BodySpec::None,
    path_params: &[],
    query: &[],
};

/// `GET /.well-known/jwks.json`: identity's `GetJwks` as a JWK Set (`keys` always present).
async fn jwks(State(upstreams): State<Upstreams>, request: Request) -> Response {
    let channel = upstreams.identity.clone();
    unary(
        &JWKS,
        &upstreams,
        request,
        move |request: tonic::Request<GetJwksRequest>| async move {
            IdentityServiceClient::new(channel).get_jwks(request).await
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
