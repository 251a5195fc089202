//! What every identity handler shares, and the write side of revocation.

use std::{sync::Arc, time::Duration};

use bank_auth::{Claims, RevocationKeys, StatusSource, TokenStatus};
use bank_platform::redis::Redis;
use futures::future::BoxFuture;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{config::Config, hashing::Hasher, keys::Keys, storage, tokens::Issuer};

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct State {
    /// Identity's database.
    pub pool: PgPool,
    /// Revocation write-through.
    pub revocations: Revocations,
    /// Signing keys.
    pub keys: Arc<Keys>,
    /// Token issuing.
    pub issuer: Issuer,
    /// Password hashing.
    pub hasher: Hasher,
    /// Settings.
    pub config: Arc<Config>,
}

/// Writes the shared revocation keys in Redis after identity's database committed the change.
///
/// The database stays the truth: when a write fails, the user's token-version key is deleted (if
/// possible) so that verifiers cannot vouch for the user from Redis and ask identity instead.
#[derive(Debug, Clone)]
pub struct Revocations {
    redis: Redis,
    keys: RevocationKeys,
    /// How long a revoked session's marker lives (one access-token lifetime plus leeway).
    session_marker_ttl: Duration,
}

impl Revocations {
    /// Writes under `keys` in `redis`.
    #[must_use]
    pub fn new(redis: Redis, keys: RevocationKeys, session_marker_ttl: Duration) -> Self {
        Self { redis, keys, session_marker_ttl }
    }

    /// The key names.
    #[must_use]
    pub fn keys(&self) -> &RevocationKeys {
        &self.keys
    }

    /// Publishes the user's current token version (tokens with a lower `tv` die).
    pub async fn token_version(&self, user_id: Uuid, token_version: i64) {
        let mut conn = self.redis.conn.clone();
        let key = self.keys.tv(&user_id.to_string());
        let set: Result<(), _> = redis::cmd("SET").arg(&key).arg(token_version).query_async(&mut conn).await;
        if let Err(err) = set {
            self.degrade(user_id, &err).await;
        }
    }

    /// Blocklists an access token until its expiry.
    pub async fn blocklist(&self, user_id: Uuid, jti: Uuid, expires_at: OffsetDateTime) {
        let seconds = (expires_at - OffsetDateTime::now_utc()).whole_seconds().max(1) + 60;
        let mut conn = self.redis.conn.clone();
        let set: Result<(), _> = redis::cmd("SET")
            .arg(self.keys.jti(&jti))
            .arg(1)
            .arg("EX")
            .arg(seconds)
            .query_async(&mut conn)
            .await;
        if let Err(err) = set {
            self.degrade(user_id, &err).await;
        }
    }

    /// Marks sessions revoked for one access-token lifetime (their live access tokens die).
    pub async fn sessions(&self, user_id: Uuid, sessions: &[Uuid]) {
        if sessions.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for sid in sessions {
            pipe.cmd("SET")
                .arg(self.keys.sid(sid))
                .arg(1)
                .arg("EX")
                .arg(self.session_marker_ttl.as_secs())
                .ignore();
        }
        let mut conn = self.redis.conn.clone();
        let set: Result<(), _> = pipe.query_async(&mut conn).await;
        if let Err(err) = set {
            self.degrade(user_id, &err).await;
        }
    }

    /// Marks a service client disabled for one service-token lifetime.
    pub async fn client_disabled(&self, client_id: &str, ttl: Duration) {
        let mut conn = self.redis.conn.clone();
        let set: Result<(), _> = redis::cmd("SET")
            .arg(self.keys.client(client_id))
            .arg(1)
            .arg("EX")
            .arg(ttl.as_secs() + 60)
            .query_async(&mut conn)
            .await;
        if let Err(err) = set {
            tracing::error!(error = %err, "could not publish a disabled service client to Redis");
        }
    }

    /// A revocation could not be written: drop the epoch so that no verifier trusts Redis until
    /// the next rehydration has loaded every revocation again from the database.
    async fn degrade(&self, user_id: Uuid, err: &redis::RedisError) {
        let _ = user_id;
        let mut conn = self.redis.conn.clone();
        let deleted: Result<(), _> = redis::cmd("DEL").arg(self.keys.epoch()).query_async(&mut conn).await;
        match deleted {
            Ok(()) => {
                tracing::warn!(error = %err, "revocation write failed; verifiers ask identity until rehydration");
            }
            // Redis is down: verifiers cannot read it either, so they ask identity anyway.
            Err(_) => tracing::warn!(error = %err, "revocation write failed while Redis is unreachable"),
        }
    }

