//! Holds as stored. Holds change only inside the posting engine's batches ([`super::batch`]).

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::corrupt;
use crate::domain::{Hold, HoldStatus, SystemType};

/// A `holds` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct HoldRow {
    hold_id: Uuid,
    account_id: Uuid,
    amount: i64,
    currency: String,
    captured_amount: i64,
    refunded_amount: i64,
    status: String,
    counterparty: String,
    created_by: String,
    reference_id: String,
    description: String,
    expires_at: OffsetDateTime,
    capture_transaction_id: Option<Uuid>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<HoldRow> for Hold {
    type Error = sqlx::Error;

    fn try_from(row: HoldRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.hold_id,
            account: row.account_id,
            amount: row.amount,
            currency: row.currency,
            captured: row.captured_amount,
            refunded: row.refunded_amount,
            status: HoldStatus::from_name(&row.status).ok_or_else(|| corrupt("hold status", &row.status))?,
            counterparty: SystemType::from_name(&row.counterparty)
                .ok_or_else(|| corrupt("counterparty", &row.counterparty))?,
            created_by: row.created_by,
            reference: row.reference_id,
            description: row.description,
            expires_at: row.expires_at,
            capture_transaction: row.capture_transaction_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub(super) fn holds(rows: Vec<HoldRow>) -> Result<Vec<Hold>, sqlx::Error> {
    rows.into_iter().map(Hold::try_from).collect()
}

pub(super) const HOLD_COLUMNS: &str = "hold_id, account_id, amount, currency::text AS currency, captured_amount, \
    refunded_amount, status, counterparty, created_by, reference_id, description, expires_at, \
    capture_transaction_id, created_at, updated_at";

/// A hold by id.
pub(crate) async fn hold(conn: &mut PgConnection, hold_id: Uuid) -> Result<Option<Hold>, sqlx::Error> {
    let row: Option<HoldRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = $1")))
            .bind(hold_id)
            .fetch_optional(conn)
            .await?;
    row.map(Hold::try_from).transpose()
}

/// A hold by its creator's reference.
pub(crate) async fn hold_by_reference(
    conn: &mut PgConnection,
    created_by: &str,
    reference_id: &str,
) -> Result<Option<Hold>, sqlx::Error> {
    let row: Option<HoldRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE created_by = $1 AND reference_id = $2"
    )))
    .bind(created_by)
    .bind(reference_id)
    .fetch_optional(conn)
    .await?;
    row.map(Hold::try_from).transpose()
}

/// Active holds past their expiry (oldest first).
pub(crate) async fn expired_holds(conn: &mut PgConnection, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT hold_id FROM holds WHERE status = 'active' AND expires_at <= now() ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}
