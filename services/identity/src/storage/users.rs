//! The `users` and `password_history` tables.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

/// A stored user. `Debug` leaves out the email and the password hash.
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    /// Id.
    pub user_id: Uuid,
    /// The address as typed (domain lower-cased).
    pub email: String,
    /// Verified when.
    pub email_verified_at: Option<OffsetDateTime>,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// BCP 47 locale.
    pub locale: String,
    /// IANA time zone.
    pub time_zone: String,
    /// Roles (lower-case names).
    pub roles: Vec<String>,
    /// `pending_verification`, `active` or `disabled`.
    pub status: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Current token version.
    pub token_version: i64,
    /// Consecutive failed logins.
    pub failed_logins: i32,
    /// Password locked until.
    pub locked_until: Option<OffsetDateTime>,
    /// Locks in a row (the next one lasts longer).
    pub lockout_count: i32,
    /// Last successful login.
    pub last_login_at: Option<OffsetDateTime>,
    /// Registered.
    pub created_at: OffsetDateTime,
    /// Last profile change.
    pub updated_at: OffsetDateTime,
    /// Whether a second factor is enabled.
    pub mfa_enabled: bool,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("user_id", &self.user_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl UserRow {
    /// Whether the password is locked at `now`.
    #[must_use]
    pub fn is_locked(&self, now: OffsetDateTime) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }
}

const COLUMNS: &str = "user_id, email, email_verified_at, given_name, family_name, locale, time_zone, roles, status, \
                       password_hash, token_version, failed_logins, locked_until, lockout_count, last_login_at, \
                       created_at, updated_at, \
                       EXISTS (SELECT 1 FROM mfa_totp m WHERE m.user_id = users.user_id AND m.enabled_at IS NOT NULL) \
                         AS mfa_enabled";

/// What a new user starts with.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// Id.
    pub user_id: Uuid,
    /// Address as typed.
    pub email: &'a str,
    /// Uniqueness key.
    pub email_canonical: &'a str,
    /// Given name.
    pub given_name: &'a str,
    /// Family name.
    pub family_name: &'a str,
    /// Locale.
    pub locale: &'a str,
    /// Time zone.
    pub time_zone: &'a str,
    /// Roles.
    pub roles: &'a [String],
    /// Verified already (bootstrap admin).
    pub verified: bool,
    /// PHC string.
    pub password_hash: &'a str,
}

/// Inserts a user unless the address is taken; `None` when it was.
pub async fn insert(conn: &mut PgConnection, user: &NewUser<'_>) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (user_id, email, email_canonical, given_name, family_name, locale, time_zone, roles, \
           status, email_verified_at, password_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
           CASE WHEN $9 THEN 'active' ELSE 'pending_verification' END, CASE WHEN $9 THEN now() END, $10) \
         ON CONFLICT (email_canonical) DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(user.user_id)
    .bind(user.email)
    .bind(user.email_canonical)
    .bind(user.given_name)
    .bind(user.family_name)
    .bind(user.locale)
    .bind(user.time_zone)
    .bind(user.roles)
    .bind(user.verified)
    .bind(user.password_hash)
    .fetch_optional(conn)
    .await
}

/// A user by id; `lock` takes the row lock for the rest of the transaction.
pub async fn by_id(
    conn: &mut PgConnection,
    user_id: Uuid,
    lock: bool,
) -> Result<Option<UserRow>, sqlx::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM users WHERE user_id = $1{suffix}")))
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

/// A user by the canonical (lower-cased) address.
pub async fn by_email(conn: &mut PgConnection, canonical: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM users WHERE email_canonical = $1")))
        .bind(canonical)
        .fetch_optional(conn)
        .await
}

/// Counts a failed password; locks when the count reaches `threshold` (the lock lasts
/// `base * 2^locks_in_a_row`, at most `cap`, and the count starts again). Answers the row after.
pub async fn record_failure(
    conn: &mut PgConnection,
    user_id: Uuid,
    threshold: i32,
    base_seconds: i64,
    cap_seconds: i64,
) -> Result<UserRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET \
           failed_logins = CASE WHEN failed_logins + 1 >= $2 THEN 0 ELSE failed_logins + 1 END, \
           locked_until = CASE WHEN failed_logins + 1 >= $2 \
             THEN now() + make_interval(secs => LEAST($4, $3 * power(2, LEAST(lockout_count, 30)))) \
             ELSE locked_until END, \
           lockout_count = CASE WHEN failed_logins + 1 >= $2 THEN lockout_count + 1 ELSE lockout_count END \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .bind(threshold)
    .bind(base_seconds)
    .bind(cap_seconds)
    .fetch_one(conn)
    .await
}

