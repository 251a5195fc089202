//! The second-factor half of `IdentityService`: TOTP enrolment, the MFA step of a login, step-up,
//! disabling MFA and recovery codes (see `domain::mfa` for the rules).
//!
//! * A TOTP code is checked under the row lock of the user's `mfa_totp` row and its step is
//!   stored in the same transaction, so each code is accepted once — also by two logins that race.
//!   A recovery code is used up by one conditional `UPDATE`.
//! * Wrong codes in the login step, step-up, disable and regenerate count toward the durable
//!   lockout (as wrong passwords do) and emit `LoginFailed { mfa_step: true }`; the gateway charges
//!   them to the failed-login limits. A malformed code is a validation error and counts for
//!   nothing. Wrong codes while confirming an enrolment do not count: that secret was handed out a
//!   moment ago to the same session.
//! * After a correct password an MFA user gets an opaque MFA-pending token (stored as SHA-256, a
//!   few minutes, a few attempts), good for `CompleteMfaLogin` only: it is no JWT, so every other
//!   RPC refuses it. The failure count is reset only once the second factor passed.

use bank_auth::{Principal, require_step_up_of_enrolled};
use bank_platform::{ErrorCode, ServiceError};
use bank_proto::{
    events::v1 as events,
    identity::v1::{complete_mfa_login_request, disable_mfa_request, login_response, step_up_request, *},
};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Response, Status};
use uuid::Uuid;

use super::{
    entry, internal, invalid, invalid_credentials,
    public::{Answer, Api, busy, required_password, the_user},
    timestamp,
};
use crate::{
    context::CallContext,
    domain::mfa,
    hashing::Verified,
    storage::{audit, mfa as store, outbox, sessions, users, users::UserRow},
    tokens,
};

/// A second factor as presented.
#[derive(Clone)]
pub(super) enum Factor {
    /// A 6-digit TOTP code (normalised).
    Totp(String),
    /// A recovery code (canonical form).
    Recovery(String),
}

impl std::fmt::Debug for Factor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Totp(_) => "Totp([REDACTED])",
            Self::Recovery(_) => "Recovery([REDACTED])",
        })
    }
}

impl Factor {
    fn totp(field: &str, code: &str) -> Result<Self, Status> {
        if code.is_empty() {
            return Err(invalid(field, "REQUIRED", "is required"));
        }
        mfa::normalize_code(code)
            .map(Self::Totp)
            .ok_or_else(|| invalid(field, "INVALID_FORMAT", "must be 6 digits"))
    }

    fn recovery(field: &str, code: &str) -> Result<Self, Status> {
        if code.is_empty() {
            return Err(invalid(field, "REQUIRED", "is required"));
        }
        mfa::normalize_recovery_code(code)
            .map(Self::Recovery)
            .ok_or_else(|| invalid(field, "INVALID_FORMAT", "must be a recovery code (xxxx-xxxx-xxxx-xxxx)"))
    }

    /// The `code` oneof of the login step and of step-up: `totp_code` or `recovery_code`.
    fn one_of(totp: Option<&str>, recovery: Option<&str>) -> Result<Self, Status> {
        match (totp, recovery) {
            (Some(code), _) => Self::totp("totp_code", code),
            (None, Some(code)) => Self::recovery("recovery_code", code),
            (None, None) => {
                Err(invalid("totp_code", "REQUIRED", "a TOTP code or a recovery code is required"))
            }
        }
    }

    fn method(&self) -> &'static str {
        match self {
            Self::Totp(_) => "totp",
            Self::Recovery(_) => "recovery_code",
        }
    }
}

/// What a factor check found.
enum Check {
    /// Accepted; for a recovery code, how many are left.
    Accepted { recovery_codes_left: Option<i64> },
    /// Wrong (or already used) code.
    Wrong,
    /// The user has no enabled MFA.
    NotEnrolled,
}

fn mfa_conflict(message: &str) -> Status {
    ServiceError::new(ErrorCode::MfaStateConflict, message).into()
}

/// A locked or inactive user proves nothing: the same answer as a wrong factor.
fn usable(user: &UserRow) -> Result<(), Status> {
    if user.is_locked(OffsetDateTime::now_utc()) || user.status != "active" {
        Err(invalid_credentials())
    } else {
        Ok(())
    }
}

