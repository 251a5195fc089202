//! The `mfa_totp`, `mfa_recovery_codes` and `mfa_challenges` tables.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

/// A user's TOTP enrolment. `Debug` leaves out the sealed secret.
#[derive(Clone, sqlx::FromRow)]
pub struct TotpRow {
    /// The user.
    pub user_id: Uuid,
    /// AES-GCM nonce of the sealed secret.
    pub secret_nonce: Vec<u8>,
    /// The secret, sealed under the KEK.
    pub secret_sealed: Vec<u8>,
    /// Enabled when (`None`: waiting for the first code).
    pub enabled_at: Option<OffsetDateTime>,
    /// An unconfirmed enrolment is void after this.
    pub enrollment_expires_at: OffsetDateTime,
    /// The newest accepted time step.
    pub last_used_step: i64,
}

impl std::fmt::Debug for TotpRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRow")
            .field("user_id", &self.user_id)
            .field("enabled_at", &self.enabled_at)
            .finish_non_exhaustive()
    }
}

const TOTP_COLUMNS: &str =
    "user_id, secret_nonce, secret_sealed, enabled_at, enrollment_expires_at, last_used_step";

/// The user's enrolment; `lock` takes the row lock (orders concurrent code checks).
pub async fn totp(
    conn: &mut PgConnection,
    user_id: Uuid,
    lock: bool,
) -> Result<Option<TotpRow>, sqlx::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TOTP_COLUMNS} FROM mfa_totp WHERE user_id = $1{suffix}"
    )))
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// Whether the user has MFA enabled.
pub async fn is_enabled(conn: &mut PgConnection, user_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = $1 AND enabled_at IS NOT NULL)")
        .bind(user_id)
        .fetch_one(conn)
        .await
}

/// Starts (or restarts) an enrolment. `false` when MFA is already enabled (nothing changed).
pub async fn start_enrollment(
    conn: &mut PgConnection,
    user_id: Uuid,
    nonce: &[u8],
    sealed: &[u8],
    expires_at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO mfa_totp (user_id, secret_nonce, secret_sealed, enrollment_expires_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id) DO UPDATE SET secret_nonce = EXCLUDED.secret_nonce, \
           secret_sealed = EXCLUDED.secret_sealed, enrollment_expires_at = EXCLUDED.enrollment_expires_at, \
           last_used_step = 0, created_at = now() \
         WHERE mfa_totp.enabled_at IS NULL",
    )
    .bind(user_id)
    .bind(nonce)
    .bind(sealed)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records an accepted code's step (and enables MFA when `enable`).
pub async fn accept_step(
    conn: &mut PgConnection,
    user_id: Uuid,
    step: i64,
    enable: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE mfa_totp SET last_used_step = $2, \
           enabled_at = CASE WHEN $3 THEN COALESCE(enabled_at, now()) ELSE enabled_at END \
         WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(step)
    .bind(enable)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes the user's enrolment and recovery codes. `false` when MFA was not enabled.
pub async fn remove(conn: &mut PgConnection, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let enabled_at: Option<Option<OffsetDateTime>> =
        sqlx::query_scalar("DELETE FROM mfa_totp WHERE user_id = $1 RETURNING enabled_at")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1").bind(user_id).execute(conn).await?;
    Ok(enabled_at.flatten().is_some())
}

/// Replaces every recovery code of the user with `digests`.
pub async fn replace_recovery_codes(
    conn: &mut PgConnection,
    user_id: Uuid,
    digests: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO mfa_recovery_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])")
        .bind(user_id)
        .bind(digests)
        .execute(conn)
        .await?;
    Ok(())
}

/// Uses up a recovery code: `true` exactly once per code, also under concurrency.
pub async fn use_recovery_code(
    conn: &mut PgConnection,
    user_id: Uuid,
    digest: &[u8],
) -> Result<bool, sqlx::Error> {
    let used = sqlx::query(
        "UPDATE mfa_recovery_codes SET used_at = now() \
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(digest)
    .execute(conn)
    .await?;
    Ok(used.rows_affected() == 1)
}

/// Unused recovery codes of the user.
pub async fn recovery_codes_left(conn: &mut PgConnection, user_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL")
        .bind(user_id)
        .fetch_one(conn)
        .await
}

/// An MFA-pending login.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChallengeRow {
    /// The user who gave the right password.
    pub user_id: Uuid,
    /// Device label of the login.
    pub device_name: String,
    /// Wrong codes so far.
    pub failed_attempts: i32,
    /// Void after this.
    pub expires_at: OffsetDateTime,
    /// Exchanged for a session when.
    pub used_at: Option<OffsetDateTime>,
}

/// Stores a challenge (and drops the user's expired ones).
pub async fn insert_challenge(
    conn: &mut PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    device_name: &str,
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1 AND expires_at < now()")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO mfa_challenges (token_hash, user_id, device_name, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(device_name)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A challenge with its row lock.
pub async fn challenge_for_update(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<ChallengeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, device_name, failed_attempts, expires_at, used_at FROM mfa_challenges \
         WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

/// Marks a challenge used.
pub async fn use_challenge(conn: &mut PgConnection, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE mfa_challenges SET used_at = now() WHERE token_hash = $1")
        .bind(token_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts a wrong code against a challenge; at `max_attempts` it is used up.
pub async fn fail_challenge(
    conn: &mut PgConnection,
    token_hash: &[u8],
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE mfa_challenges SET failed_attempts = failed_attempts + 1, \
           used_at = CASE WHEN failed_attempts + 1 >= $2 THEN now() ELSE used_at END \
         WHERE token_hash = $1",
    )
    .bind(token_hash)
    .bind(max_attempts)
    .execute(conn)
    .await?;
    Ok(())
}
