//! The transactional outbox (ADR 0005): an event row written in the caller's transaction, so the
//! event exists exactly when the change does. Every producing service uses this one function.

use prost::Message;
use sqlx::PgConnection;

/// One outbox row, built before it is written: hot paths fold its `INSERT` into a statement they
/// run anyway (one round trip fewer); everything else calls [`publish`].
#[derive(Debug, Clone)]
pub struct Event {
    /// `event_id` (UUIDv7: relay order is id order).
    pub event_id: uuid::Uuid,
    /// The payload's full protobuf name.
    pub event_type: String,
    /// `<collection>/<id>`.
    pub subject: String,
    /// The current trace context, when there is one.
    pub traceparent: Option<String>,
    /// The encoded payload.
    pub payload: Vec<u8>,
}

impl Event {
    /// The row for `payload` about `subject`, stamped with the current trace context.
    #[must_use]
    pub fn new<M: Message + prost::Name>(subject: &str, payload: &M) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7(),
            event_type: M::full_name(),
            subject: subject.to_owned(),
            traceparent: crate::telemetry::current_traceparent(),
            payload: payload.encode_to_vec(),
        }
    }
}

/// Writes one event. `subject` is `<collection>/<id>`.
pub async fn publish<M: Message + prost::Name>(
    conn: &mut PgConnection,
    subject: &str,
    payload: &M,
) -> Result<uuid::Uuid, sqlx::Error> {
    let event = Event::new(subject, payload);
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, subject, traceparent, payload) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(event.event_id)
    .bind(&event.event_type)
    .bind(&event.subject)
    .bind(&event.traceparent)
    .bind(&event.payload)
    .execute(conn)
    .await?;
    Ok(event.event_id)
}