/// A successful login: clears the failure count and the lock streak, stamps the login and (when
/// given) stores a rehashed password. `None` when the password got locked meanwhile.
pub async fn record_success(
    conn: &mut PgConnection,
    user_id: Uuid,
    rehashed: Option<&str>,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET failed_logins = 0, lockout_count = 0, locked_until = NULL, last_login_at = now(), \
           password_hash = COALESCE($2, password_hash) \
         WHERE user_id = $1 AND (locked_until IS NULL OR locked_until <= now()) RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .bind(rehashed)
    .fetch_optional(conn)
    .await
}

/// Stores a rehash of the current password (stronger parameters); nothing else changes.
pub async fn set_password_hash(
    conn: &mut PgConnection,
    user_id: Uuid,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET password_hash = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(password_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets a new password: history, token version bump (every older token dies), lock cleared.
/// Answers the row after.
pub async fn set_password(
    conn: &mut PgConnection,
    user_id: Uuid,
    password_hash: &str,
    history: usize,
) -> Result<UserRow, sqlx::Error> {
    let row: UserRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET password_hash = $2, token_version = token_version + 1, failed_logins = 0, \
           lockout_count = 0, locked_until = NULL, updated_at = now() \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .bind(password_hash)
    .fetch_one(&mut *conn)
    .await?;
    add_history(conn, user_id, password_hash, history).await?;
    Ok(row)
}

/// Records a password in the history and keeps only the newest `keep`.
pub async fn add_history(
    conn: &mut PgConnection,
    user_id: Uuid,
    password_hash: &str,
    keep: usize,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO password_history (user_id, password_hash) VALUES ($1, $2)")
        .bind(user_id)
        .bind(password_hash)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM password_history WHERE user_id = $1 AND ctid NOT IN \
           (SELECT ctid FROM password_history WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2)",
    )
    .bind(user_id)
    .bind(i64::try_from(keep).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// The newest password hashes, newest first.
pub async fn history(conn: &mut PgConnection, user_id: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY created_at DESC",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await
}

/// Bumps the token version (every existing access token of the user dies); answers the new one.
pub async fn bump_token_version(conn: &mut PgConnection, user_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE users SET token_version = token_version + 1, updated_at = now() WHERE user_id = $1 \
         RETURNING token_version",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await
}

/// Marks the address verified (and a pending user active); for an email change also sets the new
/// address. `None` when the new address is taken meanwhile.
pub async fn verify_email(
    conn: &mut PgConnection,
    user_id: Uuid,
    email: &str,
    canonical: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    let updated = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET email = $2, email_canonical = $3, email_verified_at = now(), updated_at = now(), \
           status = CASE WHEN status = 'pending_verification' THEN 'active' ELSE status END \
         WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM users o WHERE o.email_canonical = $3 AND o.user_id <> $1) \
         RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .bind(email)
    .bind(canonical)
    .fetch_optional(conn)
    .await?;
    Ok(updated)
}

/// Profile changes; `None` fields stay.
#[derive(Debug, Default)]
pub struct ProfileChange {
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Locale.
    pub locale: Option<String>,
    /// Time zone.
    pub time_zone: Option<String>,
}

/// Applies a profile change; answers the row after.
pub async fn update_profile(
    conn: &mut PgConnection,
    user_id: Uuid,
    change: &ProfileChange,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET given_name = COALESCE($2, given_name), family_name = COALESCE($3, family_name), \
           locale = COALESCE($4, locale), time_zone = COALESCE($5, time_zone), updated_at = now() \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .bind(change.given_name.as_deref())
    .bind(change.family_name.as_deref())
    .bind(change.locale.as_deref())
    .bind(change.time_zone.as_deref())
    .fetch_optional(conn)
    .await
}

/// Sets the status (`active` or `disabled`); a disable also bumps the token version. `None` when
/// there is no such user.
pub async fn set_status(
    conn: &mut PgConnection,
    user_id: Uuid,
    status: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET status = $2, updated_at = now(), \
           token_version = CASE WHEN $2 = 'disabled' AND status <> 'disabled' THEN token_version + 1 \
                                ELSE token_version END \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .bind(status)
    .fetch_optional(conn)
    .await
}

/// Clears the lock and the failure count (admin unlock). `None` when there is no such user.
pub async fn unlock(conn: &mut PgConnection, user_id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET locked_until = NULL, failed_logins = 0, lockout_count = 0, updated_at = now() \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// Replaces the roles and bumps the token version (tokens with the old roles die).
pub async fn set_roles(
    conn: &mut PgConnection,
    user_id: Uuid,
    roles: &[String],
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET roles = $2, token_version = token_version + 1, updated_at = now() \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .bind(roles)
    .fetch_optional(conn)
    .await
}

/// Whether any user holds `role`.
pub async fn any_with_role(conn: &mut PgConnection, role: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE $1 = ANY (roles))")
        .bind(role)
        .fetch_one(conn)
        .await
}

/// Serializes the bootstrap of the first admin across replicas starting together: held until the
/// transaction ends.
pub async fn lock_bootstrap(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // Any constant of this service's own database: "bootstrap.admin" as a number.
    sqlx::query("SELECT pg_advisory_xact_lock(7100203001)").execute(conn).await?;
    Ok(())
}

/// A page of users for the admin search, oldest first: `query` matches the address or the names
/// (a parameter, never SQL text); answers the page and the total.
pub async fn search(
    conn: &mut PgConnection,
    query: &str,
    locked_only: bool,
    offset: i64,
    limit: i64,
) -> Result<(Vec<UserRow>, i64), sqlx::Error> {
    let pattern = format!("%{}%", query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let filter = "($1 = '%%' OR email_canonical ILIKE $1 OR given_name ILIKE $1 OR family_name ILIKE $1) \
                  AND (NOT $2 OR locked_until > now())";
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE {filter} ORDER BY created_at, user_id OFFSET $3 LIMIT $4"
    )))
    .bind(&pattern)
    .bind(locked_only)
    .bind(offset)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM users WHERE {filter}")))
            .bind(&pattern)
            .bind(locked_only)
            .fetch_one(conn)
            .await?;
    Ok((rows, total))
}

