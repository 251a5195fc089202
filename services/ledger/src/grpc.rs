//! The tonic implementations of the ledger's contracts and the proto <-> row conversions.
//!
//! Built so far: ledger accounts (service scope), balances (current and historical), history with
//! filters and allowlisted sorts, internal transfers and their queries, deposits, withdrawals,
//! holds, reversals, low-balance thresholds, period summaries, staff reads (ledger accounts, system
//! accounts) and the integrity checks. Scheduled and external transfers, FX quotes and interest
//! keep the generated `UNIMPLEMENTED` until their part of the accounts-and-ledger issue lands (see
//! the README status table).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bank_auth::{Principal, Subject, principal};
use bank_money::{Amount, Currency};
use bank_platform::{
    ErrorCode, FieldViolation, ServiceError,
    idempotency::{self, Begin},
    pagination::Page,
};
use bank_proto::{
    common::v1::{Balances, Money, PageInfo},
    events::v1 as events,
    ledger::v1::{ledger_admin_service_server::LedgerAdminService, ledger_service_server::LedgerService, *},
};
use prost::Message as _;
use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    config::TransferConfig,
    posting::{self, Leg, Plan},
    storage::{self, AccountRow, EntryRow},
};

type Answer<T> = Result<Response<T>, Status>;

/// The ledger API (user-facing, service and admin RPCs).
#[derive(Debug, Clone)]
pub struct Api {
    pool: PgPool,
    transfers: Arc<TransferConfig>,
}

impl Api {
    /// The API over `pool`, with the transfer settings.
    #[must_use]
    pub fn new(pool: PgPool, transfers: TransferConfig) -> Self {
        Self { pool, transfers: Arc::new(transfers) }
    }
}

fn internal<E: std::error::Error + 'static>(err: E) -> Status {
    ServiceError::internal(&err).into()
}

fn invalid(field: &str, code: &str, description: &str) -> Status {
    ServiceError::invalid(vec![FieldViolation::new(field, code, description)]).into()
}

fn not_found() -> Status {
    ServiceError::new(ErrorCode::NotFound, "no such account").into()
}

fn uuid_field(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(invalid(field, "REQUIRED", "is required"));
    }
    Uuid::parse_str(value).map_err(|_| invalid(field, "INVALID_FORMAT", "must be a UUID"))
}

/// A positive amount in a supported currency.
fn money_field(field: &str, money: Option<&Money>) -> Result<(Currency, Amount), Status> {
    let money = money.ok_or_else(|| invalid(field, "REQUIRED", "is required"))?;
    let mut violations = Vec::new();
    let currency = Currency::parse(&money.currency).map_err(|e| {
        violations.push(FieldViolation::new(format!("{field}.currency"), e.code(), e.to_string()));
    });
    let amount = Amount::new(money.minor_units).map_err(|e| {
        violations.push(FieldViolation::new(format!("{field}.minor_units"), e.code(), e.to_string()));
    });
    match (currency, amount) {
        (Ok(currency), Ok(amount)) => Ok((currency, amount)),
        _ => {
            let currency_unsupported = violations.iter().any(|v| v.code == "CURRENCY_NOT_SUPPORTED");
            let mut error = ServiceError::invalid(violations);
            if currency_unsupported {
                error.code = ErrorCode::CurrencyNotSupported;
            }
            Err(error.into())
        }
    }
}

fn money(currency: &str, minor_units: i64) -> Money {
    Money { currency: currency.to_owned(), minor_units }
}

fn timestamp(at: OffsetDateTime) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or_default(),
    }
}

fn balances(account: &AccountRow) -> Balances {
    Balances {
        posted: Some(money(&account.currency, account.posted)),
        held: Some(money(&account.currency, account.held)),
        available: Some(money(&account.currency, account.posted.saturating_sub(account.held))),
        as_of: Some(timestamp(OffsetDateTime::now_utc())),
    }
}

