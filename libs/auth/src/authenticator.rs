//! The platform's authentication slot, filled: bearer token -> verified claims -> revocation check
//! -> [`Principal`] in the request extensions.

use std::{collections::HashSet, sync::Arc};

use bank_platform::{ErrorCode, ServiceError, grpc::Authenticate};
use futures::future::BoxFuture;

use crate::{
    Claims, Principal, Revocation, Subject, TokenStatus, Verifier, revocation::Unknown, verifier::Error,
};

/// Authenticates every call except the public RPCs given at construction.
pub struct Authenticator {
    verifier: Arc<Verifier>,
    revocation: Arc<Revocation>,
    public: HashSet<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("public", &self.public).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `public` lists gRPC paths (`/bank.identity.v1.IdentityService/Login`) that need no token.
    #[must_use]
    pub fn new(verifier: Arc<Verifier>, revocation: Arc<Revocation>, public: &[&str]) -> Self {
        Self { verifier, revocation, public: public.iter().map(|p| (*p).to_owned()).collect() }
    }

    /// Authenticates a bearer token outside the gRPC stack (the gateway, tests).
    ///
    /// # Errors
    /// `UNAUTHENTICATED` (with `UNAUTHENTICATED`, `TOKEN_EXPIRED` or `TOKEN_REVOKED`), or
    /// `UNAVAILABLE` when keys or revocation state cannot be had.
    pub async fn principal_for(&self, token: &str) -> Result<Principal, tonic::Status> {
        let claims = match self.verifier.verify(token).await {
            Ok(claims) => claims,
            Err(err) => {
                let (result, status) = match &err {
                    Error::Expired => {
                        ("expired", ServiceError::new(ErrorCode::TokenExpired, "token expired"))
                    }
                    Error::Invalid(_) => {
                        ("invalid", ServiceError::new(ErrorCode::Unauthenticated, "invalid token"))
                    }
                    Error::KeysUnavailable(_) => (
                        "unavailable",
                        ServiceError::new(ErrorCode::Unavailable, "cannot verify tokens right now"),
                    ),
                };
                metrics::counter!("auth_token_verifications_total", "result" => result).increment(1);
                tracing::info!(reason = %err, "token refused");
                return Err(status.into());
            }
        };
        match self.revocation.check(&claims).await {
            Ok(TokenStatus::Valid) => {
                metrics::counter!("auth_token_verifications_total", "result" => "ok").increment(1);
                Ok(to_principal(claims))
            }
            Ok(TokenStatus::Revoked) => {
                metrics::counter!("auth_token_verifications_total", "result" => "revoked").increment(1);
                tracing::info!("revoked token refused");
                Err(ServiceError::new(ErrorCode::TokenRevoked, "token revoked").into())
            }
            Err(Unknown(why)) => {
                metrics::counter!("auth_token_verifications_total", "result" => "unavailable").increment(1);
                tracing::warn!(why, "refusing: revocation state unknown");
                Err(ServiceError::new(ErrorCode::Unavailable, "cannot check tokens right now").into())
            }
        }
    }
}

/// The bearer token of `authorization: Bearer <token>`.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

fn to_principal(claims: Claims) -> Principal {
    let (subject, grants) = match (claims.sid, uuid::Uuid::parse_str(&claims.sub)) {
        (Some(_), Ok(user)) => (Subject::User(user), claims.roles),
        _ => (
            Subject::Service(claims.sub),
            claims.scope.unwrap_or_default().split_whitespace().map(str::to_owned).collect(),
        ),
    };
    Principal {
        subject,
        grants,
        token_id: claims.jti,
        expires_at: claims.exp,
        session_id: claims.sid,
        token_version: claims.tv.unwrap_or_default(),
        acr: claims.acr.unwrap_or_default(),
        auth_time: claims.auth_time,
    }
}

impl Authenticate for Authenticator {
    fn authenticate<'a>(
        &'a self,
        parts: &'a mut http::request::Parts,
    ) -> BoxFuture<'a, Result<(), tonic::Status>> {
        Box::pin(async move {
            if self.public.contains(parts.uri.path()) {
                return Ok(());
            }
            let Some(token) = bearer(&parts.headers) else {
                metrics::counter!("auth_token_verifications_total", "result" => "missing").increment(1);
                return Err(ServiceError::new(ErrorCode::Unauthenticated, "authentication required").into());
            };
            let principal = self.principal_for(token).await?;
            parts.extensions.insert(principal);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn only_a_bearer_token_is_taken() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc.def.ghi"));
        headers.insert("authorization", "bearer   xyz ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
