//! The tonic implementations of notifications' contracts.

use std::{pin::Pin, sync::Arc, time::Duration};

use bank_auth::{ACR_MFA, Principal, Subject, principal, require_staff, require_step_up};
use bank_money::card_number;
use bank_platform::{
    ErrorCode, FieldViolation, ServiceError,
    grpc::fields::{self, internal, invalid},
    idempotency::{self, Begin},
    pagination::Page,
};
use bank_proto::{
    common::v1::{Money, PageInfo},
    convert::{self, timestamp},
    events::v1 as events,
    notifications::v1::{
        notifications_admin_service_server::NotificationsAdminService,
        notifications_service_server::NotificationsService, *,
    },
};
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    catalog::{self, EVENT_TYPES},
    consumer, inbox,
    ledger::Ledger,
    mailer::mask,
    webhooks::{self, Dispatcher, Policy},
};

type Answer<T> = Result<Response<T>, Status>;

/// Roles that may use the admin RPCs.
const STAFF: &[&str] = &["admin", "support"];
/// Scope of partner service clients that own webhook endpoints.
const WEBHOOK_SCOPE: &str = "notifications:webhooks";
/// Test sends per endpoint and minute.
const TEST_SENDS_PER_MINUTE: i64 = 5;
/// How far back ReplayWebhookEvents may reach (the archive and outbox replay window).
const REPLAY_WINDOW: time::Duration = time::Duration::days(7);

/// The notifications API.
#[derive(Clone)]
pub struct Api {
    pub(crate) pool: PgPool,
    pub(crate) policy: Arc<Policy>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) ledger: Ledger,
    pub(crate) redis: redis::aio::ConnectionManager,
    pub(crate) max_endpoints: i64,
    pub(crate) wake: inbox::Wake,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

fn not_found(what: &str) -> Status {
    ServiceError::new(ErrorCode::NotFound, format!("no such {what}")).into()
}

fn refused(code: ErrorCode, message: &str) -> Status {
    ServiceError::new(code, message).into()
}

fn ts(at: Option<OffsetDateTime>) -> Option<pbjson_types::Timestamp> {
    at.map(timestamp)
}

/// The token of the offset page after `page`, which fetched `fetched` rows.
fn next_offset(page: &Page, fetched: usize) -> String {
    page.next_token("offset", fetched, page.position + i64::try_from(fetched).unwrap_or(0))
}

fn page_info(next_page_token: String) -> Option<PageInfo> {
    Some(PageInfo { next_page_token, total_size: None })
}

/// Who owns webhook endpoints: a user, or a partner service client with the webhook scope.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    User(Uuid),
    Client(String),
}

impl Owner {
    fn of(principal: &Principal) -> Result<Self, Status> {
        match &principal.subject {
            Subject::User(user) => Ok(Self::User(*user)),
            Subject::Service(client) if principal.has(WEBHOOK_SCOPE) => Ok(Self::Client(client.clone())),
            Subject::Service(_) => {
                Err(refused(ErrorCode::PermissionDenied, "needs scope notifications:webhooks"))
            }
        }
    }

    fn key(&self) -> String {
        match self {
            Self::User(u) => u.to_string(),
            Self::Client(c) => format!("client:{c}"),
        }
    }

    fn user(&self) -> Option<Uuid> {
        match self {
            Self::User(u) => Some(*u),
            Self::Client(_) => None,
        }
    }

    fn client(&self) -> Option<&str> {
        match self {
            Self::User(_) => None,
            Self::Client(c) => Some(c),
        }
    }
}

/// Users with MFA must have stepped up recently for sensitive webhook changes (as identity does for
/// password changes): their sessions carry acr=mfa. Services pass.
fn step_up_if_mfa(principal: &Principal) -> Result<(), Status> {
    if principal.acr == ACR_MFA { require_step_up(principal) } else { Ok(()) }
}

fn user_only<T>(request: &Request<T>) -> Result<Uuid, Status> {
    principal(request)?
        .user_id()
        .ok_or_else(|| refused(ErrorCode::PermissionDenied, "a user token is required"))
}

/// The idempotency key of a call, scoped by principal and RPC (never required here).
fn key_of<T>(
    request: &Request<T>,
    owner: &str,
    rpc: &'static str,
) -> Result<Option<idempotency::Key>, Status> {
    idempotency::key_of(request.metadata(), owner, rpc, false).map_err(Status::from)
}

/// Claims `key` (when given) in `conn`'s transaction; `Some(response)` is a replay to answer.
async fn claim<R: prost::Message + Default>(
    conn: &mut PgConnection,
    key: Option<&idempotency::Key>,
    request: &impl prost::Message,
) -> Result<Option<Response<R>>, Status> {
    let Some(key) = key else { return Ok(None) };
    match idempotency::begin(conn, key, &idempotency::request_hash(&request.encode_to_vec())).await {
        Ok(Begin::New) => Ok(None),
        Ok(Begin::Replay(bytes)) => {
            let message = R::decode(bytes.as_slice()).map_err(internal)?;
            let mut response = Response::new(message);
            response
                .metadata_mut()
                .insert(idempotency::REPLAYED, tonic::metadata::MetadataValue::from_static("true"));
            Ok(Some(response))
        }
        Err(e) => Err(e.client_error().map_or_else(|| Status::internal("idempotency"), Status::from)),
    }
}

async fn store(
    conn: &mut PgConnection,
    key: Option<&idempotency::Key>,
    response: &impl prost::Message,
) -> Result<(), Status> {
    if let Some(key) = key {
        idempotency::complete(conn, key, &response.encode_to_vec()).await.map_err(internal)?;
    }
    Ok(())
}

fn channel_list(email: bool, webhook: bool) -> Vec<i32> {
    let mut out = Vec::new();
    if email {
        out.push(NotificationChannel::Email as i32);
    }
    if webhook {
        out.push(NotificationChannel::Webhook as i32);
    }
    out
}

fn mandatory(kind: &catalog::EventType) -> Vec<i32> {
    let forced = kind.email.is_some_and(|t| kind.security || t.transactional());
    channel_list(forced, false)
}

async fn preferences(conn: &mut PgConnection, user: Uuid) -> Result<Vec<EventPreference>, Status> {
    let mut out = Vec::with_capacity(EVENT_TYPES.len());
    for kind in EVENT_TYPES {
        let (email, webhook) = inbox::channels(conn, user, kind).await.map_err(internal)?;
        let forced = kind.email.is_some_and(|t| kind.security || t.transactional());
        out.push(EventPreference {
            event_type: kind.name.to_owned(),
            channels: channel_list((email || forced) && kind.email.is_some(), webhook),
            mandatory_channels: mandatory(kind),
        });
    }
    Ok(out)
}