fn description_field(value: &str) -> Result<String, Status> {
    let value = value.trim();
    if value.chars().count() > 140 {
        return Err(invalid("description", "TOO_LONG", "at most 140 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("description", "INVALID_CHARACTERS", "must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// Who may read an account: its owner, or a service with `ledger:read`.
fn may_read(principal: &Principal, account: &AccountRow) -> bool {
    match &principal.subject {
        Subject::User(user) => account.owner_user_id == Some(*user),
        Subject::Service(_) => principal.has("ledger:read"),
    }
}

fn principal_id(principal: &Principal) -> String {
    match &principal.subject {
        Subject::User(user) => user.to_string(),
        Subject::Service(client) => client.clone(),
    }
}

fn refusal(err: posting::Error) -> Status {
    match err {
        posting::Error::Refused(error) => error.into(),
        posting::Error::Database(db) => internal(db),
    }
}

fn ledger_account(row: &AccountRow) -> LedgerAccount {
    LedgerAccount {
        account_id: row.account_id.to_string(),
        kind: if row.kind == "customer" { LedgerAccountKind::Customer } else { LedgerAccountKind::System }
            as i32,
        system_type: row.system_type.as_deref().map_or(SystemAccountType::Unspecified, system_type) as i32,
        account_number: row.account_number.clone().unwrap_or_default(),
        owner_user_id: row.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
        currency: row.currency.clone(),
        status: match row.status.as_str() {
            "frozen" => LedgerAccountStatus::Frozen,
            "closed" => LedgerAccountStatus::Closed,
            _ => LedgerAccountStatus::Active,
        } as i32,
        credits_allowed: row.credits_allowed,
        overdraft_limit: Some(money(&row.currency, row.overdraft_limit)),
        balances: Some(balances(row)),
        created_at: Some(timestamp(row.created_at)),
        low_balance_threshold: row.low_balance_threshold.map(|t| money(&row.currency, t)),
    }
}

fn system_type(name: &str) -> SystemAccountType {
    match name {
        "cash" => SystemAccountType::Cash,
        "card_settlement" => SystemAccountType::CardSettlement,
        "external_clearing" => SystemAccountType::ExternalClearing,
        "fx_position" => SystemAccountType::FxPosition,
        "interest_expense" => SystemAccountType::InterestExpense,
        "fee_income" => SystemAccountType::FeeIncome,
        "equity" => SystemAccountType::Equity,
        "suspense" => SystemAccountType::Suspense,
        _ => SystemAccountType::Unspecified,
    }
}

fn system_name(kind: SystemAccountType) -> &'static str {
    match kind {
        SystemAccountType::Unspecified | SystemAccountType::Cash => "cash",
        SystemAccountType::CardSettlement => "card_settlement",
        SystemAccountType::ExternalClearing => "external_clearing",
        SystemAccountType::FxPosition => "fx_position",
        SystemAccountType::InterestExpense => "interest_expense",
        SystemAccountType::FeeIncome => "fee_income",
        SystemAccountType::Equity => "equity",
        SystemAccountType::Suspense => "suspense",
    }
}

fn transaction_kind(kind: &str) -> TransactionKind {
    match kind {
        "transfer" => TransactionKind::Transfer,
        "deposit" => TransactionKind::Deposit,
        "withdrawal" => TransactionKind::Withdrawal,
        "hold_capture" => TransactionKind::HoldCapture,
        "hold_refund" => TransactionKind::HoldRefund,
        "interest" => TransactionKind::Interest,
        "reversal" => TransactionKind::Reversal,
        _ => TransactionKind::Unspecified,
    }
}

fn entry(row: &EntryRow) -> Entry {
    Entry {
        entry_id: row.entry_id.to_string(),
        transaction_id: row.transaction_id.to_string(),
        account_id: row.account_id.to_string(),
        kind: transaction_kind(&row.kind) as i32,
        amount: Some(money(&row.currency, row.amount)),
        balance_after: Some(money(&row.currency, row.balance_after)),
        description: row.description.clone(),
        counterparty: String::new(),
        posted_at: Some(timestamp(row.posted_at)),
        sequence: row.sequence,
    }
}

fn transaction(posted: &posting::Posted, plan: &Plan<'_>) -> Transaction {
    Transaction {
        transaction_id: posted.transaction_id.to_string(),
        kind: transaction_kind(plan.kind) as i32,
        description: plan.description.to_owned(),
        postings: posted
            .entries
            .iter()
            .map(|(entry_id, account_id, amount, after)| Posting {
                entry_id: entry_id.to_string(),
                account_id: account_id.to_string(),
                amount: Some(money(plan.currency, *amount)),
                balance_after: Some(money(plan.currency, *after)),
            })
            .collect(),
        posted_at: Some(timestamp(posted.posted_at)),
        initiated_by: plan.initiated_by.to_owned(),
        reference_id: plan.reference_id.to_owned(),
        reverses_transaction_id: String::new(),
        reversed_by_transaction_id: String::new(),
        reason: plan.reason.to_owned(),
    }
}

/// Runs `attempt` in a fresh transaction, retrying serialization failures and deadlocks (never
/// surfaced to clients). The transaction commits when `attempt` answers `Ok`. Every write of the
/// ledger goes through here, so `ledger_posting_duration_seconds` (by result, retries included)
/// is the posting latency.
async fn in_transaction<T, F>(pool: &PgPool, mut attempt: F) -> Result<T, Status>
where
    F: for<'c> FnMut(&'c mut sqlx::PgConnection) -> futures::future::BoxFuture<'c, Result<T, posting::Error>>,
{
    let started = std::time::Instant::now();
    let outcome = retrying(pool, &mut attempt).await;
    let result = match &outcome {
        Ok(_) => "committed",
        Err(status) if status.code() == tonic::Code::Internal => "failed",
        Err(status) if status.code() == tonic::Code::Unavailable => "gave_up",
        Err(_) => "refused",
    };
    metrics::histogram!("ledger_posting_duration_seconds", "result" => result)
        .record(started.elapsed().as_secs_f64());
    outcome
}

async fn retrying<T, F>(pool: &PgPool, attempt: &mut F) -> Result<T, Status>
where
    F: for<'c> FnMut(&'c mut sqlx::PgConnection) -> futures::future::BoxFuture<'c, Result<T, posting::Error>>,
{
    let mut backoff = Duration::from_millis(2);
    for round in 0..10 {
        let mut tx = pool.begin().await.map_err(internal)?;
        match attempt(&mut tx).await {
            Ok(value) => match tx.commit().await {
                Ok(()) => return Ok(value),
                Err(err) if posting::is_retryable(&err) && round < 9 => {}
                Err(err) => return Err(internal(err)),
            },
            Err(posting::Error::Database(err)) if posting::is_retryable(&err) && round < 9 => {}
            Err(err) => return Err(refusal(err)),
        }
        metrics::counter!("ledger_posting_retries_total").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
    Err(ServiceError::new(ErrorCode::Unavailable, "the ledger is busy, retry with the same idempotency key")
        .into())
}

/// Replays or runs an idempotent call inside `attempt`'s transaction.
fn replayed<T: Default + prost::Message>(bytes: &[u8]) -> Result<Response<T>, Status> {
    let message = T::decode(bytes).map_err(internal)?;
    let mut response = Response::new(message);
    response
        .metadata_mut()
        .insert(idempotency::REPLAYED, tonic::metadata::MetadataValue::from_static("true"));
    Ok(response)
}

enum Outcome<T> {
    Fresh(T),
    Replay(Vec<u8>),
}

fn idempotency_error(err: idempotency::Error) -> posting::Error {
    match err.client_error() {
        Some(client) => posting::Error::Refused(client),
        None => match err {
            idempotency::Error::Database(db) => posting::Error::Database(db),
            idempotency::Error::Reused => {
                posting::Error::Refused(ServiceError::new(ErrorCode::Internal, "unreachable"))
            }
        },
    }
}

#[tonic::async_trait]
impl LedgerService for Api {
    async fn create_ledger_account(
        &self,
        request: Request<CreateLedgerAccountRequest>,
    ) -> Answer<CreateLedgerAccountResponse> {
        bank_auth::require_scope(&request, "ledger:accounts")?;
        let req = request.into_inner();
        let account_id = uuid_field("account_id", &req.account_id)?;
        let owner = uuid_field("owner_user_id", &req.owner_user_id)?;
        if req.account_number.is_empty() || req.account_number.len() > 34 {
            return Err(invalid("account_number", "INVALID_FORMAT", "1 to 34 characters"));
        }
        let currency =
            Currency::parse(&req.currency).map_err(|e| invalid("currency", e.code(), &e.to_string()))?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let row =
            storage::insert_customer(&mut conn, account_id, &req.account_number, owner, currency.code())
                .await
                .map_err(|e| match e.as_database_error().and_then(sqlx::error::DatabaseError::code) {
                    Some(code) if code == "23505" => ServiceError::new(
                        ErrorCode::AlreadyExists,
                        "that account number belongs to another account",
                    )
                    .into(),
                    _ => internal(e),
                })?;
        let same = row.kind == "customer"
            && row.account_number.as_deref() == Some(req.account_number.as_str())
            && row.owner_user_id == Some(owner)
            && row.currency == currency.code();
        if !same {
            return Err(
                ServiceError::new(ErrorCode::AlreadyExists, "the account exists with other data").into()
            );
        }
        Ok(Response::new(CreateLedgerAccountResponse { account: Some(ledger_account(&row)) }))
    }

    async fn set_ledger_account_status(
        &self,
        request: Request<SetLedgerAccountStatusRequest>,
    ) -> Answer<SetLedgerAccountStatusResponse> {
        bank_auth::require_scope(&request, "ledger:accounts")?;
        let req = request.into_inner();
        let account_id = uuid_field("account_id", &req.account_id)?;
        let status = match LedgerAccountStatus::try_from(req.status) {
            Ok(LedgerAccountStatus::Active) => "active",
            Ok(LedgerAccountStatus::Frozen) => "frozen",
            Ok(LedgerAccountStatus::Closed) => "closed",
            Ok(LedgerAccountStatus::Unspecified) | Err(_) => {
                return Err(invalid("status", "REQUIRED", "ACTIVE, FROZEN or CLOSED"));
            }
        };
        // Credits stay allowed unless a freeze says otherwise.
        let credits_allowed = status != "frozen" || req.credits_allowed;
        let row = in_transaction(&self.pool, |conn| {
            Box::pin(async move {
                let mut accounts = posting::lock(conn, &[account_id]).await?;
                let account = accounts.get_mut(&account_id).ok_or(sqlx::Error::RowNotFound)?;
                if account.kind != "customer" {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::NotFound,
                        "no such account",
                    )));
                }
                if account.status == "closed" && status != "closed" {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::AccountClosed,
                        "the account is closed",
                    )));
                }
                if status == "closed"
                    && account.status != "closed"
                    && (account.posted != 0 || account.held != 0)
                {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::BalanceNotZero,
                        "the balance and holds must be zero to close",
                    )));
                }
                storage::set_status(conn, account_id, status, credits_allowed).await?;
                account.status = status.to_owned();
                account.credits_allowed = credits_allowed;
                Ok(account.clone())
            })
        })
        .await?;
        Ok(Response::new(SetLedgerAccountStatusResponse { account: Some(ledger_account(&row)) }))
    }

    async fn set_ledger_overdraft_limit(
        &self,
        request: Request<SetLedgerOverdraftLimitRequest>,
    ) -> Answer<SetLedgerOverdraftLimitResponse> {
        bank_auth::require_scope(&request, "ledger:accounts")?;
        let req = request.into_inner();
        let account_id = uuid_field("account_id", &req.account_id)?;
        let limit = req.limit.ok_or_else(|| invalid("limit", "REQUIRED", "is required"))?;
        let currency = Currency::parse(&limit.currency)
            .map_err(|e| invalid("limit.currency", e.code(), &e.to_string()))?;
        if limit.minor_units < 0 {
            return Err(invalid("limit.minor_units", "NEGATIVE", "must not be negative"));
        }
        let row = in_transaction(&self.pool, |conn| {
            Box::pin(async move {
                let mut accounts = posting::lock(conn, &[account_id]).await?;
                let account = accounts.get_mut(&account_id).ok_or(sqlx::Error::RowNotFound)?;
                if account.kind != "customer" {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::NotFound,
                        "no such account",
                    )));
                }
                if account.currency != currency.code() {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::CurrencyMismatch,
                        "the limit is in another currency",
                    )));
                }
                if account.posted.saturating_sub(account.held) < -limit.minor_units {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::FailedPrecondition,
                        "the available balance is already below the new limit",
                    )));
                }
                storage::set_overdraft_limit(conn, account_id, limit.minor_units).await?;
                account.overdraft_limit = limit.minor_units;
                Ok(account.clone())
            })
        })
        .await?;
        Ok(Response::new(SetLedgerOverdraftLimitResponse { account: Some(ledger_account(&row)) }))
    }

    async fn create_hold(&self, request: Request<CreateHoldRequest>) -> Answer<CreateHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let req = request.into_inner();
        let account_id = uuid_field("account_id", &req.account_id)?;
        let (currency, amount) = money_field("amount", req.amount.as_ref())?;
        if req.reference_id.is_empty() || req.reference_id.len() > 128 {
            return Err(invalid("reference_id", "REQUIRED", "1 to 128 characters"));
        }
        let counterparty = match SystemAccountType::try_from(req.counterparty) {
            Ok(SystemAccountType::Unspecified) | Err(_) => {
                return Err(invalid("counterparty", "REQUIRED", "a system account type"));
            }
            Ok(kind) => system_name(kind),
        };
        let description = description_field(&req.description)?;
        let now = OffsetDateTime::now_utc();
        let expires_at = match req.expires_at {
            Some(t) => OffsetDateTime::from_unix_timestamp(t.seconds)
                .ok()
                .filter(|t| *t > now && *t <= now + time::Duration::days(31))
                .ok_or_else(|| {
                    invalid("expires_at", "OUT_OF_RANGE", "in the future, at most 31 days ahead")
                })?,
            None => now + time::Duration::days(7),
        };
        let created_by = principal_id(&caller);
        let hold = in_transaction(&self.pool, |conn| {
            let created_by = created_by.clone();
            let reference = req.reference_id.clone();
            let description = description.clone();
            Box::pin(async move {
                // A repeat with the same reference answers the existing hold, never a second one.
                if let Some(existing) = storage::hold_by_reference(conn, &created_by, &reference).await? {
                    let account =
                        storage::account(conn, existing.account_id).await?.ok_or(sqlx::Error::RowNotFound)?;
                    return Ok((existing, account));
                }
                let mut accounts = posting::lock(conn, &[account_id]).await?;
                let account = accounts.get_mut(&account_id).ok_or(sqlx::Error::RowNotFound)?;
                check_debit(account, currency.code(), amount)?;
                let Some(hold) = storage::insert_hold(
                    conn,
                    &storage::NewHold {
                        hold_id: Uuid::now_v7(),
                        account_id,
                        amount: amount.minor_units(),
                        currency: currency.code(),
                        counterparty,
                        created_by: &created_by,
                        reference_id: &reference,
                        description: &description,
                        expires_at,
                    },
                )
                .await?
                else {
                    // A concurrent create with the same reference committed first.
                    let existing = storage::hold_by_reference(conn, &created_by, &reference)
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?;
                    return Ok((existing, account.clone()));
                };
                account.held = storage::add_held(conn, account_id, amount.minor_units()).await?;
                bank_platform::outbox::publish(
                    conn,
                    &format!("holds/{}", hold.hold_id),
                    &events::HoldCreated {
                        hold_id: hold.hold_id.to_string(),
                        account_id: account_id.to_string(),
                        owner_user_id: account.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                        amount: Some(money(currency.code(), amount.minor_units())),
                        reference_id: reference.clone(),
                        expires_at: Some(timestamp(expires_at)),
                        available_after: Some(money(currency.code(), account.posted - account.held)),
                    },
                )
                .await?;
                Ok((hold, account.clone()))
            })
        })
        .await?;
        let (hold, account) = hold;
        Ok(Response::new(CreateHoldResponse {
            hold: Some(hold_message(&hold)),
            balances: Some(balances(&account)),
        }))
    }

    async fn capture_hold(&self, request: Request<CaptureHoldRequest>) -> Answer<CaptureHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let req = request.into_inner();
        let hold_id = uuid_field("hold_id", &req.hold_id)?;
        let requested = match req.amount.as_ref() {
            Some(m) => Some(money_field("amount", Some(m))?),
            None => None,
        };
        let initiated_by = principal_id(&caller);
        let (hold, transaction) = in_transaction(&self.pool, |conn| {
            let initiated_by = initiated_by.clone();
            Box::pin(async move {
                let found =
                    storage::hold(conn, hold_id, false).await?.filter(|h| h.created_by == initiated_by);
                let found = found.ok_or_else(|| refused(ErrorCode::NotFound, "no such hold"))?;
                let system_id = storage::system_account(conn, &found.counterparty, &found.currency).await?;
                let mut accounts = posting::lock(conn, &[found.account_id, system_id]).await?;
                let hold = storage::hold(conn, hold_id, true).await?.ok_or(sqlx::Error::RowNotFound)?;
                let amount = match requested {
                    Some((currency, _)) if currency.code() != hold.currency => {
                        return Err(refused(ErrorCode::CurrencyMismatch, "the hold is in another currency"));
                    }
                    Some((_, amount)) => amount.minor_units(),
                    None => hold.amount,
                };
                if hold.status == "captured" && hold.captured_amount == amount {
                    // A repeat answers the same result.
                    return Ok((hold, None));
                }
                if hold.status != "active" {
                    return Err(refused(ErrorCode::HoldNotActive, "the hold is not active"));
                }
                if amount > hold.amount {
                    return Err(refused(ErrorCode::AmountExceedsAvailable, "more than the held amount"));
                }
                // Release the whole reservation, then post the captured part.
                let account = accounts.get_mut(&hold.account_id).ok_or(sqlx::Error::RowNotFound)?;
                account.held = storage::add_held(conn, hold.account_id, -hold.amount).await?;
                let reference = hold.hold_id.to_string();
                let plan = Plan {
                    kind: "hold_capture",
                    description: &hold.description,
                    initiated_by: &initiated_by,
                    reference_id: &reference,
                    reason: "",
                    currency: &hold.currency,
                    reverses: None,
                    correction: false,
                    legs: vec![
                        Leg { account_id: hold.account_id, amount: -amount },
                        Leg { account_id: system_id, amount },
                    ],
                };
                let posted = posting::post(conn, &mut accounts, &plan).await?;
                let finished =
                    storage::finish_hold(conn, hold_id, "captured", amount, Some(posted.transaction_id))
                        .await?;
                let account =
                    posted.accounts.get(&hold.account_id).cloned().ok_or(sqlx::Error::RowNotFound)?;
                posting::publish(
                    conn,
                    &posted,
                    &format!("holds/{hold_id}"),
                    &events::HoldCaptured {
                        hold_id: hold_id.to_string(),
                        account_id: hold.account_id.to_string(),
                        owner_user_id: account.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                        captured_amount: Some(money(&hold.currency, amount)),
                        released_amount: Some(money(&hold.currency, hold.amount - amount)),
                        transaction_id: posted.transaction_id.to_string(),
                        reference_id: hold.reference_id.clone(),
                        available_after: Some(money(&hold.currency, account.posted - account.held)),
                    },
                )
                .await?;
                Ok((finished, Some(transaction(&posted, &plan))))
            })
        })
        .await?;
        Ok(Response::new(CaptureHoldResponse { hold: Some(hold_message(&hold)), transaction }))
    }

    async fn void_hold(&self, request: Request<VoidHoldRequest>) -> Answer<VoidHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let hold_id = uuid_field("hold_id", &request.get_ref().hold_id)?;
        let created_by = principal_id(&caller);
        let hold = in_transaction(&self.pool, |conn| {
            let created_by = created_by.clone();
            Box::pin(async move { release(conn, hold_id, Some(&created_by), "voided").await })
        })
        .await?;
        Ok(Response::new(VoidHoldResponse { hold: Some(hold_message(&hold)) }))
    }

    async fn refund_hold(&self, request: Request<RefundHoldRequest>) -> Answer<RefundHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let req = request.into_inner();
        let hold_id = uuid_field("hold_id", &req.hold_id)?;
        let (currency, amount) = money_field("amount", req.amount.as_ref())?;
        if req.refund_reference_id.is_empty() || req.refund_reference_id.len() > 128 {
            return Err(invalid("refund_reference_id", "REQUIRED", "1 to 128 characters"));
        }
        let description = description_field(&req.description)?;
        let initiated_by = principal_id(&caller);
        let (hold, transaction) = in_transaction(&self.pool, |conn| {
            let initiated_by = initiated_by.clone();
            let reference = req.refund_reference_id.clone();
            let description = description.clone();
            Box::pin(async move {
                let found =
                    storage::hold(conn, hold_id, false).await?.filter(|h| h.created_by == initiated_by);
                let found = found.ok_or_else(|| refused(ErrorCode::NotFound, "no such hold"))?;
                if found.currency != currency.code() {
                    return Err(refused(ErrorCode::CurrencyMismatch, "the hold is in another currency"));
                }
                let system_id = storage::system_account(conn, &found.counterparty, &found.currency).await?;
                let mut accounts = posting::lock(conn, &[found.account_id, system_id]).await?;
                let hold = storage::hold(conn, hold_id, true).await?.ok_or(sqlx::Error::RowNotFound)?;
                if let Some((done, _)) = storage::refund(conn, hold_id, &reference).await? {
                    if done != amount.minor_units() {
                        return Err(refused(
                            ErrorCode::IdempotencyKeyReused,
                            "that refund reference had another amount",
                        ));
                    }
                    return Ok((hold, None));
                }
                if hold.status != "captured" {
                    return Err(refused(ErrorCode::HoldNotActive, "only a captured hold can be refunded"));
                }
                if hold.refunded_amount + amount.minor_units() > hold.captured_amount {
                    return Err(refused(ErrorCode::AmountExceedsAvailable, "more than the captured amount"));
                }
                let plan = Plan {
                    kind: "hold_refund",
                    description: &description,
                    initiated_by: &initiated_by,
                    reference_id: &reference,
                    reason: "",
                    currency: &hold.currency,
                    reverses: None,
                    correction: false,
                    legs: vec![
                        Leg { account_id: system_id, amount: -amount.minor_units() },
                        Leg { account_id: hold.account_id, amount: amount.minor_units() },
                    ],
                };
                let posted = posting::post(conn, &mut accounts, &plan).await?;
                let updated = storage::insert_refund(
                    conn,
                    hold_id,
                    &reference,
                    amount.minor_units(),
                    posted.transaction_id,
                )
                .await?;
                let account =
                    posted.accounts.get(&hold.account_id).cloned().ok_or(sqlx::Error::RowNotFound)?;
                posting::publish(
                    conn,
                    &posted,
                    &format!("holds/{hold_id}"),
                    &events::HoldRefunded {
                        hold_id: hold_id.to_string(),
                        account_id: hold.account_id.to_string(),
                        owner_user_id: account.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                        amount: Some(money(&hold.currency, amount.minor_units())),
                        transaction_id: posted.transaction_id.to_string(),
                        refund_reference_id: reference.clone(),
                        available_after: Some(money(&hold.currency, account.posted - account.held)),
                    },
                )
                .await?;
                Ok((updated, Some(transaction(&posted, &plan))))
            })
        })
        .await?;
        Ok(Response::new(RefundHoldResponse { hold: Some(hold_message(&hold)), transaction }))
    }

    async fn get_hold(&self, request: Request<GetHoldRequest>) -> Answer<GetHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let created_by = principal_id(&caller);
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let hold = match &request.get_ref().lookup {
            Some(get_hold_request::Lookup::HoldId(id)) => {
                storage::hold(&mut conn, uuid_field("hold_id", id)?, false).await.map_err(internal)?
            }
            Some(get_hold_request::Lookup::ReferenceId(reference)) if !reference.is_empty() => {
                storage::hold_by_reference(&mut conn, &created_by, reference).await.map_err(internal)?
            }
            _ => return Err(invalid("lookup", "REQUIRED", "hold_id or reference_id is required")),
        };
        let hold = hold
            .filter(|h| h.created_by == created_by)
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such hold")))?;
        Ok(Response::new(GetHoldResponse { hold: Some(hold_message(&hold)) }))
    }

    async fn get_balances(&self, request: Request<GetBalancesRequest>) -> Answer<GetBalancesResponse> {
        let principal = principal(&request)?.clone();
        let req = request.into_inner();
        let account_id = uuid_field("account_id", &req.account_id)?;
        let as_of = match req.as_of {
            Some(t) => {
                let at = instant("as_of", t)?;
                if at > OffsetDateTime::now_utc() {
                    return Err(invalid("as_of", "OUT_OF_RANGE", "must not be in the future"));
                }
                Some(at)
            }
            None => None,
        };
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let account =
            storage::account(&mut conn, account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        if !may_read(&principal, &account) {
            return Err(not_found());
        }
        if let Some(at) = as_of {
            let posted = storage::posted_before(&mut conn, account_id, at).await.map_err(internal)?;
            return Ok(Response::new(GetBalancesResponse {
                balances: Some(Balances {
                    posted: Some(money(&account.currency, posted)),
                    held: None,
                    available: None,
                    as_of: Some(timestamp(at)),
                }),
                overdraft_limit: Some(money(&account.currency, account.overdraft_limit)),
            }));
        }
        Ok(Response::new(GetBalancesResponse {
            balances: Some(balances(&account)),
            overdraft_limit: Some(money(&account.currency, account.overdraft_limit)),
        }))
    }

    async fn list_entries(&self, request: Request<ListEntriesRequest>) -> Answer<ListEntriesResponse> {
        let principal = principal(&request)?.clone();
        let req = request.into_inner();
        let query = EntryQuery::parse(
            &req.account_id,
            req.page.as_ref(),
            (req.from_time, req.to_time),
            req.direction,
            (req.min_amount_minor_units, req.max_amount_minor_units),
            req.sort,
        )?;
        let (entries, page_info) = self.entries_page(&query, |account| may_read(&principal, account)).await?;
        Ok(Response::new(ListEntriesResponse { entries, page_info: Some(page_info) }))
    }

    async fn get_transfer(&self, request: Request<GetTransferRequest>) -> Answer<GetTransferResponse> {
        let user = user_of(&request)?;
        let transfer_id = uuid_field("transfer_id", &request.get_ref().transfer_id)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let row = storage::transfer_for(&mut conn, transfer_id, user)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such transfer")))?;
        Ok(Response::new(GetTransferResponse { transfer: Some(transfer_message(&row, user)) }))
    }

    async fn list_transfers(&self, request: Request<ListTransfersRequest>) -> Answer<ListTransfersResponse> {
        const KIND: &str = "transfers";
        let user = user_of(&request)?;
        let req = request.into_inner();
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, KIND, 50, 200)?;
        let account =
            if req.account_id.is_empty() { None } else { Some(uuid_field("account_id", &req.account_id)?) };
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        if let Some(account) = account {
            // Only the caller's own account; anyone else's answers like a missing one.
            let row = storage::account(&mut conn, account).await.map_err(internal)?;
            if row.is_none_or(|a| a.owner_user_id != Some(user)) {
                return Err(not_found());
            }
        }
        let before = if page.position == 0 { i64::MAX } else { page.position };
        let rows =
            storage::transfers_for(&mut conn, user, account, before, page.size).await.map_err(internal)?;
        let next = page.next_token(KIND, rows.len(), rows.last().map_or(0, |r| r.seq));
        Ok(Response::new(ListTransfersResponse {
            transfers: rows.iter().map(|r| transfer_message(r, user)).collect(),
            page_info: Some(PageInfo { next_page_token: next, total_size: None }),
        }))
    }

    async fn set_low_balance_threshold(
        &self,
        request: Request<SetLowBalanceThresholdRequest>,
    ) -> Answer<SetLowBalanceThresholdResponse> {
        let principal = principal(&request)?.clone();
        let req = request.into_inner();
        let account_id = uuid_field("account_id", &req.account_id)?;
        let threshold = match req.threshold {
            Some(t) => {
                let currency = Currency::parse(&t.currency)
                    .map_err(|e| invalid("threshold.currency", e.code(), &e.to_string()))?;
                if t.minor_units < 0 {
                    return Err(invalid("threshold.minor_units", "NEGATIVE", "must not be negative"));
                }
                Some((currency, t.minor_units))
            }
            None => None,
        };
        let row = in_transaction(&self.pool, |conn| {
            let principal = principal.clone();
            Box::pin(async move {
                let mut accounts = posting::lock(conn, &[account_id]).await?;
                let account = accounts.get_mut(&account_id).ok_or(sqlx::Error::RowNotFound)?;
                let allowed = match &principal.subject {
                    Subject::User(user) => account.owner_user_id == Some(*user),
                    Subject::Service(_) => principal.has("ledger:accounts"),
                };
                if account.kind != "customer" || !allowed {
                    return Err(refused(ErrorCode::NotFound, "no such account"));
                }
                if let Some((currency, _)) = &threshold
                    && currency.code() != account.currency
                {
                    return Err(refused(ErrorCode::CurrencyMismatch, "the threshold is in another currency"));
                }
                let value = threshold.as_ref().map(|(_, minor)| *minor);
                storage::set_low_balance_threshold(conn, account_id, value).await?;
                account.low_balance_threshold = value;
                Ok(account.clone())
            })
        })
        .await?;
        Ok(Response::new(SetLowBalanceThresholdResponse { account: Some(ledger_account(&row)) }))
    }

    async fn summarize_account_periods(
        &self,
        request: Request<SummarizeAccountPeriodsRequest>,
    ) -> Answer<SummarizeAccountPeriodsResponse> {
        bank_auth::require_scope(&request, "ledger:read")?;
        let req = request.into_inner();
        let account_id = uuid_field("account_id", &req.account_id)?;
        if !(2..=121).contains(&req.boundaries.len()) {
            return Err(invalid("boundaries", "OUT_OF_RANGE", "2 to 121 boundaries"));
        }
        let boundaries =
            req.boundaries.into_iter().map(|t| instant("boundaries", t)).collect::<Result<Vec<_>, _>>()?;
        if boundaries.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("boundaries", "NOT_ASCENDING", "must be strictly ascending"));
        }
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let account =
            storage::account(&mut conn, account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        let rows = storage::period_summaries(&mut conn, account_id, &boundaries).await.map_err(internal)?;
        let currency = account.currency.as_str();
        let mut periods = Vec::with_capacity(rows.len());
        for (start, end, opening, credits, debits, count) in rows {
            let closing = bank_money::add(opening, credits)
                .and_then(|b| bank_money::sub(b, debits))
                .map_err(internal)?;
            periods.push(PeriodSummary {
                period_start: Some(timestamp(start)),
                period_end: Some(timestamp(end)),
                opening_balance: Some(money(currency, opening)),
                closing_balance: Some(money(currency, closing)),
                total_credits: Some(money(currency, credits)),
                total_debits: Some(money(currency, debits)),
                entry_count: count,
            });
        }
        Ok(Response::new(SummarizeAccountPeriodsResponse { periods }))
    }

    async fn create_transfer(
        &self,
        request: Request<CreateTransferRequest>,
    ) -> Answer<CreateTransferResponse> {
        const RPC: &str = "/bank.ledger.v1.LedgerService/CreateTransfer";
        let principal = principal(&request)?.clone();
        let Some(user) = principal.user_id() else {
            return Err(ServiceError::new(ErrorCode::PermissionDenied, "a user token is required").into());
        };
        let key = idempotency::key_of(request.metadata(), &user.to_string(), RPC, true)?
            .ok_or_else(|| Status::internal("key required"))?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let from = uuid_field("from_account_id", &req.from_account_id)?;
        let (currency, amount) = money_field("amount", req.amount.as_ref())?;
        // Large transfers need a recent second factor (checked before anything is claimed, so the
        // retry after StepUp with the same key is a fresh attempt, not a conflict).
        if amount.minor_units() > self.transfers.step_up_above(currency.code()) {
            bank_auth::require_step_up(&principal)?;
        }
        let description = description_field(&req.description)?;
        if !req.fx_quote_id.is_empty() {
            return Err(ServiceError::new(
                ErrorCode::CurrencyMismatch,
                "cross-currency transfers are not supported yet",
            )
            .into());
        }
        let destination = match &req.destination {
            Some(create_transfer_request::Destination::ToAccountId(id)) => {
                Destination::Id(uuid_field("to_account_id", id)?)
            }
            Some(create_transfer_request::Destination::ToAccountNumber(number)) if !number.is_empty() => {
                Destination::Number(number.clone())
            }
            _ => {
                return Err(invalid(
                    "destination",
                    "REQUIRED",
                    "to_account_id or to_account_number is required",
                ));
            }
        };
        let user_id = user.to_string();

        let outcome = in_transaction(&self.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let destination = destination.clone();
            let description = description.clone();
            let user_id = user_id.clone();
            Box::pin(async move {
                // Resolve and lock source and destination (in account-id order), and see whether
                // the key was used before, in one statement; the key is stored by the write below.
                let (to_id, to_number) = match &destination {
                    Destination::Id(id) => (Some(*id), None),
                    Destination::Number(number) => (None, Some(number.as_str())),
                };
                let (seen, rows) =
                    storage::lock_transfer_accounts(conn, &key, from, to_id, to_number).await?;
                if seen == Some(true)
                    && let Begin::Replay(bytes) =
                        idempotency::existing(conn, &key, &request_hash).await.map_err(idempotency_error)?
                {
                    return Ok(Outcome::Replay(bytes));
                }
                let not_found =
                    || posting::Error::Refused(ServiceError::new(ErrorCode::NotFound, "no such account"));
                let to = match &destination {
                    Destination::Id(id) => rows.iter().find(|a| a.account_id == *id),
                    Destination::Number(number) => {
                        rows.iter().find(|a| a.account_number.as_deref() == Some(number))
                    }
                }
                .map(|a| a.account_id)
                .ok_or_else(not_found)?;
                if to == from {
                    return Err(posting::Error::Refused(ServiceError::invalid(vec![FieldViolation::new(
                        "to_account_id",
                        "SAME_ACCOUNT",
                        "source and destination are the same account",
                    )])));
                }
                let mut accounts: BTreeMap<Uuid, AccountRow> = rows
                    .into_iter()
                    .filter(|a| a.account_id == from || a.account_id == to)
                    .map(|a| (a.account_id, a))
                    .collect();
                if !accounts.contains_key(&from) {
                    return Err(not_found());
                }
                // Someone else's source account, or someone else's destination given by id, answers
                // exactly like a nonexistent one.
                let owns = |id: &Uuid| accounts.get(id).is_some_and(|a| a.owner_user_id == Some(user));
                if !owns(&from) || (matches!(destination, Destination::Id(_)) && !owns(&to)) {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::NotFound,
                        "no such account",
                    )));
                }
                if accounts.get(&to).is_some_and(|a| a.kind != "customer") {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::NotFound,
                        "no such account",
                    )));
                }
                let transfer_id = Uuid::now_v7();
                let reference = transfer_id.to_string();
                let plan = Plan {
                    kind: "transfer",
                    description: &description,
                    initiated_by: &user_id,
                    reference_id: &reference,
                    reason: "",
                    currency: currency.code(),
                    legs: vec![
                        Leg { account_id: from, amount: -amount.minor_units() },
                        Leg { account_id: to, amount: amount.minor_units() },
                    ],
                    reverses: None,
                    correction: false,
                };
                // Checked and computed here; written below in one statement with the transfer.
                let prepared = posting::prepare(&mut accounts, &plan)?;
                let posted = &prepared.posted;
                let from_row = posted.accounts.get(&from).cloned().ok_or(sqlx::Error::RowNotFound)?;
                let to_row = posted.accounts.get(&to).cloned().ok_or(sqlx::Error::RowNotFound)?;
                let transfer = Transfer {
                    transfer_id: transfer_id.to_string(),
                    from_account_id: from.to_string(),
                    to_account_id: to.to_string(),
                    to_account_number: to_row.account_number.clone().unwrap_or_default(),
                    amount: Some(money(currency.code(), amount.minor_units())),
                    credited_amount: Some(money(currency.code(), amount.minor_units())),
                    description: description.clone(),
                    status: TransferStatus::Posted as i32,
                    transaction_id: posted.transaction_id.to_string(),
                    fx_quote_id: String::new(),
                    scheduled_transfer_id: String::new(),
                    created_at: Some(timestamp(posted.posted_at)),
                };
                // The transfer's event is written by the last statement below with everything else
                // (one round trip); low-balance alerts it causes, if any, are written first.
                let event = bank_platform::outbox::Event::new(
                    &format!("transfers/{transfer_id}"),
                    &events::TransferPosted {
                        transfer_id: transfer_id.to_string(),
                        transaction_id: posted.transaction_id.to_string(),
                        from_account_id: from.to_string(),
                        from_owner_user_id: from_row.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                        to_account_id: to.to_string(),
                        to_owner_user_id: to_row.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                        amount: Some(money(currency.code(), amount.minor_units())),
                        credited_amount: Some(money(currency.code(), amount.minor_units())),
                        description: description.clone(),
                        from_available_after: Some(money(currency.code(), from_row.posted - from_row.held)),
                        to_available_after: Some(money(currency.code(), to_row.posted - to_row.held)),
                        scheduled_transfer_id: String::new(),
                    },
                );
                posting::publish_low_balance(conn, posted, event.event_id).await?;
                let response = CreateTransferResponse {
                    transfer: Some(transfer),
                    from_balances: Some(balances(&from_row)),
                };
                storage::write_transfer(
                    conn,
                    &prepared.transaction,
                    &prepared.rows,
                    &storage::TransferWrite {
                        transfer_id,
                        from,
                        to,
                        amount: amount.minor_units(),
                        key: &key,
                        request_hash: &request_hash,
                        response: &response.encode_to_vec(),
                        event: &event,
                    },
                )
                .await?;
                Ok(Outcome::Fresh(response))
            })
        })
        .await;
        match outcome {
            Ok(Outcome::Fresh(response)) => {
                metrics::counter!("ledger_transfers_total", "result" => "posted").increment(1);
                Ok(Response::new(response))
            }
            Ok(Outcome::Replay(bytes)) => replayed(&bytes),
            Err(status) => {
                let reason = bank_platform::error::reason_of(&status).map_or("error", |r| r.reason());
                metrics::counter!("ledger_transfers_total", "result" => reason).increment(1);
                Err(status)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Destination {
    Id(Uuid),
    Number(String),
}

/// Tellers and admins (with a recent second factor, like every admin RPC), or services with
/// `ledger:cash`.
fn may_move_cash(principal: &Principal) -> Result<(), Status> {
    match principal.subject {
        Subject::User(_) => bank_auth::check_staff(principal, &["teller", "admin"]),
        Subject::Service(_) if principal.has("ledger:cash") => Ok(()),
        Subject::Service(_) => Err(ServiceError::new(ErrorCode::PermissionDenied, "not allowed").into()),
    }
}

impl Api {
    async fn cash(&self, principal: &Principal, cash: Cash) -> Result<Outcome<Transaction>, Status> {
        let Cash { key, request_hash, account_id, currency, amount, description, reason, system, deposit } =
            cash;
        let initiated_by = principal_id(principal);
        in_transaction(&self.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let description = description.clone();
            let reason = reason.clone();
            let initiated_by = initiated_by.clone();
            Box::pin(async move {
                if let Begin::Replay(bytes) =
                    idempotency::begin(conn, &key, &request_hash).await.map_err(idempotency_error)?
                {
                    return Ok(Outcome::Replay(bytes));
                }
                let system_id = storage::system_account(conn, system_name(system), currency.code()).await?;
                let mut accounts: BTreeMap<Uuid, AccountRow> =
                    posting::lock(conn, &[account_id, system_id]).await?;
                if accounts.get(&account_id).is_none_or(|a| a.kind != "customer") {
                    return Err(posting::Error::Refused(ServiceError::new(
                        ErrorCode::NotFound,
                        "no such account",
                    )));
                }
                let signed = if deposit { amount.minor_units() } else { -amount.minor_units() };
                let reference = Uuid::now_v7().to_string();
                let plan = Plan {
                    kind: if deposit { "deposit" } else { "withdrawal" },
                    description: &description,
                    initiated_by: &initiated_by,
                    reference_id: &reference,
                    reason: &reason,
                    currency: currency.code(),
                    legs: vec![
                        Leg { account_id, amount: signed },
                        Leg { account_id: system_id, amount: -signed },
                    ],
                    reverses: None,
                    correction: false,
                };
                let posted = posting::post(conn, &mut accounts, &plan).await?;
                let account = posted.accounts.get(&account_id).cloned().ok_or(sqlx::Error::RowNotFound)?;
                let owner = account.owner_user_id.map(|u| u.to_string()).unwrap_or_default();
                let available = Some(money(currency.code(), account.posted - account.held));
                let subject = format!("accounts/{account_id}");
                let amount_money = Some(money(currency.code(), amount.minor_units()));
                if deposit {
                    posting::publish(
                        conn,
                        &posted,
                        &subject,
                        &events::DepositPosted {
                            transaction_id: posted.transaction_id.to_string(),
                            account_id: account_id.to_string(),
                            owner_user_id: owner,
                            amount: amount_money,
                            description: description.clone(),
                            available_after: available,
                        },
                    )
                    .await?;
                } else {
                    posting::publish(
                        conn,
                        &posted,
                        &subject,
                        &events::WithdrawalPosted {
                            transaction_id: posted.transaction_id.to_string(),
                            account_id: account_id.to_string(),
                            owner_user_id: owner,
                            amount: amount_money,
                            description: description.clone(),
                            available_after: available,
                        },
                    )
                    .await?;
                }
                let transaction = transaction(&posted, &plan);
                let encoded = if deposit {
                    CreateDepositResponse { transaction: Some(transaction.clone()) }.encode_to_vec()
                } else {
                    CreateWithdrawalResponse { transaction: Some(transaction.clone()) }.encode_to_vec()
                };
                idempotency::complete(conn, &key, &encoded).await?;
                Ok(Outcome::Fresh(transaction))
            })
        })
        .await
    }

    async fn cash_request(
        &self,
        principal: &Principal,
        form: CashForm<'_>,
    ) -> Result<Outcome<Transaction>, Status> {
        may_move_cash(principal)?;
        let key = idempotency::key_of(form.metadata, &principal_id(principal), form.rpc, true)?
            .ok_or_else(|| Status::internal("key required"))?;
        let account_id = uuid_field("account_id", form.account_id)?;
        let (currency, amount) = money_field("amount", form.amount)?;
        let description = description_field(form.description)?;
        let system = SystemAccountType::try_from(form.system)
            .map_err(|_| invalid("source", "INVALID", "unknown system account"))?;
        let cash = Cash {
            key,
            request_hash: idempotency::request_hash(form.encoded),
            account_id,
            currency,
            amount,
            description,
            reason: form.reason.chars().take(500).collect(),
            system,
            deposit: form.deposit,
        };
        self.cash(principal, cash).await
    }
}

/// A deposit or withdrawal, checked.
struct Cash {
    key: idempotency::Key,
    request_hash: Vec<u8>,
    account_id: Uuid,
    currency: Currency,
    amount: Amount,
    description: String,
    reason: String,
    system: SystemAccountType,
    deposit: bool,
}

/// A deposit or withdrawal as requested.
struct CashForm<'a> {
    metadata: &'a tonic::metadata::MetadataMap,
    rpc: &'static str,
    encoded: &'a [u8],
    account_id: &'a str,
    amount: Option<&'a Money>,
    description: &'a str,
    reason: &'a str,
    system: i32,
    deposit: bool,
}

