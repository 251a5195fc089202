//! The transactional outbox (ADR 0005): an event row written in the caller's transaction, so the
//! event exists exactly when the change does. Every producing service uses this one function.

use prost::Message;
use sqlx::PgConnection;

/// Writes one event. `subject` is `<collection>/<id>`.
pub async fn publish<M: Message + prost::Name>(
    conn: &mut PgConnection,
    subject: &str,
    payload: &M,
) -> Result<uuid::Uuid, sqlx::Error> {
    let event_id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, subject, traceparent, payload) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event_id)
    .bind(M::full_name())
    .bind(subject)
    .bind(crate::telemetry::current_traceparent())
    .bind(payload.encode_to_vec())
    .execute(conn)
    .await?;
    Ok(event_id)
}