/// Webhook-eligible event types, each once; empty = all.
fn event_types_field(field: &str, types: &[String]) -> Result<Vec<String>, Status> {
    let mut out: Vec<String> = Vec::new();
    for (i, name) in types.iter().enumerate() {
        match catalog::event_type(name) {
            Some(kind) if kind.webhook => {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Some(_) => {
                return Err(invalid(
                    &format!("{field}[{i}]"),
                    "NOT_WEBHOOK_ELIGIBLE",
                    "this event type is not delivered to webhooks",
                ));
            }
            None => {
                return Err(invalid(
                    &format!("{field}[{i}]"),
                    "UNKNOWN_EVENT_TYPE",
                    "unknown event type (see ListEventTypes)",
                ));
            }
        }
    }
    Ok(out)
}

fn description_field(value: &str) -> Result<String, Status> {
    let value = value.trim();
    if value.chars().count() > 200 {
        return Err(invalid("description", "TOO_LONG", "at most 200 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("description", "INVALID_CHARACTERS", "must not contain control characters"));
    }
    // A card number typed into a description is kept to its last four (PCI DSS 3.5.1).
    Ok(card_number::mask_card_numbers(value).into_owned())
}

#[derive(Debug, sqlx::FromRow)]
struct EndpointRow {
    endpoint_id: Uuid,
    url: String,
    description: String,
    event_types: Vec<String>,
    status: String,
    disabled_reason: String,
    consecutive_failures: i32,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    secret_rotated_at: Option<OffsetDateTime>,
    previous_secret_expires_at: Option<OffsetDateTime>,
}

const ENDPOINT_COLUMNS: &str = "endpoint_id, url, description, event_types, status, disabled_reason, consecutive_failures, \
     created_at, updated_at, secret_rotated_at, previous_secret_expires_at";

fn endpoint_message(row: &EndpointRow) -> WebhookEndpoint {
    let status = match row.status.as_str() {
        "active" => WebhookEndpointStatus::Active,
        "disabled" => WebhookEndpointStatus::Disabled,
        _ => WebhookEndpointStatus::Failing,
    };
    WebhookEndpoint {
        endpoint_id: row.endpoint_id.to_string(),
        url: row.url.clone(),
        description: row.description.clone(),
        event_types: row.event_types.clone(),
        status: status as i32,
        disabled_reason: row.disabled_reason.clone(),
        consecutive_failures: row.consecutive_failures,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        secret_rotated_at: ts(row.secret_rotated_at),
        previous_secret_expires_at: ts(row
            .previous_secret_expires_at
            .filter(|t| *t > OffsetDateTime::now_utc())),
    }
}

/// `WHERE` clause fragment owning an endpoint: `$1` user id, `$2` client id.
const OWNED: &str = "(owner_user_id = $1 OR owner_client_id = $2)";

async fn endpoint(
    conn: &mut PgConnection,
    owner: &Owner,
    id: Uuid,
    lock: bool,
) -> Result<EndpointRow, Status> {
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE {OWNED} AND endpoint_id = $3{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as::<_, EndpointRow>(sqlx::AssertSqlSafe(sql))
        .bind(owner.user())
        .bind(owner.client())
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found("webhook endpoint"))
}

#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    delivery_id: Uuid,
    endpoint_id: Uuid,
    event_id: Uuid,
    event_type: String,
    status: String,
    attempt_count: i32,
    next_attempt_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    completed_at: Option<OffsetDateTime>,
    redelivery_of: Option<Uuid>,
    test: bool,
}

const DELIVERY_COLUMNS: &str = "delivery_id, endpoint_id, event_id, event_type, status, attempt_count, next_attempt_at, \
     created_at, completed_at, redelivery_of, test";

fn delivery_status(status: &str) -> DeliveryStatus {
    match status {
        "pending" => DeliveryStatus::Pending,
        "succeeded" => DeliveryStatus::Succeeded,
        "retrying" => DeliveryStatus::Retrying,
        _ => DeliveryStatus::Failed,
    }
}

fn delivery_message(row: &DeliveryRow, attempts: Vec<DeliveryAttempt>) -> WebhookDelivery {
    let status = delivery_status(&row.status);
    WebhookDelivery {
        delivery_id: row.delivery_id.to_string(),
        endpoint_id: row.endpoint_id.to_string(),
        event_id: row.event_id.to_string(),
        event_type: row.event_type.clone(),
        status: status as i32,
        attempt_count: row.attempt_count,
        next_attempt_at: if matches!(status, DeliveryStatus::Pending | DeliveryStatus::Retrying) {
            ts(row.next_attempt_at)
        } else {
            None
        },
        created_at: Some(timestamp(row.created_at)),
        completed_at: ts(row.completed_at),
        redelivery_of: row.redelivery_of.map(|d| d.to_string()).unwrap_or_default(),
        test: row.test,
        attempts,
    }
}

async fn delivery_with_attempts(
    conn: &mut PgConnection,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<WebhookDelivery, Status> {
    let row: DeliveryRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 AND delivery_id = $2"
    )))
    .bind(endpoint)
    .bind(delivery)
    .fetch_optional(&mut *conn)
    .await
    .map_err(internal)?
    .ok_or_else(|| not_found("delivery"))?;
    let attempts: Vec<(i32, OffsetDateTime, i32, i32, String, String)> = sqlx::query_as(
        "SELECT attempt_number, started_at, duration_ms, http_status, error, response_excerpt FROM webhook_attempts \
         WHERE delivery_id = $1 ORDER BY attempt_number",
    )
    .bind(delivery)
    .fetch_all(&mut *conn)
    .await
    .map_err(internal)?;
    let attempts = attempts
        .into_iter()
        .map(|(n, at, ms, status, error, excerpt)| DeliveryAttempt {
            attempt_number: n,
            started_at: Some(timestamp(at)),
            duration_ms: ms,
            http_status: status,
            error,
            response_excerpt: excerpt,
        })
        .collect();
    Ok(delivery_message(&row, attempts))
}

#[derive(Debug, sqlx::FromRow)]
struct SecurityRow {
    seq: i64,
    event_id: Uuid,
    event_type: String,
    occurred_at: OffsetDateTime,
    user_id: Option<Uuid>,
    summary: String,
    ip_address: String,
    user_agent: String,
    card_last_four: String,
    decline_reason: i32,
    currency: Option<String>,
    minor_units: Option<i64>,
}

const SECURITY_COLUMNS: &str = "seq, event_id, event_type, occurred_at, user_id, summary, ip_address, user_agent, \
     card_last_four, decline_reason, currency, minor_units";