#[tonic::async_trait]
impl LedgerAdminService for Api {
    async fn create_deposit(&self, request: Request<CreateDepositRequest>) -> Answer<CreateDepositResponse> {
        let principal = principal(&request)?.clone();
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let outcome = self
            .cash_request(
                &principal,
                CashForm {
                    metadata: &metadata,
                    rpc: "/bank.ledger.v1.LedgerAdminService/CreateDeposit",
                    encoded: &req.encode_to_vec(),
                    account_id: &req.account_id,
                    amount: req.amount.as_ref(),
                    description: &req.description,
                    reason: &req.reason,
                    system: req.source,
                    deposit: true,
                },
            )
            .await?;
        match outcome {
            Outcome::Fresh(transaction) => {
                Ok(Response::new(CreateDepositResponse { transaction: Some(transaction) }))
            }
            Outcome::Replay(bytes) => replayed(&bytes),
        }
    }

    async fn create_withdrawal(
        &self,
        request: Request<CreateWithdrawalRequest>,
    ) -> Answer<CreateWithdrawalResponse> {
        let principal = principal(&request)?.clone();
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let outcome = self
            .cash_request(
                &principal,
                CashForm {
                    metadata: &metadata,
                    rpc: "/bank.ledger.v1.LedgerAdminService/CreateWithdrawal",
                    encoded: &req.encode_to_vec(),
                    account_id: &req.account_id,
                    amount: req.amount.as_ref(),
                    description: &req.description,
                    reason: &req.reason,
                    system: req.destination,
                    deposit: false,
                },
            )
            .await?;
        match outcome {
            Outcome::Fresh(transaction) => {
                Ok(Response::new(CreateWithdrawalResponse { transaction: Some(transaction) }))
            }
            Outcome::Replay(bytes) => replayed(&bytes),
        }
    }

