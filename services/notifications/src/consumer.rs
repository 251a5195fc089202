//! Reading the producing services' event streams with a consumer group.
//!
//! One task per stream, on a connection of its own (a blocking `XREADGROUP` would hold up every
//! other command of a shared multiplexed connection). Each entry is applied with
//! [`inbox::apply`] and acknowledged only after its transaction committed, so a crash in between
//! redelivers it and the inbox drops the repeat. Entries left pending — by a consumer that died, or
//! because applying failed — are claimed again (`XAUTOCLAIM`) once idle for `claim_idle`; an entry
//! delivered more than `max_attempts` times is a poison message: it goes to the dead-letter stream
//! and the `dead_letters` table (admin `ListDeadLetters`) and is acknowledged.

use std::{collections::HashMap, sync::Arc, time::Duration};

use redis::{
    AsyncCommands as _, Value,
    aio::ConnectionManager,
    streams::{
        StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadOptions,
        StreamReadReply,
    },
};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::ConsumerConfig,
    inbox::{self, Applied, Decoder, Envelope, Settings, Wake},
};

/// Everything a stream's consumer task needs.
#[derive(Clone)]
pub struct Consumer {
    /// The notifications database.
    pub pool: PgPool,
    /// A dedicated connection.
    pub conn: ConnectionManager,
    /// Payload decoding.
    pub decoder: Arc<Decoder>,
    /// Settings for applying.
    pub settings: Arc<Settings>,
    /// The group, names, limits.
    pub config: Arc<ConsumerConfig>,
    /// This replica's consumer name.
    pub name: String,
    /// The dead-letter stream (full key).
    pub dead_letters: String,
    /// Wakes the mailer and the dispatcher.
    pub wake: Wake,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Why a round failed (the task backs off and tries again).
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The entry's fields as an envelope.
fn envelope(entry: &StreamId) -> Result<Envelope, String> {
    let text = |field: &str| -> Result<String, String> {
        match entry.map.get(field) {
            Some(v) => {
                redis::from_redis_value_ref::<String>(v).map_err(|_| format!("field {field} is not text"))
            }
            None => Ok(String::new()),
        }
    };
    let id = Uuid::parse_str(&text("id")?).map_err(|_| "field id is not a UUID".to_owned())?;
    let payload = match entry.map.get("payload") {
        Some(v) => {
            redis::from_redis_value_ref::<Vec<u8>>(v).map_err(|_| "field payload is not bytes".to_owned())?
        }
        None => Vec::new(),
    };
    let time = OffsetDateTime::parse(&text("time")?, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let event_type = text("type")?;
    if event_type.is_empty() {
        return Err("field type is missing".to_owned());
    }
    Ok(Envelope {
        id,
        event_type,
        source: text("source")?,
        subject: text("subject")?,
        time,
        traceparent: text("traceparent")?,
        payload,
    })
}

impl Consumer {
    /// Consumes `stream` until `stop`.
    pub async fn run(mut self, stream: String, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        let mut failing = false;
        let mut last_claim = tokio::time::Instant::now()
            .checked_sub(self.config.claim_idle)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut claim_cursor = "0-0".to_owned();
        let mut group_ready = false;
        while !stop.is_cancelled() {
            let round = async {
                if !group_ready {
                    self.ensure_group(&stream).await?;
                    group_ready = true;
                }
                if last_claim.elapsed() >= self.config.claim_idle / 2 {
                    claim_cursor = self.claim(&stream, &claim_cursor).await?;
                    last_claim = tokio::time::Instant::now();
                }
                self.read(&stream).await
            };
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = round => r,
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(stream = %stream, "event consumer recovered");
                        failing = false;
                    }
                    backoff = Duration::from_millis(200);
                }
                Err(err) => {
                    metrics::counter!("notifications_consumer_errors_total", "stream" => stream.clone())
                        .increment(1);
                    if !failing {
                        tracing::warn!(stream = %stream, error = %err, "event consumer failing; retrying");
                        failing = true;
                    }
                    if matches!(&err, RoundError::Redis(e) if e.to_string().contains("NOGROUP")) {
                        group_ready = false;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn ensure_group(&mut self, stream: &str) -> Result<(), RoundError> {
        // From the start of what the stream keeps: events published before notifications first ran
        // are delivered too (the inbox makes that safe).
        let created: Result<(), redis::RedisError> =
            self.conn.xgroup_create_mkstream(stream, &self.config.group, "0").await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// New entries for this consumer.
    async fn read(&mut self, stream: &str) -> Result<(), RoundError> {
        let block = usize::try_from(self.config.block.as_millis()).unwrap_or(1000);
        let options = StreamReadOptions::default()
            .group(&self.config.group, &self.name)
            .count(self.config.batch)
            .block(block);
        let reply: Option<StreamReadReply> = self.conn.xread_options(&[stream], &[">"], &options).await?;
        let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        self.lag(stream).await;
        for entry in entries {
            self.process(stream, &entry, 1).await?;
        }
        Ok(())
    }

    /// Entries idle for `claim_idle` (a dead consumer's, or ones that failed): claimed and retried,
    /// or dead-lettered after `max_attempts` deliveries. Answers the cursor for the next round.
    async fn claim(&mut self, stream: &str, cursor: &str) -> Result<String, RoundError> {
        let idle = u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let reply: StreamAutoClaimReply = self
            .conn
            .xautoclaim_options(
                stream,
                &self.config.group,
                &self.name,
                idle,
                cursor,
                StreamAutoClaimOptions::default().count(self.config.batch),
            )
            .await?;
        if !reply.claimed.is_empty() {
            let first = reply.claimed.first().map(|e| e.id.clone()).unwrap_or_default();
            let last = reply.claimed.last().map(|e| e.id.clone()).unwrap_or_default();
            let pending: StreamPendingCountReply = self
                .conn
                .xpending_count(stream, &self.config.group, &first, &last, reply.claimed.len() + 16)
                .await?;
            let deliveries: HashMap<String, usize> =
                pending.ids.into_iter().map(|p| (p.id, p.times_delivered)).collect();
            for entry in &reply.claimed {
                let times = deliveries.get(&entry.id).copied().unwrap_or(1);
                metrics::counter!("notifications_events_reclaimed_total", "stream" => stream.to_owned())
                    .increment(1);
                self.process(stream, entry, times).await?;
            }
        }
        Ok(reply.next_stream_id)
    }

    /// Applies one entry and acknowledges it, or leaves it pending (recording why), or
    /// dead-letters it when it has been delivered too often.
    async fn process(&mut self, stream: &str, entry: &StreamId, delivered: usize) -> Result<(), RoundError> {
        let max = usize::try_from(self.config.max_attempts).unwrap_or(usize::MAX);
        if delivered > max {
            return self.dead_letter(stream, entry, delivered - 1).await;
        }
        let outcome = match envelope(entry) {
            Ok(envelope) => {
                // Continue the producer's trace: the request that caused the event is the parent.
                let span = tracing::info_span!(
                    "consume",
                    event_id = %envelope.id,
                    event_type = %envelope.event_type,
                    trace_id = tracing::field::Empty
                );
                let mut headers = http::HeaderMap::new();
                if let Ok(value) = http::HeaderValue::from_str(&envelope.traceparent) {
                    headers.insert("traceparent", value);
                }
                let trace_id = bank_platform::telemetry::adopt_remote_parent(
                    &span,
                    bank_platform::telemetry::extract_context(&headers),
                );
                span.record("trace_id", trace_id);
                tracing::Instrument::instrument(
                    inbox::apply(&self.pool, &self.decoder, &self.settings, &envelope),
                    span,
                )
                .await
                .map_err(|e| e.to_string())
            }
            Err(malformed) => Err(malformed),
        };
        match outcome {
            Ok(applied) => {
                let _: i64 = self.conn.xack(stream, &self.config.group, &[&entry.id]).await?;
                if delivered > 1 {
                    sqlx::query("DELETE FROM consumer_failures WHERE stream = $1 AND entry_id = $2")
                        .bind(stream)
                        .bind(&entry.id)
                        .execute(&self.pool)
                        .await?;
                }
                let result = match applied {
                    Applied::New => "applied",
                    Applied::Duplicate => "duplicate",
                    Applied::Unknown => "skipped",
                };
                metrics::counter!("notifications_events_consumed_total", "stream" => stream.to_owned(), "result" => result)
                    .increment(1);
                if applied == Applied::New {
                    self.wake.mail.notify_one();
                    self.wake.webhooks.notify_one();
                }
                Ok(())
            }
            Err(error) => {
                metrics::counter!("notifications_events_consumed_total", "stream" => stream.to_owned(), "result" => "failed")
                    .increment(1);
                tracing::warn!(stream = %stream, entry = %entry.id, attempt = delivered, error = %error, "applying an event failed; it stays pending");
                // Best effort: the error text is only for the dead letter.
                let _ = sqlx::query(
                    "INSERT INTO consumer_failures (stream, entry_id, last_error) VALUES ($1, $2, $3) \
                     ON CONFLICT (stream, entry_id) DO UPDATE SET last_error = EXCLUDED.last_error",
                )
                .bind(stream)
                .bind(&entry.id)
                .bind(&error)
                .execute(&self.pool)
                .await;
                Ok(())
            }
        }
    }

    async fn dead_letter(
        &mut self,
        stream: &str,
        entry: &StreamId,
        attempts: usize,
    ) -> Result<(), RoundError> {
        let mut fields = serde_json::Map::new();
        let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, value) in &entry.map {
            let bytes = redis::from_redis_value_ref::<Vec<u8>>(value).unwrap_or_default();
            fields.insert(
                name.clone(),
                serde_json::Value::String(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &bytes,
                )),
            );
            raw.push((name.clone(), bytes));
        }
        let field = |name: &str| -> String {
            entry
                .map
                .get(name)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .unwrap_or_default()
        };
        let failure: Option<(String, OffsetDateTime)> = sqlx::query_as(
            "SELECT last_error, first_failed_at FROM consumer_failures WHERE stream = $1 AND entry_id = $2",
        )
        .bind(stream)
        .bind(&entry.id)
        .fetch_optional(&self.pool)
        .await?;
        let (last_error, first_failed_at) =
            failure.unwrap_or_else(|| ("not acknowledged in time".to_owned(), OffsetDateTime::now_utc()));
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO dead_letters (dead_letter_id, stream, consumer_group, entry_id, event_id, event_type, attempts, \
               last_error, fields, first_failed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(stream)
        .bind(&self.config.group)
        .bind(&entry.id)
        .bind(field("id"))
        .bind(field("type"))
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(&last_error)
        .bind(serde_json::Value::Object(fields))
        .bind(first_failed_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM consumer_failures WHERE stream = $1 AND entry_id = $2")
            .bind(stream)
            .bind(&entry.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut items: Vec<(String, Vec<u8>)> = raw;
        items.push(("origin_stream".to_owned(), stream.as_bytes().to_vec()));
        items.push(("origin_entry".to_owned(), entry.id.as_bytes().to_vec()));
        items.push(("error".to_owned(), last_error.into_bytes()));
        let _: Option<String> = self.conn.xadd(&self.dead_letters, "*", &items).await?;
        let _: i64 = self.conn.xack(stream, &self.config.group, &[&entry.id]).await?;
        metrics::counter!("notifications_dead_lettered_total", "stream" => stream.to_owned()).increment(1);
        tracing::warn!(stream = %stream, entry = %entry.id, attempts, "event dead-lettered");
        Ok(())
    }

    /// `notifications_stream_lag` (entries not yet delivered to the group) and pending entries.
    async fn lag(&mut self, stream: &str) {
        let info: Result<Vec<HashMap<String, Value>>, _> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut self.conn).await;
        if let Ok(groups) = info {
            for group in groups {
                let name = group.get("name").and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                if name.as_deref() != Some(self.config.group.as_str()) {
                    continue;
                }
                let number =
                    |key: &str| group.get(key).and_then(|v| redis::from_redis_value_ref::<i64>(v).ok());
                if let Some(lag) = number("lag") {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("notifications_stream_lag", "stream" => stream.to_owned(), "group" => self.config.group.clone())
                        .set(lag as f64);
                }
                if let Some(pending) = number("pending") {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!("notifications_stream_pending", "stream" => stream.to_owned(), "group" => self.config.group.clone())
                        .set(pending as f64);
                }
            }
        }
    }
}

/// Puts a dead letter back on its stream (RetryDeadLetter). Answers the new entry id.
///
/// # Errors
/// Redis failed.
pub async fn requeue(
    conn: &mut ConnectionManager,
    stream: &str,
    fields: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, redis::RedisError> {
    let items: Vec<(String, Vec<u8>)> = fields
        .iter()
        .filter_map(|(k, v)| {
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v.as_str()?).ok()?;
            Some((k.clone(), bytes))
        })
        .collect();
    let id: Option<String> = conn.xadd(stream, "*", &items).await?;
    Ok(id.unwrap_or_default())
}
