//! The PAN vault: the only module that sees a PAN in the clear besides the responses that show it.
//!
//! Envelope encryption. Each card's PAN is sealed with AES-256-GCM under its own random 256-bit
//! data key (associated data: the card id, so a sealed PAN cannot be moved to another card); each
//! data key is stored wrapped (AES-256-GCM, associated data: the key id) by a key-encryption key
//! (KEK). KEKs live only in a mounted secret file (`vault.keks`), never in the database: a dump
//! of the database holds no readable PAN. An HMAC-SHA256 fingerprint under the vault's index key
//! (itself a wrapped data key) keeps PANs unique without storing them readable.
//!
//! KEK rotation (`rotate`) makes another loaded KEK the primary and re-wraps data keys in
//! batches; PANs are not re-encrypted. The vault refuses to open (and cards to start) when the
//! primary KEK or any KEK that wraps a stored data key is not loaded, or when the index key does
//! not unwrap (a wrong key under a known id).

use aes_gcm::{
    Aes256Gcm, KeyInit as _, Nonce,
    aead::{Aead as _, AeadCore as _, Payload},
};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Sha256;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::Pan;

/// What went wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The database failed.
    #[error("vault: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored key or PAN does not open (wrong KEK under a known id, or a tampered row).
    #[error("vault: {0} does not decrypt (wrong KEK?)")]
    Decrypt(String),
    /// A KEK id the vault needs is not loaded from `vault.keks`.
    #[error("vault: KEK {0:?} is not loaded (vault.keks)")]
    NotLoaded(String),
    /// The PAN exists already (the caller draws another).
    #[error("vault: duplicate PAN")]
    Duplicate,
}

/// One key-encryption key. Never printed.
struct Kek {
    id: String,
    cipher: Aes256Gcm,
}

/// The loaded KEKs, in the order of `vault.keks`.
pub(crate) struct Keyring(Vec<Kek>);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Keyring").field(&self.ids()).finish()
    }
}

impl Keyring {
    /// Parses `id=base64[,id=base64...]` (32-byte keys, ids of `[A-Za-z0-9._-]`, unique).
    ///
    /// # Errors
    /// A message naming what is wrong, never the key material.
    pub(crate) fn parse(secret: &SecretString) -> Result<Self, String> {
        let mut keks: Vec<Kek> = Vec::new();
        for item in secret.expose_secret().split([',', '\n']).map(str::trim).filter(|s| !s.is_empty()) {
            let (id, key) = item.split_once('=').ok_or("each KEK is id=base64 (e.g. kek-1=...)")?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err("a KEK id is 1 to 64 letters, digits, '.', '_' or '-'".to_owned());
            }
            if keks.iter().any(|k| k.id == id) {
                return Err(format!("KEK id {id} is listed twice"));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .map_err(|_| format!("KEK {id}: not base64 (32 random bytes: `openssl rand -base64 32`)"))?;
            if raw.len() != 32 {
                return Err(format!("KEK {id}: must be 32 bytes, got {}", raw.len()));
            }
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| format!("KEK {id}: invalid key"))?;
            keks.push(Kek { id: id.to_owned(), cipher });
        }
        if keks.is_empty() {
            return Err("at least one KEK is required (id=base64 from a mounted secret file)".to_owned());
        }
        Ok(Self(keks))
    }

    /// The ids, in order.
    pub(crate) fn ids(&self) -> Vec<&str> {
        self.0.iter().map(|k| k.id.as_str()).collect()
    }

    fn get(&self, id: &str) -> Result<&Kek, Error> {
        self.0.iter().find(|k| k.id == id).ok_or_else(|| Error::NotLoaded(id.to_owned()))
    }
}

fn seal(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    let nonce = Aes256Gcm::generate_nonce(&mut aes_gcm::aead::OsRng);
    let sealed = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad })
        .map_err(|_| Error::Decrypt("encryption".to_owned()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8], what: &str) -> Result<Vec<u8>, Error> {
    if sealed.len() < 12 {
        return Err(Error::Decrypt(what.to_owned()));
    }
    let (nonce, body) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| Error::Decrypt(what.to_owned()))?;
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .map_err(|_| Error::Decrypt(what.to_owned()))
}

fn key_aad(key_id: Uuid) -> Vec<u8> {
    format!("vault-key:{key_id}").into_bytes()
}

fn pan_aad(card_id: Uuid) -> Vec<u8> {
    format!("card-pan:{card_id}").into_bytes()
}

/// The vault: the keyring and the unwrapped index key.
pub(crate) struct Vault {
    keyring: Keyring,
    index: Hmac<Sha256>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("keyring", &self.keyring).finish_non_exhaustive()
    }
}

/// A KEK as `GetVaultStatus` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KekStatus {
    pub(crate) kek_id: String,
    pub(crate) primary: bool,
    pub(crate) wrapped_data_keys: i64,
}