    async fn reverse_transaction(
        &self,
        request: Request<ReverseTransactionRequest>,
    ) -> Answer<ReverseTransactionResponse> {
        const RPC: &str = "/bank.ledger.v1.LedgerAdminService/ReverseTransaction";
        let admin = bank_auth::require_staff(&request, &["admin"])?;
        let admin_id = principal_id(&admin);
        let key = idempotency::key_of(request.metadata(), &admin_id, RPC, true)?
            .ok_or_else(|| Status::internal("key required"))?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let transaction_id = uuid_field("transaction_id", &req.transaction_id)?;
        let reason = req.reason.trim().to_owned();
        if reason.is_empty() {
            return Err(invalid("reason", "REQUIRED", "a reason is required"));
        }
        if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(invalid("reason", "INVALID", "at most 500 characters, no control characters"));
        }
        let outcome = in_transaction(&self.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let reason = reason.clone();
            let admin_id = admin_id.clone();
            Box::pin(async move {
                if let Begin::Replay(bytes) =
                    idempotency::begin(conn, &key, &request_hash).await.map_err(idempotency_error)?
                {
                    return Ok(Outcome::Replay(bytes));
                }
                reverse(conn, transaction_id, &reason, &admin_id, &key).await.map(Outcome::Fresh)
            })
        })
        .await?;
        match outcome {
            Outcome::Fresh(reversal) => {
                metrics::counter!("ledger_reversals_total").increment(1);
                Ok(Response::new(ReverseTransactionResponse { reversal: Some(reversal) }))
            }
            Outcome::Replay(bytes) => replayed(&bytes),
        }
    }

    async fn get_transaction(
        &self,
        request: Request<GetTransactionRequest>,
    ) -> Answer<GetTransactionResponse> {
        staff_only(&request, &["admin", "support"])?;
        let transaction_id = uuid_field("transaction_id", &request.get_ref().transaction_id)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let header = storage::transaction(&mut conn, transaction_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such transaction")))?;
        let postings = storage::postings(&mut conn, transaction_id).await.map_err(internal)?;
        Ok(Response::new(GetTransactionResponse {
            transaction: Some(stored_transaction(&header, &postings)),
        }))
    }

    async fn get_ledger_account(
        &self,
        request: Request<GetLedgerAccountRequest>,
    ) -> Answer<GetLedgerAccountResponse> {
        staff_only(&request, &["admin", "support", "teller"])?;
        let account_id = uuid_field("account_id", &request.get_ref().account_id)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let account =
            storage::account(&mut conn, account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        Ok(Response::new(GetLedgerAccountResponse { account: Some(ledger_account(&account)) }))
    }

    async fn list_system_accounts(
        &self,
        request: Request<ListSystemAccountsRequest>,
    ) -> Answer<ListSystemAccountsResponse> {
        const KIND: &str = "system-accounts";
        staff_only(&request, &["admin", "support"])?;
        let req = request.into_inner();
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, KIND, 50, 200)?;
        let currency = if req.currency.is_empty() {
            None
        } else {
            Some(Currency::parse(&req.currency).map_err(|e| invalid("currency", e.code(), &e.to_string()))?)
        };
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let rows =
            storage::system_accounts(&mut conn, currency.map(Currency::code), page.position, page.size)
                .await
                .map_err(internal)?;
        let fetched = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let next = page.next_token(KIND, rows.len(), page.position.saturating_add(fetched));
        Ok(Response::new(ListSystemAccountsResponse {
            accounts: rows.iter().map(ledger_account).collect(),
            page_info: Some(PageInfo { next_page_token: next, total_size: None }),
        }))
    }

    async fn admin_list_entries(
        &self,
        request: Request<AdminListEntriesRequest>,
    ) -> Answer<AdminListEntriesResponse> {
        staff_only(&request, &["admin", "support"])?;
        let req = request.into_inner();
        let query = EntryQuery::parse(
            &req.account_id,
            req.page.as_ref(),
            (req.from_time, req.to_time),
            req.direction,
            (req.min_amount_minor_units, req.max_amount_minor_units),
            req.sort,
        )?;
        let (entries, page_info) = self.entries_page(&query, |_| true).await?;
        Ok(Response::new(AdminListEntriesResponse { entries, page_info: Some(page_info) }))
    }

    async fn verify_account_chain(
        &self,
        request: Request<VerifyAccountChainRequest>,
    ) -> Answer<VerifyAccountChainResponse> {
        bank_auth::require_staff(&request, &["admin"])?;
        let account_id = uuid_field("account_id", &request.get_ref().account_id)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let account =
            storage::account(&mut conn, account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        let verification = verify_chain(&mut conn, &account).await.map_err(internal)?;
        Ok(Response::new(VerifyAccountChainResponse { verification: Some(verification) }))
    }

    async fn verify_ledger_invariants(
        &self,
        request: Request<VerifyLedgerInvariantsRequest>,
    ) -> Answer<VerifyLedgerInvariantsResponse> {
        bank_auth::require_staff(&request, &["admin"])?;
        let report = verify_invariants(&self.pool).await.map_err(internal)?;
        metrics::counter!("ledger_invariant_checks_total", "result" => if report.healthy { "healthy" } else { "breach" })
            .increment(1);
        Ok(Response::new(report))
    }
}

/// Walks one account's chain entry by entry (oldest first) and remembers the first problem.
#[derive(Debug)]
struct ChainWalk {
    previous: String,
    balance: i64,
    checked: i64,
    problem: Option<(i64, String)>,
}

impl ChainWalk {
    fn new() -> Self {
        Self {
            previous: "0000000000000000000000000000000000000000000000000000000000000000".to_owned(),
            balance: 0,
            checked: 0,
            problem: None,
        }
    }

    fn push(&mut self, row: &EntryRow) {
        self.checked += 1;
        if self.problem.is_some() {
            return;
        }
        self.balance = self.balance.saturating_add(row.amount);
        let recomputed = posting::entry_hash(
            &row.previous_hash,
            &posting::EntryFacts {
                entry_id: row.entry_id,
                transaction_id: row.transaction_id,
                account_id: row.account_id,
                seq: row.account_seq,
                amount: row.amount,
                currency: &row.currency,
                balance_after: row.balance_after,
                posted_at_micros: row.posted_at.unix_timestamp_nanos() / 1000,
            },
        );
        let broken = if row.account_seq != self.checked {
            Some("gap in the chain")
        } else if row.previous_hash != self.previous {
            Some("broken link")
        } else if recomputed != row.entry_hash {
            Some("hash mismatch")
        } else if row.balance_after != self.balance {
            Some("balance_after does not match the running sum")
        } else {
            None
        };
        match broken {
            Some(what) => self.problem = Some((row.sequence, what.to_owned())),
            None => self.previous.clone_from(&row.entry_hash),
        }
    }

    /// The outcome, comparing the walked chain with the account's recorded head.
    fn finish(mut self, entry_count: i64, last_hash: &str) -> (i64, Option<(i64, String)>) {
        if self.problem.is_none() && (last_hash != self.previous || entry_count != self.checked) {
            self.problem = Some((0, "the account's chain head does not match its entries".to_owned()));
        }
        (self.checked, self.problem)
    }
}

/// Recomputes an account's chain and compares its head with the account row.
async fn verify_chain(
    conn: &mut sqlx::PgConnection,
    account: &AccountRow,
) -> Result<ChainVerification, sqlx::Error> {
    let mut walk = ChainWalk::new();
    for row in storage::chain(conn, account.account_id).await? {
        walk.push(&row);
    }
    let (checked, problem) = walk.finish(account.entry_count, &account.last_hash);
    Ok(ChainVerification {
        account_id: account.account_id.to_string(),
        intact: problem.is_none(),
        entries_checked: checked,
        first_broken_sequence: problem.as_ref().map_or(0, |(s, _)| *s),
        problem: problem.map(|(_, p)| p).unwrap_or_default(),
        checked_at: Some(timestamp(OffsetDateTime::now_utc())),
    })
}

/// Every ledger invariant, with each breach reported.
///
/// # Errors
/// The database failed.
pub async fn verify_invariants(pool: &PgPool) -> Result<VerifyLedgerInvariantsResponse, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut violations = Vec::new();
    for (transaction, currency, sum) in storage::unbalanced_transactions(&mut conn).await? {
        violations.push(InvariantViolation {
            invariant: "transaction_balanced".into(),
            transaction_id: transaction.to_string(),
            currency,
            detail: format!("postings sum to {sum}"),
            ..InvariantViolation::default()
        });
    }
    for (currency, sum) in storage::unbalanced_currencies(&mut conn).await? {
        violations.push(InvariantViolation {
            invariant: "ledger_balanced".into(),
            currency,
            detail: format!("balances sum to {sum}"),
            ..InvariantViolation::default()
        });
    }
    for (account, posted, sum) in storage::drifted_balances(&mut conn).await? {
        violations.push(InvariantViolation {
            invariant: "balance_matches_entries".into(),
            account_id: account.to_string(),
            detail: format!("posted {posted}, entries sum to {sum}"),
            ..InvariantViolation::default()
        });
    }
    // Every chain in one ordered pass over the journal (no query per account).
    let heads = storage::chain_heads(&mut conn).await?;
    let mut walks: std::collections::HashMap<Uuid, ChainWalk> = std::collections::HashMap::new();
    {
        use futures::TryStreamExt as _;
        let mut rows = storage::all_entries(&mut conn);
        while let Some(row) = rows.try_next().await? {
            walks.entry(row.account_id).or_insert_with(ChainWalk::new).push(&row);
        }
    }
    for (id, entry_count, last_hash) in &heads {
        let walk = walks.remove(id).unwrap_or_else(ChainWalk::new);
        if let (_, Some((_, problem))) = walk.finish(*entry_count, last_hash) {
            violations.push(InvariantViolation {
                invariant: "hash_chain_intact".into(),
                account_id: id.to_string(),
                detail: problem,
                ..InvariantViolation::default()
            });
        }
    }
    let ids = heads;
    Ok(VerifyLedgerInvariantsResponse {
        healthy: violations.is_empty(),
        violations,
        transactions_checked: storage::transaction_count(&mut conn).await?,
        accounts_checked: i64::try_from(ids.len()).unwrap_or(i64::MAX),
        checked_at: Some(timestamp(OffsetDateTime::now_utc())),
    })
}

