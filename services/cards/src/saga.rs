//! The charge lifecycle across cards and the ledger, and the reconciler.
//!
//! # Authorization (a saga keyed by the authorization id)
//!
//! 1. One cards transaction, the card row locked (`FOR UPDATE`: concurrent charges on one card
//!    run this step one at a time): the idempotency key, the card-side checks
//!    (`domain::decide`: status, expiry, currency, per-transaction limit, daily limit over the
//!    pending + approved + captured amounts of the current card day, read after the lock), and
//!    the authorization row — `declined` with its reason, event and stored response (done), or
//!    `pending` (its amount already counts against the daily limit).
//! 2. Ledger `CreateHold` with `reference_id` = the authorization id (idempotent: a repeat answers
//!    the same hold, never a second one).
//! 3. One cards transaction: `pending` -> `approved` (with the hold id) or `declined` (the
//!    ledger's reason: insufficient funds, account frozen/closed), its event, the key's response.
//!    Conditional on `pending`, so exactly one finisher wins.
//!
//! A crash or an unreachable ledger between 1 and 3 leaves a `pending` row: the reconciler runs 2
//! (creating or finding the hold — the reference is the key) and 3. Nothing is ever approved
//! without its hold, no hold exists without its record (the record commits first; the hold is only
//! ever created for a recorded id), and there is never a second hold. The caller of an interrupted
//! call got `DECLINED / ISSUER_UNAVAILABLE`; a retry with the same key answers the outcome.
//!
//! # Capture, void, refund
//!
//! The ledger operation first (idempotent: capture and void by hold, refund by a refund id derived
//! from the idempotency key), then one cards transaction records it with its event and the key's
//! response. An interrupted one is finished by the retry with the same key, and the expiry sweep
//! reconciles what the ledger did to holds that cards still shows approved.
//!
//! # Expiry
//!
//! Approved authorizations past `expires_at` are voided at the ledger and become `expired`
//! (event `CardChargeVoided` with `expired`); a hold the ledger shows captured or released meanwhile
//! is recorded as such instead.

use std::{sync::Arc, time::Duration};

use bank_platform::{
    ErrorCode, ServiceError,
    config::ReconcilerConfig,
    idempotency::{self, Begin, Key},
    outbox,
};
use bank_proto::{
    cards::v1::{Authorization, RefundChargeResponse},
    events::v1 as events,
    ledger::v1::HoldStatus,
};
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::CardsConfig,
    convert::{self, money},
    domain::{self, Decline},
    storage::{self, AuthRow, AuthStatus, NewAuth, Outcome},
    tx,
    upstream::{Failure, Upstreams},
    vault::Vault,
};

/// What the handlers and the reconciler share.
#[derive(Debug, Clone)]
pub(crate) struct Core {
    pub(crate) pool: PgPool,
    pub(crate) upstreams: Upstreams,
    pub(crate) vault: Arc<Vault>,
    pub(crate) settings: Arc<CardsConfig>,
    /// When the reconciler takes over an unfinished authorization.
    pub(crate) stuck_after: Duration,
}

const LEDGER_PENDING: &str = "the ledger is unreachable; retry with the same idempotency key for the outcome";

pub(crate) fn card_not_found() -> ServiceError {
    ServiceError::new(ErrorCode::NotFound, "no such card")
}

pub(crate) fn charge_not_found() -> ServiceError {
    ServiceError::new(ErrorCode::NotFound, "no such authorization")
}

fn state_conflict(message: &str) -> ServiceError {
    ServiceError::new(ErrorCode::AuthorizationStateConflict, message)
}

pub(crate) fn decode_error(err: prost::DecodeError) -> tx::Error {
    tx::Error::Database(sqlx::Error::Decode(Box::new(err)))
}

pub(crate) fn into_service_error(err: tx::Error) -> ServiceError {
    match err {
        tx::Error::Refused(refused) => refused,
        tx::Error::Database(db) => ServiceError::internal(&db),
    }
}