fn security_message(row: &SecurityRow) -> SecurityEvent {
    SecurityEvent {
        event_id: row.event_id.to_string(),
        event_type: row.event_type.clone(),
        occurred_at: Some(timestamp(row.occurred_at)),
        user_id: row.user_id.map(|u| u.to_string()).unwrap_or_default(),
        summary: row.summary.clone(),
        ip_address: row.ip_address.clone(),
        user_agent: row.user_agent.clone(),
        card_last_four: row.card_last_four.clone(),
        decline_reason: row.decline_reason,
        amount: match (&row.currency, row.minor_units) {
            (Some(currency), Some(minor_units)) => Some(Money { currency: currency.clone(), minor_units }),
            _ => None,
        },
    }
}

#[derive(Debug, sqlx::FromRow)]
struct AlertRow {
    account_id: Uuid,
    currency: String,
    threshold: i64,
    enabled: bool,
    armed: bool,
    last_triggered_at: Option<OffsetDateTime>,
    updated_at: OffsetDateTime,
}

fn alert_message(row: &AlertRow) -> LowBalanceAlert {
    LowBalanceAlert {
        account_id: row.account_id.to_string(),
        threshold: Some(Money { currency: row.currency.clone(), minor_units: row.threshold }),
        enabled: row.enabled,
        armed: row.enabled && row.armed,
        last_triggered_at: ts(row.last_triggered_at),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

#[derive(Debug, sqlx::FromRow)]
struct DeadLetterRow {
    dead_letter_id: Uuid,
    stream: String,
    consumer_group: String,
    event_id: String,
    event_type: String,
    delivery_id: Option<Uuid>,
    attempts: i32,
    last_error: String,
    first_failed_at: OffsetDateTime,
    dead_lettered_at: OffsetDateTime,
    status: String,
}

const DEAD_LETTER_COLUMNS: &str = "dead_letter_id, stream, consumer_group, event_id, event_type, delivery_id, attempts, \
     last_error, first_failed_at, dead_lettered_at, status";

fn dead_letter_message(row: &DeadLetterRow) -> DeadLetter {
    DeadLetter {
        dead_letter_id: row.dead_letter_id.to_string(),
        stream: row.stream.clone(),
        consumer_group: row.consumer_group.clone(),
        event_id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        delivery_id: row.delivery_id.map(|d| d.to_string()).unwrap_or_default(),
        attempts: row.attempts,
        last_error: row.last_error.clone(),
        first_failed_at: Some(timestamp(row.first_failed_at)),
        dead_lettered_at: Some(timestamp(row.dead_lettered_at)),
        status: if row.status == "pending" { DeadLetterStatus::Pending } else { DeadLetterStatus::Retried }
            as i32,
    }
}

impl Api {
    /// Inserts a delivery of `body` to `endpoint` (pending now) and answers its id.
    async fn queue_delivery(
        conn: &mut PgConnection,
        endpoint: Uuid,
        event_id: Uuid,
        event_type: &str,
        body: &str,
        redelivery_of: Option<Uuid>,
        test: bool,
    ) -> Result<Uuid, Status> {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, event_id, event_type, body, next_attempt_at, \
               redelivery_of, test) VALUES ($1, $2, $3, $4, $5, now(), $6, $7)",
        )
        .bind(id)
        .bind(endpoint)
        .bind(event_id)
        .bind(event_type)
        .bind(body)
        .bind(redelivery_of)
        .bind(test)
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
        Ok(id)
    }
}

#[tonic::async_trait]
impl NotificationsService for Api {
    async fn list_event_types(
        &self,
        request: Request<ListEventTypesRequest>,
    ) -> Answer<ListEventTypesResponse> {
        Owner::of(principal(&request)?)?;
        let req = request.into_inner();
        let page = req.page.unwrap_or_default();
        let page = Page::parse(page.page_size, &page.page_token, "offset", 100, 200)?;
        let start = usize::try_from(page.position).unwrap_or(usize::MAX).min(EVENT_TYPES.len());
        let size = usize::try_from(page.size).unwrap_or(100);
        let slice: Vec<EventTypeInfo> = EVENT_TYPES[start..]
            .iter()
            .take(size)
            .map(|t| EventTypeInfo {
                event_type: t.name.to_owned(),
                description: t.description.to_owned(),
                security: t.security,
                webhook_eligible: t.webhook,
            })
            .collect();
        let next = if start + slice.len() < EVENT_TYPES.len() {
            next_offset(&page, slice.len())
        } else {
            String::new()
        };
        Ok(Response::new(ListEventTypesResponse { event_types: slice, page_info: page_info(next) }))
    }

    async fn get_notification_preferences(
        &self,
        request: Request<GetNotificationPreferencesRequest>,
    ) -> Answer<GetNotificationPreferencesResponse> {
        let user = user_only(&request)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        Ok(Response::new(GetNotificationPreferencesResponse {
            preferences: preferences(&mut conn, user).await?,
        }))
    }