fn refused(code: ErrorCode, message: &str) -> posting::Error {
    posting::Error::Refused(ServiceError::new(code, message))
}

/// The debit rules of the posting engine, for a reservation: a customer account, active, in the
/// currency, with enough available balance.
fn check_debit(account: &AccountRow, currency: &str, amount: Amount) -> Result<(), posting::Error> {
    if account.kind != "customer" {
        return Err(refused(ErrorCode::NotFound, "no such account"));
    }
    if account.currency != currency {
        return Err(refused(ErrorCode::CurrencyMismatch, "the account is in another currency"));
    }
    match account.status.as_str() {
        "closed" => return Err(refused(ErrorCode::AccountClosed, "the account is closed")),
        "frozen" => return Err(refused(ErrorCode::AccountFrozen, "the account is frozen")),
        _ => {}
    }
    let allowed = bank_money::can_debit(account.posted, account.held, account.overdraft_limit, amount)
        .map_err(|_| refused(ErrorCode::ValidationFailed, "amount out of range"))?;
    if allowed { Ok(()) } else { Err(refused(ErrorCode::InsufficientFunds, "insufficient funds")) }
}

/// Voids (or expires) an active hold: the reservation is released. Voiding a voided hold succeeds.
async fn release(
    conn: &mut sqlx::PgConnection,
    hold_id: Uuid,
    created_by: Option<&str>,
    status: &'static str,
) -> Result<storage::HoldRow, posting::Error> {
    let found = storage::hold(conn, hold_id, false)
        .await?
        .filter(|h| created_by.is_none_or(|c| h.created_by == c))
        .ok_or_else(|| refused(ErrorCode::NotFound, "no such hold"))?;
    let mut accounts = posting::lock(conn, &[found.account_id]).await?;
    let hold = storage::hold(conn, hold_id, true).await?.ok_or(sqlx::Error::RowNotFound)?;
    if hold.status == status {
        return Ok(hold);
    }
    if hold.status != "active" {
        return Err(refused(ErrorCode::HoldNotActive, "the hold is not active"));
    }
    let account = accounts.get_mut(&hold.account_id).ok_or(sqlx::Error::RowNotFound)?;
    account.held = storage::add_held(conn, hold.account_id, -hold.amount).await?;
    let finished = storage::finish_hold(conn, hold_id, status, 0, None).await?;
    let owner = account.owner_user_id.map(|u| u.to_string()).unwrap_or_default();
    let amount = Some(money(&hold.currency, hold.amount));
    let available = Some(money(&hold.currency, account.posted - account.held));
    let subject = format!("holds/{hold_id}");
    if status == "expired" {
        bank_platform::outbox::publish(
            conn,
            &subject,
            &events::HoldExpired {
                hold_id: hold_id.to_string(),
                account_id: hold.account_id.to_string(),
                owner_user_id: owner,
                amount,
                reference_id: hold.reference_id.clone(),
                available_after: available,
            },
        )
        .await?;
    } else {
        bank_platform::outbox::publish(
            conn,
            &subject,
            &events::HoldVoided {
                hold_id: hold_id.to_string(),
                account_id: hold.account_id.to_string(),
                owner_user_id: owner,
                amount,
                reference_id: hold.reference_id.clone(),
                available_after: available,
            },
        )
        .await?;
    }
    Ok(finished)
}

