//! The claims of bankmesh access tokens (RFC 9068 style JWTs).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `typ` header (and claim) of access tokens, user and service alike.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// `typ` header (and claim) of MFA-pending tokens: good for the second login step only, refused by
/// every [`crate::Verifier`].
pub const MFA_PENDING_TOKEN_TYPE: &str = "mfa+jwt";

/// The claims of an access token.
///
/// A user token carries `sid` (its session), `tv` (the user's token version), `roles`, `acr` and
/// `auth_time`; a service token carries `scope` (space separated) and `sub` = the client id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// User id (UUID) or service client id.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Token id.
    pub jti: Uuid,
    /// Token type, equal to the `typ` header.
    pub typ: String,
    /// Session id (user tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// The user's token version when issued (user tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tv: Option<i64>,
    /// Roles (user tokens): `customer`, `support`, `teller`, `admin`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Scopes, space separated (service tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Authentication context: `pwd` or `mfa` (user tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// When the user authenticated, unix seconds (user tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}