/// Serialises changes that could leave no active administrator (disable, role changes) for the
/// rest of the transaction. Take it before any user row lock.
pub async fn lock_admins(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('identity.admins'))").execute(conn).await?;
    Ok(())
}

/// How many active users other than `except` hold the `admin` role.
pub async fn count_active_admins_except(conn: &mut PgConnection, except: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE status = 'active' AND 'admin' = ANY (roles) AND user_id <> $1",
    )
    .bind(except)
    .fetch_one(conn)
    .await
}

/// Re-enables a disabled user: `active` when the address is verified, else back to
/// `pending_verification` (enabling never skips the email check). Other statuses stay. `None`
/// when there is no such user.
pub async fn enable(conn: &mut PgConnection, user_id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET updated_at = now(), \
           status = CASE WHEN status <> 'disabled' THEN status \
                         WHEN email_verified_at IS NULL THEN 'pending_verification' ELSE 'active' END \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// Filters of the admin user search (bound parameters, never SQL text).
#[derive(Debug, Default)]
pub struct SearchFilter<'a> {
    /// Case-insensitive substring of the address or the names; empty matches all.
    pub query: &'a str,
    /// Only users holding this role.
    pub role: Option<&'a str>,
    /// Only users in this status.
    pub status: Option<&'a str>,
    /// Only users locked out now.
    pub locked_only: bool,
}

/// A page of users for the admin search, newest first, and the number of all matching users.
pub async fn search_filtered(
    conn: &mut PgConnection,
    filter: &SearchFilter<'_>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<UserRow>, i64), sqlx::Error> {
    let pattern = format!("%{}%", filter.query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let condition = "($1 = '%%' OR email_canonical ILIKE $1 OR given_name ILIKE $1 OR family_name ILIKE $1) \
                     AND (NOT $2 OR locked_until > now()) AND ($3::text IS NULL OR $3 = ANY (roles)) \
                     AND ($4::text IS NULL OR status = $4)";
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE {condition} ORDER BY created_at DESC, user_id DESC OFFSET $5 LIMIT $6"
    )))
    .bind(&pattern)
    .bind(filter.locked_only)
    .bind(filter.role)
    .bind(filter.status)
    .bind(offset)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM users WHERE {condition}")))
            .bind(&pattern)
            .bind(filter.locked_only)
            .bind(filter.role)
            .bind(filter.status)
            .fetch_one(conn)
            .await?;
    Ok((rows, total))
}