fn not_enabled() -> Status {
    mfa_conflict("MFA is not enabled")
}

/// An audit entry of the user acting on their own account.
fn user_audit(ctx: &CallContext, action: &'static str, result: &'static str, user_id: Uuid) -> audit::Entry {
    let mut audit = entry(ctx, action, result);
    audit.actor_id = user_id.to_string();
    audit.target_type = "user";
    audit.target_id = user_id.to_string();
    audit
}

fn secret_context(user_id: Uuid) -> String {
    format!("mfa_totp:{user_id}")
}

impl Api {
    /// Checks a second factor inside the caller's transaction: locks the user's TOTP row and
    /// records the accepted step, or uses up the recovery code. Nothing is written when wrong.
    async fn check_factor(
        &self,
        tx: &mut PgConnection,
        user_id: Uuid,
        factor: &Factor,
    ) -> Result<Check, Status> {
        let Some(row) =
            store::totp(tx, user_id, true).await.map_err(internal)?.filter(|r| r.enabled_at.is_some())
        else {
            return Ok(Check::NotEnrolled);
        };
        match factor {
            Factor::Totp(code) => {
                let secret = self
                    .state
                    .keys
                    .open_secret(&row.secret_nonce, &row.secret_sealed, &secret_context(user_id))
                    .map_err(internal)?;
                let now = OffsetDateTime::now_utc().unix_timestamp();
                match mfa::verify(&secret, code, now, row.last_used_step) {
                    Some(step) => {
                        store::accept_step(tx, user_id, step, false).await.map_err(internal)?;
                        Ok(Check::Accepted { recovery_codes_left: None })
                    }
                    None => Ok(Check::Wrong),
                }
            }
            Factor::Recovery(code) => {
                let digest = mfa::recovery_code_digest(code);
                if store::use_recovery_code(tx, user_id, &digest).await.map_err(internal)? {
                    let left = store::recovery_codes_left(tx, user_id).await.map_err(internal)?;
                    Ok(Check::Accepted { recovery_codes_left: Some(left) })
                } else {
                    Ok(Check::Wrong)
                }
            }
        }
    }

    /// Opens a transaction and checks `factor` in it: the transaction (with the factor used up) and,
    /// for a recovery code, how many are left. A wrong factor counts toward the lockout (`what` is
    /// the audited reason); no enabled MFA answers `not_enrolled`.
    async fn proven(
        &self,
        user: &UserRow,
        ctx: &CallContext,
        factor: &Factor,
        what: &str,
        not_enrolled: fn() -> Status,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Option<i64>), Status> {
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        match self.check_factor(&mut tx, user.user_id, factor).await? {
            Check::NotEnrolled => Err(not_enrolled()),
            Check::Wrong => {
                drop(tx);
                Err(self.wrong_factor(user, ctx, what).await)
            }
            Check::Accepted { recovery_codes_left } => Ok((tx, recovery_codes_left)),
        }
    }

    /// After a used recovery code: the event (security feed, email) and the audit entry.
    async fn recovery_code_used(
        &self,
        tx: &mut PgConnection,
        user: &UserRow,
        ctx: &CallContext,
        left: i64,
    ) -> Result<(), Status> {
        outbox::publish(
            tx,
            &format!("users/{}", user.user_id),
            &events::RecoveryCodeUsed {
                user_id: user.user_id.to_string(),
                email: user.email.clone(),
                remaining: i32::try_from(left).unwrap_or(i32::MAX),
                ip_address: ctx.ip_address.clone(),
            },
        )
        .await
        .map_err(internal)?;
        let mut audit = user_audit(ctx, "mfa.recovery_code_used", "success", user.user_id);
        audit.reason = format!("{left} recovery codes left");
        audit::append(tx, audit).await.map_err(internal)?;
        Ok(())
    }

    /// A wrong second factor: counts toward the lockout like a wrong password.
    async fn wrong_factor(&self, user: &UserRow, ctx: &CallContext, what: &str) -> Status {
        metrics::counter!("identity_mfa_checks_total", "result" => "wrong").increment(1);
        match self.record_login_failure(user, ctx, what, true, true).await {
            Ok(()) => invalid_credentials(),
            Err(status) => status,
        }
    }

