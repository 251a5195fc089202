//! Applying one consumed event: everything it causes (projections, notification records, queued
//! emails, webhook deliveries, the security feed, low-balance state) is written in one transaction
//! together with its id in `processed_events`, so a redelivered event finds its id and has no second
//! effect (exactly once in effect over an at-least-once stream).

use std::sync::Arc;

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    catalog::{self, EventType, Interpretation, Template},
    templates,
};

/// One event as read from a stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Event id (the deduplication key).
    pub id: Uuid,
    /// Payload type.
    pub event_type: String,
    /// Producing service.
    pub source: String,
    /// `<collection>/<id>`.
    pub subject: String,
    /// When it happened.
    pub time: OffsetDateTime,
    /// W3C trace context.
    pub traceparent: String,
    /// Encoded payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    // Payloads may carry single-use tokens (verification, reset): never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why an event could not be applied (it stays pending and is retried, then dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The payload does not decode as its type: retrying will not help (a poison message).
    #[error("payload does not decode as {0}")]
    Undecodable(String),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What applying did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// First time: the effects are committed.
    New,
    /// Seen before: nothing done.
    Duplicate,
    /// A type notifications does not handle: acknowledged and skipped.
    Unknown,
}

/// Decodes payloads by type name into canonical proto3 JSON.
#[derive(Debug, Clone)]
pub struct Decoder {
    pool: DescriptorPool,
}

impl Decoder {
    /// From the contracts compiled into `bank-proto`.
    ///
    /// # Panics
    /// The embedded descriptor set is malformed (a build error).
    #[must_use]
    pub fn new() -> Self {
        #[allow(clippy::expect_used)]
        let pool = DescriptorPool::decode(bank_proto::FILE_DESCRIPTOR_SET).expect("embedded descriptor set");
        Self { pool }
    }