/// Expires active holds past their `expires_at`, releasing their reservations; answers how many.
///
/// # Errors
/// The database failed.
pub async fn expire_holds(pool: &PgPool) -> Result<usize, Status> {
    let due = {
        let mut conn = pool.acquire().await.map_err(internal)?;
        storage::expired_holds(&mut conn, 100).await.map_err(internal)?
    };
    let mut expired = 0;
    for hold_id in due {
        let done = in_transaction(pool, |conn| {
            Box::pin(async move { release(conn, hold_id, None, "expired").await })
        })
        .await;
        match done {
            Ok(_) => expired += 1,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {} // captured or voided meanwhile
            Err(status) => return Err(status),
        }
    }
    Ok(expired)
}

fn hold_message(row: &storage::HoldRow) -> Hold {
    Hold {
        hold_id: row.hold_id.to_string(),
        account_id: row.account_id.to_string(),
        amount: Some(money(&row.currency, row.amount)),
        captured_amount: Some(money(&row.currency, row.captured_amount)),
        refunded_amount: Some(money(&row.currency, row.refunded_amount)),
        status: match row.status.as_str() {
            "captured" => HoldStatus::Captured,
            "voided" => HoldStatus::Voided,
            "expired" => HoldStatus::Expired,
            _ => HoldStatus::Active,
        } as i32,
        counterparty: system_type(&row.counterparty) as i32,
        reference_id: row.reference_id.clone(),
        description: row.description.clone(),
        expires_at: Some(timestamp(row.expires_at)),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        capture_transaction_id: row.capture_transaction_id.map(|t| t.to_string()).unwrap_or_default(),
    }
}

