//! The platform's authentication slot, filled: bearer token -> verified claims -> revocation check
//! -> [`Principal`] in the request extensions.

use std::{collections::HashSet, sync::Arc, time::Duration};

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
    step_up_max_age: Duration,
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
        Self {
            verifier,
            revocation,
            public: public.iter().map(|p| (*p).to_owned()).collect(),
            step_up_max_age: Duration::from_secs(300),
        }
    }

    /// How recent a second factor must be for step-up actions (`auth.step_up_max_age`; 5 min
    /// unless set). Decides [`Principal::recent_mfa`].
    #[must_use]
    pub fn with_step_up_max_age(mut self, max_age: Duration) -> Self {
        self.step_up_max_age = max_age;
        self
    }

    /// Authenticates a bearer token outside the gRPC stack (the gateway, tests).
    ///
    /// # Errors
    /// `UNAUTHENTICATED` (with `UNAUTHENTICATED`, `TOKEN_EXPIRED` or `TOKEN_REVOKED`), or
    /// `UNAVAILABLE` when keys or revocation state cannot be had.
    pub async fn principal_for(&self, token: &str) -> Result<Principal, tonic::Status> {
        let claims = self.verify(token).await?;
        self.not_revoked(claims).await
    }

    /// The first half of [`principal_for`](Self::principal_for): signature and claims (no
    /// revocation yet). The gateway runs the second half alongside its rate-limit decision.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` (`UNAUTHENTICATED` or `TOKEN_EXPIRED`), or `UNAVAILABLE` when no key can be had.
    pub async fn verify(&self, token: &str) -> Result<Claims, tonic::Status> {
        self.verifier.verify(token).await.map_err(|err| {
            let (result, status) = match &err {
                Error::Expired => ("expired", ServiceError::new(ErrorCode::TokenExpired, "token expired")),
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
            status.into()
        })
    }

    /// The second half of [`principal_for`](Self::principal_for): the revocation check of verified
    /// claims, and the principal they name.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` with `TOKEN_REVOKED`, or `UNAVAILABLE` when revocation cannot be decided.
    pub async fn not_revoked(&self, claims: Claims) -> Result<Principal, tonic::Status> {
        match self.revocation.check(&claims).await {
            Ok(TokenStatus::Valid) => {
                metrics::counter!("auth_token_verifications_total", "result" => "ok").increment(1);
                Ok(to_principal(claims, self.step_up_max_age))
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

/// Who verified claims name: `Subject::User` for a user token (a session and a UUID subject),
/// else the service client.
#[must_use]
pub fn subject_of(claims: &Claims) -> Subject {
    match (claims.sid, uuid::Uuid::parse_str(&claims.sub)) {
        (Some(_), Ok(user)) => Subject::User(user),
        _ => Subject::Service(claims.sub.clone()),
    }
}

/// The bearer token of `authorization: Bearer <token>` (the services' and the gateway's one rule).
#[must_use]
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

fn to_principal(claims: Claims, step_up_max_age: Duration) -> Principal {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let max_age = i64::try_from(step_up_max_age.as_secs()).unwrap_or(i64::MAX);
    // A second factor counts while it is recent; an auth_time in the future (clock skew) counts
    // as now.
    let recent_mfa = claims.acr.as_deref() == Some(crate::principal::ACR_MFA)
        && claims.auth_time.is_some_and(|at| now.saturating_sub(at) <= max_age);
    let (subject, grants) = match subject_of(&claims) {
        user @ Subject::User(_) => (user, claims.roles),
        service @ Subject::Service(_) => {
            (service, claims.scope.unwrap_or_default().split_whitespace().map(str::to_owned).collect())
        }
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
        recent_mfa,
        step_up_max_age: step_up_max_age.as_secs(),
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
