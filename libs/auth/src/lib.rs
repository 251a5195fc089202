//! bank-auth: the one authentication check every bankmesh service and the gateway run.
//!
//! * [`Verifier`] checks an access token: EdDSA only (never `none`, no HS/RS confusion), `kid` from the
//!   JWKS (cached, refetched once on an unknown `kid`, refreshed periodically so revoked keys drop
//!   out), `typ` header `at+jwt`, `iss`, `aud`, `exp`, `nbf`. `jku`/`jwk`/`x5u` headers are refused.
//! * [`Revocation`] checks the blocklist (`jti`, `sid`) and the user's token version in **one** Redis
//!   round trip; when Redis cannot answer it asks identity ([`StatusSource`]) and otherwise refuses
//!   with `UNAVAILABLE` — a revoked token is never accepted.
//! * [`Authenticator`] plugs both into the platform's authentication slot: every call except the
//!   listed public RPCs (and health/reflection, exempt in the platform) needs a valid token; the
//!   [`Principal`] lands in request extensions for handlers to read with [`principal`].
//!
//! Must not depend on any service crate. Caller-supplied identity metadata (`x-user-id` and the like)
//! is never a source of a principal: the platform strips it before authentication runs.

mod authenticator;
mod claims;
mod config;
mod jwks;
mod principal;
mod revocation;
mod service_token;
pub mod setup;
mod verifier;

pub use authenticator::{Authenticator, bearer, subject_of};
pub use claims::{ACCESS_TOKEN_TYPE, Claims, MFA_PENDING_TOKEN_TYPE};
pub use config::{AuthConfig, ServiceConfig};
pub use jwks::{GrpcJwks, JwksSource, decoding_key};
pub use principal::{
    ACR_MFA, Principal, Subject, check_staff, principal, require_role, require_scope, require_staff,
    require_staff_user, require_step_up, require_step_up_of_enrolled, require_user,
};
pub use revocation::{GrpcStatus, Revocation, RevocationKeys, StatusSource, TokenStatus};
pub use service_token::ServiceTokens;
pub use verifier::{Error, Verifier};
