//! Token signing keys: generated here, stored encrypted under the key-encryption key (KEK), rotated
//! next -> active -> retiring -> retired without downtime, revocable in an emergency.
//!
//! * A `next` key is always published in the JWKS before it signs, so verifiers already hold it when
//!   it becomes `active` (they also refetch once on an unknown `kid`).
//! * A key stops signing when it becomes `retiring` and stays published (verifiable) for at least one
//!   access-token lifetime plus leeway and one reload interval; then it is `retired` (unpublished).
//! * Every change runs in one transaction under an advisory lock, so replicas never race; each
//!   replica re-reads the table every `keys.reload_interval`.

use std::{sync::Arc, time::Duration};

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, AeadCore as _, Payload},
};
use bank_proto::identity::v1::Jwk;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey as _};
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::storage::keys::{self as store, KeyRow, KeyState};

/// The algorithm of every key we create.
pub const ALGORITHM: &str = "EdDSA";

/// Something went wrong with the keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("signing keys: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored private key cannot be decrypted (wrong KEK or tampered row).
    #[error("signing key {kid}: cannot decrypt the private key (wrong keys.kek?)")]
    Decrypt {
        /// The key.
        kid: String,
    },
    /// No such key, or not in a state that allows the change.
    #[error("signing key {0}: not found or not in a state that allows this")]
    State(String),
    /// Key material could not be encoded.
    #[error("signing key encoding failed")]
    Encoding,
}

/// The key-encryption key: AES-256-GCM over private keys, the key id as associated data.
pub struct Kek(Aes256Gcm);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([REDACTED])")
    }
}

impl Kek {
    /// Parses 32 bytes given as base64.
    ///
    /// # Errors
    /// Not base64, or not 32 bytes.
    pub fn parse(secret: &SecretString) -> Result<Self, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(secret.expose_secret().trim())
            .map_err(|_| "must be base64 (32 random bytes: `openssl rand -base64 32`)".to_owned())?;
        if raw.len() != 32 {
            return Err(format!("must be 32 bytes, got {}", raw.len()));
        }
        Aes256Gcm::new_from_slice(&raw).map(Self).map_err(|_| "invalid key".to_owned())
    }

    fn seal(&self, plaintext: &[u8], kid: &str) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let nonce = Aes256Gcm::generate_nonce(&mut aes_gcm::aead::OsRng);
        let sealed = self
            .0
            .encrypt(&nonce, Payload { msg: plaintext, aad: kid.as_bytes() })
            .map_err(|_| Error::Encoding)?;
        Ok((nonce.to_vec(), sealed))
    }

    fn open(&self, nonce: &[u8], sealed: &[u8], kid: &str) -> Result<Vec<u8>, Error> {
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| Error::Decrypt { kid: kid.to_owned() })?;
        self.0
            .decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad: kid.as_bytes() })
            .map_err(|_| Error::Decrypt { kid: kid.to_owned() })
    }
}

impl Keys {
    /// Seals another secret of this service (a TOTP secret) under the KEK; `context` is bound as
    /// associated data, so a sealed value cannot be moved to another row.
    ///
    /// # Errors
    /// Encryption failed.
    pub fn seal_secret(&self, plaintext: &[u8], context: &str) -> Result<(Vec<u8>, Vec<u8>), Error> {
        self.kek.seal(plaintext, context)
    }

    /// Opens what [`seal_secret`](Self::seal_secret) sealed with the same `context`.
    ///
    /// # Errors
    /// Wrong KEK, wrong context or a tampered value.
    pub fn open_secret(&self, nonce: &[u8], sealed: &[u8], context: &str) -> Result<Vec<u8>, Error> {
        self.kek.open(nonce, sealed, context)
    }
}

/// The key that signs new tokens.
#[derive(Clone)]
pub struct Signer {
    /// Its `kid`.
    pub kid: String,
    /// The private key.
    pub key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Ring {
    signer: Option<Signer>,
    published: Vec<Jwk>,
}

/// The key manager: the in-memory ring plus the operations on the table.
pub struct Keys {
    pool: PgPool,
    kek: Kek,
    ring: RwLock<Ring>,
    rotation_interval: Duration,
    retire_after: Duration,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// Makes sure an active and a next key exist (creating them on first start), then loads them.
    /// `retire_after` is how long a retiring key stays published (>= one access-token lifetime plus
    /// leeway).
    ///
    /// # Errors
    /// The database failed, or a stored key cannot be decrypted with this KEK.
    pub async fn init(
        pool: PgPool,
        kek: Kek,
        rotation_interval: Duration,
        retire_after: Duration,
    ) -> Result<Arc<Self>, Error> {
        let keys =
            Arc::new(Self { pool, kek, ring: RwLock::new(Ring::default()), rotation_interval, retire_after });
        keys.maintain().await?;
        keys.reload().await?;
        Ok(keys)
    }

