//! Sessions (refresh-token families), refresh tokens and blocklisted access tokens.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

/// A stored session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    /// Id (`sid`).
    pub session_id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// `pwd` or `mfa`.
    pub acr: String,
    /// When the user authenticated.
    pub auth_time: OffsetDateTime,
    /// IP at login or last refresh.
    pub ip_address: String,
    /// User agent at login.
    pub user_agent: String,
    /// Device label.
    pub device_name: String,
    /// Login time.
    pub created_at: OffsetDateTime,
    /// Last refresh.
    pub last_used_at: OffsetDateTime,
    /// Absolute expiry.
    pub expires_at: OffsetDateTime,
    /// Revoked when.
    pub revoked_at: Option<OffsetDateTime>,
}

impl SessionRow {
    /// Neither revoked nor expired at `now`.
    #[must_use]
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

const COLUMNS: &str = "session_id, user_id, acr, auth_time, ip_address, user_agent, device_name, created_at, \
                       last_used_at, expires_at, revoked_at";

/// A new session.
#[derive(Debug)]
pub struct NewSession<'a> {
    /// Id.
    pub session_id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// `pwd` or `mfa`.
    pub acr: &'a str,
    /// IP.
    pub ip_address: &'a str,
    /// User agent.
    pub user_agent: &'a str,
    /// Device label.
    pub device_name: &'a str,
    /// Absolute expiry.
    pub expires_at: OffsetDateTime,
}

/// Creates a session.
pub async fn insert(conn: &mut PgConnection, session: &NewSession<'_>) -> Result<SessionRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO sessions (session_id, user_id, acr, auth_time, ip_address, user_agent, device_name, expires_at) \
         VALUES ($1, $2, $3, now(), $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(session.session_id)
    .bind(session.user_id)
    .bind(session.acr)
    .bind(session.ip_address)
    .bind(session.user_agent)
    .bind(session.device_name)
    .bind(session.expires_at)
    .fetch_one(conn)
    .await
}

/// One session.
pub async fn get(conn: &mut PgConnection, session_id: Uuid) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM sessions WHERE session_id = $1")))
        .bind(session_id)
        .fetch_optional(conn)
        .await
}

/// A user's live sessions, newest first.
pub async fn live_of_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    offset: i64,
    limit: i64,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() \
         ORDER BY created_at DESC, session_id DESC OFFSET $2 LIMIT $3"
    )))
    .bind(user_id)
    .bind(offset)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Revokes one live session of `user_id`; answers whether it was live.
pub async fn revoke(
    conn: &mut PgConnection,
    user_id: Uuid,
    session_id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3 \
         WHERE session_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes every live session of `user_id` except `keep`; answers the revoked ids.
pub async fn revoke_all(
    conn: &mut PgConnection,
    user_id: Uuid,
    keep: Option<Uuid>,
    reason: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3 \
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() AND session_id IS DISTINCT FROM $2 \
         RETURNING session_id",
    )
    .bind(user_id)
    .bind(keep)
    .bind(reason)
    .fetch_all(conn)
    .await
}

/// Stores a new refresh token of a session.
pub async fn insert_refresh(
    conn: &mut PgConnection,
    session_id: Uuid,
    token_hash: &[u8],
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)")
        .bind(token_hash)
        .bind(session_id)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// A refresh token with its session, row-locked for the rest of the transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshRow {
    /// The session.
    pub session_id: Uuid,
    /// Idle expiry.
    pub expires_at: OffsetDateTime,
    /// Used (rotated) when.
    pub used_at: Option<OffsetDateTime>,
    /// The sealed pair its rotation answered, while the rotation is younger than the reuse interval
    /// asked for (by the database's clock).
    pub successor: Option<Vec<u8>>,
}

/// Looks a refresh token up and locks it (concurrent refreshes of one token queue here), with the
/// sealed successor pair when it was rotated less than `reuse_interval` ago.
pub async fn refresh_for_update(
    conn: &mut PgConnection,
    token_hash: &[u8],
    reuse_interval: std::time::Duration,
) -> Result<Option<RefreshRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session_id, expires_at, used_at, \
                CASE WHEN used_at > now() - $2::bigint * interval '1 microsecond' THEN successor END \
                  AS successor \
         FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(token_hash)
    .bind(i64::try_from(reuse_interval.as_micros()).unwrap_or(i64::MAX))
    .fetch_optional(conn)
    .await
}

