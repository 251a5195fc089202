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
        Self::traced(subject, payload, crate::telemetry::current_traceparent())
    }

    /// The row for `payload` about `subject`, stamped with `traceparent` (the trace of the request
    /// that caused it, when the row is written by another task: a batch of the ledger's engine).
    #[must_use]
    pub fn traced<M: Message + prost::Name>(subject: &str, payload: &M, traceparent: Option<String>) -> Self {
        Self {
            event_id: uuid::Uuid::now_v7(),
            event_type: M::full_name(),
            subject: subject.to_owned(),
            traceparent,
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

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The source (the service's name), a field of every stream entry and the metrics label.
    pub source: &'static str,
    /// The Redis stream (full key), one per source.
    pub stream: String,
    /// Rows published per round.
    pub batch: i64,
    /// Pause between rounds when nothing was left to publish.
    pub idle: std::time::Duration,
    /// Published rows are kept this long (the replay window), then deleted.
    pub retain: std::time::Duration,
    /// The stream is trimmed to about this many entries (`XADD MAXLEN ~`), so Redis memory stays
    /// bounded; consumers far behind that read the rest from the outbox's replay window.
    pub max_len: u64,
}

impl RelayOptions {
    /// The defaults for `source`, publishing to `<redis.key_prefix>events`.
    #[must_use]
    pub fn new(source: &'static str, redis: &crate::redis::Redis) -> Self {
        Self {
            source,
            stream: redis.key("events"),
            batch: 500,
            idle: std::time::Duration::from_millis(200),
            retain: std::time::Duration::from_secs(7 * 24 * 3600),
            max_len: 1_000_000,
        }
    }
}

/// Why a relay round failed (the next round retries; nothing is marked published unless Redis
/// took it).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// PostgreSQL failed.
    #[error("outbox relay: database: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("outbox relay: redis: {0}")]
    Redis(#[from] ::redis::RedisError),
}

/// One round: under a transaction-scoped advisory lock (one relay per database at a time, so the
/// stream keeps the outbox's order), the oldest unpublished rows go to the stream in one pipeline
/// (`XADD`, in `seq` order) and are stamped `published_at` in the same transaction. A crash or a
/// failed commit after the `XADD` publishes those rows again on the next round: delivery is
/// at least once, and consumers dedupe by `id` (the event id). Answers how many rows were
/// published (0 when another replica holds the lock).
///
/// # Errors
/// PostgreSQL or Redis failed; the rows stay unpublished.
pub async fn relay_once(
    pool: &sqlx::PgPool,
    redis: &mut ::redis::aio::ConnectionManager,
    options: &RelayOptions,
) -> Result<usize, RelayError> {
    type Row = (i64, uuid::Uuid, String, String, time::OffsetDateTime, Option<String>, Vec<u8>);
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('bank.outbox.relay'))")
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, event_id, event_type, subject, occurred_at, traceparent, payload FROM outbox \
         WHERE published_at IS NULL ORDER BY seq LIMIT $1",
    )
    .bind(options.batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        metrics::gauge!("outbox_lag_seconds", "source" => options.source).set(0.0);
        return Ok(0);
    }
    let oldest = rows[0].4;
    let mut pipe = ::redis::pipe();
    for (_, event_id, event_type, subject, occurred_at, traceparent, payload) in &rows {
        let time = occurred_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        pipe.cmd("XADD")
            .arg(&options.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(options.max_len)
            .arg("*")
            .arg("id")
            .arg(event_id.to_string())
            .arg("type")
            .arg(event_type)
            .arg("source")
            .arg(options.source)
            .arg("subject")
            .arg(subject)
            .arg("time")
            .arg(time)
            .arg("traceparent")
            .arg(traceparent.as_deref().unwrap_or_default())
            .arg("payload")
            .arg(payload.as_slice())
            .ignore();
    }
    pipe.query_async::<()>(redis).await?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let lag = (time::OffsetDateTime::now_utc() - oldest).as_seconds_f64().max(0.0);
    metrics::gauge!("outbox_lag_seconds", "source" => options.source).set(lag);
    metrics::counter!("outbox_published_total", "source" => options.source).increment(rows.len() as u64);
    Ok(rows.len())
}

/// Deletes published rows older than the replay window, a bounded batch at a time. Answers how
/// many were deleted.
///
/// # Errors
/// PostgreSQL failed.
pub async fn purge_published(pool: &sqlx::PgPool, retain: std::time::Duration) -> Result<u64, sqlx::Error> {
    let seconds = i64::try_from(retain.as_secs()).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE published_at IS NOT NULL \
           AND published_at < now() - make_interval(secs => $1) ORDER BY seq LIMIT 10000)",
    )
    .bind(seconds)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The relay task of a producing service: publishes the outbox to its Redis stream until `stop`,
/// surviving restarts (the table is the state) and Redis or PostgreSQL outages (rows wait, then go
/// out in order: nothing is lost or skipped), and purges published rows past the replay window.
pub async fn relay(
    pool: sqlx::PgPool,
    mut redis: ::redis::aio::ConnectionManager,
    options: RelayOptions,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff = std::time::Duration::from_millis(100);
    let mut failing = false;
    let mut last_purge = tokio::time::Instant::now();
    loop {
        let pause = match relay_once(&pool, &mut redis, &options).await {
            Ok(published) => {
                if failing {
                    tracing::info!(source = options.source, "outbox relay recovered");
                    failing = false;
                }
                backoff = std::time::Duration::from_millis(100);
                if i64::try_from(published).unwrap_or(i64::MAX) >= options.batch {
                    std::time::Duration::ZERO // a full batch: more may be waiting
                } else {
                    options.idle
                }
            }
            Err(err) => {
                metrics::counter!("outbox_relay_errors_total", "source" => options.source).increment(1);
                if !failing {
                    tracing::warn!(source = options.source, error = %err, "outbox relay failing; retrying");
                    failing = true;
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                backoff
            }
        };
        if last_purge.elapsed() >= std::time::Duration::from_secs(60) {
            last_purge = tokio::time::Instant::now();
            if let Err(err) = purge_published(&pool, options.retain).await {
                tracing::warn!(source = options.source, error = %err, "purging published outbox rows failed");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