/// The merchant of a charge, checked.
#[derive(Debug, Clone)]
pub(crate) struct MerchantIn {
    pub(crate) name: String,
    pub(crate) category_code: String,
    pub(crate) merchant_id: String,
    pub(crate) city: String,
    pub(crate) country: String,
}

/// A charge to authorize, checked.
#[derive(Debug, Clone)]
pub(crate) struct Authorize {
    pub(crate) key: Key,
    pub(crate) request_hash: Vec<u8>,
    pub(crate) card_id: Uuid,
    /// The card owner calling in dev/tests: only their card (another one reads as missing).
    pub(crate) owner: Option<Uuid>,
    pub(crate) currency: String,
    pub(crate) amount: i64,
    pub(crate) merchant: MerchantIn,
    pub(crate) acquirer_reference: String,
}

/// What step 1 found.
enum Step {
    /// The key's stored response.
    Replay(Vec<u8>),
    /// Decided: declined by the card checks, or finished earlier.
    Final(Box<AuthRow>),
    /// Ask the ledger for the hold.
    Pending(Box<AuthRow>),
}

/// Authorizes a charge (steps 1-3). Answers the authorization and whether it is a replay.
///
/// # Errors
/// `NOT_FOUND` (card), idempotency refusals, database failures. Declines are answers, not errors.
pub(crate) async fn authorize(
    core: &Core,
    request: Authorize,
) -> Result<(Authorization, bool), ServiceError> {
    let started = std::time::Instant::now();
    let step = tx::run(&core.pool, |conn| {
        let request = request.clone();
        let settings = core.settings.clone();
        let stuck_after = core.stuck_after;
        Box::pin(async move { begin_authorization(conn, &request, &settings, stuck_after).await })
    })
    .await
    .map_err(into_service_error)?;
    let row = match step {
        Step::Replay(bytes) => {
            let authorization =
                Authorization::decode(bytes.as_slice()).map_err(|e| ServiceError::internal(&e))?;
            return Ok((authorization, true));
        }
        Step::Final(row) => *row,
        Step::Pending(row) => finish_authorization(core, *row).await?,
    };
    let result = match row.status {
        AuthStatus::Pending => "unavailable",
        AuthStatus::Declined => "declined",
        AuthStatus::Approved | AuthStatus::Captured | AuthStatus::Voided | AuthStatus::Expired => "approved",
    };
    metrics::histogram!("cards_authorization_duration_seconds", "result" => result)
        .record(started.elapsed().as_secs_f64());
    Ok((convert::authorization(&row), false))
}

/// Step 1.
async fn begin_authorization(
    conn: &mut PgConnection,
    request: &Authorize,
    settings: &CardsConfig,
    stuck_after: Duration,
) -> Result<Step, tx::Error> {
    if !storage::lock_card(conn, request.card_id, request.owner).await? {
        return Err(card_not_found().into());
    }
    if let Begin::Replay(bytes) = idempotency::begin(conn, &request.key, &request.request_hash).await? {
        return Ok(Step::Replay(bytes));
    }
    // A retry of a request whose authorization is in flight (or was finished by the reconciler).
    if let Some(existing) = storage::authorization_by_key(conn, &request.key).await? {
        if existing.status == AuthStatus::Pending {
            return Ok(Step::Pending(Box::new(existing)));
        }
        let answer = convert::authorization(&existing);
        idempotency::complete(conn, &request.key, &answer.encode_to_vec()).await?;
        return Ok(Step::Final(Box::new(existing)));
    }
    let card = storage::card(conn, request.card_id, None).await?.ok_or(sqlx::Error::RowNotFound)?;
    let decision = domain::decide(&domain::Charge {
        status: card.effective_status(),
        card_currency: &card.currency,
        currency: &request.currency,
        amount: request.amount,
        per_transaction_limit: card.per_transaction_limit,
        daily_limit: card.daily_limit,
        spent_today: card.spent_today,
    });
    let row = storage::insert_authorization(
        conn,
        &NewAuth {
            authorization_id: Uuid::now_v7(),
            card: &card,
            decline: decision.err(),
            currency: &request.currency,
            amount: request.amount,
            merchant_name: &request.merchant.name,
            merchant_category_code: &request.merchant.category_code,
            merchant_id: &request.merchant.merchant_id,
            merchant_city: &request.merchant.city,
            merchant_country: &request.merchant.country,
            acquirer_reference: &request.acquirer_reference,
            key: &request.key,
            ttl: settings.authorization_ttl,
            stuck_after,
        },
    )
    .await?;
    if decision.is_ok() {
        return Ok(Step::Pending(Box::new(row)));
    }
    publish_decision(conn, &row).await?;
    let answer = convert::authorization(&row);
    idempotency::complete(conn, &request.key, &answer.encode_to_vec()).await?;
    Ok(Step::Final(Box::new(row)))
}