    /// Loads every live revocation from the database into Redis, then sets the epoch, unless the
    /// epoch is there already. Answers whether it rehydrated.
    ///
    /// # Errors
    /// The database or Redis failed.
    pub async fn rehydrate_if_needed(&self, pool: &PgPool) -> Result<bool, crate::BoxedError> {
        let mut conn = self.redis.conn.clone();
        let present: bool = redis::cmd("EXISTS").arg(self.keys.epoch()).query_async(&mut conn).await?;
        if present {
            return Ok(false);
        }
        let mut db = pool.acquire().await?;
        let snapshot = storage::sessions::live_revocations(&mut db, self.session_marker_ttl).await?;
        drop(db);
        let mut pipe = redis::pipe();
        let now = OffsetDateTime::now_utc();
        for (jti, expires_at) in &snapshot.tokens {
            let seconds = (*expires_at - now).whole_seconds().max(1) + 60;
            pipe.cmd("SET").arg(self.keys.jti(jti)).arg(1).arg("EX").arg(seconds).ignore();
        }
        for sid in &snapshot.sessions {
            pipe.cmd("SET")
                .arg(self.keys.sid(sid))
                .arg(1)
                .arg("EX")
                .arg(self.session_marker_ttl.as_secs())
                .ignore();
        }
        for (user, tv) in &snapshot.token_versions {
            pipe.cmd("SET").arg(self.keys.tv(&user.to_string())).arg(*tv).ignore();
        }
        for client in &snapshot.disabled_clients {
            pipe.cmd("SET").arg(self.keys.client(client)).arg(1).arg("EX").arg(3600).ignore();
        }
        pipe.cmd("SET").arg(self.keys.epoch()).arg(now.unix_timestamp()).ignore();
        let () = pipe.query_async(&mut conn).await?;
        tracing::info!(
            tokens = snapshot.tokens.len(),
            sessions = snapshot.sessions.len(),
            users = snapshot.token_versions.len(),
            "revocations loaded into Redis"
        );
        Ok(true)
    }

    /// Runs [`Revocations::rehydrate_if_needed`] every `interval` until `stop`.
    pub async fn keep_hydrated(
        self,
        pool: PgPool,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(err) = self.rehydrate_if_needed(&pool).await {
                tracing::debug!(error = %err, "revocation rehydration check failed");
            }
        }
    }
}

/// The authoritative token status, from identity's database (identity's own fallback and the
/// `CheckTokenStatus` RPC).
#[derive(Debug, Clone)]
pub struct LocalStatus {
    pool: PgPool,
}

impl LocalStatus {
    /// Reads `pool`.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Whether the token is revoked, and the user's current token version.
    ///
    /// # Errors
    /// The database failed.
    pub async fn check(
        &self,
        jti: Uuid,
        subject: &str,
        session: Option<Uuid>,
        token_version: Option<i64>,
    ) -> Result<(TokenStatus, i64), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if storage::sessions::is_token_revoked(&mut conn, jti).await? {
            return Ok((TokenStatus::Revoked, 0));
        }
        let (Some(session), Some(tv), Ok(user_id)) = (session, token_version, Uuid::parse_str(subject))
        else {
            // A service token: its client must still be active.
            let active =
                storage::clients::get(&mut conn, subject).await?.is_some_and(|c| c.status == "active");
            return Ok((if active { TokenStatus::Valid } else { TokenStatus::Revoked }, 0));
        };
        let Some(user) = storage::users::by_id(&mut conn, user_id, false).await? else {
            return Ok((TokenStatus::Revoked, 0));
        };
        let live = storage::sessions::get(&mut conn, session)
            .await?
            .is_some_and(|s| s.user_id == user_id && s.revoked_at.is_none());
        let valid = live && tv >= user.token_version && user.status != "disabled";
        Ok((if valid { TokenStatus::Valid } else { TokenStatus::Revoked }, user.token_version))
    }
}

impl StatusSource for LocalStatus {
    fn status<'a>(&'a self, claims: &'a Claims) -> BoxFuture<'a, Result<TokenStatus, tonic::Status>> {
        Box::pin(async move {
            self.check(claims.jti, &claims.sub, claims.sid, claims.tv)
                .await
                .map(|(status, _)| status)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))
        })
    }
}
