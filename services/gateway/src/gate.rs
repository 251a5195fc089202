//! Per route, before the upstream call: rate limits and authentication.
//!
//! Every request is charged to its client IP; public auth routes (register, login, refresh,
//! password reset, ...) also to the stricter per-IP auth class; authenticated routes to the user.
//! A protected route needs a bearer token that `bank-auth` accepts (signature, claims, revocation)
//! before any upstream is called; a refused token is still charged to the IP, so guessing tokens
//! is limited like everything else. Login (and the MFA step of it) is also charged to the
//! failed-login buckets — per IP and per submitted username, existing or not — and refunded when
//! the attempt did not fail with 401, so only failures use them up: the sixth failure within a
//! minute answers 429 with `Retry-After`, whatever the password.
//!
//! Limited routes carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds)
//! of the most constrained bucket.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use bank_auth::{Authenticator, Subject, bearer, subject_of};
use bank_platform::ErrorCode;
use http::{HeaderValue, Method, StatusCode};

use crate::{
    client_ip::ClientIp,
    problem::Problem,
    ratelimit::{Bucket, Decision, Limiter, username_key},
    transcode::RouteInfo,
};

/// The RPCs whose failures use up the failed-login allowance: passwords and second factors
/// (a wrong TOTP or recovery code in step-up, disable or regenerate counts like a wrong password).
const LOGIN_RPCS: [&str; 5] = [
    "bank.identity.v1.IdentityService/Login",
    "bank.identity.v1.IdentityService/CompleteMfaLogin",
    "bank.identity.v1.IdentityService/StepUp",
    "bank.identity.v1.IdentityService/DisableMfa",
    "bank.identity.v1.IdentityService/RegenerateRecoveryCodes",
];

/// The routes' rate limits and authentication.
pub(crate) struct Gate {
    routes: HashMap<(Method, &'static str), &'static RouteInfo>,
    limiter: Limiter,
    authenticator: Arc<Authenticator>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("routes", &self.routes.len())
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub(crate) fn new(
        routes: &'static [RouteInfo],
        limiter: Limiter,
        authenticator: Arc<Authenticator>,
        max_body_bytes: usize,
    ) -> Self {
        let routes = routes
            .iter()
            .filter_map(|r| Some(((Method::from_bytes(r.method.as_bytes()).ok()?, r.path), r)))
            .collect();
        Self { routes, limiter, authenticator, max_body_bytes }
    }
}

/// See the module documentation.
pub(crate) async fn layer(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| gate.routes.get(&(request.method().clone(), path.as_str())).copied());
    // Hand-written routes (the OpenAPI document, the JWKS) are public and not auth routes.
    let public = route.is_none_or(|r| r.public);
    let auth_route = route.is_some_and(|r| r.public);
    let login = route.is_some_and(|r| LOGIN_RPCS.contains(&r.rpc));
    let ip = request.extensions().get::<ClientIp>().map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    let config = gate.limiter.config();

    let mut buckets = vec![Bucket::new(format!("ip:{ip}"), config.per_ip, false)];
    if auth_route {
        buckets.push(Bucket::new(format!("auth-ip:{ip}"), config.auth_per_ip, true));
    }

    // Login: the failed-login buckets, per IP and per submitted username.
    let mut request = request;
    let mut login_buckets = Vec::new();
    if login {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, gate.max_body_bytes).await else {
            return Problem::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {} bytes", gate.max_body_bytes),
            )
            .into_response();
        };
        login_buckets.push(Bucket::new(format!("login-ip:{ip}"), config.failed_logins_per_ip, true));
        if let Some(username) = submitted_username(&bytes) {
            login_buckets.push(Bucket::new(
                format!("login-user:{}", username_key(&username)),
                config.failed_logins_per_username,
                true,
            ));
        }
        buckets.extend(login_buckets.iter().cloned());
        request = Request::from_parts(parts, Body::from(bytes));
    }

    let class = if login {
        "login"
    } else if auth_route {
        "auth"
    } else if public {
        "public"
    } else {
        "user"
    };
    let decision = if public {
        gate.limiter.charge(class, &buckets).await
    } else {
        // Signature and claims first (local, cached); then the revocation check and the
        // rate-limit decision (user bucket included) run side by side — two Redis round trips
        // at once instead of one after the other.
        let claims = match bearer(request.headers()) {
            None => Err(Problem::new(ErrorCode::Unauthenticated, "authentication required")),
            Some(token) => gate
                .authenticator
                .verify(token)
                .await
                .map_err(|status| Problem::from_status("gateway/authenticate", &status)),
        };
        let claims = match claims {
            Ok(claims) => claims,
            Err(problem) => {
                // Refused tokens still count against the IP (token guessing is limited too).
                let decision = gate.limiter.charge("auth_failure", &buckets).await;
                if !decision.allowed {
                    return limited(decision);
                }
                return with_headers(problem.into_response(), decision);
            }
        };
        let who = match subject_of(&claims) {
            Subject::User(id) => format!("user:{id}"),
            Subject::Service(client) => format!("client:{client}"),
        };
        buckets.push(Bucket::new(who, config.per_user, false));
        let (revocation, decision) =
            tokio::join!(gate.authenticator.not_revoked(claims), gate.limiter.charge(class, &buckets));
        if let Err(status) = revocation {
            return with_headers(
                Problem::from_status("gateway/authenticate", &status).into_response(),
                decision,
            );
        }
        decision
    };
    if !decision.allowed {
        return limited(decision);
    }
    let response = next.run(request).await;
    if login && response.status() != StatusCode::UNAUTHORIZED {
        // Not a failed login: give the failed-login allowance back.
        gate.limiter.refund("login", &login_buckets).await;
    }
    with_headers(response, decision)
}

/// The `email` member of a login body (absent or unparsable: no per-username bucket; the
/// upstream will refuse the request anyway).
fn submitted_username(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("email")?.as_str().filter(|e| !e.trim().is_empty()).map(str::to_owned)
}

/// 429 with `Retry-After` from the limiter's state.
fn limited(decision: Decision) -> Response {
    let mut problem =
        Problem::new(ErrorCode::RateLimited, "too many requests; retry after the indicated time");
    problem.retry_after = Some(ceil_secs(decision.retry_after).max(1));
    with_headers(problem.into_response(), decision)
}

fn with_headers(mut response: Response, decision: Decision) -> Response {
    if decision.is_limited() {
        let headers = response.headers_mut();
        headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(ceil_secs(decision.reset)));
    }
    response
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_username_comes_from_the_login_body() {
        assert_eq!(submitted_username(br#"{"email":"a@b.c","password":"x"}"#).as_deref(), Some("a@b.c"));
        assert_eq!(submitted_username(br#"{"password":"x"}"#), None);
        assert_eq!(submitted_username(b"not json"), None);
        assert_eq!(submitted_username(br#"{"email":" "}"#), None);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(std::time::Duration::from_millis(11_001)), 12);
        assert_eq!(ceil_secs(std::time::Duration::from_secs(3)), 3);
    }
}
