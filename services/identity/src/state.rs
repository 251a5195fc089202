//! What every identity handler shares, and the write side of revocation.

use std::{sync::Arc, time::Duration};

use bank_auth::{Claims, RevocationKeys, StatusSource, TokenStatus};
use bank_platform::redis::Redis;
use futures::future::BoxFuture;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    config::Config, hashing::Hasher, keys::Keys, storage, storage::revocation_journal::Pending,
    tokens::Issuer,
};

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
/// The database stays the truth, and nothing revoked there is lost on the way to Redis (ADR 0030):
/// - every revocation also writes a row of the revocation journal, in its own transaction (by
///   trigger, migration 0004);
/// - the handler then writes Redis at once (bounded by `redis.timeout`, so a request never hangs on
///   Redis); when that fails the epoch is dropped if Redis answers at all, and the replayer woken;
/// - the replayer ([`Revocations::keep_in_sync`]) writes every journal row to Redis until Redis has
///   acknowledged it, then deletes the row; and only when no row older than a Redis `TIME` reading
///   is left does it certify Redis complete up to that time (`epoch` = that time in microseconds).
///
/// A verifier that has seen Redis fail trusts it again only once the epoch certifies a time after
/// Redis came back ([`bank_auth::Revocation`]), so a revocation made while Redis was unreachable is
/// never forgotten when Redis returns with its old data (AOF) and its old epoch.
#[derive(Debug, Clone)]
pub struct Revocations {
    redis: Redis,
    keys: RevocationKeys,
    /// How long a revoked session's marker lives (one access-token lifetime plus leeway).
    session_marker_ttl: Duration,
    /// Wakes the replayer after a failed write.
    wake: Arc<tokio::sync::Notify>,
}

/// How long a disabled client's marker lives when replayed (longer than any service token).
const CLIENT_MARKER_TTL: Duration = Duration::from_secs(3600);

/// Journal rows written to Redis per pipeline.
const REPLAY_BATCH: i64 = 500;

/// What one [`Revocations::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Journal rows written to Redis and removed.
    pub replayed: usize,
    /// Redis held no epoch, so every live revocation was loaded.
    pub reloaded: bool,
    /// The epoch certifies Redis complete (false while another replica holds journal rows).
    pub certified: bool,
}

impl Revocations {
    /// Writes under `keys` in `redis`.
    #[must_use]
    pub fn new(redis: Redis, keys: RevocationKeys, session_marker_ttl: Duration) -> Self {
        Self { redis, keys, session_marker_ttl, wake: Arc::new(tokio::sync::Notify::new()) }
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
        let set: Result<(), _> =
            self.redis.bounded(redis::cmd("SET").arg(&key).arg(token_version).query_async(&mut conn)).await;
        if let Err(err) = set {
            self.degrade(&err).await;
        }
    }

    /// Blocklists an access token until its expiry.
    pub async fn blocklist(&self, user_id: Uuid, jti: Uuid, expires_at: OffsetDateTime) {
        let _ = user_id;
        let mut conn = self.redis.conn.clone();
        let set: Result<(), _> = self
            .redis
            .bounded(
                redis::cmd("SET")
                    .arg(self.keys.jti(&jti))
                    .arg(1)
                    .arg("EX")
                    .arg(token_marker_seconds(expires_at))
                    .query_async(&mut conn),
            )
            .await;
        if let Err(err) = set {
            self.degrade(&err).await;
        }
    }

    /// Marks sessions revoked for one access-token lifetime (their live access tokens die).
    pub async fn sessions(&self, user_id: Uuid, sessions: &[Uuid]) {
        let _ = user_id;
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
        let set: Result<(), _> = self.redis.bounded(pipe.query_async(&mut conn)).await;
        if let Err(err) = set {
            self.degrade(&err).await;
        }
    }

    /// Marks a service client disabled for one service-token lifetime.
    pub async fn client_disabled(&self, client_id: &str, ttl: Duration) {
        let mut conn = self.redis.conn.clone();
        let set: Result<(), _> = self
            .redis
            .bounded(
                redis::cmd("SET")
                    .arg(self.keys.client(client_id))
                    .arg(1)
                    .arg("EX")
                    .arg(ttl.as_secs() + 60)
                    .query_async(&mut conn),
            )
            .await;
        if let Err(err) = set {
            self.degrade(&err).await;
        }
    }

    /// A revocation could not be written: drop the epoch (if Redis answers at all) so that no
    /// verifier trusts Redis until the replayer has written the journal again, and wake it.
    async fn degrade(&self, err: &redis::RedisError) {
        metrics::counter!("identity_revocation_write_failures_total").increment(1);
        let mut conn = self.redis.conn.clone();
        let deleted: Result<(), _> =
            self.redis.bounded(redis::cmd("DEL").arg(self.keys.epoch()).query_async(&mut conn)).await;
        match deleted {
            Ok(()) => {
                tracing::warn!(error = %err, "revocation write failed; verifiers ask identity until the replay");
            }
            // Redis is down: verifiers that see it fail distrust it until the next certification.
            Err(_) => tracing::warn!(error = %err, "revocation write failed while Redis is unreachable"),
        }
        self.wake.notify_one();
    }