/// The event of a decided authorization (approved or declined), and its metric.
async fn publish_decision(conn: &mut PgConnection, row: &AuthRow) -> Result<(), sqlx::Error> {
    let subject = format!("authorizations/{}", row.authorization_id);
    match row.status {
        AuthStatus::Declined => {
            let reason = row.decline().unwrap_or(Decline::IssuerUnavailable);
            outbox::publish(
                conn,
                &subject,
                &events::CardAuthorizationDeclined {
                    authorization_id: row.authorization_id.to_string(),
                    card_id: row.card_id.to_string(),
                    account_id: row.account_id.to_string(),
                    owner_user_id: row.owner_user_id.to_string(),
                    card_last_four: row.card_last_four.clone(),
                    merchant_name: row.merchant_name.clone(),
                    merchant_category_code: row.merchant_category_code.clone(),
                    amount: Some(money(&row.currency, row.amount)),
                    decline_reason: convert::decline_reason(reason) as i32,
                },
            )
            .await?;
            metrics::counter!("cards_authorizations_total", "result" => "declined", "reason" => reason.as_str())
                .increment(1);
        }
        AuthStatus::Approved => {
            outbox::publish(
                conn,
                &subject,
                &events::CardAuthorizationApproved {
                    authorization_id: row.authorization_id.to_string(),
                    card_id: row.card_id.to_string(),
                    account_id: row.account_id.to_string(),
                    owner_user_id: row.owner_user_id.to_string(),
                    card_last_four: row.card_last_four.clone(),
                    merchant_name: row.merchant_name.clone(),
                    merchant_category_code: row.merchant_category_code.clone(),
                    amount: Some(money(&row.currency, row.amount)),
                    hold_id: row.hold_id.map(|id| id.to_string()).unwrap_or_default(),
                },
            )
            .await?;
            metrics::counter!("cards_authorizations_total", "result" => "approved", "reason" => "")
                .increment(1);
        }
        AuthStatus::Pending | AuthStatus::Captured | AuthStatus::Voided | AuthStatus::Expired => {}
    }
    Ok(())
}

/// The decline for a definitive ledger refusal of a hold.
fn ledger_decline(refused: &ServiceError) -> Decline {
    const DECLINES: [(ErrorCode, Decline); 5] = [
        (ErrorCode::InsufficientFunds, Decline::InsufficientFunds),
        (ErrorCode::AccountFrozen, Decline::AccountFrozen),
        (ErrorCode::AccountClosed, Decline::AccountClosed),
        (ErrorCode::NotFound, Decline::AccountClosed),
        (ErrorCode::CurrencyMismatch, Decline::CurrencyMismatch),
    ];
    DECLINES.iter().find(|(code, _)| *code == refused.code).map_or_else(
        || {
            tracing::error!(reason = refused.code.reason(), "the ledger refused a hold unexpectedly");
            Decline::IssuerUnavailable
        },
        |(_, decline)| *decline,
    )
}