/// A timestamp field as an instant.
fn instant(field: &str, t: pbjson_types::Timestamp) -> Result<OffsetDateTime, Status> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "OUT_OF_RANGE", "invalid time"));
    }
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| invalid(field, "OUT_OF_RANGE", "invalid time"))
}

/// The calling user (service tokens are refused: these RPCs answer a person's own objects).
fn user_of<T>(request: &Request<T>) -> Result<Uuid, Status> {
    principal(request)?
        .user_id()
        .ok_or_else(|| ServiceError::new(ErrorCode::PermissionDenied, "a user token is required").into())
}

/// A user holding one of `roles`, with a recent second factor (every admin RPC's rule).
fn staff_only<T>(request: &Request<T>, roles: &[&str]) -> Result<Principal, Status> {
    bank_auth::require_staff(request, roles)
}

/// A transfer as `viewer` sees it: the credited account's id only for its owner.
fn transfer_message(row: &storage::TransferRow, viewer: Uuid) -> Transfer {
    let amount = Some(money(&row.currency, row.amount));
    Transfer {
        transfer_id: row.transfer_id.to_string(),
        from_account_id: row.from_account_id.to_string(),
        to_account_id: if row.to_owner == Some(viewer) {
            row.to_account_id.to_string()
        } else {
            String::new()
        },
        to_account_number: row.to_account_number.clone().unwrap_or_default(),
        amount: amount.clone(),
        credited_amount: amount,
        description: row.description.clone(),
        status: if row.reversed_by.is_some() { TransferStatus::Reversed } else { TransferStatus::Posted }
            as i32,
        transaction_id: row.transaction_id.to_string(),
        fx_quote_id: String::new(),
        scheduled_transfer_id: String::new(),
        created_at: Some(timestamp(row.created_at)),
    }
}

