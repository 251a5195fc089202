//! The `signing_keys` table.

use sqlx::PgConnection;
use time::OffsetDateTime;

/// Lifecycle state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    /// Published and signing.
    Active,
    /// Published, no longer signing.
    Retiring,
    /// Unpublished after its grace period.
    Retired,
    /// Unpublished at once (emergency).
    Revoked,
}

impl KeyState {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
            Self::Revoked => "revoked",
        }
    }

    fn parse(value: &str) -> Result<Self, sqlx::Error> {
        Ok(match value {
            "next" => Self::Next,
            "active" => Self::Active,
            "retiring" => Self::Retiring,
            "retired" => Self::Retired,
            "revoked" => Self::Revoked,
            other => return Err(sqlx::Error::Decode(format!("unknown key state {other}").into())),
        })
    }
}

/// One stored key.
#[derive(Clone)]
pub struct KeyRow {
    /// Key id.
    pub kid: String,
    /// `EdDSA`.
    pub algorithm: String,
    /// State.
    pub state: KeyState,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// AES-GCM nonce of the sealed private key.
    pub private_key_nonce: Vec<u8>,
    /// The sealed private key.
    pub private_key_sealed: Vec<u8>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Became active.
    pub activated_at: Option<OffsetDateTime>,
    /// Stopped signing.
    pub retiring_at: Option<OffsetDateTime>,
    /// Unpublished.
    pub retired_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRow").field("kid", &self.kid).field("state", &self.state).finish_non_exhaustive()
    }
}

type Row = (
    String,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    OffsetDateTime,
    Option<OffsetDateTime>,
    Option<OffsetDateTime>,
    Option<OffsetDateTime>,
);

const COLUMNS: &str = "kid, algorithm, state, public_key, private_key_nonce, private_key_sealed, created_at, \
                       activated_at, retiring_at, retired_at";

fn decode(row: Row) -> Result<KeyRow, sqlx::Error> {
    Ok(KeyRow {
        kid: row.0,
        algorithm: row.1,
        state: KeyState::parse(&row.2)?,
        public_key: row.3,
        private_key_nonce: row.4,
        private_key_sealed: row.5,
        created_at: row.6,
        activated_at: row.7,
        retiring_at: row.8,
        retired_at: row.9,
    })
}

/// Serialises key changes across replicas for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('identity.signing_keys'))").execute(conn).await?;
    Ok(())
}

/// Every key, newest first.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<KeyRow>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys ORDER BY created_at DESC, kid DESC"
    )))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(decode).collect()
}

/// One key.
pub async fn get(conn: &mut PgConnection, kid: &str) -> Result<Option<KeyRow>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM signing_keys WHERE kid = $1")))
            .bind(kid)
            .fetch_optional(conn)
            .await?;
    row.map(decode).transpose()
}

/// Stores a new key.
pub async fn insert(
    conn: &mut PgConnection,
    kid: &str,
    algorithm: &str,
    state: KeyState,
    public_key: &[u8],
    nonce: &[u8],
    sealed: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, algorithm, state, public_key, private_key_nonce, private_key_sealed, \
         activated_at) VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $3 = 'active' THEN now() END)",
    )
    .bind(kid)
    .bind(algorithm)
    .bind(state.as_str())
    .bind(public_key)
    .bind(nonce)
    .bind(sealed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves a key to `state`, stamping the matching time.
pub async fn set_state(conn: &mut PgConnection, kid: &str, state: KeyState) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signing_keys SET state = $2, \
           activated_at = CASE WHEN $2 = 'active' THEN now() ELSE activated_at END, \
           retiring_at = CASE WHEN $2 = 'retiring' THEN now() ELSE retiring_at END, \
           retired_at = CASE WHEN $2 IN ('retired', 'revoked') THEN now() ELSE retired_at END \
         WHERE kid = $1",
    )
    .bind(kid)
    .bind(state.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Retires every retiring key that stopped signing before `before`; answers how many.
pub async fn retire_older_than(conn: &mut PgConnection, before: OffsetDateTime) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE signing_keys SET state = 'retired', retired_at = now() WHERE state = 'retiring' AND retiring_at < $1",
    )
    .bind(before)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