/// Steps 2 and 3 for a `pending` authorization. Answers it as it is afterwards (still `pending`
/// when the ledger could not be reached).
///
/// # Errors
/// The database failed.
pub(crate) async fn finish_authorization(core: &Core, row: AuthRow) -> Result<AuthRow, ServiceError> {
    let now = OffsetDateTime::now_utc();
    // Always a valid expiry for the ledger (a late finisher must never be refused for it while a
    // hold may exist): a day past the authorization's, at least a day ahead, at most 30 days.
    let hold_expiry = (row.expires_at + time::Duration::days(1))
        .max(now + time::Duration::days(1))
        .min(now + time::Duration::days(30));
    let outcome = match core
        .upstreams
        .create_hold(
            row.account_id,
            money(&row.currency, row.amount),
            row.authorization_id,
            &row.merchant_name,
            hold_expiry,
        )
        .await
    {
        Ok(hold) => match Uuid::parse_str(&hold.hold_id) {
            Ok(hold_id) => Outcome::Approved { hold_id },
            Err(_) => {
                tracing::error!(authorization_id = %row.authorization_id, "the ledger answered a hold without a valid id");
                return Ok(row);
            }
        },
        Err(Failure::Refused(refused)) => Outcome::Declined(ledger_decline(&refused)),
        Err(Failure::Unavailable(status)) => {
            tracing::warn!(authorization_id = %row.authorization_id, code = ?status.code(), "the ledger could not be reached for a hold; the reconciler will finish");
            metrics::counter!("cards_authorizations_total", "result" => "unavailable", "reason" => "ISSUER_UNAVAILABLE")
                .increment(1);
            return Ok(row);
        }
    };
    let authorization_id = row.authorization_id;
    tx::run(&core.pool, |conn| Box::pin(resolve(conn, authorization_id, outcome)))
        .await
        .map_err(into_service_error)
}

/// Step 3: `pending` -> the outcome with its event and the key's response, unless someone else
/// finished it first.
async fn resolve(
    conn: &mut PgConnection,
    authorization_id: Uuid,
    outcome: Outcome,
) -> Result<AuthRow, tx::Error> {
    let row = storage::lock_authorization(conn, authorization_id).await?.ok_or(sqlx::Error::RowNotFound)?;
    if row.status != AuthStatus::Pending {
        return Ok(row);
    }
    let row = storage::resolve(conn, authorization_id, outcome).await?;
    publish_decision(conn, &row).await?;
    if let Some(key) = row.key() {
        idempotency::complete(conn, &key, &convert::authorization(&row).encode_to_vec()).await?;
    }
    Ok(row)
}

/// A capture, void or refund, checked.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub(crate) key: Key,
    pub(crate) request_hash: Vec<u8>,
    pub(crate) card_id: Uuid,
    pub(crate) owner: Option<Uuid>,
    pub(crate) authorization_id: Uuid,
    /// Capture: `None` = the full amount. Refund: required.
    pub(crate) amount: Option<(String, i64)>,
}

/// The stored answer of a key, if the key was used: its response (same request) or
/// `IDEMPOTENCY_KEY_REUSED`.
async fn stored_answer(
    conn: &mut PgConnection,
    key: &Key,
    request_hash: &[u8],
) -> Result<Option<Vec<u8>>, tx::Error> {
    let found: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE principal = $1 AND rpc = $2 AND key = $3",
    )
    .bind(&key.principal)
    .bind(key.rpc)
    .bind(&key.key)
    .fetch_optional(conn)
    .await?;
    match found {
        Some((hash, _)) if hash != request_hash => Err(idempotency::Error::Reused.into()),
        Some((_, response)) => Ok(response),
        None => Ok(None),
    }
}

/// The authorization of an operation (on the caller's card), or the stored answer.
async fn load(core: &Core, op: &Operation) -> Result<Result<AuthRow, Vec<u8>>, ServiceError> {
    let mut conn = core.pool.acquire().await.map_err(|e| ServiceError::internal(&e))?;
    if let Some(bytes) =
        stored_answer(&mut conn, &op.key, &op.request_hash).await.map_err(into_service_error)?
    {
        return Ok(Err(bytes));
    }
    let card =
        storage::card(&mut conn, op.card_id, op.owner).await.map_err(|e| ServiceError::internal(&e))?;
    if card.is_none() {
        return Err(card_not_found());
    }
    let row = storage::authorization(&mut conn, op.authorization_id, Some(op.card_id))
        .await
        .map_err(|e| ServiceError::internal(&e))?
        .ok_or_else(charge_not_found)?;
    Ok(Ok(row))
}

