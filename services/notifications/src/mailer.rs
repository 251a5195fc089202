//! The mailer: sends queued emails over SMTP (lettre) with a timeout, retries with exponential
//! backoff and jitter, gives up after `email.max_attempts` (or at once on a permanent 5xx answer).
//!
//! Due rows are leased (`next_attempt_at` pushed past the SMTP timeout) in a short transaction with
//! `FOR UPDATE SKIP LOCKED`, so replicas share the queue and a crash only delays a row. A crash
//! between the server's acceptance and the `sent` mark sends the email again (at least once);
//! every message carries `Message-ID: <email_id@bankmesh>` so mail systems can drop the repeat.
//! Bodies are deleted once sent. Addresses are never logged.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::MultiPart,
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use rand::Rng as _;
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{EmailConfig, SmtpTls};

/// Builds the SMTP transport.
///
/// # Errors
/// Invalid TLS parameters (the host name).
pub fn transport(
    config: &EmailConfig,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.smtp_host)
        .port(config.smtp_port)
        .timeout(Some(config.timeout));
    builder = match config.smtp_tls {
        SmtpTls::None => builder.tls(Tls::None),
        SmtpTls::Starttls => builder.tls(Tls::Required(TlsParameters::new(config.smtp_host.clone())?)),
        SmtpTls::Tls => builder.tls(Tls::Wrapper(TlsParameters::new(config.smtp_host.clone())?)),
    };
    if !config.smtp_username.is_empty() {
        let password =
            config.smtp_password.as_ref().map(|p| p.expose_secret().to_owned()).unwrap_or_default();
        builder = builder.credentials(Credentials::new(config.smtp_username.clone(), password));
    }
    Ok(builder.build())
}

/// `a***@example.com`.
#[must_use]
pub fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Backoff before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped, half of it random.
#[must_use]
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20))).min(max);
    let half = exp / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(if jitter_ms == 0 { 0 } else { rand::thread_rng().gen_range(0..=jitter_ms) })
}

type Due = (Uuid, String, String, String, Option<String>, Option<String>, i32);

/// Runs until `stop`.
pub async fn run(
    pool: PgPool,
    config: EmailConfig,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    wake: std::sync::Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        let sent = match round(&pool, &config, &transport).await {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(error = %err, "mailer round failed");
                0
            }
        };
        if sent > 0 {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// One batch; answers how many emails were attempted.
///
/// # Errors
/// The database failed.
pub async fn round(
    pool: &PgPool,
    config: &EmailConfig,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
) -> Result<usize, sqlx::Error> {
    let lease = i64::try_from((config.timeout * 3).as_secs()).unwrap_or(60).max(30);
    let due: Vec<Due> = sqlx::query_as(
        "UPDATE emails SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $1) \
         WHERE email_id IN (SELECT email_id FROM emails WHERE status = 'queued' AND next_attempt_at <= now() \
                            ORDER BY next_attempt_at LIMIT 20 FOR UPDATE SKIP LOCKED) \
         RETURNING email_id, recipient, template, subject, body_text, body_html, attempts",
    )
    .bind(lease)
    .fetch_all(pool)
    .await?;
    let count = due.len();
    for (email_id, to, template, subject, text, html, attempts) in due {
        let started = std::time::Instant::now();
        let outcome =
            send(config, transport, email_id, &to, &subject, text.as_deref(), html.as_deref()).await;
        metrics::histogram!("notifications_email_send_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                sqlx::query(
                    "UPDATE emails SET status = 'sent', sent_at = now(), body_text = NULL, body_html = NULL, last_error = '' \
                     WHERE email_id = $1",
                )
                .bind(email_id)
                .execute(pool)
                .await?;
                metrics::counter!("notifications_deliveries_total", "channel" => "email", "result" => "sent")
                    .increment(1);
                tracing::info!(email_id = %email_id, template = %template, to = %mask(&to), "email sent");
            }
            Err((permanent, error)) => {
                let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
                let give_up = permanent || attempts >= config.max_attempts;
                let delay = backoff(config.retry_base, config.max_backoff, attempts);
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                sqlx::query(
                    "UPDATE emails SET status = CASE WHEN $2 THEN 'failed' ELSE 'queued' END, last_error = $3, \
                       next_attempt_at = now() + make_interval(secs => $4::double precision / 1000), \
                       body_text = CASE WHEN $2 THEN NULL ELSE body_text END, \
                       body_html = CASE WHEN $2 THEN NULL ELSE body_html END \
                     WHERE email_id = $1",
                )
                .bind(email_id)
                .bind(give_up)
                .bind(&error)
                .bind(delay_ms)
                .execute(pool)
                .await?;
                let result = if give_up { "failed" } else { "retrying" };
                metrics::counter!("notifications_deliveries_total", "channel" => "email", "result" => result)
                    .increment(1);
                tracing::warn!(email_id = %email_id, template = %template, attempt = attempts, error = %error, result, "email not sent");
            }
        }
    }
    Ok(count)
}

/// Sends one email; on failure answers (permanent, error text without the address).
async fn send(
    config: &EmailConfig,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    email_id: Uuid,
    to: &str,
    subject: &str,
    text: Option<&str>,
    html: Option<&str>,
) -> Result<(), (bool, String)> {
    let from = config.from.parse().map_err(|_| (true, "email.from is not a valid mailbox".to_owned()))?;
    let to = to.parse().map_err(|_| (true, "the recipient is not a valid address".to_owned()))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<{email_id}@bankmesh>")))
        .multipart(MultiPart::alternative_plain_html(
            text.unwrap_or_default().to_owned(),
            html.unwrap_or_default().to_owned(),
        ))
        .map_err(|e| (true, format!("building the message: {e}")))?;
    match transport.send(message).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let permanent = e.is_permanent();
            // SMTP answers can quote the address: keep the code and a masked reason only.
            let code = e.status().map(|c| c.to_string()).unwrap_or_default();
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_permanent() {
                "permanent error"
            } else if e.is_transient() {
                "transient error"
            } else {
                "connection or protocol error"
            };
            Err((permanent, format!("smtp {kind} {code}").trim().to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_masked() {
        assert_eq!(mask("alice@example.com"), "a***@example.com");
        assert_eq!(mask("nonsense"), "***");
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(60);
        for attempt in 1..30 {
            let d = backoff(base, max, attempt);
            let exp = (base * 2u32.pow((attempt - 1).min(20))).min(max);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
    }
}
