//! Service clients (client credentials).

use sqlx::PgConnection;
use time::OffsetDateTime;

/// A stored service client. `Debug` leaves out the secret hashes.
#[derive(Clone, sqlx::FromRow)]
pub struct ClientRow {
    /// Id (the `sub` of its tokens).
    pub client_id: String,
    /// Unique name.
    pub name: String,
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// argon2id of the secret.
    pub secret_hash: String,
    /// argon2id of the previous secret, valid until `previous_secret_expires_at`.
    pub previous_secret_hash: Option<String>,
    /// End of the previous secret's grace.
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    /// `active` or `disabled`.
    pub status: String,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last token issued.
    pub last_used_at: Option<OffsetDateTime>,
    /// Last secret rotation.
    pub secret_rotated_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for ClientRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRow")
            .field("client_id", &self.client_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "client_id, name, scopes, secret_hash, previous_secret_hash, previous_secret_expires_at, status, \
                       created_at, last_used_at, secret_rotated_at";

/// One client.
pub async fn get(conn: &mut PgConnection, client_id: &str) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM service_clients WHERE client_id = $1")))
        .bind(client_id)
        .fetch_optional(conn)
        .await
}

/// Creates a client, or (same id) updates its name, scopes and secret and re-activates it.
pub async fn upsert(
    conn: &mut PgConnection,
    client_id: &str,
    name: &str,
    scopes: &[String],
    secret_hash: &str,
) -> Result<ClientRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO service_clients (client_id, name, scopes, secret_hash, status) VALUES ($1, $2, $3, $4, 'active') \
         ON CONFLICT (client_id) DO UPDATE SET name = $2, scopes = $3, secret_hash = $4, status = 'active' \
         RETURNING {COLUMNS}"
    )))
    .bind(client_id)
    .bind(name)
    .bind(scopes)
    .bind(secret_hash)
    .fetch_one(conn)
    .await
}

/// Creates a client; `None` when the name is taken.
pub async fn insert(
    conn: &mut PgConnection,
    client_id: &str,
    name: &str,
    scopes: &[String],
    secret_hash: &str,
) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO service_clients (client_id, name, scopes, secret_hash, status) VALUES ($1, $2, $3, $4, 'active') \
         ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(client_id)
    .bind(name)
    .bind(scopes)
    .bind(secret_hash)
    .fetch_optional(conn)
    .await
}

/// A page of clients by name.
pub async fn list(conn: &mut PgConnection, offset: i64, limit: i64) -> Result<Vec<ClientRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM service_clients ORDER BY name OFFSET $1 LIMIT $2"
    )))
    .bind(offset)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Disables a client; `None` when there is none.
pub async fn disable(conn: &mut PgConnection, client_id: &str) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE service_clients SET status = 'disabled' WHERE client_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(client_id)
    .fetch_optional(conn)
    .await
}

/// Replaces the secret; the previous one stays valid until `previous_expires_at`.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    client_id: &str,
    secret_hash: &str,
    previous_expires_at: Option<OffsetDateTime>,
) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE service_clients SET previous_secret_hash = CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE secret_hash END, \
           previous_secret_expires_at = $3, secret_hash = $2, secret_rotated_at = now() \
         WHERE client_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(client_id)
    .bind(secret_hash)
    .bind(previous_expires_at)
    .fetch_optional(conn)
    .await
}

/// Stamps a token issue.
pub async fn touch(conn: &mut PgConnection, client_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE service_clients SET last_used_at = now() WHERE client_id = $1")
        .bind(client_id)
        .execute(conn)
        .await?;
    Ok(())
}