fn hold_of(row: &AuthRow) -> Result<Uuid, ServiceError> {
    row.hold_id.ok_or_else(|| state_conflict("the authorization was not approved"))
}

fn currency_check(row: &AuthRow, currency: &str) -> Result<(), ServiceError> {
    if currency == row.currency {
        Ok(())
    } else {
        Err(ServiceError::new(
            ErrorCode::CurrencyMismatch,
            "the amount is in another currency than the charge",
        ))
    }
}

fn ledger_refusal(failure: Failure) -> ServiceError {
    match failure {
        Failure::Refused(refused) if refused.code == ErrorCode::HoldNotActive => {
            state_conflict("the authorization is no longer open at the ledger")
        }
        failure @ (Failure::Refused(_) | Failure::Unavailable(_)) => {
            failure.into_client_error(LEDGER_PENDING)
        }
    }
}

/// Captures an approved authorization (fully or partially).
///
/// # Errors
/// `NOT_FOUND`, `AUTHORIZATION_STATE_CONFLICT`, `AMOUNT_EXCEEDS_AVAILABLE`, `CURRENCY_MISMATCH`,
/// `UNAVAILABLE`, idempotency refusals.
pub(crate) async fn capture(core: &Core, op: Operation) -> Result<(Authorization, bool), ServiceError> {
    let row = match load(core, &op).await? {
        Err(bytes) => {
            return Ok((
                Authorization::decode(bytes.as_slice()).map_err(|e| ServiceError::internal(&e))?,
                true,
            ));
        }
        Ok(row) => row,
    };
    let amount = match &op.amount {
        Some((currency, amount)) => {
            currency_check(&row, currency)?;
            *amount
        }
        None => row.amount,
    };
    if amount > row.amount {
        return Err(ServiceError::new(ErrorCode::AmountExceedsAvailable, "more than the authorized amount"));
    }
    let transaction_id = match row.status {
        AuthStatus::Approved => {
            let hold_id = hold_of(&row)?;
            let answer = core
                .upstreams
                .capture_hold(hold_id, op.amount.as_ref().map(|(c, a)| money(c, *a)))
                .await
                .map_err(ledger_refusal)?;
            let hold = answer.hold.unwrap_or_default();
            Uuid::parse_str(&hold.capture_transaction_id).ok()
        }
        AuthStatus::Captured if row.captured_amount == amount => row.capture_transaction_id,
        AuthStatus::Pending
        | AuthStatus::Declined
        | AuthStatus::Captured
        | AuthStatus::Voided
        | AuthStatus::Expired => {
            return Err(state_conflict("only an approved authorization can be captured"));
        }
    };
    let authorization_id = row.authorization_id;
    tx::run(&core.pool, |conn| {
        let op = op.clone();
        Box::pin(async move {
            let row =
                storage::lock_authorization(conn, authorization_id).await?.ok_or(sqlx::Error::RowNotFound)?;
            if let Begin::Replay(bytes) = idempotency::begin(conn, &op.key, &op.request_hash).await? {
                return Ok((Authorization::decode(bytes.as_slice()).map_err(decode_error)?, true));
            }
            let row = match row.status {
                AuthStatus::Approved => record_capture(conn, &row, amount, transaction_id).await?,
                AuthStatus::Captured if row.captured_amount == amount => row,
                AuthStatus::Pending
                | AuthStatus::Declined
                | AuthStatus::Captured
                | AuthStatus::Voided
                | AuthStatus::Expired => {
                    return Err(state_conflict("only an approved authorization can be captured").into());
                }
            };
            let answer = convert::authorization(&row);
            idempotency::complete(conn, &op.key, &answer.encode_to_vec()).await?;
            Ok((answer, false))
        })
    })
    .await
    .map_err(into_service_error)
}