    /// Replays the journal into Redis, loads every live revocation when Redis holds no epoch, and
    /// certifies Redis complete when nothing older than this call is left to write.
    ///
    /// # Errors
    /// The database or Redis failed (what was acknowledged stays done).
    pub async fn sync(&self, pool: &PgPool) -> Result<Synced, crate::BoxedError> {
        let mut conn = self.redis.conn.clone();
        // Read first: the certification covers what was committed before this moment.
        let (seconds, micros): (u64, u64) =
            self.redis.bounded(redis::cmd("TIME").query_async(&mut conn)).await?;
        let certified_at = seconds.saturating_mul(1_000_000).saturating_add(micros);
        let mut db = pool.acquire().await?;
        let horizon = storage::revocation_journal::horizon(&mut db).await?;
        drop(db);
        let present: bool =
            self.redis.bounded(redis::cmd("EXISTS").arg(self.keys.epoch()).query_async(&mut conn)).await?;
        let mut synced = Synced { replayed: self.replay(pool).await?, ..Synced::default() };
        let mut db = pool.acquire().await?;
        if storage::revocation_journal::any_up_to(&mut db, horizon).await? {
            // Another replica is writing older rows; it (or the next round) certifies.
            return Ok(synced);
        }
        if present {
            // XX: an epoch dropped meanwhile (a failed write) waits for a full load.
            let _: Option<String> = self
                .redis
                .bounded(
                    redis::cmd("SET")
                        .arg(self.keys.epoch())
                        .arg(certified_at)
                        .arg("XX")
                        .query_async(&mut conn),
                )
                .await?;
        } else {
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
                pipe.cmd("SET")
                    .arg(self.keys.client(client))
                    .arg(1)
                    .arg("EX")
                    .arg(CLIENT_MARKER_TTL.as_secs())
                    .ignore();
            }
            pipe.cmd("SET").arg(self.keys.epoch()).arg(certified_at).ignore();
            // A full load may be large: it gets a longer bound than one request's call.
            let () = tokio::time::timeout(self.redis.timeout * 10, pipe.query_async(&mut conn))
                .await
                .map_err(|_| "loading the revocations into Redis did not finish in time")??;
            tracing::info!(
                tokens = snapshot.tokens.len(),
                sessions = snapshot.sessions.len(),
                users = snapshot.token_versions.len(),
                "redis held no revocations: loaded them from the database"
            );
            synced.reloaded = true;
        }
        synced.certified = true;
        Ok(synced)
    }

    /// Writes every claimable journal row to Redis and removes it. Answers how many.
    async fn replay(&self, pool: &PgPool) -> Result<usize, crate::BoxedError> {
        let mut replayed = 0;
        loop {
            let mut tx = pool.begin().await?;
            let entries = storage::revocation_journal::claim(&mut tx, REPLAY_BATCH).await?;
            if entries.is_empty() {
                tx.commit().await?;
                return Ok(replayed);
            }
            let mut pipe = redis::pipe();
            let now = OffsetDateTime::now_utc();
            for entry in &entries {
                self.replay_command(&mut pipe, &entry.pending, now);
            }
            let mut conn = self.redis.conn.clone();
            let () = self.redis.bounded(pipe.query_async(&mut conn)).await?;
            let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
            storage::revocation_journal::remove(&mut tx, &ids).await?;
            tx.commit().await?;
            replayed += ids.len();
            metrics::counter!("identity_revocations_replayed_total").increment(ids.len() as u64);
        }
    }

    fn replay_command(&self, pipe: &mut redis::Pipeline, pending: &Pending, now: OffsetDateTime) {
        match pending {
            Pending::Token { jti, expires_at } => {
                if *expires_at > now {
                    pipe.cmd("SET")
                        .arg(self.keys.jti(jti))
                        .arg(1)
                        .arg("EX")
                        .arg(token_marker_seconds(*expires_at));
                    pipe.ignore();
                }
            }
            Pending::Session { session_id, revoked_at } => {
                let age = (now - *revoked_at).whole_seconds().max(0).unsigned_abs();
                let left = self.session_marker_ttl.as_secs().saturating_sub(age);
                if left > 0 {
                    pipe.cmd("SET").arg(self.keys.sid(session_id)).arg(1).arg("EX").arg(left).ignore();
                }
            }
            Pending::TokenVersion { user_id, token_version } => {
                // Never lowers a version a later write has raised (replays may run late).
                pipe.cmd("EVAL")
                    .arg(RAISE_TOKEN_VERSION)
                    .arg(1)
                    .arg(self.keys.tv(&user_id.to_string()))
                    .arg(*token_version)
                    .ignore();
            }
            Pending::Client { client_id } => {
                pipe.cmd("SET")
                    .arg(self.keys.client(client_id))
                    .arg(1)
                    .arg("EX")
                    .arg(CLIENT_MARKER_TTL.as_secs())
                    .ignore();
            }
            Pending::Nothing => {}
        }
    }

    /// Runs [`Revocations::sync`] every `interval`, and at once after a failed write, until `stop`.
    pub async fn keep_in_sync(
        self,
        pool: PgPool,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
                () = self.wake.notified() => {}
            }
            match self.sync(&pool).await {
                Ok(synced) => {
                    if failing || synced.replayed > 0 {
                        tracing::info!(
                            replayed = synced.replayed,
                            certified = synced.certified,
                            "revocations in sync with Redis"
                        );
                    }
                    failing = false;
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "revocations cannot be synced to Redis; retrying");
                    }
                    failing = true;
                    // Retry sooner than the interval while it fails, without spinning.
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(interval.min(Duration::from_millis(200))) => {}
                    }
                    self.wake.notify_one();
                }
            }
        }
    }
}

/// Sets the token-version key to the argument unless it already holds a higher version.
const RAISE_TOKEN_VERSION: &str = "local v = tonumber(redis.call('GET', KEYS[1]) or '0') \
    if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1]) end return 1";

/// A blocklist marker outlives its token by a minute (clock skew).
fn token_marker_seconds(expires_at: OffsetDateTime) -> i64 {
    (expires_at - OffsetDateTime::now_utc()).whole_seconds().max(1) + 60
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