/// A stored transaction with its postings.
fn stored_transaction(
    header: &storage::TransactionRow,
    postings: &[(Uuid, Uuid, i64, String, i64)],
) -> Transaction {
    Transaction {
        transaction_id: header.transaction_id.to_string(),
        kind: transaction_kind(&header.kind) as i32,
        description: header.description.clone(),
        postings: postings
            .iter()
            .map(|(entry_id, account_id, amount, currency, after)| Posting {
                entry_id: entry_id.to_string(),
                account_id: account_id.to_string(),
                amount: Some(money(currency, *amount)),
                balance_after: Some(money(currency, *after)),
            })
            .collect(),
        posted_at: Some(timestamp(header.posted_at)),
        initiated_by: header.initiated_by.clone(),
        reference_id: header.reference_id.clone(),
        reverses_transaction_id: header.reverses_transaction_id.map(|t| t.to_string()).unwrap_or_default(),
        reversed_by_transaction_id: header
            .reversed_by_transaction_id
            .map(|t| t.to_string())
            .unwrap_or_default(),
        reason: header.reason.clone(),
    }
}

/// Posts the mirror image of `transaction_id` (at most once), with its event and the stored
/// idempotent response, in the caller's transaction.
async fn reverse(
    conn: &mut sqlx::PgConnection,
    transaction_id: Uuid,
    reason: &str,
    admin_id: &str,
    key: &idempotency::Key,
) -> Result<Transaction, posting::Error> {
    let original = storage::transaction(conn, transaction_id)
        .await?
        .ok_or_else(|| refused(ErrorCode::NotFound, "no such transaction"))?;
    if original.kind == "reversal" {
        return Err(refused(ErrorCode::NotReversible, "a reversal cannot be reversed"));
    }
    if original.kind == "hold_capture" {
        return Err(refused(ErrorCode::NotReversible, "a hold capture is refunded, not reversed"));
    }
    let legs = storage::postings(conn, transaction_id).await?;
    let currency = legs.first().map(|(_, _, _, c, _)| c.clone()).ok_or(sqlx::Error::RowNotFound)?;
    if legs.iter().any(|(_, _, _, c, _)| *c != currency) {
        return Err(refused(ErrorCode::NotReversible, "a cross-currency transaction cannot be reversed"));
    }
    let ids: Vec<Uuid> = legs.iter().map(|(_, account, _, _, _)| *account).collect();
    // Every account of the original is locked (id order) before the "already reversed?" check, so
    // two reversals of one transaction serialise here; the unique index is the backstop.
    let mut accounts = posting::lock(conn, &ids).await?;
    if storage::transaction(conn, transaction_id).await?.and_then(|t| t.reversed_by_transaction_id).is_some()
    {
        return Err(refused(ErrorCode::AlreadyReversed, "the transaction has already been reversed"));
    }
    let mirrored = legs
        .iter()
        .map(|(_, account_id, amount, _, _)| {
            amount
                .checked_neg()
                .map(|amount| Leg { account_id: *account_id, amount })
                .ok_or_else(|| refused(ErrorCode::ValidationFailed, "amount out of range"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let description = format!("Reversal: {}", original.description).chars().take(140).collect::<String>();
    let reference = transaction_id.to_string();
    let plan = Plan {
        kind: "reversal",
        description: &description,
        initiated_by: admin_id,
        reference_id: &reference,
        reason,
        currency: &currency,
        legs: mirrored,
        reverses: Some(transaction_id),
        correction: true,
    };
    let posted = match posting::post(conn, &mut accounts, &plan).await {
        Err(posting::Error::Database(err))
            if err
                .as_database_error()
                .and_then(sqlx::error::DatabaseError::code)
                .is_some_and(|c| c == "23505") =>
        {
            return Err(refused(ErrorCode::AlreadyReversed, "the transaction has already been reversed"));
        }
        other => other?,
    };
    let changes = posted
        .entries
        .iter()
        .filter_map(|(_, account_id, amount, _)| {
            let account = posted.accounts.get(account_id)?;
            (account.kind == "customer").then(|| events::AccountBalanceChange {
                account_id: account_id.to_string(),
                owner_user_id: account.owner_user_id.map(|u| u.to_string()).unwrap_or_default(),
                amount: Some(money(&currency, *amount)),
                available_after: Some(money(&currency, account.posted - account.held)),
            })
        })
        .collect();
    posting::publish(
        conn,
        &posted,
        &format!("transactions/{transaction_id}"),
        &events::TransactionReversed {
            transaction_id: transaction_id.to_string(),
            reversal_transaction_id: posted.transaction_id.to_string(),
            kind: transaction_kind(&original.kind) as i32,
            changes,
            reversed_by: admin_id.to_owned(),
        },
    )
    .await?;
    let mut reversal = transaction(&posted, &plan);
    reversal.reverses_transaction_id = transaction_id.to_string();
    idempotency::complete(
        conn,
        key,
        &ReverseTransactionResponse { reversal: Some(reversal.clone()) }.encode_to_vec(),
    )
    .await?;
    Ok(reversal)
}

/// A parsed history query (ListEntries and AdminListEntries share it).
#[derive(Debug, Clone)]
struct EntryQuery {
    account_id: Uuid,
    page: Page,
    order: storage::EntryOrder,
    kind: &'static str,
    filter: storage::EntryFilter,
}

impl EntryQuery {
    fn parse(
        account_id: &str,
        page: Option<&bank_proto::common::v1::PageRequest>,
        (from_time, to_time): (Option<pbjson_types::Timestamp>, Option<pbjson_types::Timestamp>),
        direction: i32,
        (min, max): (i64, i64),
        sort: i32,
    ) -> Result<Self, Status> {
        let account_id = uuid_field("account_id", account_id)?;
        // The allowlist: each sort maps to constant SQL and a page-token kind of its own (a
        // token of one order is refused by another).
        let (order, kind) = match EntrySort::try_from(sort) {
            Ok(EntrySort::Unspecified | EntrySort::PostedAtDesc) => {
                (storage::EntryOrder::PostedAtDesc, "entries-time-desc")
            }
            Ok(EntrySort::PostedAtAsc) => (storage::EntryOrder::PostedAtAsc, "entries-time-asc"),
            Ok(EntrySort::AmountDesc) => (storage::EntryOrder::AmountDesc, "entries-amount-desc"),
            Ok(EntrySort::AmountAsc) => (storage::EntryOrder::AmountAsc, "entries-amount-asc"),
            Err(_) => return Err(invalid("sort", "INVALID", "unknown sort order")),
        };
        let page_request = page.cloned().unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, kind, 50, 200)?;
        let mut violations = Vec::new();
        if min < 0 {
            violations.push(FieldViolation::new(
                "min_amount_minor_units",
                "NEGATIVE",
                "must not be negative",
            ));
        }
        if max < 0 {
            violations.push(FieldViolation::new(
                "max_amount_minor_units",
                "NEGATIVE",
                "must not be negative",
            ));
        }
        if min > 0 && max > 0 && min > max {
            violations.push(FieldViolation::new(
                "max_amount_minor_units",
                "BELOW_MIN",
                "must not be below the minimum",
            ));
        }
        let credits = match EntryDirection::try_from(direction) {
            Ok(EntryDirection::Credit) => Some(true),
            Ok(EntryDirection::Debit) => Some(false),
            Ok(EntryDirection::Unspecified) => None,
            Err(_) => {
                violations.push(FieldViolation::new("direction", "INVALID", "unknown direction"));
                None
            }
        };
        let from = from_time.map(|t| instant("from_time", t)).transpose();
        let to = to_time.map(|t| instant("to_time", t)).transpose();
        let (Ok(from), Ok(to)) = (from, to) else {
            violations.push(FieldViolation::new("from_time", "OUT_OF_RANGE", "invalid time range"));
            return Err(ServiceError::invalid(violations).into());
        };
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            violations.push(FieldViolation::new("to_time", "BEFORE_FROM", "must be after from_time"));
        }
        if !violations.is_empty() {
            return Err(ServiceError::invalid(violations).into());
        }
        Ok(Self {
            account_id,
            page,
            order,
            kind,
            filter: storage::EntryFilter {
                from,
                to,
                credits,
                min_abs: (min > 0).then_some(min),
                max_abs: (max > 0).then_some(max),
            },
        })
    }
}

impl Api {
    /// One page of an account's history, if `may_see` the account (else NOT_FOUND).
    async fn entries_page(
        &self,
        query: &EntryQuery,
        may_see: impl Fn(&AccountRow) -> bool,
    ) -> Result<(Vec<Entry>, PageInfo), Status> {
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let account =
            storage::account(&mut conn, query.account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        if !may_see(&account) {
            return Err(not_found());
        }
        let after = if query.page.position == 0 {
            None
        } else {
            let (posted_at, abs) = storage::entry_cursor(&mut conn, query.account_id, query.page.position)
                .await
                .map_err(internal)?
                .ok_or_else(|| invalid("page.page_token", "INVALID", "page_token is not valid here"))?;
            Some((query.page.position, posted_at, abs))
        };
        let rows =
            storage::entries(&mut conn, query.account_id, query.order, after, query.page.size, &query.filter)
                .await
                .map_err(internal)?;
        let next = query.page.next_token(query.kind, rows.len(), rows.last().map_or(0, |r| r.sequence));
        Ok((rows.iter().map(entry).collect(), PageInfo { next_page_token: next, total_size: None }))
    }
}