/// `approved` -> `captured` with its event.
async fn record_capture(
    conn: &mut PgConnection,
    row: &AuthRow,
    amount: i64,
    transaction_id: Option<Uuid>,
) -> Result<AuthRow, sqlx::Error> {
    let row = storage::set_captured(conn, row.authorization_id, amount, transaction_id).await?;
    outbox::publish(
        conn,
        &format!("authorizations/{}", row.authorization_id),
        &events::CardChargeCaptured {
            authorization_id: row.authorization_id.to_string(),
            card_id: row.card_id.to_string(),
            account_id: row.account_id.to_string(),
            owner_user_id: row.owner_user_id.to_string(),
            card_last_four: row.card_last_four.clone(),
            merchant_name: row.merchant_name.clone(),
            captured_amount: Some(money(&row.currency, amount)),
            transaction_id: transaction_id.map(|id| id.to_string()).unwrap_or_default(),
        },
    )
    .await?;
    metrics::counter!("cards_captures_total").increment(1);
    Ok(row)
}

/// `approved` -> `voided`/`expired` with its event.
async fn record_release(
    conn: &mut PgConnection,
    row: &AuthRow,
    status: AuthStatus,
) -> Result<AuthRow, sqlx::Error> {
    let row = storage::set_released(conn, row.authorization_id, status).await?;
    outbox::publish(
        conn,
        &format!("authorizations/{}", row.authorization_id),
        &events::CardChargeVoided {
            authorization_id: row.authorization_id.to_string(),
            card_id: row.card_id.to_string(),
            account_id: row.account_id.to_string(),
            owner_user_id: row.owner_user_id.to_string(),
            card_last_four: row.card_last_four.clone(),
            merchant_name: row.merchant_name.clone(),
            amount: Some(money(&row.currency, row.amount)),
            expired: status == AuthStatus::Expired,
        },
    )
    .await?;
    metrics::counter!("cards_releases_total", "status" => status.as_str()).increment(1);
    Ok(row)
}

/// Voids an approved, uncaptured authorization.
///
/// # Errors
/// `NOT_FOUND`, `AUTHORIZATION_STATE_CONFLICT`, `UNAVAILABLE`, idempotency refusals.
pub(crate) async fn void(core: &Core, op: Operation) -> Result<(Authorization, bool), ServiceError> {
    let row = match load(core, &op).await? {
        Err(bytes) => {
            return Ok((
                Authorization::decode(bytes.as_slice()).map_err(|e| ServiceError::internal(&e))?,
                true,
            ));
        }
        Ok(row) => row,
    };
    match row.status {
        AuthStatus::Approved => {
            core.upstreams.void_hold(hold_of(&row)?, "authorization voided").await.map_err(ledger_refusal)?;
        }
        AuthStatus::Voided => {}
        AuthStatus::Pending | AuthStatus::Declined | AuthStatus::Captured | AuthStatus::Expired => {
            return Err(state_conflict("only an approved, uncaptured authorization can be voided"));
        }
    }
    let authorization_id = row.authorization_id;
    tx::run(&core.pool, |conn| {
        let op = op.clone();
        Box::pin(async move {
            let row =
                storage::lock_authorization(conn, authorization_id).await?.ok_or(sqlx::Error::RowNotFound)?;
            if let Begin::Replay(bytes) = idempotency::begin(conn, &op.key, &op.request_hash).await? {
                return Ok((Authorization::decode(bytes.as_slice()).map_err(decode_error)?, true));
            }
            let row = match row.status {
                AuthStatus::Approved => record_release(conn, &row, AuthStatus::Voided).await?,
                AuthStatus::Voided => row,
                AuthStatus::Pending | AuthStatus::Declined | AuthStatus::Captured | AuthStatus::Expired => {
                    return Err(
                        state_conflict("only an approved, uncaptured authorization can be voided").into()
                    );
                }
            };
            let answer = convert::authorization(&row);
            idempotency::complete(conn, &op.key, &answer.encode_to_vec()).await?;
            Ok((answer, false))
        })
    })
    .await
    .map_err(into_service_error)
}