    /// The calling user's row (gone: `INVALID_CREDENTIALS`, as for every failed factor check).
    async fn user_row(&self, user_id: Uuid) -> Result<UserRow, Status> {
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        users::by_id(&mut conn, user_id, false).await.map_err(internal)?.ok_or_else(invalid_credentials)
    }

    /// A user's MFA state, for the owner.
    pub(super) async fn has_mfa(&self, user_id: Uuid) -> Result<bool, Status> {
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        store::is_enabled(&mut conn, user_id).await.map_err(internal)
    }

    /// Password and email changes need a recent second factor from users who have one.
    pub(super) async fn step_up_if_enrolled(
        &self,
        principal: &Principal,
        user_id: Uuid,
    ) -> Result<(), Status> {
        if self.has_mfa(user_id).await? { require_step_up_of_enrolled(principal) } else { Ok(()) }
    }

    /// A correct password of a user with MFA: an MFA-pending token instead of a session.
    pub(super) async fn mfa_challenge(
        &self,
        user: &UserRow,
        ctx: &CallContext,
        device_name: &str,
        rehashed: Option<&str>,
    ) -> Answer<LoginResponse> {
        let token = tokens::opaque();
        let expires_at = OffsetDateTime::now_utc() + self.state.config.mfa.challenge_ttl;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        if let Some(hash) = rehashed {
            users::set_password_hash(&mut tx, user.user_id, hash).await.map_err(internal)?;
        }
        store::insert_challenge(&mut tx, &tokens::digest(&token), user.user_id, device_name, expires_at)
            .await
            .map_err(internal)?;
        let mut audit = user_audit(ctx, "user.login_password", "success", user.user_id);
        audit.reason = "second factor required".to_owned();
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        metrics::counter!("identity_logins_total", "result" => "mfa_required").increment(1);
        Ok(Response::new(LoginResponse {
            outcome: Some(login_response::Outcome::MfaRequired(MfaChallenge {
                mfa_token: token,
                expires_at: Some(timestamp(expires_at)),
                methods: vec![MfaMethod::Totp as i32, MfaMethod::RecoveryCode as i32],
            })),
        }))
    }

    pub(super) async fn do_complete_mfa_login(
        &self,
        ctx: CallContext,
        req: CompleteMfaLoginRequest,
    ) -> Answer<CompleteMfaLoginResponse> {
        if req.mfa_token.is_empty() {
            return Err(invalid("mfa_token", "REQUIRED", "is required"));
        }
        let factor = match &req.code {
            Some(complete_mfa_login_request::Code::TotpCode(code)) => Factor::one_of(Some(code), None),
            Some(complete_mfa_login_request::Code::RecoveryCode(code)) => Factor::one_of(None, Some(code)),
            None => Factor::one_of(None, None),
        }?;
        let hash = tokens::digest(&req.mfa_token);
        let now = OffsetDateTime::now_utc();
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let challenge = store::challenge_for_update(&mut tx, &hash)
            .await
            .map_err(internal)?
            .filter(|c| c.used_at.is_none())
            .ok_or_else(invalid_credentials)?;
        if challenge.expires_at <= now {
            return Err(
                ServiceError::new(ErrorCode::TokenExpired, "the MFA step expired; log in again").into()
            );
        }
        let user = users::by_id(&mut tx, challenge.user_id, false)
            .await
            .map_err(internal)?
            .ok_or_else(invalid_credentials)?;
        if user.is_locked(now) || user.status != "active" {
            store::use_challenge(&mut tx, &hash).await.map_err(internal)?;
            tx.commit().await.map_err(internal)?;
            return Err(invalid_credentials());
        }
        let recovery_codes_left = match self.check_factor(&mut tx, user.user_id, &factor).await? {
            Check::NotEnrolled => {
                // MFA was removed after the password step: log in again.
                store::use_challenge(&mut tx, &hash).await.map_err(internal)?;
                tx.commit().await.map_err(internal)?;
                return Err(invalid_credentials());
            }
            Check::Wrong => {
                let attempts = i32::try_from(self.state.config.mfa.challenge_attempts).unwrap_or(i32::MAX);
                store::fail_challenge(&mut tx, &hash, attempts).await.map_err(internal)?;
                tx.commit().await.map_err(internal)?;
                return Err(self.wrong_factor(&user, &ctx, "wrong second factor").await);
            }
            Check::Accepted { recovery_codes_left } => recovery_codes_left,
        };
        store::use_challenge(&mut tx, &hash).await.map_err(internal)?;
        let Some(user) = users::record_success(&mut tx, user.user_id, None).await.map_err(internal)? else {
            return Err(invalid_credentials());
        };
        let device_name = if req.device_name.trim().is_empty() {
            challenge.device_name
        } else {
            super::masked_text(&req.device_name.trim().chars().take(100).collect::<String>())
        };
        let tokens = self.open_session(&mut tx, &user, &ctx, &device_name, bank_auth::ACR_MFA).await?;
        self.session_created(&mut tx, &user, &ctx, &tokens, device_name, true).await?;
        if let Some(left) = recovery_codes_left {
            self.recovery_code_used(&mut tx, &user, &ctx, left).await?;
        }
        let mut audit = entry(&ctx, "user.login", "success");
        audit.actor_id = user.user_id.to_string();
        audit.target_type = "session";
        audit.target_id = tokens.session_id.clone();
        audit.reason = format!("second factor: {}", factor.method());
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        metrics::counter!("identity_logins_total", "result" => "success").increment(1);
        metrics::counter!("identity_mfa_checks_total", "result" => "accepted").increment(1);
        Ok(Response::new(CompleteMfaLoginResponse { tokens: Some(tokens) }))
    }

