//! Access-token verification against the JWKS.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use tokio::sync::{Mutex, RwLock};

use crate::{ACCESS_TOKEN_TYPE, AuthConfig, Claims, JwksSource, jwks::decoding_key};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a JWT, or a JWT that is not one of our access tokens (wrong `alg`, `typ`, claims,
    /// forbidden headers, bad signature, wrong `iss`/`aud`, not yet valid, unknown `kid`).
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// A valid token past its `exp`.
    #[error("token expired")]
    Expired,
    /// The keys could not be fetched and none is cached for this `kid`.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

struct Cache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// How long a verified token's claims are reused without checking its signature again (bounded by
/// its `exp`; only while its key is still in a fresh JWKS). Revocation is checked on every call
/// regardless (`Revocation`), so this caches only what cannot change: the signature and claims.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Beyond this many cached tokens, expired entries are dropped (and all, if that is not enough).
const VERIFIED_MAX: usize = 20_000;

/// A token whose signature and claims were checked: reused until `until` while `kid` is published.
struct Verified {
    claims: Claims,
    kid: String,
    until: Instant,
}

/// Verifies access tokens. Cheap to share (`Arc`); one per process.
pub struct Verifier {
    source: Arc<dyn JwksSource>,
    cache: RwLock<Cache>,
    refetch: Mutex<()>,
    validation: Validation,
    max_age: Duration,
    min_refetch: Duration,
    leeway: i64,
    verified: std::sync::Mutex<HashMap<String, Verified>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens issued per `config`, with keys from `source`.
    #[must_use]
    pub fn new(source: Arc<dyn JwksSource>, config: &AuthConfig) -> Self {
        // EdDSA only: no `none`, no HS256 signed with a public key, no RSA/EC confusion.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&[config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway.as_secs();
        Self {
            source,
            cache: RwLock::new(Cache { keys: HashMap::new(), fetched_at: None }),
            refetch: Mutex::new(()),
            validation,
            max_age: config.jwks_max_age,
            min_refetch: config.jwks_min_refetch,
            leeway: i64::try_from(config.leeway.as_secs()).unwrap_or(0),
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The claims of a token verified within [`VERIFIED_TTL`], if it is not past `exp` and its key
    /// is still in a fresh key set (an emergency-revoked key drops out at the next JWKS refresh).
    async fn recently_verified(&self, token: &str) -> Option<Claims> {
        let (claims, kid) = {
            let verified = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = verified.get(token)?;
            if entry.until <= Instant::now() {
                return None;
            }
            (entry.claims.clone(), entry.kid.clone())
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if claims.exp <= now - self.leeway {
            return None;
        }
        let cache = self.cache.read().await;
        let fresh = cache.fetched_at.is_some_and(|at| at.elapsed() < self.max_age);
        (fresh && cache.keys.contains_key(&kid)).then_some(claims)
    }

    fn remember(&self, token: &str, kid: String, claims: &Claims) {
        let now = Instant::now();
        let left = claims.exp.saturating_sub(time::OffsetDateTime::now_utc().unix_timestamp());
        let ttl = VERIFIED_TTL.min(Duration::from_secs(u64::try_from(left.max(0)).unwrap_or(0)));
        if ttl.is_zero() {
            return;
        }
        let mut verified = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, v| v.until > now);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(token.to_owned(), Verified { claims: claims.clone(), kid, until: now + ttl });
    }

    /// The claims of a valid access token.
    ///
    /// # Errors
    /// See [`Error`].
    pub async fn verify(&self, token: &str) -> Result<Claims, Error> {
        if let Some(claims) = self.recently_verified(token).await {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::Invalid("malformed"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(Error::Invalid("algorithm not allowed"));
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(Error::Invalid("not an access token"));
        }
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return Err(Error::Invalid("embedded or remote keys are refused"));
        }
        let kid = header.kid.ok_or(Error::Invalid("no kid"))?;
        let key = self.key(&kid).await?;
        let token_kid = kid.clone();
        // `ErrorKind` is non-exhaustive: anything not named is a refusal too.
        #[allow(clippy::wildcard_enum_match_arm)]
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::Expired,
                ErrorKind::ImmatureSignature => Error::Invalid("not yet valid"),
                ErrorKind::InvalidIssuer => Error::Invalid("wrong issuer"),
                ErrorKind::InvalidAudience => Error::Invalid("wrong audience"),
                ErrorKind::InvalidSignature => Error::Invalid("bad signature"),
                _ => Error::Invalid("rejected"),
            })?;
        let claims = data.claims;
        if claims.typ != ACCESS_TOKEN_TYPE {
            return Err(Error::Invalid("not an access token"));
        }
        let user_token =
            claims.sid.is_some() && claims.tv.is_some() && uuid::Uuid::parse_str(&claims.sub).is_ok();
        let service_token = claims.sid.is_none() && claims.scope.is_some();
        if !(user_token || service_token) {
            return Err(Error::Invalid("neither a user nor a service token"));
        }
        self.remember(token, token_kid, &claims);
        Ok(claims)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, Error> {
        {
            let cache = self.cache.read().await;
            let fresh = cache.fetched_at.is_some_and(|at| at.elapsed() < self.max_age);
            if fresh && let Some(key) = cache.keys.get(kid) {
                return Ok(key.clone());
            }
        }
        // Stale cache or unknown kid: refetch (once at a time; at most once per `min_refetch`
        // for unknown kids, so garbage kids cannot hammer identity).
        let _guard = self.refetch.lock().await;
        {
            let cache = self.cache.read().await;
            let age = cache.fetched_at.map(|at| at.elapsed());
            if let Some(key) = cache.keys.get(kid)
                && age.is_some_and(|a| a < self.max_age)
            {
                return Ok(key.clone());
            }
            let may_refetch = age.is_none_or(|a| a >= self.min_refetch);
            if !may_refetch {
                return cache.keys.get(kid).cloned().ok_or(Error::Invalid("unknown kid"));
            }
        }
        match self.source.fetch().await {
            Ok(jwks) => {
                let keys: HashMap<String, DecodingKey> =
                    jwks.iter().filter_map(|jwk| decoding_key(jwk).map(|k| (jwk.kid.clone(), k))).collect();
                metrics::counter!("auth_jwks_fetches_total", "result" => "ok").increment(1);
                let mut cache = self.cache.write().await;
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                cache.keys.get(kid).cloned().ok_or(Error::Invalid("unknown kid"))
            }
            Err(status) => {
                metrics::counter!("auth_jwks_fetches_total", "result" => "error").increment(1);
                tracing::warn!(code = ?status.code(), "fetching the JWKS failed");
                // Keep using what we had: a key that was valid minutes ago beats an outage.
                let cache = self.cache.read().await;
                cache
                    .keys
                    .get(kid)
                    .cloned()
                    .ok_or_else(|| Error::KeysUnavailable(status.message().to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bank_proto::identity::v1::Jwk;
    use base64::Engine as _;
    use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey as _};
    use futures::future::BoxFuture;
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    struct StaticJwks(std::sync::Mutex<Vec<Jwk>>, std::sync::atomic::AtomicUsize);

    impl JwksSource for StaticJwks {
        fn fetch(&self) -> BoxFuture<'_, Result<Vec<Jwk>, tonic::Status>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let keys = self.0.lock().unwrap().clone();
            Box::pin(async move { Ok(keys) })
        }
    }

    struct Key {
        kid: String,
        signing: SigningKey,
    }

    impl Key {
        fn new(kid: &str) -> Self {
            Self { kid: kid.to_owned(), signing: SigningKey::generate(&mut rand::rngs::OsRng) }
        }
        fn public_x(&self) -> String {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.signing.verifying_key().to_bytes())
        }
        fn jwk(&self) -> Jwk {
            Jwk {
                kty: "OKP".into(),
                kid: self.kid.clone(),
                r#use: "sig".into(),
                alg: "EdDSA".into(),
                crv: "Ed25519".into(),
                x: self.public_x(),
                ..Jwk::default()
            }
        }
        fn sign(&self, header: &Header, claims: &Claims) -> String {
            let der = self.signing.to_pkcs8_der().unwrap();
            jsonwebtoken::encode(header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
        }
    }

    fn header(kid: &str) -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(kid.to_owned());
        header
    }

    fn claims() -> Claims {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Claims {
            iss: "bankmesh-identity".into(),
            aud: "bankmesh".into(),
            sub: uuid::Uuid::now_v7().to_string(),
            exp: now + 900,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::now_v7(),
            typ: ACCESS_TOKEN_TYPE.into(),
            sid: Some(uuid::Uuid::now_v7()),
            tv: Some(1),
            roles: vec!["customer".into()],
            scope: None,
            acr: Some("pwd".into()),
            auth_time: Some(now),
        }
    }

    fn verifier(keys: &[&Key]) -> (Verifier, Arc<StaticJwks>) {
        let source = Arc::new(StaticJwks(
            std::sync::Mutex::new(keys.iter().map(|k| k.jwk()).collect()),
            std::sync::atomic::AtomicUsize::new(0),
        ));
        let config = AuthConfig { jwks_min_refetch: Duration::ZERO, ..AuthConfig::default() };
        (Verifier::new(source.clone(), &config), source)
    }

    fn b64(value: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    #[tokio::test]
    async fn a_valid_token_passes() {
        let key = Key::new("k1");
        let (verifier, _) = verifier(&[&key]);
        let claims = claims();
        assert_eq!(verifier.verify(&key.sign(&header("k1"), &claims)).await.unwrap(), claims);
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let key = Key::new("k1");
        let (verifier, _) = verifier(&[&key]);
        let token = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": "k1"})),
            b64(&serde_json::to_value(claims()).unwrap())
        );
        assert!(matches!(verifier.verify(&token).await, Err(Error::Invalid(_))));
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_is_refused() {
        let key = Key::new("k1");
        let (verifier, _) = verifier(&[&key]);
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(ACCESS_TOKEN_TYPE.into());
        header.kid = Some("k1".into());
        for secret in [key.public_x().into_bytes(), key.signing.verifying_key().to_bytes().to_vec()] {
            let token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
            assert_eq!(verifier.verify(&token).await, Err(Error::Invalid("algorithm not allowed")));
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_is_refetched_once_then_refused() {
        let key = Key::new("k1");
        let stranger = Key::new("k2");
        let (verifier, source) = verifier(&[&key]);
        let token = stranger.sign(&header("k2"), &claims());
        assert_eq!(verifier.verify(&token).await, Err(Error::Invalid("unknown kid")));
        assert_eq!(source.1.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A key published later (rotation) is picked up on its first use.
        source.0.lock().unwrap().push(stranger.jwk());
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(source.1.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_signed_by_another_key_under_a_known_kid_is_refused() {
        let key = Key::new("k1");
        let impostor = Key::new("k1");
        let (verifier, _) = verifier(&[&key]);
        assert_eq!(
            verifier.verify(&impostor.sign(&header("k1"), &claims())).await,
            Err(Error::Invalid("bad signature"))
        );
    }

    #[tokio::test]
    async fn wrong_audience_issuer_expired_and_future_tokens_are_refused() {
        let key = Key::new("k1");
        let (verifier, _) = verifier(&[&key]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let cases = [
            (Claims { aud: "someone-else".into(), ..claims() }, Error::Invalid("wrong audience")),
            (Claims { iss: "evil".into(), ..claims() }, Error::Invalid("wrong issuer")),
            (Claims { exp: now - 120, iat: now - 1000, nbf: now - 1000, ..claims() }, Error::Expired),
            (Claims { nbf: now + 600, ..claims() }, Error::Invalid("not yet valid")),
            (Claims { typ: "mfa+jwt".into(), ..claims() }, Error::Invalid("not an access token")),
            (
                Claims { sid: None, tv: None, ..claims() },
                Error::Invalid("neither a user nor a service token"),
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(verifier.verify(&key.sign(&header("k1"), &claims)).await, Err(expected));
        }
    }

    #[tokio::test]
    async fn mfa_pending_tokens_forbidden_headers_and_garbage_are_refused() {
        let key = Key::new("k1");
        let (verifier, _) = verifier(&[&key]);
        let mut mfa = header("k1");
        mfa.typ = Some(crate::MFA_PENDING_TOKEN_TYPE.into());
        assert!(verifier.verify(&key.sign(&mfa, &claims())).await.is_err());

        let mut remote = header("k1");
        remote.jku = Some("https://evil.example/jwks.json".into());
        assert_eq!(
            verifier.verify(&key.sign(&remote, &claims())).await,
            Err(Error::Invalid("embedded or remote keys are refused"))
        );

        // A refresh token (opaque random) or anything else that is not a JWT.
        for garbage in ["", "abc", "a.b.c", "dGhpcyBpcyBub3QgYSBqd3Q", "..", "eyJhbGciOiJFZERTQSJ9.e30."] {
            assert!(matches!(verifier.verify(garbage).await, Err(Error::Invalid(_))), "{garbage}");
        }
    }

    #[tokio::test]
    async fn service_tokens_pass_with_scopes() {
        let key = Key::new("k1");
        let (verifier, _) = verifier(&[&key]);
        let claims = Claims {
            sub: "cards".into(),
            sid: None,
            tv: None,
            roles: Vec::new(),
            acr: None,
            auth_time: None,
            scope: Some("ledger:holds".into()),
            ..claims()
        };
        assert!(verifier.verify(&key.sign(&header("k1"), &claims)).await.is_ok());
    }

    #[tokio::test]
    async fn a_verified_token_is_reused_only_while_its_key_is_published() {
        let key = Key::new("k1");
        let source = Arc::new(StaticJwks(
            std::sync::Mutex::new(vec![key.jwk()]),
            std::sync::atomic::AtomicUsize::new(0),
        ));
        // A JWKS older than 1 s is refetched: the emergency removal of a key is seen within it.
        let config = AuthConfig {
            jwks_min_refetch: Duration::ZERO,
            jwks_max_age: Duration::from_millis(200),
            ..AuthConfig::default()
        };
        let verifier = Verifier::new(source.clone(), &config);
        let claims = claims();
        let token = key.sign(&header("k1"), &claims);
        assert_eq!(verifier.verify(&token).await.unwrap(), claims);
        assert_eq!(verifier.verify(&token).await.unwrap(), claims, "reused");
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);

        // The key is revoked (removed from the JWKS): once the key set is refreshed the cached
        // verification no longer counts and the token is refused.
        source.0.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(verifier.verify(&token).await, Err(Error::Invalid("unknown kid")));

        // A tampered copy of a cached token is not a cache hit.
        source.0.lock().unwrap().push(key.jwk());
        let good = key.sign(&header("k1"), &claims);
        assert!(verifier.verify(&good).await.is_ok());
        let mut tampered = good.clone();
        tampered.push('A');
        assert!(verifier.verify(&tampered).await.is_err());
    }
}