    /// The signing key.
    ///
    /// # Errors
    /// No active key is loaded (only between a failed start and exit).
    pub async fn signer(&self) -> Result<Signer, Error> {
        self.ring.read().await.signer.clone().ok_or_else(|| Error::State("active".to_owned()))
    }

    /// The published keys (next, active, retiring) as JWKs.
    pub async fn jwks(&self) -> Vec<Jwk> {
        self.ring.read().await.published.clone()
    }

    /// The verification key of a published `kid`.
    pub async fn decoding_key(&self, kid: &str) -> Option<DecodingKey> {
        self.ring.read().await.published.iter().find(|j| j.kid == kid).and_then(bank_auth::decoding_key)
    }

    /// Re-reads the table into the ring.
    ///
    /// # Errors
    /// The database failed or the active key cannot be decrypted.
    pub async fn reload(&self) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        let rows = store::list(&mut conn).await?;
        let mut ring = Ring::default();
        for row in &rows {
            match row.state {
                KeyState::Active => {
                    let seed = self.kek.open(&row.private_key_nonce, &row.private_key_sealed, &row.kid)?;
                    ring.signer = Some(Signer { kid: row.kid.clone(), key: encoding_key(&seed)? });
                    ring.published.push(jwk(row));
                }
                KeyState::Next | KeyState::Retiring => ring.published.push(jwk(row)),
                KeyState::Retired | KeyState::Revoked => {}
            }
        }
        *self.ring.write().await = ring;
        Ok(())
    }

    /// Scheduled upkeep: creates the first keys, rotates when the active key is due, retires
    /// retiring keys whose grace has passed, and keeps a `next` key published.
    ///
    /// # Errors
    /// The database failed.
    pub async fn maintain(&self) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        store::lock(&mut tx).await?;
        let now = OffsetDateTime::now_utc();
        let rows = store::list(&mut tx).await?;
        let active = rows.iter().find(|r| r.state == KeyState::Active);
        let due = active.is_none_or(|a| a.activated_at.is_none_or(|at| now - at >= self.rotation_interval));
        if due {
            tracing::info!(first = active.is_none(), "rotating the signing key");
            self.rotate_locked(&mut tx).await?;
        }
        let retired = store::retire_older_than(&mut tx, now - self.retire_after).await?;
        if retired > 0 {
            tracing::info!(retired, "retired signing keys past their grace period");
        }
        self.ensure_next(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rotates now: active -> retiring, next -> active, a new next. Answers every key afterwards.
    ///
    /// # Errors
    /// The database failed.
    pub async fn rotate(&self) -> Result<Vec<KeyRow>, Error> {
        let mut tx = self.pool.begin().await?;
        store::lock(&mut tx).await?;
        self.rotate_locked(&mut tx).await?;
        self.ensure_next(&mut tx).await?;
        let rows = store::list(&mut tx).await?;
        tx.commit().await?;
        self.reload().await?;
        Ok(rows)
    }

    /// Emergency: unpublishes `kid` at once (tokens it signed are refused by identity at once and by
    /// other verifiers within `auth.jwks_max_age`). Revoking the active key promotes the next one.
    ///
    /// # Errors
    /// No such published key, or the database failed.
    pub async fn revoke(&self, kid: &str) -> Result<KeyRow, Error> {
        let mut tx = self.pool.begin().await?;
        store::lock(&mut tx).await?;
        let row = store::get(&mut tx, kid).await?.ok_or_else(|| Error::State(kid.to_owned()))?;
        if matches!(row.state, KeyState::Retired | KeyState::Revoked) {
            return Err(Error::State(kid.to_owned()));
        }
        if row.state == KeyState::Active {
            // Promote a replacement first so there is always a signer.
            self.rotate_locked(&mut tx).await?;
        }
        store::set_state(&mut tx, kid, KeyState::Revoked).await?;
        self.ensure_next(&mut tx).await?;
        let row = store::get(&mut tx, kid).await?.ok_or_else(|| Error::State(kid.to_owned()))?;
        tx.commit().await?;
        tracing::warn!(kid, "signing key revoked");
        self.reload().await?;
        Ok(row)
    }

    /// Every key, newest first.
    ///
    /// # Errors
    /// The database failed.
    pub async fn list(&self) -> Result<Vec<KeyRow>, Error> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::list(&mut conn).await?)
    }

    /// Runs [`Keys::maintain`] and [`Keys::reload`] every `interval` until `stop`.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(err) = self.maintain().await {
                tracing::warn!(error = %err, "signing key upkeep failed");
            }
            if let Err(err) = self.reload().await {
                tracing::warn!(error = %err, "reloading signing keys failed");
            }
        }
    }

    /// active -> retiring; next (or a new key) -> active. Caller holds the lock.
    async fn rotate_locked(&self, conn: &mut PgConnection) -> Result<(), Error> {
        let rows = store::list(conn).await?;
        if let Some(active) = rows.iter().find(|r| r.state == KeyState::Active) {
            store::set_state(conn, &active.kid, KeyState::Retiring).await?;
        }
        let next = match rows.iter().find(|r| r.state == KeyState::Next) {
            Some(next) => next.kid.clone(),
            None => self.create(conn, KeyState::Next).await?,
        };
        store::set_state(conn, &next, KeyState::Active).await?;
        Ok(())
    }

    async fn ensure_next(&self, conn: &mut PgConnection) -> Result<(), Error> {
        let rows = store::list(conn).await?;
        if !rows.iter().any(|r| r.state == KeyState::Next) {
            self.create(conn, KeyState::Next).await?;
        }
        Ok(())
    }

    async fn create(&self, conn: &mut PgConnection, state: KeyState) -> Result<String, Error> {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let kid = uuid::Uuid::now_v7().simple().to_string();
        let (nonce, sealed) = self.kek.seal(signing.to_bytes().as_slice(), &kid)?;
        let public = signing.verifying_key().to_bytes();
        store::insert(conn, &kid, ALGORITHM, state, &public, &nonce, &sealed).await?;
        Ok(kid)
    }
}