impl Vault {
    /// Opens the vault of this database: creates its state and index key on first use (the
    /// first KEK becomes the primary), and refuses when a KEK it needs is not loaded or a stored
    /// key does not unwrap.
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Decrypt`], or the database failed.
    pub(crate) async fn open(pool: &PgPool, keyring: Keyring) -> Result<Self, Error> {
        let mut tx = pool.begin().await?;
        // One opener at a time (replicas starting together create one index key).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bank.cards.vault'))").execute(&mut *tx).await?;
        let first = keyring.0.first().map(|k| k.id.clone()).unwrap_or_default();
        sqlx::query("INSERT INTO vault_state (primary_kek_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&first)
            .execute(&mut *tx)
            .await?;
        let primary = primary(&mut tx).await?;
        keyring.get(&primary)?;
        let needed: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT kek_id FROM vault_keys").fetch_all(&mut *tx).await?;
        for id in &needed {
            keyring.get(id)?;
        }
        let stored: Option<(Uuid, String, Vec<u8>)> =
            sqlx::query_as("SELECT key_id, kek_id, wrapped FROM vault_keys WHERE purpose = 'index'")
                .fetch_optional(&mut *tx)
                .await?;
        let index_key = match stored {
            Some((key_id, kek_id, wrapped)) => {
                open(&keyring.get(&kek_id)?.cipher, &wrapped, &key_aad(key_id), "the vault's index key")?
            }
            None => {
                let key_id = Uuid::now_v7();
                let mut key = vec![0_u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                let wrapped = seal(&keyring.get(&primary)?.cipher, &key, &key_aad(key_id))?;
                sqlx::query(
                    "INSERT INTO vault_keys (key_id, purpose, kek_id, wrapped) VALUES ($1, 'index', $2, $3)",
                )
                .bind(key_id)
                .bind(&primary)
                .bind(&wrapped)
                .execute(&mut *tx)
                .await?;
                key
            }
        };
        tx.commit().await?;
        let index = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&index_key)
            .map_err(|_| Error::Decrypt("index key".to_owned()))?;
        Ok(Self { keyring, index })
    }

    fn fingerprint(&self, pan: &Pan) -> Vec<u8> {
        let mut mac = self.index.clone();
        mac.update(pan.expose().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Seals `pan` for `card_id` in the caller's transaction under a fresh data key wrapped by
    /// the primary KEK.
    ///
    /// # Errors
    /// [`Error::Duplicate`] when the PAN exists (the transaction must be rolled back to a
    /// savepoint or retried), [`Error::NotLoaded`] when another replica rotated to a KEK this
    /// one does not hold, or the database failed.
    pub(crate) async fn seal(&self, conn: &mut PgConnection, card_id: Uuid, pan: &Pan) -> Result<(), Error> {
        let fingerprint = self.fingerprint(pan);
        let taken: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM vault_pans WHERE fingerprint = $1)")
                .bind(&fingerprint)
                .fetch_one(&mut *conn)
                .await?;
        if taken {
            return Err(Error::Duplicate);
        }
        let kek_id = primary(conn).await?;
        let kek = self.keyring.get(&kek_id)?;
        let key_id = Uuid::now_v7();
        let mut data_key = [0_u8; 32];
        rand::thread_rng().fill_bytes(&mut data_key);
        let wrapped = seal(&kek.cipher, &data_key, &key_aad(key_id))?;
        let cipher =
            Aes256Gcm::new_from_slice(&data_key).map_err(|_| Error::Decrypt("data key".to_owned()))?;
        let sealed = seal(&cipher, pan.expose().as_bytes(), &pan_aad(card_id))?;
        sqlx::query("INSERT INTO vault_keys (key_id, purpose, kek_id, wrapped) VALUES ($1, 'pan', $2, $3)")
            .bind(key_id)
            .bind(&kek_id)
            .bind(&wrapped)
            .execute(&mut *conn)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO vault_pans (card_id, key_id, sealed, fingerprint) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (fingerprint) DO NOTHING",
        )
        .bind(card_id)
        .bind(key_id)
        .bind(&sealed)
        .bind(&fingerprint)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::Duplicate);
        }
        Ok(())
    }

    /// The PAN of `card_id`.
    ///
    /// # Errors
    /// The card has no PAN (`RowNotFound`), a key does not open, or the database failed.
    pub(crate) async fn reveal(&self, conn: &mut PgConnection, card_id: Uuid) -> Result<Pan, Error> {
        let (key_id, kek_id, wrapped, sealed): (Uuid, String, Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT k.key_id, k.kek_id, k.wrapped, p.sealed FROM vault_pans p JOIN vault_keys k USING (key_id) \
             WHERE p.card_id = $1",
        )
        .bind(card_id)
        .fetch_one(&mut *conn)
        .await?;
        let data_key = open(&self.keyring.get(&kek_id)?.cipher, &wrapped, &key_aad(key_id), "a data key")?;
        let cipher =
            Aes256Gcm::new_from_slice(&data_key).map_err(|_| Error::Decrypt("a data key".to_owned()))?;
        let digits = open(&cipher, &sealed, &pan_aad(card_id), "a PAN")?;
        let digits = String::from_utf8(digits).map_err(|_| Error::Decrypt("a PAN".to_owned()))?;
        Pan::parse(&digits).map_err(|_| Error::Decrypt("a PAN".to_owned()))
    }

    /// Every loaded KEK and every KEK that wraps a stored key, with its count.
    ///
    /// # Errors
    /// The database failed.
    pub(crate) async fn status(&self, conn: &mut PgConnection) -> Result<Vec<KekStatus>, Error> {
        let primary = primary(conn).await?;
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT kek_id, count(*) FROM vault_keys GROUP BY kek_id")
                .fetch_all(&mut *conn)
                .await?;
        let mut ids: Vec<String> = self.keyring.ids().into_iter().map(str::to_owned).collect();
        for (id, _) in &counts {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        Ok(ids
            .into_iter()
            .map(|id| KekStatus {
                primary: id == primary,
                wrapped_data_keys: counts.iter().find(|(k, _)| *k == id).map_or(0, |(_, n)| *n),
                kek_id: id,
            })
            .collect())
    }

    /// Whether `kek_id` is loaded.
    pub(crate) fn holds(&self, kek_id: &str) -> bool {
        self.keyring.get(kek_id).is_ok()
    }

    /// Makes `new_kek_id` the primary (in the caller's transaction).
    ///
    /// # Errors
    /// [`Error::NotLoaded`], or the database failed.
    pub(crate) async fn set_primary(&self, conn: &mut PgConnection, new_kek_id: &str) -> Result<(), Error> {
        self.keyring.get(new_kek_id)?;
        sqlx::query("UPDATE vault_state SET primary_kek_id = $1, updated_at = now()")
            .bind(new_kek_id)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Re-wraps up to `batch` data keys not wrapped by `new_kek_id` under it (in the caller's
    /// transaction; rows locked, others skipped, so concurrent rotations share the work).
    /// Answers how many were re-wrapped.
    ///
    /// # Errors
    /// A KEK is not loaded, a key does not unwrap, or the database failed.
    pub(crate) async fn rewrap_batch(
        &self,
        conn: &mut PgConnection,
        new_kek_id: &str,
        batch: i64,
    ) -> Result<i64, Error> {
        let new = self.keyring.get(new_kek_id)?;
        let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, kek_id, wrapped FROM vault_keys WHERE kek_id <> $1 ORDER BY key_id LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(new_kek_id)
        .bind(batch)
        .fetch_all(&mut *conn)
        .await?;
        let mut done = 0;
        for (key_id, kek_id, wrapped) in rows {
            let aad = key_aad(key_id);
            let key = open(&self.keyring.get(&kek_id)?.cipher, &wrapped, &aad, "a data key")?;
            let rewrapped = seal(&new.cipher, &key, &aad)?;
            sqlx::query(
                "UPDATE vault_keys SET kek_id = $2, wrapped = $3, rewrapped_at = now() WHERE key_id = $1",
            )
            .bind(key_id)
            .bind(new_kek_id)
            .bind(&rewrapped)
            .execute(&mut *conn)
            .await?;
            done += 1;
        }
        Ok(done)
    }

    /// Data keys not yet wrapped by `kek_id`.
    ///
    /// # Errors
    /// The database failed.
    pub(crate) async fn remaining(conn: &mut PgConnection, kek_id: &str) -> Result<i64, Error> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM vault_keys WHERE kek_id <> $1")
            .bind(kek_id)
            .fetch_one(conn)
            .await?)
    }
}

async fn primary(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT primary_kek_id FROM vault_state").fetch_one(conn).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keyrings_parse_and_never_print_keys() {
        let secret = SecretString::from(
            "kek-1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,kek-2=HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=",
        );
        let ring = Keyring::parse(&secret).unwrap();
        assert_eq!(ring.ids(), vec!["kek-1", "kek-2"]);
        assert!(!format!("{ring:?}").contains("AAEC"));
        assert!(Keyring::parse(&SecretString::from("")).is_err());
        assert!(Keyring::parse(&SecretString::from("kek-1=AAAA")).unwrap_err().contains("32 bytes"));
        assert!(Keyring::parse(&SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")).is_err());
        let twice = SecretString::from(
            "a=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,a=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        );
        assert!(Keyring::parse(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn sealed_values_are_bound_to_their_context() {
        let cipher = Aes256Gcm::new_from_slice(&[7_u8; 32]).unwrap();
        let sealed = seal(&cipher, b"4000001234567899", b"card-pan:a").unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"4000001234567899"));
        assert_eq!(open(&cipher, &sealed, b"card-pan:a", "x").unwrap(), b"4000001234567899");
        assert!(open(&cipher, &sealed, b"card-pan:b", "x").is_err());
        let other = Aes256Gcm::new_from_slice(&[8_u8; 32]).unwrap();
        assert!(open(&other, &sealed, b"card-pan:a", "x").is_err());
    }
}