    async fn update_notification_preferences(
        &self,
        request: Request<UpdateNotificationPreferencesRequest>,
    ) -> Answer<UpdateNotificationPreferencesResponse> {
        let user = user_only(&request)?;
        let key = key_of(
            &request,
            &user.to_string(),
            "/bank.notifications.v1.NotificationsService/UpdateNotificationPreferences",
        )?;
        let req = request.into_inner();
        if req.preferences.is_empty() {
            return Err(invalid("preferences", "REQUIRED", "list at least one preference"));
        }
        let mut rows = Vec::new();
        let mut violations = Vec::new();
        for (i, p) in req.preferences.iter().enumerate() {
            let Some(kind) = catalog::event_type(&p.event_type) else {
                violations.push(FieldViolation::new(
                    format!("preferences[{i}].event_type"),
                    "UNKNOWN_EVENT_TYPE",
                    "unknown event type",
                ));
                continue;
            };
            let (mut email, mut webhook) = (false, false);
            for (j, c) in p.channels.iter().enumerate() {
                let field = format!("preferences[{i}].channels[{j}]");
                match NotificationChannel::try_from(*c) {
                    Ok(NotificationChannel::Email) if kind.email.is_some() => email = true,
                    Ok(NotificationChannel::Email) => violations.push(FieldViolation::new(
                        field,
                        "NO_EMAIL",
                        "this event type sends no email",
                    )),
                    Ok(NotificationChannel::Webhook) if kind.webhook => webhook = true,
                    Ok(NotificationChannel::Webhook) => violations.push(FieldViolation::new(
                        field,
                        "NOT_WEBHOOK_ELIGIBLE",
                        "this event type is not delivered to webhooks",
                    )),
                    _ => violations.push(FieldViolation::new(field, "INVALID", "unknown channel")),
                }
            }
            rows.push((kind.name, email, webhook));
        }
        if !violations.is_empty() {
            return Err(ServiceError::invalid(violations).into());
        }
        let mut tx = self.pool.begin().await.map_err(internal)?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        for (event_type, email, webhook) in rows {
            sqlx::query(
                "INSERT INTO preferences (user_id, event_type, email, webhook) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, event_type) DO UPDATE SET email = EXCLUDED.email, webhook = EXCLUDED.webhook, updated_at = now()",
            )
            .bind(user)
            .bind(event_type)
            .bind(email)
            .bind(webhook)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        }
        let response =
            UpdateNotificationPreferencesResponse { preferences: preferences(&mut tx, user).await? };
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(response))
    }

    async fn list_low_balance_alerts(
        &self,
        request: Request<ListLowBalanceAlertsRequest>,
    ) -> Answer<ListLowBalanceAlertsResponse> {
        let user = user_only(&request)?;
        let page = request.into_inner().page.unwrap_or_default();
        let page = Page::parse(page.page_size, &page.page_token, "offset", 50, 200)?;
        let rows: Vec<AlertRow> = sqlx::query_as(
            "SELECT account_id, currency, threshold, enabled, armed, last_triggered_at, updated_at FROM low_balance_alerts \
             WHERE user_id = $1 ORDER BY account_id OFFSET $2 LIMIT $3",
        )
        .bind(user)
        .bind(page.position)
        .bind(page.size)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let next = next_offset(&page, rows.len());
        Ok(Response::new(ListLowBalanceAlertsResponse {
            alerts: rows.iter().map(alert_message).collect(),
            page_info: page_info(next),
        }))
    }

    async fn set_low_balance_alert(
        &self,
        request: Request<SetLowBalanceAlertRequest>,
    ) -> Answer<SetLowBalanceAlertResponse> {
        let user = user_only(&request)?;
        let key = key_of(
            &request,
            &user.to_string(),
            "/bank.notifications.v1.NotificationsService/SetLowBalanceAlert",
        )?;
        let req = request.into_inner();
        let account = fields::uuid("account_id", &req.account_id)?;
        // Only the fields named in the mask (or, without one, the fields sent) change (AIP-134).
        let mask = fields::UpdateMask::new(
            req.update_mask.as_ref().map_or(&[][..], |m| m.paths.as_slice()),
            &["threshold", "enabled"],
        )?;
        let given = if mask.covers("threshold", req.threshold.is_some()) {
            let threshold =
                req.threshold.clone().ok_or_else(|| invalid("threshold", "REQUIRED", "is required"))?;
            let currency = bank_money::Currency::parse(&threshold.currency)
                .map_err(|e| invalid("threshold.currency", e.code(), &e.to_string()))?;
            if threshold.minor_units < 0 {
                return Err(invalid("threshold.minor_units", "NEGATIVE", "must not be negative"));
            }
            Some((currency, threshold.minor_units))
        } else {
            None
        };
        // The account (the caller's) and its current alert, if any.
        let owned: Option<(String, Option<i64>, Option<bool>)> = sqlx::query_as(
            "SELECT a.currency, l.threshold, l.enabled FROM accounts a \
             LEFT JOIN low_balance_alerts l ON l.account_id = a.account_id \
             WHERE a.account_id = $1 AND a.owner_user_id = $2",
        )
        .bind(account)
        .bind(user)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?;
        let (account_currency, current_threshold, current_enabled) =
            owned.ok_or_else(|| not_found("account"))?;
        let threshold = match (given, current_threshold) {
            (Some((currency, _)), _) if currency.code() != account_currency => {
                return Err(refused(
                    ErrorCode::CurrencyMismatch,
                    "the threshold must be in the account's currency",
                ));
            }
            (Some((_, minor_units)), _) | (None, Some(minor_units)) => {
                Money { currency: account_currency.clone(), minor_units }
            }
            (None, None) => return Err(invalid("threshold", "REQUIRED", "is required for a new alert")),
        };
        let currency = bank_money::Currency::parse(&account_currency).map_err(internal)?;
        let enabled =
            if mask.covers("enabled", req.enabled) { req.enabled } else { current_enabled.unwrap_or(true) };
        {
            let mut tx = self.pool.begin().await.map_err(internal)?;
            if let Some(replay) = claim::<SetLowBalanceAlertResponse>(&mut tx, key.as_ref(), &req).await? {
                return Ok(replay);
            }
        }
        // The ledger detects the crossing (ADR 0015); mirror first, so a failure here changes nothing.
        let ledger_threshold = enabled
            .then(|| Money { currency: currency.code().to_owned(), minor_units: threshold.minor_units });
        let available = self.ledger.set_threshold(account, ledger_threshold).await?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        let armed = available.is_none_or(|a| a >= threshold.minor_units);
        let row: AlertRow = sqlx::query_as(
            "INSERT INTO low_balance_alerts (account_id, user_id, currency, threshold, enabled, armed) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (account_id) DO UPDATE SET threshold = EXCLUDED.threshold, enabled = EXCLUDED.enabled, \
               armed = EXCLUDED.armed, updated_at = now() \
             RETURNING account_id, currency, threshold, enabled, armed, last_triggered_at, updated_at",
        )
        .bind(account)
        .bind(user)
        .bind(currency.code())
        .bind(threshold.minor_units)
        .bind(enabled)
        .bind(armed)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        let response = SetLowBalanceAlertResponse { alert: Some(alert_message(&row)) };
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(response))
    }

    async fn delete_low_balance_alert(
        &self,
        request: Request<DeleteLowBalanceAlertRequest>,
    ) -> Answer<DeleteLowBalanceAlertResponse> {
        let user = user_only(&request)?;
        let account = fields::uuid("account_id", &request.get_ref().account_id)?;
        let exists: Option<Uuid> = sqlx::query_scalar(
            "SELECT account_id FROM low_balance_alerts WHERE account_id = $1 AND user_id = $2",
        )
        .bind(account)
        .bind(user)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?;
        if exists.is_none() {
            return Err(not_found("low-balance alert"));
        }
        self.ledger.set_threshold(account, None).await?;
        sqlx::query("DELETE FROM low_balance_alerts WHERE account_id = $1 AND user_id = $2")
            .bind(account)
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(Response::new(DeleteLowBalanceAlertResponse {}))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<CreateWebhookEndpointRequest>,
    ) -> Answer<CreateWebhookEndpointResponse> {
        let principal = principal(&request)?.clone();
        let owner = Owner::of(&principal)?;
        step_up_if_mfa(&principal)?;
        let key = key_of(
            &request,
            &owner.key(),
            "/bank.notifications.v1.NotificationsService/CreateWebhookEndpoint",
        )?;
        let req = request.into_inner();
        if req.url.is_empty() {
            return Err(invalid("url", "REQUIRED", "is required"));
        }
        self.policy.check_url(&req.url).map_err(|m| refused(ErrorCode::WebhookUrlNotAllowed, &m))?;
        let description = description_field(&req.description)?;
        let types = event_types_field("event_types", &req.event_types)?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        // Serialise one owner's creations so the limit holds under concurrency.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('webhook-owner:' || $1))")
            .bind(owner.key())
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM webhook_endpoints WHERE {OWNED}"
        )))
        .bind(owner.user())
        .bind(owner.client())
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        if count >= self.max_endpoints {
            return Err(refused(
                ErrorCode::ResourceExhausted,
                "too many webhook endpoints; delete one first",
            ));
        }
        let secret = webhooks::new_secret();
        let row: EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO webhook_endpoints (endpoint_id, owner_user_id, owner_client_id, url, description, event_types, secret) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(owner.user())
        .bind(owner.client())
        .bind(&req.url)
        .bind(&description)
        .bind(&types)
        .bind(&secret)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        let mut response = CreateWebhookEndpointResponse {
            endpoint: Some(endpoint_message(&row)),
            signing_secret: String::new(),
        };
        // A replay answers without the secret.
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        tracing::info!(endpoint_id = %row.endpoint_id, owner = %owner.key(), "webhook endpoint created");
        response.signing_secret = secret;
        Ok(Response::new(response))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<ListWebhookEndpointsRequest>,
    ) -> Answer<ListWebhookEndpointsResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let page = request.into_inner().page.unwrap_or_default();
        let page = Page::parse(page.page_size, &page.page_token, "offset", 50, 200)?;
        let rows: Vec<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE {OWNED} ORDER BY created_at, endpoint_id OFFSET $3 LIMIT $4"
        )))
        .bind(owner.user())
        .bind(owner.client())
        .bind(page.position)
        .bind(page.size)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let next = next_offset(&page, rows.len());
        Ok(Response::new(ListWebhookEndpointsResponse {
            endpoints: rows.iter().map(endpoint_message).collect(),
            page_info: page_info(next),
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<GetWebhookEndpointRequest>,
    ) -> Answer<GetWebhookEndpointResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let id = fields::uuid("endpoint_id", &request.get_ref().endpoint_id)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let row = endpoint(&mut conn, &owner, id, false).await?;
        Ok(Response::new(GetWebhookEndpointResponse { endpoint: Some(endpoint_message(&row)) }))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<UpdateWebhookEndpointRequest>,
    ) -> Answer<UpdateWebhookEndpointResponse> {
        let principal = principal(&request)?.clone();
        let owner = Owner::of(&principal)?;
        let key = key_of(
            &request,
            &owner.key(),
            "/bank.notifications.v1.NotificationsService/UpdateWebhookEndpoint",
        )?;
        let req = request.into_inner();
        let id = fields::uuid("endpoint_id", &req.endpoint_id)?;
        // Only the fields named in the mask (or, without one, the fields sent) change (AIP-134).
        let mask = fields::UpdateMask::new(
            req.update_mask.as_ref().map_or(&[][..], |m| m.paths.as_slice()),
            &["url", "description", "event_types", "enabled"],
        )?;
        let url = if mask.covers("url", !req.url.is_empty()) {
            if req.url.is_empty() {
                return Err(invalid("url", "REQUIRED", "is required"));
            }
            self.policy.check_url(&req.url).map_err(|m| refused(ErrorCode::WebhookUrlNotAllowed, &m))?;
            Some(req.url.as_str())
        } else {
            None
        };
        let description = if mask.covers("description", !req.description.is_empty()) {
            Some(description_field(&req.description)?)
        } else {
            None
        };
        let types = if mask.covers("event_types", !req.event_types.is_empty()) {
            Some(event_types_field("event_types", &req.event_types)?)
        } else {
            None
        };
        let enabled = mask.covers("enabled", req.enabled).then_some(req.enabled);
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let current = endpoint(&mut tx, &owner, id, true).await?;
        if url.is_some_and(|u| u != current.url) {
            step_up_if_mfa(&principal)?;
        }
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        // A NULL parameter keeps the column.
        let row: EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_endpoints SET url = coalesce($2, url), description = coalesce($3, description), \
               event_types = coalesce($4, event_types), updated_at = now(), \
               status = CASE WHEN $5::bool IS NULL THEN status WHEN $5 THEN 'active' ELSE 'disabled' END, \
               disabled_reason = CASE WHEN $5 THEN '' ELSE disabled_reason END, \
               consecutive_failures = CASE WHEN $5 AND status <> 'active' THEN 0 ELSE consecutive_failures END \
             WHERE endpoint_id = $1 RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(id)
        .bind(url)
        .bind(&description)
        .bind(&types)
        .bind(enabled)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        let response = UpdateWebhookEndpointResponse { endpoint: Some(endpoint_message(&row)) };
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        self.wake.webhooks.notify_one();
        Ok(Response::new(response))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<DeleteWebhookEndpointRequest>,
    ) -> Answer<DeleteWebhookEndpointResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let id = fields::uuid("endpoint_id", &request.get_ref().endpoint_id)?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        endpoint(&mut tx, &owner, id, true).await?;
        sqlx::query("DELETE FROM webhook_endpoints WHERE endpoint_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<RotateWebhookSecretRequest>,
    ) -> Answer<RotateWebhookSecretResponse> {
        let principal = principal(&request)?.clone();
        let owner = Owner::of(&principal)?;
        step_up_if_mfa(&principal)?;
        let key = key_of(
            &request,
            &owner.key(),
            "/bank.notifications.v1.NotificationsService/RotateWebhookSecret",
        )?;
        let req = request.into_inner();
        let id = fields::uuid("endpoint_id", &req.endpoint_id)?;
        let ttl = match req.previous_secret_ttl_seconds {
            0 => 24 * 3600,
            n if n < 0 => {
                return Err(invalid("previous_secret_ttl_seconds", "NEGATIVE", "must not be negative"));
            }
            n if n > 7 * 24 * 3600 => {
                return Err(invalid("previous_secret_ttl_seconds", "TOO_LONG", "at most 7 days"));
            }
            n => n,
        };
        let mut tx = self.pool.begin().await.map_err(internal)?;
        endpoint(&mut tx, &owner, id, true).await?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        let secret = webhooks::new_secret();
        let row: EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2, \
               previous_secret_expires_at = now() + make_interval(secs => $3), secret_rotated_at = now(), updated_at = now() \
             WHERE endpoint_id = $1 RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(id)
        .bind(&secret)
        .bind(f64::from(ttl))
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        let mut response = RotateWebhookSecretResponse {
            endpoint: Some(endpoint_message(&row)),
            signing_secret: String::new(),
        };
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        tracing::info!(endpoint_id = %id, "webhook secret rotated");
        response.signing_secret = secret;
        Ok(Response::new(response))
    }

    async fn send_test_webhook(
        &self,
        request: Request<SendTestWebhookRequest>,
    ) -> Answer<SendTestWebhookResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let key =
            key_of(&request, &owner.key(), "/bank.notifications.v1.NotificationsService/SendTestWebhook")?;
        let req = request.into_inner();
        let id = fields::uuid("endpoint_id", &req.endpoint_id)?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        endpoint(&mut tx, &owner, id, true).await?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        let recent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND test AND created_at > now() - interval '1 minute'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        if recent >= TEST_SENDS_PER_MINUTE {
            return Err(refused(ErrorCode::RateLimited, "too many test sends; try again in a minute"));
        }
        let payload = events::WebhookTest {
            endpoint_id: id.to_string(),
            message: "This is a test delivery from bankmesh.".to_owned(),
        };
        let envelope = inbox::Envelope {
            id: Uuid::now_v7(),
            event_type: <events::WebhookTest as prost::Name>::full_name(),
            source: "notifications".to_owned(),
            subject: format!("webhook-endpoints/{id}"),
            time: OffsetDateTime::now_utc(),
            traceparent: String::new(),
            payload: payload.encode_to_vec(),
        };
        let data = serde_json::to_value(&payload).map_err(internal)?;
        let body = inbox::webhook_body(&envelope, &data);
        let delivery =
            Self::queue_delivery(&mut tx, id, envelope.id, &envelope.event_type, &body, None, true).await?;
        // Leased for the attempt below (the dispatcher leaves it alone meanwhile).
        let claimed: webhooks::Claimed = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH d AS (UPDATE webhook_deliveries SET next_attempt_at = now() + interval '5 minutes' \
               WHERE delivery_id = $1 RETURNING *) \
             SELECT {} FROM d JOIN webhook_endpoints e USING (endpoint_id)",
            webhooks::CLAIMED_COLUMNS
        )))
        .bind(delivery)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.dispatcher.deliver(&claimed).await.map_err(internal)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let response = SendTestWebhookResponse {
            delivery: Some(delivery_with_attempts(&mut conn, id, delivery).await?),
        };
        if let Some(key) = &key {
            let mut tx = self.pool.begin().await.map_err(internal)?;
            store(&mut tx, Some(key), &response).await?;
            tx.commit().await.map_err(internal)?;
        }
        Ok(Response::new(response))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<ListWebhookDeliveriesRequest>,
    ) -> Answer<ListWebhookDeliveriesResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let req = request.into_inner();
        let id = fields::uuid("endpoint_id", &req.endpoint_id)?;
        let page = req.page.unwrap_or_default();
        let page = Page::parse(page.page_size, &page.page_token, "offset", 50, 200)?;
        let status = match DeliveryStatus::try_from(req.status) {
            Ok(DeliveryStatus::Unspecified) => None,
            Ok(DeliveryStatus::Pending) => Some("pending"),
            Ok(DeliveryStatus::Succeeded) => Some("succeeded"),
            Ok(DeliveryStatus::Retrying) => Some("retrying"),
            Ok(DeliveryStatus::Failed) => Some("failed"),
            Err(_) => return Err(invalid("status", "INVALID", "unknown status")),
        };
        let event =
            if req.event_id.is_empty() { None } else { Some(fields::uuid("event_id", &req.event_id)?) };
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        endpoint(&mut conn, &owner, id, false).await?;
        let rows: Vec<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 \
               AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR event_id = $3) \
             ORDER BY created_at DESC, delivery_id DESC OFFSET $4 LIMIT $5"
        )))
        .bind(id)
        .bind(status)
        .bind(event)
        .bind(page.position)
        .bind(page.size)
        .fetch_all(&mut *conn)
        .await
        .map_err(internal)?;
        let next = next_offset(&page, rows.len());
        Ok(Response::new(ListWebhookDeliveriesResponse {
            deliveries: rows.iter().map(|r| delivery_message(r, Vec::new())).collect(),
            page_info: page_info(next),
        }))
    }

    async fn get_webhook_delivery(
        &self,
        request: Request<GetWebhookDeliveryRequest>,
    ) -> Answer<GetWebhookDeliveryResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let req = request.into_inner();
        let id = fields::uuid("endpoint_id", &req.endpoint_id)?;
        let delivery = fields::uuid("delivery_id", &req.delivery_id)?;
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        endpoint(&mut conn, &owner, id, false).await?;
        Ok(Response::new(GetWebhookDeliveryResponse {
            delivery: Some(delivery_with_attempts(&mut conn, id, delivery).await?),
        }))
    }

    async fn redeliver_webhook(
        &self,
        request: Request<RedeliverWebhookRequest>,
    ) -> Answer<RedeliverWebhookResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let key =
            key_of(&request, &owner.key(), "/bank.notifications.v1.NotificationsService/RedeliverWebhook")?;
        let req = request.into_inner();
        let id = fields::uuid("endpoint_id", &req.endpoint_id)?;
        let original = fields::uuid("delivery_id", &req.delivery_id)?;
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let row = endpoint(&mut tx, &owner, id, true).await?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        if row.status != "active" {
            return Err(refused(ErrorCode::FailedPrecondition, "the endpoint is disabled; enable it first"));
        }
        let source: Option<(Uuid, String, String)> = sqlx::query_as(
            "SELECT event_id, event_type, body FROM webhook_deliveries WHERE endpoint_id = $1 AND delivery_id = $2",
        )
        .bind(id)
        .bind(original)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        let (event_id, event_type, body) = source.ok_or_else(|| not_found("delivery"))?;
        let delivery =
            Self::queue_delivery(&mut tx, id, event_id, &event_type, &body, Some(original), false).await?;
        let response =
            RedeliverWebhookResponse { delivery: Some(delivery_with_attempts(&mut tx, id, delivery).await?) };
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        self.wake.webhooks.notify_one();
        Ok(Response::new(response))
    }

    async fn replay_webhook_events(
        &self,
        request: Request<ReplayWebhookEventsRequest>,
    ) -> Answer<ReplayWebhookEventsResponse> {
        let owner = Owner::of(principal(&request)?)?;
        let key = key_of(
            &request,
            &owner.key(),
            "/bank.notifications.v1.NotificationsService/ReplayWebhookEvents",
        )?;
        let req = request.into_inner();
        let id = fields::uuid("endpoint_id", &req.endpoint_id)?;
        let from = fields::time(
            "from_time",
            convert::instant(
                req.from_time.as_ref().ok_or_else(|| invalid("from_time", "REQUIRED", "is required"))?,
            ),
        )?;
        let to = match &req.to_time {
            Some(t) => fields::time("to_time", convert::instant(t))?,
            None => OffsetDateTime::now_utc(),
        };
        if from < OffsetDateTime::now_utc() - REPLAY_WINDOW {
            return Err(invalid("from_time", "OUTSIDE_RETENTION", "events are kept for 7 days"));
        }
        if to <= from {
            return Err(invalid("to_time", "BEFORE_FROM_TIME", "must be after from_time"));
        }
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let row = endpoint(&mut tx, &owner, id, true).await?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        if row.status != "active" {
            return Err(refused(ErrorCode::FailedPrecondition, "the endpoint is disabled; enable it first"));
        }
        let queued = sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, event_id, event_type, body, next_attempt_at, redelivery_of) \
             SELECT gen_random_uuid(), $1, a.event_id, a.event_type, a.body, now(), \
               (SELECT d.delivery_id FROM webhook_deliveries d WHERE d.endpoint_id = $1 AND d.event_id = a.event_id \
                  AND d.redelivery_of IS NULL AND NOT d.test) \
             FROM event_archive a \
             WHERE a.occurred_at >= $2 AND a.occurred_at < $3 \
               AND ($4::uuid IS NULL OR $4 = ANY(a.user_ids)) \
               AND (cardinality($5::text[]) = 0 OR a.event_type = ANY($5)) \
             ORDER BY a.occurred_at \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(owner.user())
        .bind(&row.event_types)
        .execute(&mut *tx)
        .await
        .map_err(internal)?
        .rows_affected();
        let response =
            ReplayWebhookEventsResponse { queued_count: i32::try_from(queued).unwrap_or(i32::MAX) };
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(response))
    }

    async fn list_my_security_events(
        &self,
        request: Request<ListMySecurityEventsRequest>,
    ) -> Answer<ListMySecurityEventsResponse> {
        let user = user_only(&request)?;
        let page = request.into_inner().page.unwrap_or_default();
        let page = Page::parse(page.page_size, &page.page_token, "offset", 50, 200)?;
        let rows: Vec<SecurityRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SECURITY_COLUMNS} FROM security_events WHERE user_id = $1 ORDER BY seq DESC OFFSET $2 LIMIT $3"
        )))
        .bind(user)
        .bind(page.position)
        .bind(page.size)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let next = next_offset(&page, rows.len());
        Ok(Response::new(ListMySecurityEventsResponse {
            events: rows.iter().map(security_message).collect(),
            page_info: page_info(next),
        }))
    }
}