    pub(super) async fn do_step_up(
        &self,
        ctx: CallContext,
        principal: &Principal,
        req: StepUpRequest,
    ) -> Answer<StepUpResponse> {
        let (user_id, session_id) = the_user(principal)?;
        let factor = match &req.code {
            Some(step_up_request::Code::TotpCode(code)) => Factor::one_of(Some(code), None),
            Some(step_up_request::Code::RecoveryCode(code)) => Factor::one_of(None, Some(code)),
            None => Factor::one_of(None, None),
        }?;
        let now = OffsetDateTime::now_utc();
        let user = self.user_row(user_id).await?;
        usable(&user)?;
        let not_enrolled = || {
            Status::from(ServiceError::new(
                ErrorCode::MfaEnrolmentRequired,
                "no second factor is enrolled: enrol MFA (the confirmation steps this session up)",
            ))
        };
        let (mut tx, recovery_codes_left) =
            self.proven(&user, &ctx, &factor, "wrong second factor (step-up)", not_enrolled).await?;
        sessions::set_acr(&mut tx, session_id, bank_auth::ACR_MFA).await.map_err(internal)?;
        let session = sessions::get(&mut tx, session_id)
            .await
            .map_err(internal)?
            .filter(|s| s.is_live(now))
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::TokenRevoked, "session ended")))?;
        // The new pair replaces the session's refresh token.
        sessions::use_all_refresh(&mut tx, session_id).await.map_err(internal)?;
        let tokens = self.pair(&mut tx, &user, &session).await?;
        if let Some(left) = recovery_codes_left {
            self.recovery_code_used(&mut tx, &user, &ctx, left).await?;
        }
        let mut audit = entry(&ctx, "session.step_up", "success");
        audit.actor_id = user_id.to_string();
        audit.target_type = "session";
        audit.target_id = session_id.to_string();
        audit.reason = format!("second factor: {}", factor.method());
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        metrics::counter!("identity_mfa_checks_total", "result" => "accepted").increment(1);
        Ok(Response::new(StepUpResponse { tokens: Some(tokens) }))
    }

    pub(super) async fn do_get_mfa_status(&self, principal: &Principal) -> Answer<GetMfaStatusResponse> {
        let (user_id, _) = the_user(principal)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let user = users::by_id(&mut conn, user_id, false)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such user")))?;
        let totp = store::totp(&mut conn, user_id, false).await.map_err(internal)?;
        let enabled_at = totp.and_then(|t| t.enabled_at);
        let left = if enabled_at.is_some() {
            store::recovery_codes_left(&mut conn, user_id).await.map_err(internal)?
        } else {
            0
        };
        Ok(Response::new(GetMfaStatusResponse {
            enabled: enabled_at.is_some(),
            enabled_at: enabled_at.map(timestamp),
            recovery_codes_remaining: i32::try_from(left).unwrap_or(i32::MAX),
            required_by_role: self.required_by_role(&user),
        }))
    }

    fn required_by_role(&self, user: &UserRow) -> bool {
        user.roles.iter().any(|r| self.state.config.mfa.required_roles.contains(r))
    }

    pub(super) async fn do_start_mfa_enrollment(
        &self,
        ctx: CallContext,
        principal: &Principal,
    ) -> Answer<StartMfaEnrollmentResponse> {
        let (user_id, _) = the_user(principal)?;
        let config = &self.state.config.mfa;
        let secret = mfa::new_secret();
        let (nonce, sealed) =
            self.state.keys.seal_secret(&secret, &secret_context(user_id)).map_err(internal)?;
        let expires_at = OffsetDateTime::now_utc() + config.enrollment_ttl;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let user = users::by_id(&mut tx, user_id, true)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such user")))?;
        if !store::start_enrollment(&mut tx, user_id, &nonce, &sealed, expires_at).await.map_err(internal)? {
            return Err(mfa_conflict("MFA is already enabled"));
        }
        let audit = user_audit(&ctx, "mfa.enrollment_start", "success", user_id);
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        let uri = mfa::otpauth_uri(&config.issuer, &user.email, &secret);
        let png = mfa::qr_png(&uri).map_err(internal)?;
        Ok(Response::new(StartMfaEnrollmentResponse {
            otpauth_uri: uri,
            qr_code_png: png,
            secret_base32: mfa::base32(&secret),
            expires_at: Some(timestamp(expires_at)),
        }))
    }

    /// Ten new recovery codes, stored hashed in the caller's transaction; answers them in clear.
    async fn new_recovery_codes(&self, tx: &mut PgConnection, user_id: Uuid) -> Result<Vec<String>, Status> {
        let codes: Vec<String> = (0..mfa::RECOVERY_CODES).map(|_| mfa::new_recovery_code()).collect();
        let digests: Vec<Vec<u8>> = codes
            .iter()
            .filter_map(|c| mfa::normalize_recovery_code(c))
            .map(|c| mfa::recovery_code_digest(&c))
            .collect();
        store::replace_recovery_codes(tx, user_id, &digests).await.map_err(internal)?;
        Ok(codes)
    }

    pub(super) async fn do_confirm_mfa_enrollment(
        &self,
        ctx: CallContext,
        principal: &Principal,
        req: ConfirmMfaEnrollmentRequest,
    ) -> Answer<ConfirmMfaEnrollmentResponse> {
        let (user_id, session_id) = the_user(principal)?;
        let Factor::Totp(code) = Factor::totp("totp_code", &req.totp_code)? else {
            return Err(invalid("totp_code", "INVALID_FORMAT", "must be 6 digits"));
        };
        let now = OffsetDateTime::now_utc();
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let user = users::by_id(&mut tx, user_id, false)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such user")))?;
        let row = store::totp(&mut tx, user_id, true).await.map_err(internal)?;
        let row = match row {
            Some(row) if row.enabled_at.is_some() => return Err(mfa_conflict("MFA is already enabled")),
            Some(row) if row.enrollment_expires_at > now => row,
            _ => return Err(mfa_conflict("no enrolment in progress: start one")),
        };
        let secret = self
            .state
            .keys
            .open_secret(&row.secret_nonce, &row.secret_sealed, &secret_context(user_id))
            .map_err(internal)?;
        let Some(step) = mfa::verify(&secret, &code, now.unix_timestamp(), row.last_used_step) else {
            metrics::counter!("identity_mfa_checks_total", "result" => "wrong").increment(1);
            let mut audit = user_audit(&ctx, "mfa.enable", "failure", user_id);
            audit.reason = "wrong first code".to_owned();
            audit::append(&mut tx, audit).await.map_err(internal)?;
            tx.commit().await.map_err(internal)?;
            return Err(invalid_credentials());
        };
        store::accept_step(&mut tx, user_id, step, true).await.map_err(internal)?;
        let codes = self.new_recovery_codes(&mut tx, user_id).await?;
        outbox::publish(
            &mut tx,
            &format!("users/{user_id}"),
            &events::MfaEnabled { user_id: user_id.to_string(), email: user.email.clone() },
        )
        .await
        .map_err(internal)?;
        let audit = user_audit(&ctx, "mfa.enable", "success", user_id);
        audit::append(&mut tx, audit).await.map_err(internal)?;
        // The first code proved the factor: the session is stepped up, as by StepUp.
        sessions::set_acr(&mut tx, session_id, bank_auth::ACR_MFA).await.map_err(internal)?;
        let session = sessions::get(&mut tx, session_id)
            .await
            .map_err(internal)?
            .filter(|s| s.is_live(now))
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::TokenRevoked, "session ended")))?;
        sessions::use_all_refresh(&mut tx, session_id).await.map_err(internal)?;
        let tokens = self.pair(&mut tx, &user, &session).await?;
        tx.commit().await.map_err(internal)?;
        metrics::counter!("identity_mfa_enrollments_total").increment(1);
        Ok(Response::new(ConfirmMfaEnrollmentResponse { recovery_codes: codes, tokens: Some(tokens) }))
    }

    pub(super) async fn do_disable_mfa(
        &self,
        ctx: CallContext,
        principal: &Principal,
        req: DisableMfaRequest,
    ) -> Answer<DisableMfaResponse> {
        let (user_id, _) = the_user(principal)?;
        let (factor, password) = match req.proof {
            Some(disable_mfa_request::Proof::TotpCode(code)) => (Factor::totp("totp_code", &code)?, None),
            Some(disable_mfa_request::Proof::PasswordAndRecoveryCode(proof)) => {
                let factor =
                    Factor::recovery("password_and_recovery_code.recovery_code", &proof.recovery_code)?;
                (factor, Some(required_password("password_and_recovery_code.password", proof.password)?))
            }
            None => {
                return Err(invalid(
                    "totp_code",
                    "REQUIRED",
                    "a TOTP code, or the password and a recovery code",
                ));
            }
        };
        let user = self.user_row(user_id).await?;
        if self.required_by_role(&user) {
            return Err(ServiceError::new(ErrorCode::PermissionDenied, "your role requires MFA").into());
        }
        usable(&user)?;
        if let Some(password) = password
            && !matches!(
                self.state.hasher.verify(&password, Some(&user.password_hash)).await.map_err(busy)?,
                Verified::Yes { .. }
            )
        {
            self.record_login_failure(&user, &ctx, "wrong password (disable MFA)", true, false).await?;
            return Err(invalid_credentials());
        }
        let (mut tx, _) =
            self.proven(&user, &ctx, &factor, "wrong second factor (disable MFA)", not_enabled).await?;
        store::remove(&mut tx, user_id).await.map_err(internal)?;
        outbox::publish(
            &mut tx,
            &format!("users/{user_id}"),
            &events::MfaDisabled {
                user_id: user_id.to_string(),
                email: user.email.clone(),
                disabled_by_admin: String::new(),
            },
        )
        .await
        .map_err(internal)?;
        let mut audit = user_audit(&ctx, "mfa.disable", "success", user_id);
        audit.reason = format!("proof: {}", factor.method());
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(DisableMfaResponse {}))
    }

    pub(super) async fn do_regenerate_recovery_codes(
        &self,
        ctx: CallContext,
        principal: &Principal,
        req: RegenerateRecoveryCodesRequest,
    ) -> Answer<RegenerateRecoveryCodesResponse> {
        let (user_id, _) = the_user(principal)?;
        let factor = Factor::totp("totp_code", &req.totp_code)?;
        let user = self.user_row(user_id).await?;
        usable(&user)?;
        let (mut tx, _) =
            self.proven(&user, &ctx, &factor, "wrong second factor (recovery codes)", not_enabled).await?;
        let codes = self.new_recovery_codes(&mut tx, user_id).await?;
        let audit = user_audit(&ctx, "mfa.recovery_codes_regenerate", "success", user_id);
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(RegenerateRecoveryCodesResponse { recovery_codes: codes }))
    }
}
