//! `bank.identity.v1.IdentityAdminService`: user administration, audit, keys, service clients.
//!
//! Every RPC needs a user token with the `admin` role, except those the contract opens to
//! `support` as well (the read-only user, session and audit views, and `UnlockUser`), from a
//! session that passed a second factor within `auth.step_up_max_age` (`bank_auth::require_staff`:
//! `MFA_REQUIRED` / `STEP_UP_REQUIRED` otherwise). A refused caller gets `PERMISSION_DENIED` (or
//! the MFA reason) and a `denied` audit entry. Every change runs in one transaction
//! with its audit entry (actor = the calling user, the request's reason) and, where the contract
//! names one, its outbox event; revocations are published to Redis after the commit.
//!
//! Not done yet (a later issue): `idempotency-key` replay.

use bank_auth::{Principal, Subject, principal, require_staff};
use bank_platform::{ErrorCode, FieldViolation, ServiceError, pagination::Page};
use bank_proto::{
    common::v1::PageInfo,
    events::v1 as events,
    identity::v1::{identity_admin_service_server::IdentityAdminService, *},
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{check_text, entry, internal, masked_text, role_name, session, timestamp, user};
use crate::{
    context::CallContext,
    domain::password::Password,
    hashing,
    keys::{self, Error as KeyError},
    state::State,
    storage::{
        audit,
        clients::{self, ClientRow},
        keys::{KeyRow, KeyState},
        mfa, outbox, sessions, users,
        users::UserRow,
    },
    tokens,
};

/// The admin API.
#[derive(Debug, Clone)]
pub struct AdminApi {
    state: State,
}

impl AdminApi {
    /// The API over `state`.
    #[must_use]
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// Administrators only (the contract's default).
const ADMIN: &[&str] = &["admin"];
/// RPCs whose contract comment says "Roles: admin, support".
const STAFF: &[&str] = &["admin", "support"];

/// Longest audited reason.
const MAX_REASON: usize = 500;
/// Most users in one `BatchSetUserStatus`.
const MAX_BATCH: usize = 100;
/// Longest grace for a rotated service-client secret (the contract's maximum).
const MAX_SECRET_GRACE_SECONDS: i32 = 86_400;
/// Most scopes of one service client.
const MAX_SCOPES: usize = 32;
/// Every role in its canonical order.
const ROLES: [&str; 4] = ["customer", "support", "teller", "admin"];

/// The authorised user making an admin call.
#[derive(Debug)]
struct Caller {
    user_id: Uuid,
    ctx: CallContext,
}

impl Caller {
    /// A successful audit entry by this caller.
    fn audit(
        &self,
        action: &'static str,
        target_type: &'static str,
        target_id: String,
        reason: String,
    ) -> audit::Entry {
        let mut audit = entry(&self.ctx, action, "success");
        audit.actor_id = self.user_id.to_string();
        audit.target_type = target_type;
        audit.target_id = target_id;
        audit.reason = reason;
        audit
    }
}

/// Field violations collected over a whole request, answered together.
#[derive(Debug, Default)]
struct Check(Vec<FieldViolation>);

impl Check {
    fn push(&mut self, field: impl Into<String>, code: &str, description: &str) {
        self.0.push(FieldViolation::new(field, code, description));
    }

    /// A required UUID (the nil UUID when invalid; the request is refused then anyway).
    fn uuid(&mut self, field: &str, value: &str) -> Uuid {
        match parse_uuid(value) {
            Ok(id) => id,
            Err((code, description)) => {
                self.push(field, code, description);
                Uuid::nil()
            }
        }
    }

    /// The mandatory, audited reason, trimmed.
    fn reason(&mut self, value: &str) -> String {
        self.0.extend(check_text("reason", value, true, MAX_REASON));
        masked_text(value)
    }

    /// A required short identifier (client id, key id).
    fn id(&mut self, field: &str, value: &str, max: usize) {
        if value.is_empty() {
            self.push(field, "REQUIRED", "is required");
        } else if value.chars().count() > max {
            self.push(field, "TOO_LONG", &format!("at most {max} characters"));
        } else if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
            self.push(field, "INVALID_FORMAT", "must be letters, digits, '-', '_', '.' or ':'");
        }
    }

    /// An optional timestamp.
    fn time(&mut self, field: &str, value: Option<&pbjson_types::Timestamp>) -> Option<OffsetDateTime> {
        let value = value?;
        let at = (0..1_000_000_000).contains(&value.nanos).then_some(()).and_then(|()| {
            let nanos = i128::from(value.seconds) * 1_000_000_000 + i128::from(value.nanos);
            OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
        });
        if at.is_none() {
            self.push(field, "INVALID", "is not a valid timestamp");
        }
        at
    }

    fn done(self) -> Result<(), Status> {
        if self.0.is_empty() { Ok(()) } else { Err(ServiceError::invalid(self.0).into()) }
    }
}

fn parse_uuid(value: &str) -> Result<Uuid, (&'static str, &'static str)> {
    if value.is_empty() {
        return Err(("REQUIRED", "is required"));
    }
    Uuid::parse_str(value).map_err(|_| ("INVALID_FORMAT", "must be a UUID"))
}

fn not_found(what: &str) -> Status {
    ServiceError::new(ErrorCode::NotFound, format!("no such {what}")).into()
}

fn precondition(message: &str) -> Status {
    ServiceError::new(ErrorCode::FailedPrecondition, message).into()
}

fn hashing_failed(err: hashing::Error) -> Status {
    match err {
        hashing::Error::Busy => ServiceError::new(
            ErrorCode::ResourceExhausted,
            "too many hashing requests at once, retry shortly",
        )
        .into(),
        hashing::Error::Hash(_) => internal(err),
    }
}

fn page_info(next_page_token: String, total_size: Option<i64>) -> Option<PageInfo> {
    Some(PageInfo { next_page_token, total_size })
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `position..position + size` of `items`, for lists kept in memory.
fn window<T>(items: &[T], page: Page) -> &[T] {
    let start = usize::try_from(page.position).unwrap_or(usize::MAX).min(items.len());
    let size = usize::try_from(page.size).unwrap_or(usize::MAX);
    &items[start..start.saturating_add(size).min(items.len())]
}

/// Consecutive counted password failures since the last success: the stored counter restarts at
/// every lock, so each lock in the current streak stands for `threshold` failures.
fn failed_login_count(row: &UserRow, threshold: u32) -> i32 {
    let threshold = i32::try_from(threshold).unwrap_or(i32::MAX);
    row.lockout_count.saturating_mul(threshold).saturating_add(row.failed_logins)
}

fn signing_key(row: &KeyRow) -> SigningKey {
    let state = match row.state {
        KeyState::Next => SigningKeyState::Next,
        KeyState::Active => SigningKeyState::Active,
        KeyState::Retiring => SigningKeyState::Retiring,
        KeyState::Retired => SigningKeyState::Retired,
        KeyState::Revoked => SigningKeyState::Revoked,
    };
    SigningKey {
        key_id: row.kid.clone(),
        algorithm: row.algorithm.clone(),
        state: state as i32,
        created_at: Some(timestamp(row.created_at)),
        activated_at: row.activated_at.map(timestamp),
        retiring_at: row.retiring_at.map(timestamp),
        retired_at: row.retired_at.map(timestamp),
        public_key: Some(keys::jwk(row)),
    }
}

fn service_client(row: &ClientRow) -> ServiceClient {
    let status = match row.status.as_str() {
        "active" => ServiceClientStatus::Active,
        "disabled" => ServiceClientStatus::Disabled,
        _ => ServiceClientStatus::Unspecified,
    };
    ServiceClient {
        client_id: row.client_id.clone(),
        name: row.name.clone(),
        scopes: row.scopes.clone(),
        status: status as i32,
        created_at: Some(timestamp(row.created_at)),
        last_used_at: row.last_used_at.map(timestamp),
        secret_rotated_at: row.secret_rotated_at.map(timestamp),
    }
}

fn audit_entry(row: &audit::Row) -> AuditLogEntry {
    let result = match row.result.as_str() {
        "success" => AuditResult::Success,
        "failure" => AuditResult::Failure,
        "denied" => AuditResult::Denied,
        _ => AuditResult::Unspecified,
    };
    AuditLogEntry {
        entry_id: row.entry_id.to_string(),
        sequence: row.sequence,
        occurred_at: Some(timestamp(row.occurred_at)),
        actor_type: row.actor_type.clone(),
        actor_id: row.actor_id.clone(),
        action: row.action.clone(),
        target_type: row.target_type.clone(),
        target_id: row.target_id.clone(),
        result: result as i32,
        reason: row.reason.clone(),
        request_id: row.request_id.clone(),
        trace_id: row.trace_id.clone(),
        ip_address: row.ip_address.clone(),
        user_agent: row.user_agent.clone(),
        entry_hash: row.entry_hash.clone(),
        previous_hash: row.previous_hash.clone(),
    }
}

/// A client name: 1-64 lower-case letters, digits and hyphens, starting with a letter or digit.
fn check_client_name(check: &mut Check, name: &str) {
    if name.is_empty() {
        check.push("name", "REQUIRED", "is required");
    } else if name.len() > 64 {
        check.push("name", "TOO_LONG", "at most 64 characters");
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        check.push(
            "name",
            "INVALID_FORMAT",
            "lower-case letters, digits and '-', starting with a letter or digit",
        );
    }
}

/// A scope: `<service>:<permission>`, e.g. `ledger:holds` (`[a-z]+:[a-z_]+`).
fn is_scope(scope: &str) -> bool {
    scope.len() <= 64
        && scope.split_once(':').is_some_and(|(service, permission)| {
            !service.is_empty()
                && service.bytes().all(|c| c.is_ascii_lowercase())
                && !permission.is_empty()
                && permission.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
        })
}

impl AdminApi {
    /// The calling user if they hold one of `roles`. Otherwise `PERMISSION_DENIED` (and a `denied`
    /// audit entry under `action`), or `UNAUTHENTICATED` without a principal.
    async fn authorize<T: Send + Sync>(
        &self,
        request: &Request<T>,
        roles: &[&str],
        action: &'static str,
    ) -> Result<Caller, Status> {
        let refusal = match require_staff(request, roles) {
            Ok(allowed) => match allowed.user_id() {
                Some(user_id) => return Ok(Caller { user_id, ctx: CallContext::of(request) }),
                None => ServiceError::new(ErrorCode::PermissionDenied, "not allowed").into(),
            },
            Err(status) => status,
        };
        if let Ok(caller) = principal(request) {
            let why = match bank_platform::error::reason_of(&refusal) {
                Some(ErrorCode::MfaRequired) => "no second factor in this session",
                Some(ErrorCode::StepUpRequired) => "second factor too old (step-up required)",
                _ => "missing role",
            };
            self.audit_denied(&CallContext::of(request), caller, action, why).await;
        }
        Err(refusal)
    }

    /// Best effort: a refusal is answered even when it cannot be audited.
    async fn audit_denied(&self, ctx: &CallContext, caller: &Principal, action: &'static str, why: &str) {
        let mut audit = entry(ctx, action, "denied");
        match &caller.subject {
            Subject::User(user_id) => audit.actor_id = user_id.to_string(),
            Subject::Service(client_id) => {
                audit.actor_type = "service_client";
                audit.actor_id.clone_from(client_id);
            }
        }
        audit.reason = why.to_owned();
        let written = async {
            let mut tx = self.state.pool.begin().await?;
            audit::append(&mut tx, audit).await?;
            tx.commit().await
        }
        .await;
        if let Err(err) = written {
            tracing::warn!(error = %err, action, "could not audit a refused admin call");
        }
    }

    /// Disables a user, revokes every session; refuses yourself and the last active admin.
    async fn disable(&self, caller: &Caller, user_id: Uuid, reason: &str) -> Result<UserRow, Status> {
        if user_id == caller.user_id {
            return Err(precondition("you cannot disable yourself"));
        }
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        users::lock_admins(&mut tx).await.map_err(internal)?;
        let before =
            users::by_id(&mut tx, user_id, true).await.map_err(internal)?.ok_or_else(|| not_found("user"))?;
        if before.status == "active"
            && before.roles.iter().any(|r| r == "admin")
            && users::count_active_admins_except(&mut tx, user_id).await.map_err(internal)? == 0
        {
            return Err(precondition("the last active administrator cannot be disabled"));
        }
        let row = users::set_status(&mut tx, user_id, "disabled")
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found("user"))?;
        let revoked =
            sessions::revoke_all(&mut tx, user_id, None, "user_disabled").await.map_err(internal)?;
        audit::append(&mut tx, caller.audit("user.disable", "user", user_id.to_string(), reason.to_owned()))
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.token_version(user_id, row.token_version).await;
        self.state.revocations.sessions(user_id, &revoked).await;
        tracing::info!(user_id = %user_id, sessions = revoked.len(), "user disabled by an administrator");
        Ok(row)
    }

    /// Re-enables a disabled user (back to pending verification when never verified).
    async fn enable(&self, caller: &Caller, user_id: Uuid, reason: &str) -> Result<UserRow, Status> {
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let row =
            users::enable(&mut tx, user_id).await.map_err(internal)?.ok_or_else(|| not_found("user"))?;
        audit::append(&mut tx, caller.audit("user.enable", "user", user_id.to_string(), reason.to_owned()))
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(row)
    }

    /// Answers `NOT_FOUND` unless the user exists.
    async fn existing_user(&self, user_id: Uuid) -> Result<UserRow, Status> {
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        users::by_id(&mut conn, user_id, false).await.map_err(internal)?.ok_or_else(|| not_found("user"))
    }
}

#[tonic::async_trait]
impl IdentityAdminService for AdminApi {
    #[tracing::instrument(skip_all)]
    async fn reset_user_mfa(&self, request: Request<ResetUserMfaRequest>) -> Answer<ResetUserMfaResponse> {
        let caller = self.authorize(&request, ADMIN, "user.reset_mfa").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &req.user_id);
        let reason = check.reason(&req.reason);
        check.done()?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let before =
            users::by_id(&mut tx, user_id, true).await.map_err(internal)?.ok_or_else(|| not_found("user"))?;
        if !mfa::remove(&mut tx, user_id).await.map_err(internal)? {
            return Err(ServiceError::new(ErrorCode::MfaStateConflict, "the user has no MFA enabled").into());
        }
        // Sessions that passed the removed factor end with it.
        users::bump_token_version(&mut tx, user_id).await.map_err(internal)?;
        let revoked = sessions::revoke_all(&mut tx, user_id, None, "mfa_reset").await.map_err(internal)?;
        outbox::publish(
            &mut tx,
            &format!("users/{user_id}"),
            &events::MfaDisabled {
                user_id: user_id.to_string(),
                email: before.email.clone(),
                disabled_by_admin: caller.user_id.to_string(),
            },
        )
        .await
        .map_err(internal)?;
        audit::append(&mut tx, caller.audit("user.reset_mfa", "user", user_id.to_string(), reason))
            .await
            .map_err(internal)?;
        let row = users::by_id(&mut tx, user_id, false)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found("user"))?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.token_version(user_id, row.token_version).await;
        self.state.revocations.sessions(user_id, &revoked).await;
        tracing::info!(user_id = %user_id, sessions = revoked.len(), "mfa reset by an administrator");
        Ok(Response::new(ResetUserMfaResponse { user: Some(user(&row, true)) }))
    }

    async fn list_users(&self, request: Request<ListUsersRequest>) -> Answer<ListUsersResponse> {
        self.authorize(&request, STAFF, "user.list").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let query = req.query.trim();
        if query.chars().count() > 100 {
            check.push("query", "TOO_LONG", "at most 100 characters");
        }
        let role = match Role::try_from(req.role) {
            Ok(role) => role_name(role),
            Err(_) => {
                check.push("role", "INVALID", "unknown role");
                None
            }
        };
        let status = match UserStatus::try_from(req.status) {
            Ok(UserStatus::Unspecified) => None,
            Ok(UserStatus::PendingVerification) => Some("pending_verification"),
            Ok(UserStatus::Active) => Some("active"),
            Ok(UserStatus::Disabled) => Some("disabled"),
            Err(_) => {
                check.push("status", "INVALID", "unknown status");
                None
            }
        };
        check.done()?;
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, "o", 50, 200)?;
        let filter = users::SearchFilter { query, role, status, locked_only: req.locked_only };
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let (rows, total) =
            users::search_filtered(&mut conn, &filter, page.position, page.size).await.map_err(internal)?;
        let next = page.next_token("o", rows.len(), page.position + page.size);
        Ok(Response::new(ListUsersResponse {
            users: rows.iter().map(|r| user(r, true)).collect(),
            page_info: page_info(next, Some(total)),
        }))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Answer<GetUserResponse> {
        self.authorize(&request, STAFF, "user.get").await?;
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &request.get_ref().user_id);
        check.done()?;
        let row = self.existing_user(user_id).await?;
        Ok(Response::new(GetUserResponse {
            user: Some(user(&row, true)),
            failed_login_count: failed_login_count(&row, self.state.config.lockout.threshold),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn unlock_user(&self, request: Request<UnlockUserRequest>) -> Answer<UnlockUserResponse> {
        let caller = self.authorize(&request, STAFF, "user.unlock").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &req.user_id);
        let reason = check.reason(&req.reason);
        check.done()?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let row =
            users::unlock(&mut tx, user_id).await.map_err(internal)?.ok_or_else(|| not_found("user"))?;
        outbox::publish(
            &mut tx,
            &format!("users/{user_id}"),
            &events::UserUnlocked { user_id: user_id.to_string(), unlocked_by: caller.user_id.to_string() },
        )
        .await
        .map_err(internal)?;
        audit::append(&mut tx, caller.audit("user.unlock", "user", user_id.to_string(), reason))
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(UnlockUserResponse { user: Some(user(&row, true)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn disable_user(&self, request: Request<DisableUserRequest>) -> Answer<DisableUserResponse> {
        let caller = self.authorize(&request, ADMIN, "user.disable").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &req.user_id);
        let reason = check.reason(&req.reason);
        check.done()?;
        let row = self.disable(&caller, user_id, &reason).await?;
        Ok(Response::new(DisableUserResponse { user: Some(user(&row, true)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn enable_user(&self, request: Request<EnableUserRequest>) -> Answer<EnableUserResponse> {
        let caller = self.authorize(&request, ADMIN, "user.enable").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &req.user_id);
        let reason = check.reason(&req.reason);
        check.done()?;
        let row = self.enable(&caller, user_id, &reason).await?;
        Ok(Response::new(EnableUserResponse { user: Some(user(&row, true)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn batch_set_user_status(
        &self,
        request: Request<BatchSetUserStatusRequest>,
    ) -> Answer<BatchSetUserStatusResponse> {
        let caller = self.authorize(&request, ADMIN, "user.batch_status").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        if req.user_ids.is_empty() {
            check.push("user_ids", "REQUIRED", "at least one user id");
        } else if req.user_ids.len() > MAX_BATCH {
            check.push("user_ids", "TOO_MANY", &format!("at most {MAX_BATCH} user ids"));
        }
        let disable = match UserStatus::try_from(req.status) {
            Ok(UserStatus::Active) => Some(false),
            Ok(UserStatus::Disabled) => Some(true),
            Ok(UserStatus::Unspecified | UserStatus::PendingVerification) | Err(_) => {
                check.push("status", "INVALID", "must be USER_STATUS_ACTIVE or USER_STATUS_DISABLED");
                None
            }
        };
        let reason = check.reason(&req.reason);
        check.done()?;
        let disable = disable.unwrap_or_default();
        let wanted = if disable { "disabled" } else { "active" };
        let mut results = Vec::with_capacity(req.user_ids.len());
        // One transaction per user: one bad id never undoes or blocks the others.
        for raw in req.user_ids {
            let outcome = match parse_uuid(&raw) {
                Err(_) => Err(ErrorCode::ValidationFailed),
                Ok(user_id) => {
                    let changed = if disable {
                        self.disable(&caller, user_id, &reason).await
                    } else {
                        self.enable(&caller, user_id, &reason).await
                    };
                    match changed {
                        Ok(row) if row.status == wanted => Ok(()),
                        // Enabling a user who never verified the address leaves them pending.
                        Ok(_) => Err(ErrorCode::EmailNotVerified),
                        Err(status) => {
                            Err(bank_platform::error::reason_of(&status).unwrap_or(ErrorCode::Internal))
                        }
                    }
                }
            };
            results.push(match outcome {
                Ok(()) => UserStatusResult { user_id: raw, ok: true, error_reason: String::new() },
                Err(code) => {
                    UserStatusResult { user_id: raw, ok: false, error_reason: code.reason().to_owned() }
                }
            });
        }
        Ok(Response::new(BatchSetUserStatusResponse { results }))
    }

    #[tracing::instrument(skip_all)]
    async fn set_user_roles(&self, request: Request<SetUserRolesRequest>) -> Answer<SetUserRolesResponse> {
        let caller = self.authorize(&request, ADMIN, "user.set_roles").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &req.user_id);
        let mut chosen = vec!["customer"];
        for (i, value) in req.roles.iter().enumerate() {
            match Role::try_from(*value).ok().and_then(role_name) {
                Some(name) => chosen.push(name),
                None => check.push(format!("roles[{i}]"), "INVALID", "must be a known role, not unspecified"),
            }
        }
        let reason = check.reason(&req.reason);
        check.done()?;
        let roles: Vec<String> =
            ROLES.iter().filter(|r| chosen.contains(r)).map(|r| (*r).to_owned()).collect();
        let keeps_admin = roles.iter().any(|r| r == "admin");

        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        users::lock_admins(&mut tx).await.map_err(internal)?;
        let before =
            users::by_id(&mut tx, user_id, true).await.map_err(internal)?.ok_or_else(|| not_found("user"))?;
        if !keeps_admin
            && before.status == "active"
            && before.roles.iter().any(|r| r == "admin")
            && users::count_active_admins_except(&mut tx, user_id).await.map_err(internal)? == 0
        {
            return Err(precondition("the last active administrator cannot lose the admin role"));
        }
        let row = users::set_roles(&mut tx, user_id, &roles)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found("user"))?;
        audit::append(
            &mut tx,
            caller.audit(
                "user.set_roles",
                "user",
                user_id.to_string(),
                format!("{reason} (roles: {})", roles.join(", ")),
            ),
        )
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.token_version(user_id, row.token_version).await;
        Ok(Response::new(SetUserRolesResponse { user: Some(user(&row, true)) }))
    }

    async fn list_user_sessions(
        &self,
        request: Request<ListUserSessionsRequest>,
    ) -> Answer<ListUserSessionsResponse> {
        self.authorize(&request, STAFF, "session.list").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &req.user_id);
        check.done()?;
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, "o", 50, 200)?;
        self.existing_user(user_id).await?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let rows =
            sessions::live_of_user(&mut conn, user_id, page.position, page.size).await.map_err(internal)?;
        let next = page.next_token("o", rows.len(), page.position + page.size);
        Ok(Response::new(ListUserSessionsResponse {
            sessions: rows.iter().map(|r| session(r, None)).collect(),
            page_info: page_info(next, None),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Answer<RevokeUserSessionsResponse> {
        let caller = self.authorize(&request, ADMIN, "session.revoke_all").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let user_id = check.uuid("user_id", &req.user_id);
        let reason = check.reason(&req.reason);
        check.done()?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        users::by_id(&mut tx, user_id, true).await.map_err(internal)?.ok_or_else(|| not_found("user"))?;
        let token_version = users::bump_token_version(&mut tx, user_id).await.map_err(internal)?;
        let revoked =
            sessions::revoke_all(&mut tx, user_id, None, "revoked_by_admin").await.map_err(internal)?;
        audit::append(&mut tx, caller.audit("session.revoke_all", "user", user_id.to_string(), reason))
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.token_version(user_id, token_version).await;
        self.state.revocations.sessions(user_id, &revoked).await;
        Ok(Response::new(RevokeUserSessionsResponse { revoked_count: count(revoked.len()) }))
    }

    async fn list_audit_log(&self, request: Request<ListAuditLogRequest>) -> Answer<ListAuditLogResponse> {
        self.authorize(&request, STAFF, "audit_log.list").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        let text = |check: &mut Check, field: &str, value: String, max: usize| {
            if value.chars().count() > max {
                check.push(field, "TOO_LONG", &format!("at most {max} characters"));
            }
            Some(value).filter(|v| !v.is_empty())
        };
        let actor_id = text(&mut check, "actor_id", req.actor_id, 200);
        let target_id = text(&mut check, "target_id", req.target_id, 200);
        let action_prefix = text(&mut check, "action_prefix", req.action_prefix, 100);
        let result = match AuditResult::try_from(req.result) {
            Ok(AuditResult::Unspecified) => None,
            Ok(AuditResult::Success) => Some("success"),
            Ok(AuditResult::Failure) => Some("failure"),
            Ok(AuditResult::Denied) => Some("denied"),
            Err(_) => {
                check.push("result", "INVALID", "unknown result");
                None
            }
        };
        let from = check.time("from_time", req.from_time.as_ref());
        let to = check.time("to_time", req.to_time.as_ref());
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            check.push("to_time", "INVALID", "must be after from_time");
        }
        check.done()?;
        // Keyset pagination: the token holds the last sequence answered; entries below it follow.
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, "seq", 50, 200)?;
        let before = if page.position == 0 { i64::MAX } else { page.position };
        let filter = audit::Filter { actor_id, target_id, action_prefix, from, to };
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let rows =
            audit::list_with_result(&mut conn, &filter, result, before, page.size).await.map_err(internal)?;
        let next =
            rows.last().map_or_else(String::new, |last| page.next_token("seq", rows.len(), last.sequence));
        Ok(Response::new(ListAuditLogResponse {
            entries: rows.iter().map(audit_entry).collect(),
            page_info: page_info(next, None),
        }))
    }

    async fn verify_audit_log(
        &self,
        request: Request<VerifyAuditLogRequest>,
    ) -> Answer<VerifyAuditLogResponse> {
        self.authorize(&request, ADMIN, "audit_log.verify").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        if req.from_sequence < 0 {
            check.push("from_sequence", "NEGATIVE", "must not be negative");
        }
        if req.to_sequence < 0 {
            check.push("to_sequence", "NEGATIVE", "must not be negative");
        } else if req.to_sequence != 0 && req.to_sequence < req.from_sequence {
            check.push("to_sequence", "INVALID", "must be at least from_sequence (or 0 for the end)");
        }
        check.done()?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let verification =
            audit::verify(&mut conn, req.from_sequence, req.to_sequence).await.map_err(internal)?;
        let checked_at = OffsetDateTime::now_utc();
        let (intact, first_broken_sequence, problem) = match verification.broken {
            None => (true, 0, String::new()),
            Some((sequence, problem)) => {
                tracing::error!(sequence, problem = %problem, "the audit log hash chain is broken");
                (false, sequence, problem)
            }
        };
        Ok(Response::new(VerifyAuditLogResponse {
            intact,
            entries_checked: verification.checked,
            first_broken_sequence,
            problem,
            checked_at: Some(timestamp(checked_at)),
        }))
    }

    async fn list_signing_keys(
        &self,
        request: Request<ListSigningKeysRequest>,
    ) -> Answer<ListSigningKeysResponse> {
        self.authorize(&request, ADMIN, "signing_key.list").await?;
        let page_request = request.into_inner().page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, "o", 50, 200)?;
        let rows = self.state.keys.list().await.map_err(internal)?;
        let shown = window(&rows, page);
        let next = page.next_token("o", shown.len(), page.position + page.size);
        Ok(Response::new(ListSigningKeysResponse {
            keys: shown.iter().map(signing_key).collect(),
            page_info: page_info(next, None),
        }))
    }

    /// Refused with `SIGNING_KEY_STATE_CONFLICT` while the next key has been published for less
    /// than `keys.reload_interval + auth.jwks_min_refetch` (e.g. right after another rotation or a
    /// revocation). The key manager owns its transaction (under the key advisory lock), so the
    /// audit entry is written right after the rotation committed.
    #[tracing::instrument(skip_all)]
    async fn rotate_signing_key(
        &self,
        request: Request<RotateSigningKeyRequest>,
    ) -> Answer<RotateSigningKeyResponse> {
        let caller = self.authorize(&request, ADMIN, "signing_key.rotate").await?;
        let mut check = Check::default();
        let reason = check.reason(&request.get_ref().reason);
        check.done()?;
        // The next key must have been in every replica's JWKS for one reload interval plus one
        // verifier refetch interval: only then does every verifier know it (or may refetch on its
        // unknown kid) when it starts signing. A rotation right after another is refused.
        let settings = &self.state.config;
        let publish_window = settings.keys.reload_interval + settings.auth.jwks_min_refetch;
        let current = self.state.keys.list().await.map_err(internal)?;
        let published_for = current.iter().find(|r| r.state == KeyState::Next).map(|next| {
            std::time::Duration::try_from(OffsetDateTime::now_utc() - next.created_at).unwrap_or_default()
        });
        if published_for.is_none_or(|age| age < publish_window) {
            let wait = publish_window.saturating_sub(published_for.unwrap_or_default()).as_secs() + 1;
            return Err(ServiceError::new(
                ErrorCode::SigningKeyStateConflict,
                format!("the next key is not published long enough yet; retry in {wait}s"),
            )
            .into());
        }
        let rows = self.state.keys.rotate().await.map_err(internal)?;
        let active =
            rows.iter().find(|r| r.state == KeyState::Active).map(|r| r.kid.clone()).unwrap_or_default();
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        audit::append(&mut tx, caller.audit("signing_key.rotate", "signing_key", active.clone(), reason))
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        tracing::info!(active = %active, "signing key rotated by an administrator");
        Ok(Response::new(RotateSigningKeyResponse { keys: rows.iter().map(signing_key).collect() }))
    }

    /// Like rotation, the key manager commits the revocation; the audit entry follows it.
    #[tracing::instrument(skip_all)]
    async fn revoke_signing_key(
        &self,
        request: Request<RevokeSigningKeyRequest>,
    ) -> Answer<RevokeSigningKeyResponse> {
        let caller = self.authorize(&request, ADMIN, "signing_key.revoke").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        check.id("key_id", &req.key_id, 64);
        let reason = check.reason(&req.reason);
        check.done()?;
        if !self.state.keys.list().await.map_err(internal)?.iter().any(|r| r.kid == req.key_id) {
            return Err(not_found("signing key"));
        }
        let row = match self.state.keys.revoke(&req.key_id).await {
            Ok(row) => row,
            Err(KeyError::State(_)) => {
                return Err(ServiceError::new(
                    ErrorCode::SigningKeyStateConflict,
                    "the key is already retired or revoked",
                )
                .into());
            }
            Err(err @ (KeyError::Database(_) | KeyError::Decrypt { .. } | KeyError::Encoding)) => {
                return Err(internal(err));
            }
        };
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        audit::append(&mut tx, caller.audit("signing_key.revoke", "signing_key", row.kid.clone(), reason))
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(RevokeSigningKeyResponse { key: Some(signing_key(&row)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_service_client(
        &self,
        request: Request<CreateServiceClientRequest>,
    ) -> Answer<CreateServiceClientResponse> {
        let caller = self.authorize(&request, ADMIN, "service_client.create").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        check_client_name(&mut check, &req.name);
        if req.scopes.is_empty() {
            check.push("scopes", "REQUIRED", "at least one scope");
        } else if req.scopes.len() > MAX_SCOPES {
            check.push("scopes", "TOO_MANY", &format!("at most {MAX_SCOPES} scopes"));
        }
        let mut scopes: Vec<String> = Vec::with_capacity(req.scopes.len());
        for (i, scope) in req.scopes.iter().enumerate() {
            if !is_scope(scope) {
                check.push(format!("scopes[{i}]"), "INVALID_FORMAT", "must look like service:permission");
            } else if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        let reason = check.reason(&req.reason);
        check.done()?;

        let client_id = Uuid::now_v7().to_string();
        let secret = tokens::opaque();
        let hash = self.state.hasher.hash(&Password::new(secret.clone())).await.map_err(hashing_failed)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let Some(row) =
            clients::insert(&mut tx, &client_id, &req.name, &scopes, &hash).await.map_err(internal)?
        else {
            return Err(ServiceError::new(
                ErrorCode::AlreadyExists,
                "a service client with this name exists",
            )
            .into());
        };
        audit::append(
            &mut tx,
            caller.audit(
                "service_client.create",
                "service_client",
                client_id.clone(),
                format!("{reason} (scopes: {})", scopes.join(" ")),
            ),
        )
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(CreateServiceClientResponse {
            client: Some(service_client(&row)),
            client_secret: secret,
        }))
    }

    async fn list_service_clients(
        &self,
        request: Request<ListServiceClientsRequest>,
    ) -> Answer<ListServiceClientsResponse> {
        self.authorize(&request, ADMIN, "service_client.list").await?;
        let page_request = request.into_inner().page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, "o", 50, 200)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let rows = clients::list(&mut conn, page.position, page.size).await.map_err(internal)?;
        let next = page.next_token("o", rows.len(), page.position + page.size);
        Ok(Response::new(ListServiceClientsResponse {
            clients: rows.iter().map(service_client).collect(),
            page_info: page_info(next, None),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn disable_service_client(
        &self,
        request: Request<DisableServiceClientRequest>,
    ) -> Answer<DisableServiceClientResponse> {
        let caller = self.authorize(&request, ADMIN, "service_client.disable").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        check.id("client_id", &req.client_id, 100);
        let reason = check.reason(&req.reason);
        check.done()?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let row = clients::disable(&mut tx, &req.client_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found("service client"))?;
        audit::append(
            &mut tx,
            caller.audit("service_client.disable", "service_client", row.client_id.clone(), reason),
        )
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        // Its live service tokens die at once everywhere (the marker outlives them).
        self.state
            .revocations
            .client_disabled(&row.client_id, self.state.config.tokens.service_token_ttl)
            .await;
        Ok(Response::new(DisableServiceClientResponse { client: Some(service_client(&row)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_service_client_secret(
        &self,
        request: Request<RotateServiceClientSecretRequest>,
    ) -> Answer<RotateServiceClientSecretResponse> {
        let caller = self.authorize(&request, ADMIN, "service_client.rotate_secret").await?;
        let req = request.into_inner();
        let mut check = Check::default();
        check.id("client_id", &req.client_id, 100);
        if !(0..=MAX_SECRET_GRACE_SECONDS).contains(&req.previous_secret_ttl_seconds) {
            check.push(
                "previous_secret_ttl_seconds",
                "OUT_OF_RANGE",
                &format!("must be between 0 and {MAX_SECRET_GRACE_SECONDS}"),
            );
        }
        let reason = check.reason(&req.reason);
        check.done()?;
        let previous_expires_at = (req.previous_secret_ttl_seconds > 0).then(|| {
            OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(req.previous_secret_ttl_seconds))
        });
        let secret = tokens::opaque();
        let hash = self.state.hasher.hash(&Password::new(secret.clone())).await.map_err(hashing_failed)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let row = clients::rotate_secret(&mut tx, &req.client_id, &hash, previous_expires_at)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found("service client"))?;
        audit::append(
            &mut tx,
            caller.audit(
                "service_client.rotate_secret",
                "service_client",
                row.client_id.clone(),
                format!("{reason} (previous secret valid for {}s)", req.previous_secret_ttl_seconds),
            ),
        )
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(RotateServiceClientSecretResponse {
            client: Some(service_client(&row)),
            client_secret: secret,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_client_names_are_checked_by_shape() {
        for good in ["ledger:holds", "identity:introspect", "cards:authorize"] {
            assert!(is_scope(good), "{good}");
        }
        for bad in [
            "",
            "ledger",
            ":holds",
            "ledger:",
            "Ledger:holds",
            "ledger:holds:x",
            "ledger:ho lds",
            "le-dger:x",
        ] {
            assert!(!is_scope(bad), "{bad}");
        }
        for (name, ok) in
            [("acme-acquirer", true), ("cards", true), ("-x", false), ("Acme", false), ("", false)]
        {
            let mut check = Check::default();
            check_client_name(&mut check, name);
            assert_eq!(check.0.is_empty(), ok, "{name}");
        }
    }

    #[test]
    fn pages_of_in_memory_lists_stay_in_bounds() {
        let items = [1, 2, 3, 4, 5];
        assert_eq!(window(&items, Page { position: 0, size: 2 }), &[1, 2]);
        assert_eq!(window(&items, Page { position: 4, size: 2 }), &[5]);
        assert!(window(&items, Page { position: 9, size: 2 }).is_empty());
    }

    #[test]
    fn invalid_timestamps_are_violations() {
        let mut check = Check::default();
        assert!(check.time("t", Some(&pbjson_types::Timestamp { seconds: 0, nanos: -1 })).is_none());
        assert!(check.time("t", Some(&pbjson_types::Timestamp { seconds: i64::MAX, nanos: 0 })).is_none());
        assert_eq!(check.0.len(), 2);
        assert!(check.time("t", Some(&pbjson_types::Timestamp { seconds: 1, nanos: 5 })).is_some());
        assert!(check.time("t", None).is_none());
        assert_eq!(check.0.len(), 2);
    }
}