/// Security feed rows after `cursor` (or, without one, from the last hour), oldest first.
async fn security_after(
    pool: &PgPool,
    cursor: Option<i64>,
    user: Option<Uuid>,
    types: &[String],
    limit: i64,
) -> Result<Vec<SecurityRow>, Status> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SECURITY_COLUMNS} FROM security_events \
         WHERE ($1::bigint IS NULL AND occurred_at > now() - interval '1 hour' OR seq > $1) \
           AND ($2::uuid IS NULL OR user_id = $2) AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) \
         ORDER BY seq LIMIT $4"
    )))
    .bind(cursor)
    .bind(user)
    .bind(types)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(internal)
}

async fn newest_seq(pool: &PgPool) -> Result<i64, Status> {
    sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM security_events")
        .fetch_one(pool)
        .await
        .map_err(internal)
}

fn feed_filters(user_id: &str, types: &[String]) -> Result<(Option<Uuid>, Vec<String>), Status> {
    let user = if user_id.is_empty() { None } else { Some(fields::uuid("user_id", user_id)?) };
    for (i, t) in types.iter().enumerate() {
        if catalog::event_type(t).is_none_or(|k| !k.security) {
            return Err(invalid(
                &format!("event_types[{i}]"),
                "NOT_A_SECURITY_EVENT",
                "not a security event type",
            ));
        }
    }
    Ok((user, types.to_vec()))
}