/// The refund id of a request: derived from its idempotency key, so a retry refunds once.
fn refund_id(key: &Key, authorization_id: Uuid) -> Uuid {
    use sha2::Digest as _;
    let digest =
        sha2::Sha256::digest(format!("{}\n{}\n{}\n{authorization_id}", key.principal, key.rpc, key.key));
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Refunds part of a captured authorization.
///
/// # Errors
/// `NOT_FOUND`, `AUTHORIZATION_STATE_CONFLICT`, `AMOUNT_EXCEEDS_AVAILABLE`, `CURRENCY_MISMATCH`,
/// `ACCOUNT_CLOSED`, `UNAVAILABLE`, idempotency refusals.
pub(crate) async fn refund(core: &Core, op: Operation) -> Result<(RefundChargeResponse, bool), ServiceError> {
    let row = match load(core, &op).await? {
        Err(bytes) => {
            return Ok((
                RefundChargeResponse::decode(bytes.as_slice()).map_err(|e| ServiceError::internal(&e))?,
                true,
            ));
        }
        Ok(row) => row,
    };
    let Some((currency, amount)) = op.amount.clone() else {
        return Err(ServiceError::new(ErrorCode::ValidationFailed, "amount is required"));
    };
    currency_check(&row, &currency)?;
    if row.status != AuthStatus::Captured {
        return Err(state_conflict("only a captured charge can be refunded"));
    }
    let refund_id = refund_id(&op.key, row.authorization_id);
    let answer = core
        .upstreams
        .refund_hold(
            hold_of(&row)?,
            money(&currency, amount),
            refund_id,
            &format!("refund: {}", row.merchant_name),
        )
        .await
        .map_err(ledger_refusal)?;
    let hold = answer.hold.unwrap_or_default();
    let refunded_total = hold.refunded_amount.map_or(row.refunded_amount + amount, |m| m.minor_units);
    let transaction_id =
        answer.transaction.and_then(|t| Uuid::parse_str(&t.transaction_id).ok()).unwrap_or(refund_id);
    let authorization_id = row.authorization_id;
    tx::run(&core.pool, |conn| {
        let op = op.clone();
        Box::pin(async move {
            storage::lock_authorization(conn, authorization_id).await?.ok_or(sqlx::Error::RowNotFound)?;
            if let Begin::Replay(bytes) = idempotency::begin(conn, &op.key, &op.request_hash).await? {
                return Ok((RefundChargeResponse::decode(bytes.as_slice()).map_err(decode_error)?, true));
            }
            let row = storage::add_refund(
                conn,
                authorization_id,
                refund_id,
                amount,
                transaction_id,
                refunded_total,
            )
            .await?;
            outbox::publish(
                conn,
                &format!("authorizations/{authorization_id}"),
                &events::CardChargeRefunded {
                    authorization_id: authorization_id.to_string(),
                    refund_id: refund_id.to_string(),
                    card_id: row.card_id.to_string(),
                    account_id: row.account_id.to_string(),
                    owner_user_id: row.owner_user_id.to_string(),
                    card_last_four: row.card_last_four.clone(),
                    merchant_name: row.merchant_name.clone(),
                    amount: Some(money(&row.currency, amount)),
                    total_refunded: Some(money(&row.currency, row.refunded_amount)),
                },
            )
            .await?;
            metrics::counter!("cards_refunds_total").increment(1);
            let answer = RefundChargeResponse {
                authorization: Some(convert::authorization(&row)),
                refund_id: refund_id.to_string(),
            };
            idempotency::complete(conn, &op.key, &answer.encode_to_vec()).await?;
            Ok((answer, false))
        })
    })
    .await
    .map_err(into_service_error)
}

/// Releases an approved authorization at the ledger and records it as `status` (voided or
/// expired); when the ledger shows the hold captured or released already, records that instead.
/// Used by the expiry sweep and forced closes.
///
/// # Errors
/// The ledger could not be reached, or the database failed.
pub(crate) async fn release(
    core: &Core,
    authorization_id: Uuid,
    status: AuthStatus,
) -> Result<(), ServiceError> {
    let row = {
        let mut conn = core.pool.acquire().await.map_err(|e| ServiceError::internal(&e))?;
        storage::authorization(&mut conn, authorization_id, None)
            .await
            .map_err(|e| ServiceError::internal(&e))?
            .ok_or_else(charge_not_found)?
    };
    if row.status != AuthStatus::Approved {
        return Ok(());
    }
    let hold_id = hold_of(&row)?;
    let captured = match core.upstreams.void_hold(hold_id, "authorization released").await {
        Ok(_) => None,
        Err(Failure::Refused(refused)) if refused.code == ErrorCode::HoldNotActive => {
            let hold = core
                .upstreams
                .hold_of(authorization_id)
                .await
                .map_err(|f| f.into_client_error(LEDGER_PENDING))?;
            (hold.status == HoldStatus::Captured as i32).then(|| {
                (
                    hold.captured_amount.map_or(row.amount, |m| m.minor_units),
                    Uuid::parse_str(&hold.capture_transaction_id).ok(),
                )
            })
        }
        Err(failure) => return Err(failure.into_client_error(LEDGER_PENDING)),
    };
    tx::run(&core.pool, |conn| {
        Box::pin(async move {
            let row =
                storage::lock_authorization(conn, authorization_id).await?.ok_or(sqlx::Error::RowNotFound)?;
            if row.status != AuthStatus::Approved {
                return Ok(());
            }
            match captured {
                Some((amount, transaction_id)) => {
                    record_capture(conn, &row, amount, transaction_id).await?;
                }
                None => {
                    record_release(conn, &row, status).await?;
                }
            }
            Ok(())
        })
    })
    .await
    .map_err(into_service_error)
}

/// The reconciler: every `interval`, finishes due pending authorizations and expires approved
/// ones past their time. Items are claimed with `SKIP LOCKED`, so replicas share the work (and a
/// repeat would be harmless: every step is idempotent).
pub(crate) async fn reconcile(core: Core, config: ReconcilerConfig, stop: CancellationToken) {
    loop {
        if let Err(err) = reconcile_once(&core, &config).await {
            tracing::warn!(error = %err, "reconciler round failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// One round of the reconciler.
async fn reconcile_once(core: &Core, config: &ReconcilerConfig) -> Result<(), sqlx::Error> {
    let limit = i64::from(config.batch_size);
    let pending = {
        let mut conn = core.pool.acquire().await?;
        storage::claim_pending(&mut conn, limit, core.stuck_after, config.max_backoff).await?
    };
    for authorization_id in pending {
        let row = {
            let mut conn = core.pool.acquire().await?;
            storage::authorization(&mut conn, authorization_id, None).await?
        };
        let Some(row) = row.filter(|r| r.status == AuthStatus::Pending) else { continue };
        match finish_authorization(core, row).await {
            Ok(done) if done.status != AuthStatus::Pending => {
                metrics::counter!("cards_reconciled_total", "kind" => "authorization").increment(1);
                tracing::info!(%authorization_id, status = done.status.as_str(), "reconciler finished an interrupted authorization");
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%authorization_id, error = %err, "reconciler could not finish an authorization yet");
            }
        }
    }
    let expired = {
        let mut conn = core.pool.acquire().await?;
        storage::expired_approvals(&mut conn, limit).await?
    };
    for authorization_id in expired {
        match release(core, authorization_id, AuthStatus::Expired).await {
            Ok(()) => metrics::counter!("cards_reconciled_total", "kind" => "expiry").increment(1),
            Err(err) => {
                tracing::warn!(%authorization_id, error = %err, "could not expire an authorization yet");
            }
        }
    }
    Ok(())
}