/// Whether a refresh token is live: stored, unused and not expired (row-locked, so a concurrent
/// rotation of it waits).
pub async fn refresh_is_live(conn: &mut PgConnection, token_hash: &[u8]) -> Result<bool, sqlx::Error> {
    let live: Option<bool> = sqlx::query_scalar(
        "SELECT used_at IS NULL AND expires_at > now() FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    Ok(live == Some(true))
}

/// Uses up a refresh token, keeping the sealed pair that replaced it (for the reuse interval), and
/// drops the sealed pairs of the session's older tokens: only the latest rotation can be repeated.
pub async fn use_refresh(
    conn: &mut PgConnection,
    session_id: Uuid,
    token_hash: &[u8],
    successor: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens \
         SET used_at = CASE WHEN token_hash = $2 THEN now() ELSE used_at END, \
             successor = CASE WHEN token_hash = $2 THEN $3 END \
         WHERE session_id = $1 AND (token_hash = $2 OR successor IS NOT NULL)",
    )
    .bind(session_id)
    .bind(token_hash)
    .bind(successor)
    .execute(conn)
    .await?;
    Ok(())
}

/// Uses up every unused refresh token of a session (before issuing a replacement, or when it ends)
/// and drops the sealed successor pairs: no earlier rotation can be repeated after it.
pub async fn use_all_refresh(conn: &mut PgConnection, session_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET used_at = coalesce(used_at, now()), successor = NULL \
         WHERE session_id = $1 AND (used_at IS NULL OR successor IS NOT NULL)",
    )
    .bind(session_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stamps a refresh of the session.
pub async fn touch(conn: &mut PgConnection, session_id: Uuid, ip_address: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sessions SET last_used_at = now(), ip_address = CASE WHEN $2 = '' THEN ip_address ELSE $2 END \
         WHERE session_id = $1",
    )
    .bind(session_id)
    .bind(ip_address)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the session as step-up authenticated.
pub async fn set_acr(conn: &mut PgConnection, session_id: Uuid, acr: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET acr = $2, auth_time = now() WHERE session_id = $1")
        .bind(session_id)
        .bind(acr)
        .execute(conn)
        .await?;
    Ok(())
}

/// Blocklists an access token until its expiry.
pub async fn revoke_token(
    conn: &mut PgConnection,
    jti: Uuid,
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(jti)
        .bind(expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether an access token is blocklisted.
pub async fn is_token_revoked(conn: &mut PgConnection, jti: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)")
        .bind(jti)
        .fetch_one(conn)
        .await
}

/// Everything Redis must hold for verifiers to trust it.
#[derive(Debug, Default)]
pub struct LiveRevocations {
    /// Blocklisted access tokens not yet expired.
    pub tokens: Vec<(Uuid, OffsetDateTime)>,
    /// Sessions revoked within the last access-token lifetime.
    pub sessions: Vec<Uuid>,
    /// Users whose token version was bumped.
    pub token_versions: Vec<(Uuid, i64)>,
    /// Disabled service clients.
    pub disabled_clients: Vec<String>,
}

/// Reads every live revocation (sessions revoked within `window`).
pub async fn live_revocations(
    conn: &mut PgConnection,
    window: std::time::Duration,
) -> Result<LiveRevocations, sqlx::Error> {
    let since = OffsetDateTime::now_utc() - window;
    let tokens = sqlx::query_as("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > now()")
        .fetch_all(&mut *conn)
        .await?;
    let sessions = sqlx::query_scalar("SELECT session_id FROM sessions WHERE revoked_at > $1")
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
    let token_versions = sqlx::query_as("SELECT user_id, token_version FROM users WHERE token_version > 1")
        .fetch_all(&mut *conn)
        .await?;
    let disabled_clients =
        sqlx::query_scalar("SELECT client_id FROM service_clients WHERE status = 'disabled'")
            .fetch_all(conn)
            .await?;
    Ok(LiveRevocations { tokens, sessions, token_versions, disabled_clients })
}