/// The server stream of `FollowSecurityEvents`.
pub type FollowStream =
    Pin<Box<dyn futures::Stream<Item = Result<FollowSecurityEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NotificationsAdminService for Api {
    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Answer<ListDeadLettersResponse> {
        require_staff(&request, STAFF)?;
        let req = request.into_inner();
        let page = req.page.unwrap_or_default();
        let page = Page::parse(page.page_size, &page.page_token, "offset", 50, 200)?;
        let status = match DeadLetterStatus::try_from(req.status) {
            Ok(DeadLetterStatus::Unspecified) => None,
            Ok(DeadLetterStatus::Pending) => Some("pending"),
            Ok(DeadLetterStatus::Retried) => Some("retried"),
            Err(_) => return Err(invalid("status", "INVALID", "unknown status")),
        };
        if req.stream.chars().count() > 200 || req.stream.chars().any(char::is_control) {
            return Err(invalid("stream", "INVALID", "a stream key: at most 200 printable characters"));
        }
        let stream = (!req.stream.is_empty()).then_some(req.stream);
        let rows: Vec<DeadLetterRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE ($1::text IS NULL OR status = $1) \
               AND ($2::text IS NULL OR stream = $2) ORDER BY dead_lettered_at DESC, dead_letter_id DESC OFFSET $3 LIMIT $4"
        )))
        .bind(status)
        .bind(stream)
        .bind(page.position)
        .bind(page.size)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let next = next_offset(&page, rows.len());
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters: rows.iter().map(dead_letter_message).collect(),
            page_info: page_info(next),
        }))
    }

    async fn retry_dead_letter(
        &self,
        request: Request<RetryDeadLetterRequest>,
    ) -> Answer<RetryDeadLetterResponse> {
        let admin = require_staff(&request, STAFF)?;
        let admin_id = admin.user_id().map(|u| u.to_string()).unwrap_or_default();
        let key =
            key_of(&request, &admin_id, "/bank.notifications.v1.NotificationsAdminService/RetryDeadLetter")?;
        let req = request.into_inner();
        let id = fields::uuid("dead_letter_id", &req.dead_letter_id)?;
        let reason = req.reason.trim();
        if reason.is_empty() {
            return Err(invalid("reason", "REQUIRED", "say why (audited)"));
        }
        if reason.chars().count() > 500 {
            return Err(invalid("reason", "TOO_LONG", "at most 500 characters"));
        }
        if reason.chars().any(char::is_control) {
            return Err(invalid("reason", "INVALID_CHARACTERS", "must not contain control characters"));
        }
        let mut tx = self.pool.begin().await.map_err(internal)?;
        if let Some(replay) = claim(&mut tx, key.as_ref(), &req).await? {
            return Ok(replay);
        }
        type Letter = (String, Option<Uuid>, Option<serde_json::Value>, String);
        let letter: Option<Letter> =
            sqlx::query_as("SELECT stream, delivery_id, fields, status FROM dead_letters WHERE dead_letter_id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(internal)?;
        let (stream, delivery, fields, status) = letter.ok_or_else(|| not_found("dead letter"))?;
        if status != "pending" {
            return Err(refused(ErrorCode::DeadLetterStateConflict, "this dead letter was already retried"));
        }
        if let Some(delivery) = delivery {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'retrying', completed_at = NULL, next_attempt_at = now() \
                 WHERE delivery_id = $1",
            )
            .bind(delivery)
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        } else if let Some(serde_json::Value::Object(fields)) = &fields {
            let mut redis = self.redis.clone();
            consumer::requeue(&mut redis, &stream, fields).await.map_err(|e| {
                tracing::warn!(error = %e, "requeueing a dead letter failed");
                refused(ErrorCode::Unavailable, "the event stream is unavailable; try again")
            })?;
        }
        let row: DeadLetterRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE dead_letters SET status = 'retried' WHERE dead_letter_id = $1 RETURNING {DEAD_LETTER_COLUMNS}"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(internal)?;
        let response = RetryDeadLetterResponse { dead_letter: Some(dead_letter_message(&row)) };
        store(&mut tx, key.as_ref(), &response).await?;
        tx.commit().await.map_err(internal)?;
        let reason = card_number::mask_card_numbers(reason);
        tracing::info!(dead_letter_id = %id, admin = %admin_id, reason = %reason, "dead letter retried");
        Ok(Response::new(response))
    }

    async fn list_sent_emails(
        &self,
        request: Request<ListSentEmailsRequest>,
    ) -> Answer<ListSentEmailsResponse> {
        require_staff(&request, STAFF)?;
        let req = request.into_inner();
        let page = req.page.unwrap_or_default();
        let page = Page::parse(page.page_size, &page.page_token, "offset", 50, 200)?;
        let user = if req.user_id.is_empty() { None } else { Some(fields::uuid("user_id", &req.user_id)?) };
        let status = match EmailStatus::try_from(req.status) {
            Ok(EmailStatus::Unspecified) => None,
            Ok(EmailStatus::Queued) => Some("queued"),
            Ok(EmailStatus::Sent) => Some("sent"),
            Ok(EmailStatus::Failed) => Some("failed"),
            Err(_) => return Err(invalid("status", "INVALID", "unknown status")),
        };
        let known = EVENT_TYPES.iter().filter_map(|t| t.email).any(|t| t.name() == req.template);
        if !req.template.is_empty() && !known {
            return Err(invalid(
                "template",
                "UNKNOWN_TEMPLATE",
                "not a template name (e.g. verification, deposit)",
            ));
        }
        let template = (!req.template.is_empty()).then_some(req.template);
        let from = match &req.from_time {
            Some(t) => Some(fields::time("from_time", convert::instant(t))?),
            None => None,
        };
        type EmailRow = (
            Uuid,
            Option<Uuid>,
            String,
            String,
            String,
            String,
            Option<Uuid>,
            i32,
            String,
            OffsetDateTime,
            Option<OffsetDateTime>,
        );
        let rows: Vec<EmailRow> = sqlx::query_as(
            "SELECT email_id, user_id, recipient, template, subject, status, event_id, attempts, last_error, created_at, sent_at \
             FROM emails WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2) \
               AND ($3::text IS NULL OR template = $3) AND ($4::timestamptz IS NULL OR created_at >= $4) \
             ORDER BY created_at DESC, email_id DESC OFFSET $5 LIMIT $6",
        )
        .bind(user)
        .bind(status)
        .bind(template)
        .bind(from)
        .bind(page.position)
        .bind(page.size)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let next = next_offset(&page, rows.len());
        let emails = rows
            .into_iter()
            .map(|(id, user, to, template, subject, status, event, attempts, error, created, sent)| {
                SentEmail {
                    email_id: id.to_string(),
                    user_id: user.map(|u| u.to_string()).unwrap_or_default(),
                    recipient_masked: mask(&to),
                    template,
                    subject,
                    status: match status.as_str() {
                        "queued" => EmailStatus::Queued,
                        "sent" => EmailStatus::Sent,
                        _ => EmailStatus::Failed,
                    } as i32,
                    event_id: event.map(|e| e.to_string()).unwrap_or_default(),
                    attempts,
                    last_error: error,
                    created_at: Some(timestamp(created)),
                    sent_at: ts(sent),
                }
            })
            .collect();
        Ok(Response::new(ListSentEmailsResponse { emails, page_info: page_info(next) }))
    }

    async fn list_security_events(
        &self,
        request: Request<ListSecurityEventsRequest>,
    ) -> Answer<ListSecurityEventsResponse> {
        require_staff(&request, STAFF)?;
        let req = request.into_inner();
        if !(0..=30).contains(&req.wait_seconds) {
            return Err(invalid("wait_seconds", "OUT_OF_RANGE", "0 to 30"));
        }
        let page = req.page.unwrap_or_default();
        let cursor = if page.page_token.is_empty() {
            None
        } else {
            Some(Page::parse(page.page_size, &page.page_token, "seq", 100, 500)?.position)
        };
        let size = Page::parse(page.page_size, "", "seq", 100, 500)?.size;
        let (user, types) = feed_filters(&req.user_id, &req.event_types)?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(u64::try_from(req.wait_seconds).unwrap_or(0));
        let rows = loop {
            let rows = security_after(&self.pool, cursor, user, &types, size).await?;
            if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let next = match rows.last() {
            Some(last) => last.seq,
            None => match cursor {
                Some(c) => c,
                None => newest_seq(&self.pool).await?,
            },
        };
        Ok(Response::new(ListSecurityEventsResponse {
            events: rows.iter().map(security_message).collect(),
            page_info: page_info(bank_platform::pagination::encode("seq", next)),
        }))
    }

    async fn follow_security_events(
        &self,
        request: Request<FollowSecurityEventsRequest>,
    ) -> Answer<FollowStream> {
        require_staff(&request, STAFF)?;
        let req = request.into_inner();
        let cursor = if req.cursor.is_empty() {
            None
        } else {
            Some(Page::parse(0, &req.cursor, "seq", 100, 500)?.position)
        };
        let (user, types) = feed_filters(&req.user_id, &req.event_types)?;
        let pool = self.pool.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<FollowSecurityEventsResponse, Status>>(64);
        tokio::spawn(async move {
            let mut cursor = cursor;
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.ok();
            if let Some(l) = listener.as_mut() {
                let _ = l.listen("security_events").await;
            }
            loop {
                let rows = match security_after(&pool, cursor, user, &types, 100).await {
                    Ok(rows) => rows,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if cursor.is_none() && rows.is_empty() {
                    cursor = newest_seq(&pool).await.ok();
                }
                for row in &rows {
                    cursor = Some(row.seq);
                    let item = FollowSecurityEventsResponse {
                        event: Some(security_message(row)),
                        cursor: bank_platform::pagination::encode("seq", row.seq),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return; // the client went away
                    }
                }
                if rows.len() == 100 {
                    continue;
                }
                // Wake on a notification from any replica's commit, or poll every second.
                let wait = async {
                    match listener.as_mut() {
                        Some(l) => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), l.recv()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                };
                tokio::select! {
                    () = tx.closed() => return,
                    () = wait => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
