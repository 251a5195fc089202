//! The revocation journal (migration 0004): what has been revoked here and not yet acknowledged by
//! Redis. Rows are written by triggers; identity's replayer reads, writes to Redis and deletes.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

/// What one journal row asks Redis to hold, resolved against the current rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A blocklisted access token, until its expiry.
    Token {
        /// The token id.
        jti: Uuid,
        /// The token's expiry.
        expires_at: OffsetDateTime,
    },
    /// A revoked session, since `revoked_at`.
    Session {
        /// The session.
        session_id: Uuid,
        /// When it was revoked.
        revoked_at: OffsetDateTime,
    },
    /// The user's current token version.
    TokenVersion {
        /// The user.
        user_id: Uuid,
        /// The version now.
        token_version: i64,
    },
    /// A disabled service client.
    Client {
        /// The client.
        client_id: String,
    },
    /// Nothing is left to write (the row it names is gone, or a client was enabled again).
    Nothing,
}

/// One journal row.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The row's id (deleted once Redis acknowledged).
    pub id: i64,
    /// What to write.
    pub pending: Pending,
}

type Row = (
    i64,
    String,
    Option<Uuid>,
    Option<OffsetDateTime>,
    Option<Uuid>,
    Option<OffsetDateTime>,
    Option<Uuid>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// Locks up to `limit` of the oldest rows no other replica is replaying, with what they ask for.
pub async fn claim(conn: &mut PgConnection, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT j.id, j.kind, j.jti, t.expires_at, j.session_id, s.revoked_at, j.user_id, u.token_version, \
                j.client_id, c.status \
           FROM revocation_journal j \
           LEFT JOIN revoked_tokens t ON t.jti = j.jti \
           LEFT JOIN sessions s ON s.session_id = j.session_id \
           LEFT JOIN users u ON u.user_id = j.user_id \
           LEFT JOIN service_clients c ON c.client_id = j.client_id \
          ORDER BY j.id LIMIT $1 FOR UPDATE OF j SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(entry).collect())
}

fn entry(row: Row) -> Entry {
    let (id, kind, jti, expires_at, session_id, revoked_at, user_id, token_version, client_id, status) = row;
    let pending = match kind.as_str() {
        "token" => match (jti, expires_at) {
            (Some(jti), Some(expires_at)) => Pending::Token { jti, expires_at },
            _ => Pending::Nothing,
        },
        "session" => match (session_id, revoked_at) {
            (Some(session_id), Some(revoked_at)) => Pending::Session { session_id, revoked_at },
            _ => Pending::Nothing,
        },
        "token_version" => match (user_id, token_version) {
            (Some(user_id), Some(token_version)) => Pending::TokenVersion { user_id, token_version },
            _ => Pending::Nothing,
        },
        "client" => match (client_id, status.as_deref()) {
            (Some(client_id), Some("disabled")) => Pending::Client { client_id },
            _ => Pending::Nothing,
        },
        _ => Pending::Nothing,
    };
    Entry { id, pending }
}

/// Deletes the rows Redis acknowledged.
pub async fn remove(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM revocation_journal WHERE id = ANY($1)").bind(ids).execute(conn).await?;
    Ok(())
}

/// The highest row id visible now (0 when empty): every revocation committed before this call
/// has a row at or below it.
pub async fn horizon(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM revocation_journal").fetch_one(conn).await
}

/// Whether a row at or below `horizon` still waits (locked by another replica or not).
pub async fn any_up_to(conn: &mut PgConnection, horizon: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revocation_journal WHERE id <= $1)")
        .bind(horizon)
        .fetch_one(conn)
        .await
}