    /// The payload as JSON.
    ///
    /// # Errors
    /// It does not decode as `event_type`.
    pub fn json(&self, event_type: &str, payload: &[u8]) -> Result<Value, Error> {
        let undecodable = || Error::Undecodable(event_type.to_owned());
        let descriptor = self.pool.get_message_by_name(event_type).ok_or_else(undecodable)?;
        let message = DynamicMessage::decode(descriptor, payload).map_err(|_| undecodable())?;
        let options = prost_reflect::SerializeOptions::new().stringify_64_bit_integers(true);
        message.serialize_with_options(serde_json::value::Serializer, &options).map_err(|_| undecodable())
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// What applying needs besides the event.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where email links point.
    pub link_base_url: String,
}

/// The webhook body of an event: `{"id", "type", "source", "time", "subject", "data"}`.
#[must_use]
pub fn webhook_body(envelope: &Envelope, data: &Value) -> String {
    json!({
        "id": envelope.id.to_string(),
        "type": envelope.event_type,
        "source": envelope.source,
        "time": envelope.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "subject": envelope.subject,
        "data": data,
    })
    .to_string()
}

/// Applies `envelope` once. See the module docs.
///
/// # Errors
/// The payload does not decode, or the database failed; nothing was committed.
pub async fn apply(
    pool: &PgPool,
    decoder: &Decoder,
    settings: &Settings,
    envelope: &Envelope,
) -> Result<Applied, Error> {
    let Some(kind) = catalog::event_type(&envelope.event_type) else {
        return Ok(Applied::Unknown);
    };
    let data = decoder.json(&envelope.event_type, &envelope.payload)?;
    let mut tx = pool.begin().await?;
    let first = sqlx::query(
        "INSERT INTO processed_events (event_id, source, event_type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(envelope.id)
    .bind(&envelope.source)
    .bind(&envelope.event_type)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        return Ok(Applied::Duplicate);
    }
    project(&mut tx, kind, &data).await?;
    let meaning = catalog::interpret(kind, &data);
    effects(&mut tx, settings, kind, envelope, &data, &meaning).await?;
    tx.commit().await?;
    metrics::counter!("notifications_events_applied_total", "type" => kind.name).increment(1);
    Ok(Applied::New)
}

/// Keeps the user and account projections.
async fn project(conn: &mut PgConnection, kind: &EventType, data: &Value) -> Result<(), sqlx::Error> {
    use catalog::{id, text};
    match kind.name {
        "bank.events.v1.UserRegistered" => {
            if let Some(user) = id(data, "userId") {
                sqlx::query(
                    "INSERT INTO users (user_id, email, given_name, locale) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id) DO UPDATE SET given_name = EXCLUDED.given_name, locale = EXCLUDED.locale",
                )
                .bind(user)
                .bind(text(data, "email"))
                .bind(text(data, "givenName"))
                .bind(text(data, "locale"))
                .execute(&mut *conn)
                .await?;
            }
        }
        "bank.events.v1.EmailVerified" => {
            if let Some(user) = id(data, "userId") {
                sqlx::query(
                    "INSERT INTO users (user_id, email) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, updated_at = now()",
                )
                .bind(user)
                .bind(text(data, "email"))
                .execute(&mut *conn)
                .await?;
            }
        }
        "bank.events.v1.AccountOpened" => {
            if let (Some(account), Some(owner)) = (id(data, "accountId"), id(data, "ownerUserId")) {
                sqlx::query(
                    "INSERT INTO accounts (account_id, owner_user_id, number_last_four, currency) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(account)
                .bind(owner)
                .bind(text(data, "accountNumberLastFour"))
                .bind(text(data, "currency"))
                .execute(&mut *conn)
                .await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The channels a user chose for an event type: (email, webhook).
pub async fn channels(
    conn: &mut PgConnection,
    user: Uuid,
    kind: &EventType,
) -> Result<(bool, bool), sqlx::Error> {
    let chosen: Option<(bool, bool)> =
        sqlx::query_as("SELECT email, webhook FROM preferences WHERE user_id = $1 AND event_type = $2")
            .bind(user)
            .bind(kind.name)
            .fetch_optional(&mut *conn)
            .await?;
    let (email, webhook) = chosen.unwrap_or((kind.email.is_some(), kind.webhook));
    Ok((email || (kind.security && kind.email.is_some()), webhook && kind.webhook))
}

async fn effects(
    conn: &mut PgConnection,
    settings: &Settings,
    kind: &EventType,
    envelope: &Envelope,
    data: &Value,
    meaning: &Interpretation,
) -> Result<(), sqlx::Error> {
    for balance in &meaning.balances {
        sqlx::query(
            "UPDATE low_balance_alerts SET armed = true WHERE account_id = $1 AND currency = $2 \
             AND threshold <= $3 AND NOT armed",
        )
        .bind(balance.account_id)
        .bind(&balance.available.currency)
        .bind(balance.available.minor_units)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(account) = meaning.low_balance {
        sqlx::query(
            "UPDATE low_balance_alerts SET armed = false, last_triggered_at = $2 WHERE account_id = $1",
        )
        .bind(account)
        .bind(envelope.time)
        .execute(&mut *conn)
        .await?;
    }
    let mut webhook_users = Vec::new();
    for user in &meaning.users {
        let (email_on, webhook_on) = channels(conn, *user, kind).await?;
        let mut used: Vec<&str> = Vec::new();
        for mail in meaning.mails.iter().filter(|m| m.user_id == *user) {
            if (email_on || mail.template.transactional())
                && queue_mail(conn, settings, Some(envelope.id), mail, data).await?
            {
                used.push("email");
            }
        }
        if webhook_on {
            webhook_users.push(*user);
            used.push("webhook");
        }
        used.dedup();
        sqlx::query(
            "INSERT INTO notifications (event_id, user_id, event_type, occurred_at, channels) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(envelope.id)
        .bind(user)
        .bind(kind.name)
        .bind(envelope.time)
        .bind(&used)
        .execute(&mut *conn)
        .await?;
    }
    if kind.webhook {
        let body = webhook_body(envelope, data);
        sqlx::query(
            "INSERT INTO event_archive (event_id, event_type, occurred_at, user_ids, body) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(envelope.id)
        .bind(kind.name)
        .bind(envelope.time)
        .bind(&meaning.users)
        .bind(&body)
        .execute(&mut *conn)
        .await?;
        // The users' own endpoints (if they want webhooks for this type) and partner endpoints.
        sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, event_id, event_type, body, next_attempt_at) \
             SELECT gen_random_uuid(), endpoint_id, $1, $2, $3, now() FROM webhook_endpoints \
             WHERE status = 'active' AND (owner_user_id = ANY($4) OR owner_client_id IS NOT NULL) \
               AND (event_types = '{}' OR $2 = ANY(event_types)) \
             ON CONFLICT DO NOTHING",
        )
        .bind(envelope.id)
        .bind(kind.name)
        .bind(&body)
        .bind(&webhook_users)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(line) = &meaning.security {
        let (currency, minor) = line.amount.as_ref().map(|m| (m.currency.clone(), m.minor_units)).unzip();
        let reason = reason_number(&line.decline_reason);
        sqlx::query(
            "INSERT INTO security_events (event_id, event_type, occurred_at, user_id, summary, ip_address, \
               user_agent, card_last_four, decline_reason, currency, minor_units) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(envelope.id)
        .bind(kind.name)
        .bind(envelope.time)
        .bind(line.user_id)
        .bind(&line.summary)
        .bind(&line.ip_address)
        .bind(truncate(&line.user_agent, 256))
        .bind(&line.card_last_four)
        .bind(reason)
        .bind(currency)
        .bind(minor)
        .execute(&mut *conn)
        .await?;
        sqlx::query("SELECT pg_notify('security_events', '')").execute(&mut *conn).await?;
    }
    Ok(())
}

fn reason_number(name: &str) -> i32 {
    bank_proto::cards::v1::DeclineReason::from_str_name(name).map_or(0, |r| r as i32)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Renders and queues one email; answers false when the user's address is unknown (the user
/// registered before notifications kept its projection): nothing is queued, a metric counts it.
///
/// # Errors
/// The database failed.
pub async fn queue_mail(
    conn: &mut PgConnection,
    settings: &Settings,
    event_id: Option<Uuid>,
    mail: &catalog::Mail,
    data: &Value,
) -> Result<bool, sqlx::Error> {
    let user: Option<(String, String)> =
        sqlx::query_as("SELECT email, given_name FROM users WHERE user_id = $1")
            .bind(mail.user_id)
            .fetch_optional(&mut *conn)
            .await?;
    let to = match (&mail.to, &user) {
        (Some(to), _) => to.clone(),
        (None, Some((email, _))) => email.clone(),
        (None, None) => {
            metrics::counter!("notifications_emails_skipped_total", "reason" => "address_unknown")
                .increment(1);
            tracing::warn!(template = mail.template.name(), "no address known for the user; email skipped");
            return Ok(false);
        }
    };
    let last_four: Option<String> = match mail.account_id {
        Some(account) => {
            sqlx::query_scalar("SELECT number_last_four FROM accounts WHERE account_id = $1")
                .bind(account)
                .fetch_optional(&mut *conn)
                .await?
        }
        None => None,
    };
    let given_name = user.as_ref().map(|u| u.1.as_str()).unwrap_or_default();
    let ctx = templates::Context {
        given_name,
        account_last_four: last_four.as_deref().unwrap_or_default(),
        link_base_url: &settings.link_base_url,
    };
    let rendered = templates::render(mail.template, data, &ctx);
    sqlx::query(
        "INSERT INTO emails (email_id, event_id, user_id, recipient, template, subject, body_text, body_html) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::now_v7())
    .bind(event_id)
    .bind(mail.user_id)
    .bind(&to)
    .bind(mail.template.name())
    .bind(&rendered.subject)
    .bind(&rendered.text)
    .bind(&rendered.html)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Queues an email about one of notifications' own events (webhook failures), with its outbox row.
///
/// # Errors
/// The database failed.
pub async fn own_event<M: prost::Message + prost::Name + serde::Serialize>(
    conn: &mut PgConnection,
    settings: &Settings,
    subject: &str,
    owner: Option<Uuid>,
    template: Template,
    payload: &M,
) -> Result<(), sqlx::Error> {
    let event_id = bank_platform::outbox::publish(conn, subject, payload).await?;
    if let Some(user_id) = owner {
        let data = serde_json::to_value(payload).unwrap_or_default();
        let mail = catalog::Mail { user_id, to: None, template, account_id: None };
        queue_mail(conn, settings, Some(event_id), &mail, &data).await?;
    }
    Ok(())
}

/// Shared handles for the background tasks that act on what [`apply`] queued.
#[derive(Debug, Clone, Default)]
pub struct Wake {
    /// New emails are queued.
    pub mail: Arc<tokio::sync::Notify>,
    /// New webhook deliveries are queued.
    pub webhooks: Arc<tokio::sync::Notify>,
}
