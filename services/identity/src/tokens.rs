//! Issuing tokens: access tokens (JWT, EdDSA, RFC 9068 claims) and opaque single-use secrets
//! (refresh tokens, email tokens) of which only the SHA-256 is stored.

use std::{sync::Arc, time::Duration};

use bank_auth::{ACCESS_TOKEN_TYPE, Claims};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Header};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::keys::{self, Keys};

/// A fresh opaque secret: 256 random bits, base64url.
#[must_use]
pub fn opaque() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of an opaque secret.
#[must_use]
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Seals `plaintext` (the pair a refresh answered) under a key derived from `holder_secret` (the
/// refresh token it rotated): only whoever presents that token again can open it; the database,
/// which keeps only the token's [`digest`], cannot. Nonce first, then the AES-256-GCM ciphertext.
#[must_use]
pub fn seal_for_holder(holder_secret: &str, plaintext: &[u8]) -> Vec<u8> {
    use aes_gcm::{AeadCore as _, aead::Aead as _};
    let cipher = holder_cipher(holder_secret);
    let nonce = aes_gcm::Aes256Gcm::generate_nonce(&mut aes_gcm::aead::OsRng);
    let aad = digest(holder_secret);
    // Encryption with a valid key and nonce cannot fail for inputs this small.
    let sealed =
        cipher.encrypt(&nonce, aes_gcm::aead::Payload { msg: plaintext, aad: &aad }).unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    out
}

/// Opens what [`seal_for_holder`] sealed for the same secret; `None` for anything else.
#[must_use]
pub fn open_for_holder(holder_secret: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    use aes_gcm::aead::Aead as _;
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    let aad = digest(holder_secret);
    holder_cipher(holder_secret)
        .decrypt(&aes_gcm::Nonce::from(nonce), aes_gcm::aead::Payload { msg: ciphertext, aad: &aad })
        .ok()
}

fn holder_cipher(holder_secret: &str) -> aes_gcm::Aes256Gcm {
    use aes_gcm::KeyInit as _;
    let key = Sha256::new()
        .chain_update(b"bankmesh/refresh-successor/v1\0")
        .chain_update(holder_secret.as_bytes())
        .finalize();
    aes_gcm::Aes256Gcm::new(&key)
}

/// A signed access token.
#[derive(Clone)]
pub struct AccessToken {
    /// The JWT. Secret.
    pub token: String,
    /// Its `jti`.
    pub jti: Uuid,
    /// Its expiry.
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("jti", &self.jti).field("expires_at", &self.expires_at).finish()
    }
}

/// Who a user token is for.
#[derive(Debug, Clone)]
pub struct UserGrant<'a> {
    /// The user.
    pub user_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The user's current token version.
    pub token_version: i64,
    /// Roles.
    pub roles: &'a [String],
    /// `pwd` or `mfa`.
    pub acr: &'a str,
    /// When the user authenticated.
    pub auth_time: OffsetDateTime,
}

/// Signs access tokens with the active key.
#[derive(Debug, Clone)]
pub struct Issuer {
    keys: Arc<Keys>,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    service_ttl: Duration,
}

impl Issuer {
    /// An issuer using `keys`.
    #[must_use]
    pub fn new(
        keys: Arc<Keys>,
        issuer: String,
        audience: String,
        access_ttl: Duration,
        service_ttl: Duration,
    ) -> Self {
        Self { keys, issuer, audience, access_ttl, service_ttl }
    }

    /// A user access token.
    ///
    /// # Errors
    /// No signing key, or signing failed.
    pub async fn user(&self, grant: &UserGrant<'_>) -> Result<AccessToken, keys::Error> {
        let now = OffsetDateTime::now_utc();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: grant.user_id.to_string(),
            exp: (now + self.access_ttl).unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: Uuid::now_v7(),
            typ: ACCESS_TOKEN_TYPE.to_owned(),
            sid: Some(grant.session_id),
            tv: Some(grant.token_version),
            roles: grant.roles.to_vec(),
            scope: None,
            acr: Some(grant.acr.to_owned()),
            auth_time: Some(grant.auth_time.unix_timestamp()),
        };
        self.sign(claims).await
    }

    /// A service token for `client_id` with `scopes`.
    ///
    /// # Errors
    /// No signing key, or signing failed.
    pub async fn service(&self, client_id: &str, scopes: &[String]) -> Result<AccessToken, keys::Error> {
        let now = OffsetDateTime::now_utc();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: client_id.to_owned(),
            exp: (now + self.service_ttl).unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: Uuid::now_v7(),
            typ: ACCESS_TOKEN_TYPE.to_owned(),
            sid: None,
            tv: None,
            roles: Vec::new(),
            scope: Some(scopes.join(" ")),
            acr: None,
            auth_time: None,
        };
        self.sign(claims).await
    }

    /// The access-token lifetime.
    #[must_use]
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    async fn sign(&self, claims: Claims) -> Result<AccessToken, keys::Error> {
        let signer = self.keys.signer().await?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(signer.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signer.key).map_err(|_| keys::Error::Encoding)?;
        let expires_at =
            OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|_| keys::Error::Encoding)?;
        Ok(AccessToken { token, jti: claims.jti, expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_secrets_are_256_bits_and_unique() {
        let a = opaque();
        let b = opaque();
        assert_ne!(a, b);
        assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_eq!(digest(&a).len(), 32);
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn a_sealed_successor_opens_only_for_the_token_it_was_sealed_for() {
        let parent = opaque();
        let sealed = seal_for_holder(&parent, b"the pair");
        assert_eq!(open_for_holder(&parent, &sealed).as_deref(), Some(&b"the pair"[..]));
        assert!(open_for_holder(&opaque(), &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_for_holder(&parent, &tampered).is_none());
        assert!(open_for_holder(&parent, &sealed[..11]).is_none());
        // The key is not the stored digest: the database row alone does not open it.
        assert!(open_for_holder(&String::from_utf8_lossy(&digest(&parent)), &sealed).is_none());
        assert_ne!(seal_for_holder(&parent, b"the pair"), sealed, "a fresh nonce each time");
    }
}
