//! Single-use email tokens (verification, password reset, email change), stored as SHA-256.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

/// Why a token was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Sign-up or resend.
    VerifyEmail,
    /// Password reset.
    ResetPassword,
    /// Change of address (the token went to the new address).
    ChangeEmail,
}

impl Purpose {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
            Self::ChangeEmail => "change_email",
        }
    }
}

/// A stored token, row-locked.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    /// The user.
    pub user_id: Uuid,
    /// `verify_email`, `reset_password` or `change_email`.
    pub purpose: String,
    /// The address it verifies.
    pub email: String,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Used when.
    pub used_at: Option<OffsetDateTime>,
}

/// Stores a new token after using up the user's older unused ones of the same purpose.
pub async fn replace(
    conn: &mut PgConnection,
    user_id: Uuid,
    purpose: Purpose,
    email: &str,
    token_hash: &[u8],
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE email_tokens SET used_at = now() WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(purpose.as_str())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO email_tokens (token_hash, user_id, purpose, email, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(purpose.as_str())
    .bind(email)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Looks a token up (any of `purposes`) and locks it.
pub async fn for_update(
    conn: &mut PgConnection,
    token_hash: &[u8],
    purposes: &[Purpose],
) -> Result<Option<TokenRow>, sqlx::Error> {
    let names: Vec<&str> = purposes.iter().map(|p| p.as_str()).collect();
    sqlx::query_as(
        "SELECT user_id, purpose, email, expires_at, used_at FROM email_tokens \
         WHERE token_hash = $1 AND purpose = ANY ($2) FOR UPDATE",
    )
    .bind(token_hash)
    .bind(&names)
    .fetch_optional(conn)
    .await
}

/// Uses a token up.
pub async fn mark_used(conn: &mut PgConnection, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE email_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(token_hash)
        .execute(conn)
        .await?;
    Ok(())
}
