//! `bank.identity.v1.IdentityService`: sign-up, login, tokens, sessions, profile, passwords.

use bank_auth::{Principal, principal, require_scope};
use bank_platform::{ErrorCode, FieldViolation, ServiceError, pagination::Page};
use bank_proto::{
    events::v1 as events,
    identity::v1::{identity_service_server::IdentityService, *},
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    account_locked, check_locale, check_name, check_time_zone, entry, internal, invalid, invalid_credentials,
    masked_text, policy_violation, session, timestamp, user,
};
use crate::{
    context::CallContext,
    domain::{
        email::Email,
        password::{self, Password, Violation},
    },
    hashing::{self, Verified},
    state::State,
    storage::{
        audit, clients,
        email_tokens::{self, Purpose},
        outbox, sessions, users,
        users::UserRow,
    },
    tokens::{self, UserGrant},
};

/// The public (user-facing) identity API.
#[derive(Debug, Clone)]
pub struct Api {
    pub(super) state: State,
}

impl Api {
    /// The API over `state`.
    #[must_use]
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

pub(super) type Answer<T> = Result<Response<T>, Status>;

pub(super) fn busy(err: hashing::Error) -> Status {
    match err {
        hashing::Error::Busy => {
            metrics::counter!("identity_hashing_rejected_total").increment(1);
            ServiceError::new(ErrorCode::ResourceExhausted, "too many sign-ins at once, retry shortly").into()
        }
        hashing::Error::Hash(_) => internal(err),
    }
}

pub(super) fn the_user(principal: &Principal) -> Result<(Uuid, Uuid), Status> {
    match (principal.user_id(), principal.session_id) {
        (Some(user), Some(session)) => Ok((user, session)),
        _ => Err(ServiceError::new(ErrorCode::PermissionDenied, "a user token is required").into()),
    }
}

fn parse_email(field: &str, value: &str) -> Result<Email, Status> {
    Email::parse(value).map_err(|e| invalid(field, e.code(), &e.to_string()))
}

pub(super) fn required_password(field: &str, value: String) -> Result<Password, Status> {
    if value.is_empty() {
        return Err(invalid(field, "REQUIRED", "is required"));
    }
    Ok(Password::new(value))
}

/// `emails/<sha256 of the canonical address>`: the subject of events about an unknown address.
fn hashed_email(email: &Email) -> String {
    hex::encode(Sha256::digest(email.canonical().as_bytes()))
}

impl Api {
    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Refuses a password that breaks the policy or matches one of the user's recent ones.
    async fn check_new_password(
        &self,
        field: &str,
        password: &Password,
        email: &str,
        given_name: &str,
        family_name: &str,
        history: &[String],
    ) -> Result<(), Status> {
        let mut violations = password::check(
            &self.state.config.password,
            password,
            &password::Context { email, given_name, family_name },
        );
        for old in history.iter().take(self.state.config.password.history) {
            if matches!(
                self.state.hasher.verify(password, Some(old)).await.map_err(busy)?,
                Verified::Yes { .. }
            ) {
                violations.push(Violation::Reused);
                break;
            }
        }
        if violations.is_empty() { Ok(()) } else { Err(policy_violation(field, &violations)) }
    }

    /// Creates a session with its first refresh token and answers the token pair. Runs inside the
    /// caller's transaction; the caller commits and then publishes the token version.
    pub(super) async fn open_session(
        &self,
        conn: &mut sqlx::PgConnection,
        user: &UserRow,
        ctx: &CallContext,
        device_name: &str,
        acr: &str,
    ) -> Result<TokenPair, Status> {
        let now = Self::now();
        let ttl = &self.state.config.tokens;
        let session = sessions::insert(
            conn,
            &sessions::NewSession {
                session_id: Uuid::now_v7(),
                user_id: user.user_id,
                acr,
                ip_address: &ctx.ip_address,
                user_agent: &ctx.user_agent,
                device_name,
                expires_at: now + ttl.session_ttl,
            },
        )
        .await
        .map_err(internal)?;
        self.pair(conn, user, &session).await
    }

    /// The `SessionCreated` event of a new session (login), in the caller's transaction.
    pub(super) async fn session_created(
        &self,
        conn: &mut sqlx::PgConnection,
        user: &UserRow,
        ctx: &CallContext,
        tokens: &TokenPair,
        device_name: String,
        mfa_authenticated: bool,
    ) -> Result<(), Status> {
        outbox::publish(
            conn,
            &format!("users/{}", user.user_id),
            &events::SessionCreated {
                user_id: user.user_id.to_string(),
                email: user.email.clone(),
                session_id: tokens.session_id.clone(),
                ip_address: ctx.ip_address.clone(),
                user_agent: ctx.user_agent.clone(),
                device_name,
                mfa_authenticated,
                new_device: false,
            },
        )
        .await
        .map_err(internal)?;
        Ok(())
    }

    /// The pair the rotation of `token` answered, when `presented` (that token) comes again within
    /// the reuse interval (the row then carries the sealed pair) and the pair's refresh token is
    /// still live in a live session of an active user; `None` makes the presentation a reuse.
    async fn repeated_rotation(
        conn: &mut sqlx::PgConnection,
        presented: &str,
        token: &sessions::RefreshRow,
        session: &sessions::SessionRow,
        user: &UserRow,
        now: OffsetDateTime,
    ) -> Result<Option<TokenPair>, Status> {
        let Some(sealed) = token.successor.as_deref() else {
            return Ok(None);
        };
        if !session.is_live(now) || user.status != "active" {
            return Ok(None);
        }
        let Some(pair) = tokens::open_for_holder(presented, sealed)
            .and_then(|plain| <TokenPair as prost::Message>::decode(plain.as_slice()).ok())
        else {
            return Ok(None);
        };
        let live =
            sessions::refresh_is_live(conn, &tokens::digest(&pair.refresh_token)).await.map_err(internal)?;
        Ok(live.then_some(pair))
    }