fn encoding_key(seed: &[u8]) -> Result<EncodingKey, Error> {
    let seed: [u8; 32] = seed.try_into().map_err(|_| Error::Encoding)?;
    let der = SigningKey::from_bytes(&seed).to_pkcs8_der().map_err(|_| Error::Encoding)?;
    Ok(EncodingKey::from_ed_der(der.as_bytes()))
}

/// The public JWK of a stored key.
#[must_use]
pub fn jwk(row: &KeyRow) -> Jwk {
    Jwk {
        kty: "OKP".to_owned(),
        kid: row.kid.clone(),
        r#use: "sig".to_owned(),
        alg: row.algorithm.clone(),
        crv: "Ed25519".to_owned(),
        x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&row.public_key),
        ..Jwk::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::parse(&SecretString::from(base64::engine::general_purpose::STANDARD.encode([7u8; 32]))).unwrap()
    }

    #[test]
    fn sealed_keys_open_only_with_the_same_kek_and_kid() {
        let kek = kek();
        let (nonce, sealed) = kek.seal(b"private", "k1").unwrap();
        assert_eq!(kek.open(&nonce, &sealed, "k1").unwrap(), b"private");
        assert!(kek.open(&nonce, &sealed, "k2").is_err(), "bound to its kid");
        let other =
            Kek::parse(&SecretString::from(base64::engine::general_purpose::STANDARD.encode([8u8; 32])))
                .unwrap();
        assert!(other.open(&nonce, &sealed, "k1").is_err());
        assert!(!sealed.windows(7).any(|w| w == b"private"), "ciphertext does not hold the plaintext");
    }

    #[test]
    fn the_kek_must_be_32_base64_bytes() {
        assert!(Kek::parse(&SecretString::from("not base64!".to_owned())).is_err());
        assert!(
            Kek::parse(&SecretString::from(base64::engine::general_purpose::STANDARD.encode([1u8; 16])))
                .is_err()
        );
        assert_eq!(format!("{:?}", kek()), "Kek([REDACTED])");
    }
}

/// The JWKS straight from the ring, for identity's own verifier.
#[derive(Debug, Clone)]
pub struct LocalJwks(pub Arc<Keys>);

impl bank_auth::JwksSource for LocalJwks {
    fn fetch(&self) -> futures::future::BoxFuture<'_, Result<Vec<Jwk>, tonic::Status>> {
        Box::pin(async move { Ok(self.0.jwks().await) })
    }
}