    /// A new refresh token for `session` plus an access token.
    pub(super) async fn pair(
        &self,
        conn: &mut sqlx::PgConnection,
        user: &UserRow,
        session: &sessions::SessionRow,
    ) -> Result<TokenPair, Status> {
        let now = Self::now();
        let refresh = tokens::opaque();
        let refresh_expires = (now + self.state.config.tokens.refresh_idle_ttl).min(session.expires_at);
        sessions::insert_refresh(conn, session.session_id, &tokens::digest(&refresh), refresh_expires)
            .await
            .map_err(internal)?;
        let access = self
            .state
            .issuer
            .user(&UserGrant {
                user_id: user.user_id,
                session_id: session.session_id,
                token_version: user.token_version,
                roles: &user.roles,
                acr: &session.acr,
                auth_time: session.auth_time,
            })
            .await
            .map_err(internal)?;
        Ok(TokenPair {
            access_token: access.token,
            token_type: "Bearer".to_owned(),
            access_token_expires_at: Some(timestamp(access.expires_at)),
            refresh_token: refresh,
            refresh_token_expires_at: Some(timestamp(refresh_expires)),
            session_id: session.session_id.to_string(),
        })
    }

    /// Sends (records) a verification email for `email` of `user`.
    async fn send_verification(
        &self,
        conn: &mut sqlx::PgConnection,
        user: &UserRow,
        email: &str,
        purpose: Purpose,
    ) -> Result<(), Status> {
        let token = tokens::opaque();
        let expires_at = Self::now() + self.state.config.email.verification_ttl;
        email_tokens::replace(conn, user.user_id, purpose, email, &tokens::digest(&token), expires_at)
            .await
            .map_err(internal)?;
        let event_purpose = match purpose {
            Purpose::ChangeEmail => events::VerificationPurpose::EmailChange,
            Purpose::VerifyEmail | Purpose::ResetPassword => events::VerificationPurpose::Registration,
        };
        outbox::publish(
            conn,
            &format!("users/{}", user.user_id),
            &events::EmailVerificationRequested {
                user_id: user.user_id.to_string(),
                email: email.to_owned(),
                token: token.clone(),
                expires_at: Some(timestamp(expires_at)),
                purpose: event_purpose as i32,
                given_name: user.given_name.clone(),
                locale: user.locale.clone(),
            },
        )
        .await
        .map_err(internal)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl IdentityService for Api {
    #[tracing::instrument(skip_all)]
    async fn register(&self, request: Request<RegisterRequest>) -> Answer<RegisterResponse> {
        let ctx = CallContext::of(&request);
        let req = request.into_inner();
        let mut violations: Vec<FieldViolation> = Vec::new();
        let email = Email::parse(&req.email);
        if let Err(e) = &email {
            violations.push(FieldViolation::new("email", e.code(), e.to_string()));
        }
        violations.extend(check_name("given_name", &req.given_name, true, 100));
        violations.extend(check_name("family_name", &req.family_name, false, 100));
        let locale = if req.locale.is_empty() { "en".to_owned() } else { req.locale.clone() };
        let time_zone = if req.time_zone.is_empty() { "UTC".to_owned() } else { req.time_zone.clone() };
        violations.extend(check_locale("locale", &locale));
        violations.extend(check_time_zone("time_zone", &time_zone));
        if req.password.is_empty() {
            violations.push(FieldViolation::new("password", "REQUIRED", "is required"));
        }
        let Ok(email) = email else { return Err(ServiceError::invalid(violations).into()) };
        if !violations.is_empty() {
            return Err(ServiceError::invalid(violations).into());
        }
        let given_name = req.given_name.trim().to_owned();
        let family_name = req.family_name.trim().to_owned();
        let password = Password::new(req.password);
        self.check_new_password("password", &password, email.as_str(), &given_name, &family_name, &[])
            .await?;
        // Hash whether or not the address is taken: both answers take as long.
        let hash = self.state.hasher.hash(&password).await.map_err(busy)?;

        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let user_id = Uuid::now_v7();
        let inserted = users::insert(
            &mut tx,
            &users::NewUser {
                user_id,
                email: email.as_str(),
                email_canonical: &email.canonical(),
                given_name: &given_name,
                family_name: &family_name,
                locale: &locale,
                time_zone: &time_zone,
                roles: &["customer".to_owned()],
                verified: false,
                password_hash: &hash,
            },
        )
        .await
        .map_err(internal)?;
        match inserted {
            Some(user) => {
                users::add_history(&mut tx, user.user_id, &hash, self.state.config.password.history)
                    .await
                    .map_err(internal)?;
                outbox::publish(
                    &mut tx,
                    &format!("users/{}", user.user_id),
                    &events::UserRegistered {
                        user_id: user.user_id.to_string(),
                        email: user.email.clone(),
                        given_name: user.given_name.clone(),
                        locale: user.locale.clone(),
                    },
                )
                .await
                .map_err(internal)?;
                self.send_verification(&mut tx, &user, &user.email, Purpose::VerifyEmail).await?;
                let mut audit = entry(&ctx, "user.register", "success");
                audit.actor_id = user.user_id.to_string();
                audit.target_type = "user";
                audit.target_id = user.user_id.to_string();
                audit::append(&mut tx, audit).await.map_err(internal)?;
            }
            None => {
                // Taken: the same answer; an unverified owner gets a fresh verification email.
                let existing = users::by_email(&mut tx, &email.canonical()).await.map_err(internal)?;
                let mut audit = entry(&ctx, "user.register", "failure");
                audit.actor_type = "anonymous";
                audit.reason = "address already registered".to_owned();
                audit.target_type = "user";
                if let Some(existing) = existing {
                    audit.target_id = existing.user_id.to_string();
                    if existing.email_verified_at.is_none() {
                        self.send_verification(&mut tx, &existing, &existing.email, Purpose::VerifyEmail)
                            .await?;
                    }
                }
                audit::append(&mut tx, audit).await.map_err(internal)?;
            }
        }
        tx.commit().await.map_err(internal)?;
        metrics::counter!("identity_registrations_total").increment(1);
        Ok(Response::new(RegisterResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_email(&self, request: Request<VerifyEmailRequest>) -> Answer<VerifyEmailResponse> {
        let ctx = CallContext::of(&request);
        let req = request.into_inner();
        if req.token.is_empty() {
            return Err(invalid("token", "REQUIRED", "is required"));
        }
        let refused = || {
            Status::from(ServiceError::new(ErrorCode::InvalidVerificationToken, "invalid or expired token"))
        };
        let hash = tokens::digest(&req.token);
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let token = email_tokens::for_update(&mut tx, &hash, &[Purpose::VerifyEmail, Purpose::ChangeEmail])
            .await
            .map_err(internal)?
            .ok_or_else(refused)?;
        let user = users::by_id(&mut tx, token.user_id, true).await.map_err(internal)?.ok_or_else(refused)?;
        if token.used_at.is_some() {
            // A repeat of a used token succeeds while the address it verified is still current.
            return if user.email == token.email && user.email_verified_at.is_some() {
                Ok(Response::new(VerifyEmailResponse {}))
            } else {
                Err(refused())
            };
        }
        if token.expires_at <= Self::now() {
            return Err(refused());
        }
        let email = Email::parse(&token.email).map_err(|_| refused())?;
        let updated = users::verify_email(&mut tx, user.user_id, email.as_str(), &email.canonical())
            .await
            .map_err(internal)?
            .ok_or_else(refused)?;
        email_tokens::mark_used(&mut tx, &hash).await.map_err(internal)?;
        outbox::publish(
            &mut tx,
            &format!("users/{}", user.user_id),
            &events::EmailVerified {
                user_id: user.user_id.to_string(),
                email: updated.email.clone(),
                previous_email: if user.email == updated.email { String::new() } else { user.email.clone() },
            },
        )
        .await
        .map_err(internal)?;
        let mut audit = entry(&ctx, "user.verify_email", "success");
        audit.actor_id = user.user_id.to_string();
        audit.target_type = "user";
        audit.target_id = user.user_id.to_string();
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(VerifyEmailResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn resend_verification_email(
        &self,
        request: Request<ResendVerificationEmailRequest>,
    ) -> Answer<ResendVerificationEmailResponse> {
        let req = request.into_inner();
        let email = parse_email("email", &req.email)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        if let Some(user) = users::by_email(&mut tx, &email.canonical()).await.map_err(internal)?
            && user.email_verified_at.is_none()
            && user.status != "disabled"
        {
            self.send_verification(&mut tx, &user, &user.email, Purpose::VerifyEmail).await?;
        }
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(ResendVerificationEmailResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<LoginRequest>) -> Answer<LoginResponse> {
        let ctx = CallContext::of(&request);
        let req = request.into_inner();
        let email = parse_email("email", &req.email)?;
        let password = required_password("password", req.password)?;
        let device_name = masked_text(&req.device_name.trim().chars().take(100).collect::<String>());
        let now = Self::now();
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let user = users::by_email(&mut conn, &email.canonical()).await.map_err(internal)?;
        drop(conn);

        let Some(user) = user else {
            // Unknown address: same work (a dummy hash), same answer.
            self.state.hasher.verify(&password, None).await.map_err(busy)?;
            let mut tx = self.state.pool.begin().await.map_err(internal)?;
            let mut audit = entry(&ctx, "user.login", "failure");
            audit.actor_type = "anonymous";
            audit.target_type = "email";
            audit.target_id = hashed_email(&email);
            audit.reason = "unknown address".to_owned();
            audit::append(&mut tx, audit).await.map_err(internal)?;
            outbox::publish(
                &mut tx,
                &format!("emails/{}", hashed_email(&email)),
                &events::LoginFailed {
                    user_id: String::new(),
                    failure_count: 0,
                    ip_address: ctx.ip_address.clone(),
                    user_agent: ctx.user_agent.clone(),
                    mfa_step: false,
                },
            )
            .await
            .map_err(internal)?;
            tx.commit().await.map_err(internal)?;
            metrics::counter!("identity_logins_total", "result" => "failure").increment(1);
            return Err(invalid_credentials());
        };

        if let Some(until) = user.locked_until.filter(|until| *until > now) {
            // The same work as an open account. A wrong password stays indistinguishable; the
            // right one proves the caller, who is told the truth: locked, and until when.
            let verified =
                self.state.hasher.verify(&password, Some(&user.password_hash)).await.map_err(busy)?;
            let proven = matches!(verified, Verified::Yes { .. }) && user.status != "disabled";
            let why = if proven { "locked (right password)" } else { "locked" };
            self.record_login_failure(&user, &ctx, why, false, false).await?;
            metrics::counter!("identity_logins_total", "result" => "locked").increment(1);
            if !proven {
                return Err(invalid_credentials());
            }
            return Err(account_locked(until, now));
        }
        let verified = self.state.hasher.verify(&password, Some(&user.password_hash)).await.map_err(busy)?;
        let Verified::Yes { needs_rehash } = verified else {
            self.record_login_failure(&user, &ctx, "wrong password", true, false).await?;
            metrics::counter!("identity_logins_total", "result" => "failure").increment(1);
            return Err(invalid_credentials());
        };
        if user.status == "disabled" {
            self.record_login_failure(&user, &ctx, "user disabled", false, false).await?;
            metrics::counter!("identity_logins_total", "result" => "disabled").increment(1);
            return Err(invalid_credentials());
        }
        if user.status == "pending_verification" {
            metrics::counter!("identity_logins_total", "result" => "unverified").increment(1);
            return Err(
                ServiceError::new(ErrorCode::EmailNotVerified, "verify your email address first").into()
            );
        }
        let rehashed =
            if needs_rehash { Some(self.state.hasher.hash(&password).await.map_err(busy)?) } else { None };
        if user.mfa_enabled {
            return self.mfa_challenge(&user, &ctx, &device_name, rehashed.as_deref()).await;
        }

        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let Some(user) =
            users::record_success(&mut tx, user.user_id, rehashed.as_deref()).await.map_err(internal)?
        else {
            // Locked by concurrent failures between the check and now.
            return Err(invalid_credentials());
        };
        let tokens = self.open_session(&mut tx, &user, &ctx, &device_name, "pwd").await?;
        self.session_created(&mut tx, &user, &ctx, &tokens, device_name, false).await?;
        let mut audit = entry(&ctx, "user.login", "success");
        audit.actor_id = user.user_id.to_string();
        audit.target_type = "session";
        audit.target_id = tokens.session_id.clone();
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        metrics::counter!("identity_logins_total", "result" => "success").increment(1);
        Ok(Response::new(LoginResponse { outcome: Some(login_response::Outcome::Tokens(tokens)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn complete_mfa_login(
        &self,
        request: Request<CompleteMfaLoginRequest>,
    ) -> Answer<CompleteMfaLoginResponse> {
        let ctx = CallContext::of(&request);
        self.do_complete_mfa_login(ctx, request.into_inner()).await
    }

    #[tracing::instrument(skip_all)]
    async fn step_up(&self, request: Request<StepUpRequest>) -> Answer<StepUpResponse> {
        let ctx = CallContext::of(&request);
        let caller = principal(&request)?.clone();
        self.do_step_up(ctx, &caller, request.into_inner()).await
    }

    async fn get_mfa_status(&self, request: Request<GetMfaStatusRequest>) -> Answer<GetMfaStatusResponse> {
        self.do_get_mfa_status(principal(&request)?).await
    }

    #[tracing::instrument(skip_all)]
    async fn start_mfa_enrollment(
        &self,
        request: Request<StartMfaEnrollmentRequest>,
    ) -> Answer<StartMfaEnrollmentResponse> {
        let ctx = CallContext::of(&request);
        self.do_start_mfa_enrollment(ctx, principal(&request)?).await
    }

    #[tracing::instrument(skip_all)]
    async fn confirm_mfa_enrollment(
        &self,
        request: Request<ConfirmMfaEnrollmentRequest>,
    ) -> Answer<ConfirmMfaEnrollmentResponse> {
        let ctx = CallContext::of(&request);
        let caller = principal(&request)?.clone();
        self.do_confirm_mfa_enrollment(ctx, &caller, request.into_inner()).await
    }

    #[tracing::instrument(skip_all)]
    async fn disable_mfa(&self, request: Request<DisableMfaRequest>) -> Answer<DisableMfaResponse> {
        let ctx = CallContext::of(&request);
        let caller = principal(&request)?.clone();
        self.do_disable_mfa(ctx, &caller, request.into_inner()).await
    }

    #[tracing::instrument(skip_all)]
    async fn regenerate_recovery_codes(
        &self,
        request: Request<RegenerateRecoveryCodesRequest>,
    ) -> Answer<RegenerateRecoveryCodesResponse> {
        let ctx = CallContext::of(&request);
        let caller = principal(&request)?.clone();
        self.do_regenerate_recovery_codes(ctx, &caller, request.into_inner()).await
    }

    #[tracing::instrument(skip_all)]
    async fn refresh_tokens(&self, request: Request<RefreshTokensRequest>) -> Answer<RefreshTokensResponse> {
        let ctx = CallContext::of(&request);
        let req = request.into_inner();
        if req.refresh_token.is_empty() {
            return Err(invalid("refresh_token", "REQUIRED", "is required"));
        }
        let refused =
            || Status::from(ServiceError::new(ErrorCode::InvalidRefreshToken, "invalid refresh token"));
        let hash = tokens::digest(&req.refresh_token);
        let now = Self::now();
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        // The row lock serialises concurrent refreshes of one token: the second sees it used.
        let reuse_interval = self.state.config.tokens.refresh_reuse_interval;
        let token = sessions::refresh_for_update(&mut tx, &hash, reuse_interval)
            .await
            .map_err(internal)?
            .ok_or_else(refused)?;
        let session =
            sessions::get(&mut tx, token.session_id).await.map_err(internal)?.ok_or_else(refused)?;
        let user =
            users::by_id(&mut tx, session.user_id, false).await.map_err(internal)?.ok_or_else(refused)?;

        if token.used_at.is_some() {
            // The same rotation asked for again within the reuse interval (two tabs, a lost answer):
            // the same successor pair, while it is still the session's live one (ADR 0008).
            if let Some(pair) =
                Self::repeated_rotation(&mut tx, &req.refresh_token, &token, &session, &user, now).await?
            {
                tx.commit().await.map_err(internal)?;
                metrics::counter!("identity_refresh_repeats_total").increment(1);
                tracing::info!(session_id = %session.session_id, "refresh repeated within the reuse interval: same pair");
                return Ok(Response::new(RefreshTokensResponse { tokens: Some(pair) }));
            }
            // Reuse of a rotated token: the family is compromised. Kill the session (RFC 9700).
            let revoked = session.revoked_at.is_none();
            if revoked {
                sessions::revoke(&mut tx, user.user_id, session.session_id, "refresh_token_reuse")
                    .await
                    .map_err(internal)?;
                sessions::use_all_refresh(&mut tx, session.session_id).await.map_err(internal)?;
                outbox::publish(
                    &mut tx,
                    &format!("users/{}", user.user_id),
                    &events::RefreshTokenReuseDetected {
                        user_id: user.user_id.to_string(),
                        email: user.email.clone(),
                        session_id: session.session_id.to_string(),
                        ip_address: ctx.ip_address.clone(),
                        user_agent: ctx.user_agent.clone(),
                    },
                )
                .await
                .map_err(internal)?;
            }
            let mut audit = entry(&ctx, "session.refresh_token_reuse", "denied");
            audit.actor_type = "anonymous";
            audit.target_type = "session";
            audit.target_id = session.session_id.to_string();
            audit.reason = "a rotated refresh token was presented; session revoked".to_owned();
            audit::append(&mut tx, audit).await.map_err(internal)?;
            tx.commit().await.map_err(internal)?;
            if revoked {
                self.state.revocations.sessions(user.user_id, &[session.session_id]).await;
                metrics::counter!("identity_refresh_reuse_total").increment(1);
                tracing::warn!(user_id = %user.user_id, session_id = %session.session_id, "refresh token reuse: session revoked");
            }
            return Err(refused());
        }
        if token.expires_at <= now || !session.is_live(now) || user.status != "active" {
            return Err(refused());
        }
        sessions::touch(&mut tx, session.session_id, &ctx.ip_address).await.map_err(internal)?;
        let tokens = self.pair(&mut tx, &user, &session).await?;
        let successor = (!reuse_interval.is_zero())
            .then(|| tokens::seal_for_holder(&req.refresh_token, &prost::Message::encode_to_vec(&tokens)));
        sessions::use_refresh(&mut tx, session.session_id, &hash, successor.as_deref())
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(RefreshTokensResponse { tokens: Some(tokens) }))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(&self, request: Request<LogoutRequest>) -> Answer<LogoutResponse> {
        let ctx = CallContext::of(&request);
        let principal = principal(&request)?.clone();
        let (user_id, session_id) = the_user(&principal)?;
        let expires_at = OffsetDateTime::from_unix_timestamp(principal.expires_at).map_err(internal)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        sessions::revoke(&mut tx, user_id, session_id, "logout").await.map_err(internal)?;
        sessions::use_all_refresh(&mut tx, session_id).await.map_err(internal)?;
        sessions::revoke_token(&mut tx, principal.token_id, expires_at).await.map_err(internal)?;
        let mut audit = entry(&ctx, "session.logout", "success");
        audit.actor_id = user_id.to_string();
        audit.target_type = "session";
        audit.target_id = session_id.to_string();
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.blocklist(user_id, principal.token_id, expires_at).await;
        self.state.revocations.sessions(user_id, &[session_id]).await;
        Ok(Response::new(LogoutResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn logout_everywhere(
        &self,
        request: Request<LogoutEverywhereRequest>,
    ) -> Answer<LogoutEverywhereResponse> {
        let ctx = CallContext::of(&request);
        let principal = principal(&request)?.clone();
        let (user_id, _) = the_user(&principal)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let token_version = users::bump_token_version(&mut tx, user_id).await.map_err(internal)?;
        let revoked =
            sessions::revoke_all(&mut tx, user_id, None, "logout_everywhere").await.map_err(internal)?;
        let mut audit = entry(&ctx, "session.logout_everywhere", "success");
        audit.actor_id = user_id.to_string();
        audit.target_type = "user";
        audit.target_id = user_id.to_string();
        audit.reason = format!("{} sessions revoked", revoked.len());
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.token_version(user_id, token_version).await;
        self.state.revocations.sessions(user_id, &revoked).await;
        Ok(Response::new(LogoutEverywhereResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn request_password_reset(
        &self,
        request: Request<RequestPasswordResetRequest>,
    ) -> Answer<RequestPasswordResetResponse> {
        let ctx = CallContext::of(&request);
        let req = request.into_inner();
        let email = parse_email("email", &req.email)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        if let Some(user) = users::by_email(&mut tx, &email.canonical()).await.map_err(internal)?
            && user.status != "disabled"
        {
            let token = tokens::opaque();
            let expires_at = Self::now() + self.state.config.email.reset_ttl;
            email_tokens::replace(
                &mut tx,
                user.user_id,
                Purpose::ResetPassword,
                &user.email,
                &tokens::digest(&token),
                expires_at,
            )
            .await
            .map_err(internal)?;
            outbox::publish(
                &mut tx,
                &format!("users/{}", user.user_id),
                &events::PasswordResetRequested {
                    user_id: user.user_id.to_string(),
                    email: user.email.clone(),
                    token,
                    expires_at: Some(timestamp(expires_at)),
                    locale: user.locale.clone(),
                    ip_address: ctx.ip_address.clone(),
                },
            )
            .await
            .map_err(internal)?;
            let mut audit = entry(&ctx, "user.password_reset_request", "success");
            audit.actor_type = "anonymous";
            audit.target_type = "user";
            audit.target_id = user.user_id.to_string();
            audit::append(&mut tx, audit).await.map_err(internal)?;
        }
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(RequestPasswordResetResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn confirm_password_reset(
        &self,
        request: Request<ConfirmPasswordResetRequest>,
    ) -> Answer<ConfirmPasswordResetResponse> {
        let ctx = CallContext::of(&request);
        let req = request.into_inner();
        if req.token.is_empty() {
            return Err(invalid("token", "REQUIRED", "is required"));
        }
        let password = required_password("new_password", req.new_password)?;
        let refused = || {
            Status::from(ServiceError::new(ErrorCode::InvalidVerificationToken, "invalid or expired token"))
        };
        let hash = tokens::digest(&req.token);

        // Look the token up first (without using it up) so a bad password does not burn it.
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let token =
            email_tokens::for_update(&mut conn, &hash, &[Purpose::ResetPassword]).await.map_err(internal)?;
        let token =
            token.filter(|t| t.used_at.is_none() && t.expires_at > Self::now()).ok_or_else(refused)?;
        let user =
            users::by_id(&mut conn, token.user_id, false).await.map_err(internal)?.ok_or_else(refused)?;
        let history = users::history(&mut conn, user.user_id).await.map_err(internal)?;
        drop(conn);
        self.check_new_password(
            "new_password",
            &password,
            &user.email,
            &user.given_name,
            &user.family_name,
            &history,
        )
        .await?;
        let new_hash = self.state.hasher.hash(&password).await.map_err(busy)?;

        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let token = email_tokens::for_update(&mut tx, &hash, &[Purpose::ResetPassword])
            .await
            .map_err(internal)?
            .filter(|t| t.used_at.is_none() && t.expires_at > Self::now())
            .ok_or_else(refused)?;
        email_tokens::mark_used(&mut tx, &hash).await.map_err(internal)?;
        let updated =
            users::set_password(&mut tx, token.user_id, &new_hash, self.state.config.password.history)
                .await
                .map_err(internal)?;
        // The reset proved control of the address.
        if updated.email_verified_at.is_none() && updated.email == token.email {
            users::verify_email(&mut tx, updated.user_id, &updated.email, &updated.email.to_lowercase())
                .await
                .map_err(internal)?;
        }
        let revoked =
            sessions::revoke_all(&mut tx, updated.user_id, None, "password_reset").await.map_err(internal)?;
        outbox::publish(
            &mut tx,
            &format!("users/{}", updated.user_id),
            &events::PasswordChanged {
                user_id: updated.user_id.to_string(),
                email: updated.email.clone(),
                method: events::PasswordChangeMethod::Reset as i32,
                ip_address: ctx.ip_address.clone(),
                user_agent: ctx.user_agent.clone(),
            },
        )
        .await
        .map_err(internal)?;
        let mut audit = entry(&ctx, "user.password_reset", "success");
        audit.actor_type = "anonymous";
        audit.target_type = "user";
        audit.target_id = updated.user_id.to_string();
        audit.reason = format!("lock cleared; {} sessions revoked", revoked.len());
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.token_version(updated.user_id, updated.token_version).await;
        self.state.revocations.sessions(updated.user_id, &revoked).await;
        Ok(Response::new(ConfirmPasswordResetResponse {}))
    }

    async fn get_jwks(&self, _request: Request<GetJwksRequest>) -> Answer<GetJwksResponse> {
        Ok(Response::new(GetJwksResponse { keys: self.state.keys.jwks().await }))
    }

    #[tracing::instrument(skip_all)]
    async fn issue_service_token(
        &self,
        request: Request<IssueServiceTokenRequest>,
    ) -> Answer<IssueServiceTokenResponse> {
        let ctx = CallContext::of(&request);
        let req = request.into_inner();
        if req.client_id.is_empty() {
            return Err(invalid("client_id", "REQUIRED", "is required"));
        }
        let secret = required_password("client_secret", req.client_secret)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let client = clients::get(&mut conn, &req.client_id).await.map_err(internal)?;
        drop(conn);
        let now = Self::now();
        let authenticated = match &client {
            None => {
                self.state.hasher.verify(&secret, None).await.map_err(busy)?;
                false
            }
            Some(client) => {
                let current =
                    self.state.hasher.verify(&secret, Some(&client.secret_hash)).await.map_err(busy)?;
                let previous = match (&client.previous_secret_hash, client.previous_secret_expires_at) {
                    (Some(hash), Some(until)) if until > now && matches!(current, Verified::No) => {
                        self.state.hasher.verify(&secret, Some(hash)).await.map_err(busy)?
                    }
                    _ => Verified::No,
                };
                client.status == "active"
                    && (matches!(current, Verified::Yes { .. }) || matches!(previous, Verified::Yes { .. }))
            }
        };
        let Some(client) = client.filter(|_| authenticated) else {
            let mut tx = self.state.pool.begin().await.map_err(internal)?;
            let mut audit = entry(&ctx, "service_client.token", "failure");
            audit.actor_type = "anonymous";
            audit.target_type = "service_client";
            audit.target_id = req.client_id.chars().take(100).collect();
            audit::append(&mut tx, audit).await.map_err(internal)?;
            tx.commit().await.map_err(internal)?;
            return Err(invalid_credentials());
        };
        let scopes = if req.scopes.is_empty() {
            client.scopes.clone()
        } else if req.scopes.iter().all(|s| client.scopes.contains(s)) {
            req.scopes.clone()
        } else {
            return Err(
                ServiceError::new(ErrorCode::PermissionDenied, "scope not granted to this client").into()
            );
        };
        let token = self.state.issuer.service(&client.client_id, &scopes).await.map_err(internal)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        clients::touch(&mut conn, &client.client_id).await.map_err(internal)?;
        Ok(Response::new(IssueServiceTokenResponse {
            access_token: token.token,
            token_type: "Bearer".to_owned(),
            expires_at: Some(timestamp(token.expires_at)),
            scopes,
        }))
    }

    async fn check_token_status(
        &self,
        request: Request<CheckTokenStatusRequest>,
    ) -> Answer<CheckTokenStatusResponse> {
        require_scope(&request, "identity:introspect")?;
        let req = request.into_inner();
        let jti = bank_platform::grpc::fields::uuid("token_id", &req.token_id)?;
        if req.user_id.is_empty() {
            return Err(invalid("user_id", "REQUIRED", "is required"));
        }
        let session = if req.session_id.is_empty() {
            None
        } else {
            Some(bank_platform::grpc::fields::uuid("session_id", &req.session_id)?)
        };
        let token_version = session.map(|_| req.token_version);
        let local = crate::state::LocalStatus::new(self.state.pool.clone());
        let (status, current) =
            local.check(jti, &req.user_id, session, token_version).await.map_err(internal)?;
        Ok(Response::new(CheckTokenStatusResponse {
            revoked: status == bank_auth::TokenStatus::Revoked,
            current_token_version: current,
        }))
    }

    async fn get_my_profile(&self, request: Request<GetMyProfileRequest>) -> Answer<GetMyProfileResponse> {
        let (user_id, _) = the_user(principal(&request)?)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let row = users::by_id(&mut conn, user_id, false)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such user")))?;
        Ok(Response::new(GetMyProfileResponse { user: Some(user(&row, false)) }))
    }

    async fn update_my_profile(
        &self,
        request: Request<UpdateMyProfileRequest>,
    ) -> Answer<UpdateMyProfileResponse> {
        let (user_id, _) = the_user(principal(&request)?)?;
        let req = request.into_inner();
        let mut violations = Vec::new();
        if let Some(v) = &req.given_name {
            violations.extend(check_name("given_name", v, true, 100));
        }
        if let Some(v) = &req.family_name {
            violations.extend(check_name("family_name", v, false, 100));
        }
        if let Some(v) = &req.locale {
            violations.extend(check_locale("locale", v));
        }
        if let Some(v) = &req.time_zone {
            violations.extend(check_time_zone("time_zone", v));
        }
        if !violations.is_empty() {
            return Err(ServiceError::invalid(violations).into());
        }
        let change = users::ProfileChange {
            given_name: req.given_name.map(|v| v.trim().to_owned()),
            family_name: req.family_name.map(|v| v.trim().to_owned()),
            locale: req.locale,
            time_zone: req.time_zone,
        };
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let row = users::update_profile(&mut conn, user_id, &change)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::NotFound, "no such user")))?;
        Ok(Response::new(UpdateMyProfileResponse { user: Some(user(&row, false)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Answer<ChangePasswordResponse> {
        let ctx = CallContext::of(&request);
        let caller = principal(&request)?.clone();
        let (user_id, session_id) = the_user(&caller)?;
        self.step_up_if_enrolled(&caller, user_id).await?;
        let req = request.into_inner();
        let current = required_password("current_password", req.current_password)?;
        let new = required_password("new_password", req.new_password)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let row = users::by_id(&mut conn, user_id, false)
            .await
            .map_err(internal)?
            .ok_or_else(invalid_credentials)?;
        let history = users::history(&mut conn, user_id).await.map_err(internal)?;
        drop(conn);
        if row.is_locked(Self::now()) {
            return Err(invalid_credentials());
        }
        if !matches!(
            self.state.hasher.verify(&current, Some(&row.password_hash)).await.map_err(busy)?,
            Verified::Yes { .. }
        ) {
            self.record_login_failure(&row, &ctx, "wrong current password", true, false).await?;
            return Err(invalid_credentials());
        }
        self.check_new_password(
            "new_password",
            &new,
            &row.email,
            &row.given_name,
            &row.family_name,
            &history,
        )
        .await?;
        let new_hash = self.state.hasher.hash(&new).await.map_err(busy)?;

        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let updated = users::set_password(&mut tx, user_id, &new_hash, self.state.config.password.history)
            .await
            .map_err(internal)?;
        let revoked = sessions::revoke_all(&mut tx, user_id, Some(session_id), "password_change")
            .await
            .map_err(internal)?;
        let session = sessions::get(&mut tx, session_id)
            .await
            .map_err(internal)?
            .filter(|s| s.is_live(Self::now()))
            .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::TokenRevoked, "session ended")))?;
        sessions::use_all_refresh(&mut tx, session_id).await.map_err(internal)?;
        let tokens = self.pair(&mut tx, &updated, &session).await?;
        outbox::publish(
            &mut tx,
            &format!("users/{user_id}"),
            &events::PasswordChanged {
                user_id: user_id.to_string(),
                email: updated.email.clone(),
                method: events::PasswordChangeMethod::Change as i32,
                ip_address: ctx.ip_address.clone(),
                user_agent: ctx.user_agent.clone(),
            },
        )
        .await
        .map_err(internal)?;
        let mut audit = entry(&ctx, "user.password_change", "success");
        audit.actor_id = user_id.to_string();
        audit.target_type = "user";
        audit.target_id = user_id.to_string();
        audit.reason = format!("{} other sessions revoked", revoked.len());
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.token_version(user_id, updated.token_version).await;
        self.state.revocations.sessions(user_id, &revoked).await;
        Ok(Response::new(ChangePasswordResponse { tokens: Some(tokens) }))
    }

    #[tracing::instrument(skip_all)]
    async fn request_email_change(
        &self,
        request: Request<RequestEmailChangeRequest>,
    ) -> Answer<RequestEmailChangeResponse> {
        let ctx = CallContext::of(&request);
        let caller = principal(&request)?.clone();
        let (user_id, _) = the_user(&caller)?;
        self.step_up_if_enrolled(&caller, user_id).await?;
        let req = request.into_inner();
        let new_email = parse_email("new_email", &req.new_email)?;
        let password = required_password("current_password", req.current_password)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let row = users::by_id(&mut conn, user_id, false)
            .await
            .map_err(internal)?
            .ok_or_else(invalid_credentials)?;
        drop(conn);
        if row.is_locked(Self::now())
            || !matches!(
                self.state.hasher.verify(&password, Some(&row.password_hash)).await.map_err(busy)?,
                Verified::Yes { .. }
            )
        {
            self.record_login_failure(&row, &ctx, "wrong current password", true, false).await?;
            return Err(invalid_credentials());
        }
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let taken = users::by_email(&mut tx, &new_email.canonical()).await.map_err(internal)?.is_some();
        // Taken: the same answer; nothing is sent.
        if !taken {
            self.send_verification(&mut tx, &row, new_email.as_str(), Purpose::ChangeEmail).await?;
        }
        let mut audit = entry(&ctx, "user.email_change_request", "success");
        audit.actor_id = user_id.to_string();
        audit.target_type = "user";
        audit.target_id = user_id.to_string();
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(RequestEmailChangeResponse {}))
    }

    async fn list_my_sessions(
        &self,
        request: Request<ListMySessionsRequest>,
    ) -> Answer<ListMySessionsResponse> {
        let (user_id, current) = the_user(principal(&request)?)?;
        let req = request.into_inner();
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, "o", 50, 200)?;
        let mut conn = self.state.pool.acquire().await.map_err(internal)?;
        let rows =
            sessions::live_of_user(&mut conn, user_id, page.position, page.size).await.map_err(internal)?;
        let next = page.next_token("o", rows.len(), page.position + page.size);
        Ok(Response::new(ListMySessionsResponse {
            sessions: rows.iter().map(|r| session(r, Some(current))).collect(),
            page_info: Some(bank_proto::common::v1::PageInfo { next_page_token: next, total_size: None }),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_my_session(
        &self,
        request: Request<RevokeMySessionRequest>,
    ) -> Answer<RevokeMySessionResponse> {
        let ctx = CallContext::of(&request);
        let (user_id, _) = the_user(principal(&request)?)?;
        let session_id = bank_platform::grpc::fields::uuid("session_id", &request.get_ref().session_id)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        if !sessions::revoke(&mut tx, user_id, session_id, "revoked_by_user").await.map_err(internal)? {
            return Err(ServiceError::new(ErrorCode::NotFound, "no such session").into());
        }
        sessions::use_all_refresh(&mut tx, session_id).await.map_err(internal)?;
        let mut audit = entry(&ctx, "session.revoke", "success");
        audit.actor_id = user_id.to_string();
        audit.target_type = "session";
        audit.target_id = session_id.to_string();
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.sessions(user_id, &[session_id]).await;
        Ok(Response::new(RevokeMySessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_other_sessions(
        &self,
        request: Request<RevokeOtherSessionsRequest>,
    ) -> Answer<RevokeOtherSessionsResponse> {
        let ctx = CallContext::of(&request);
        let (user_id, current) = the_user(principal(&request)?)?;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let revoked = sessions::revoke_all(&mut tx, user_id, Some(current), "revoked_by_user")
            .await
            .map_err(internal)?;
        let mut audit = entry(&ctx, "session.revoke_others", "success");
        audit.actor_id = user_id.to_string();
        audit.target_type = "user";
        audit.target_id = user_id.to_string();
        audit.reason = format!("{} sessions revoked", revoked.len());
        audit::append(&mut tx, audit).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        self.state.revocations.sessions(user_id, &revoked).await;
        Ok(Response::new(RevokeOtherSessionsResponse {
            revoked_count: i32::try_from(revoked.len()).unwrap_or(i32::MAX),
        }))
    }
}

impl Api {
    /// Counts a failed password (durably; may lock the user), audits it and emits the events.
    pub(super) async fn record_login_failure(
        &self,
        user: &UserRow,
        ctx: &CallContext,
        reason: &str,
        counts: bool,
        mfa_step: bool,
    ) -> Result<(), Status> {
        let lockout = &self.state.config.lockout;
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let after = if counts {
            users::record_failure(
                &mut tx,
                user.user_id,
                i32::try_from(lockout.threshold).unwrap_or(i32::MAX),
                i64::try_from(lockout.base.as_secs()).unwrap_or(i64::MAX),
                i64::try_from(lockout.cap.as_secs()).unwrap_or(i64::MAX),
            )
            .await
            .map_err(internal)?
        } else {
            user.clone()
        };
        let just_locked = counts && after.lockout_count > user.lockout_count;
        let mut audit = entry(ctx, "user.login", if reason == "locked" { "denied" } else { "failure" });
        audit.actor_type = "anonymous";
        audit.target_type = "user";
        audit.target_id = user.user_id.to_string();
        audit.reason = reason.to_owned();
        audit::append(&mut tx, audit).await.map_err(internal)?;
        outbox::publish(
            &mut tx,
            &format!("users/{}", user.user_id),
            &events::LoginFailed {
                user_id: user.user_id.to_string(),
                failure_count: if just_locked {
                    i32::try_from(lockout.threshold).unwrap_or(i32::MAX)
                } else {
                    after.failed_logins
                },
                ip_address: ctx.ip_address.clone(),
                user_agent: ctx.user_agent.clone(),
                mfa_step,
            },
        )
        .await
        .map_err(internal)?;
        if just_locked {
            outbox::publish(
                &mut tx,
                &format!("users/{}", user.user_id),
                &events::UserAccountLocked {
                    user_id: user.user_id.to_string(),
                    email: user.email.clone(),
                    locked_until: after.locked_until.map(timestamp),
                    failure_count: i32::try_from(lockout.threshold).unwrap_or(i32::MAX),
                    ip_address: ctx.ip_address.clone(),
                },
            )
            .await
            .map_err(internal)?;
            let mut audit = entry(ctx, "user.lockout", "success");
            audit.actor_type = "system";
            audit.target_type = "user";
            audit.target_id = user.user_id.to_string();
            audit.reason = format!("{} consecutive failures", lockout.threshold);
            audit::append(&mut tx, audit).await.map_err(internal)?;
            metrics::counter!("identity_lockouts_total").increment(1);
            tracing::warn!(user_id = %user.user_id, "password locked after repeated failures");
        }
        tx.commit().await.map_err(internal)?;
        Ok(())
    }
}
