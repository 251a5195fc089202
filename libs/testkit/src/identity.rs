//! A real identity service for tests, with a bootstrap admin and a service client, and helpers that
//! go through its real RPCs (sign-up, verification, login) to hand tests real tokens.

use std::time::{Duration, Instant};

use bank_identity::{Identity, domain::mfa};
use bank_proto::{
    events::v1::{EmailVerificationRequested, PasswordResetRequested},
    identity::v1::{
        CompleteMfaLoginRequest, ConfirmMfaEnrollmentRequest, IssueServiceTokenRequest, LoginRequest,
        RefreshTokensRequest, RegisterRequest, StartMfaEnrollmentRequest, StepUpRequest, TokenPair,
        VerifyEmailRequest, complete_mfa_login_request, identity_service_client::IdentityServiceClient,
        login_response, step_up_request,
    },
};
use prost::Message as _;
use tonic::transport::Channel;

use crate::{Options, TestApp, TestRedis};

/// The bootstrap admin's address.
pub const ADMIN_EMAIL: &str = "root@bankmesh.test";
/// The bootstrap admin's password.
pub const ADMIN_PASSWORD: &str = "vivid copper lantern drifts at midnight";
/// The password every test user gets from [`TestIdentity::user`].
pub const USER_PASSWORD: &str = "purple monsoon carries brass kites 88";
/// The test service client (every scope in use).
pub const SERVICE_CLIENT: &str = "test-service";
/// Its secret.
pub const SERVICE_SECRET: &str = "test-service-secret-0123456789";
/// Its scopes.
pub const SERVICE_SCOPES: &str = "identity:introspect,ledger:accounts,ledger:read,ledger:holds,ledger:cash,cards:authorize,notifications:webhooks";

/// A test user with a live session.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Id.
    pub user_id: String,
    /// Address.
    pub email: String,
    /// Password.
    pub password: String,
    /// Tokens of the login.
    pub tokens: TokenPair,
}

/// A running identity service and what it was provisioned with.
#[derive(Debug)]
pub struct TestIdentity {
    /// The service.
    pub app: TestApp,
    auth_prefix: String,
    admin: tokio::sync::Mutex<AdminSession>,
}

/// An authenticator app for tests: the TOTP secret and the newest step it has shown, so that it
/// never offers a code the service has already accepted (each code works once).
#[derive(Clone)]
pub struct TotpDevice {
    secret: Vec<u8>,
    last_step: i64,
}

impl std::fmt::Debug for TotpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpDevice").field("last_step", &self.last_step).finish_non_exhaustive()
    }
}

impl TotpDevice {
    /// A device holding `secret_base32` (as shown at enrolment).
    #[must_use]
    pub fn new(secret_base32: &str) -> Self {
        Self { secret: mfa::base32_decode(secret_base32).expect("base32 secret"), last_step: 0 }
    }

    /// A code the service accepts now: the current step's, or a newer one within the one step of
    /// skew it allows; waits for the next step when both are used up.
    pub async fn next_code(&mut self) -> String {
        loop {
            let now = mfa::step_of(time_now());
            let step = (self.last_step + 1).max(now);
            if step <= now + 1 {
                self.last_step = step;
                return mfa::code_for_step(mfa::Algorithm::Sha1, &self.secret, step, mfa::DIGITS);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The code of the current step, whether or not it was used (for replay tests).
    #[must_use]
    pub fn current_code(&self) -> String {
        mfa::code_at(&self.secret, time_now())
    }
}

fn time_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
    )
    .unwrap_or_default()
}

/// The bootstrap admin's MFA device and live session, kept so that every test gets an admin
/// token with a recent second factor without spending a TOTP step per call.
#[derive(Debug, Default)]
struct AdminSession {
    device: Option<TotpDevice>,
    tokens: Option<TokenPair>,
    second_factor_at: Option<Instant>,
}

/// Step up again when the admin's second factor is older than this (the default window is 5 min).
const ADMIN_STEP_UP_AFTER: Duration = Duration::from_secs(180);

/// A base64 key-encryption key for tests.
pub const TEST_KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

impl TestIdentity {
    /// Spawns identity with a fresh database, its own Redis namespace, small argon2 parameters
    /// (fast tests; the benchmark uses the real ones), a bootstrap admin and the test service client.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// Like [`TestIdentity::spawn`] with extra settings.
    pub async fn spawn_with(options: Options) -> Self {
        let namespace = TestRedis::new();
        let auth_prefix = format!("{}auth:", namespace.prefix());
        let options = options.redis_namespace(namespace).defaults(&[
            ("keys.kek", TEST_KEK.into()),
            ("auth.redis_prefix", auth_prefix.as_str().into()),
            ("hashing.argon2.memory_kib", 1024.into()),
            ("hashing.argon2.iterations", 1.into()),
            ("bootstrap.admin", format!("{ADMIN_EMAIL}:{ADMIN_PASSWORD}").into()),
            (
                "bootstrap.service_clients",
                format!("{SERVICE_CLIENT}:{SERVICE_SECRET}:{SERVICE_SCOPES}").into(),
            ),
        ]);
        let app = crate::spawn_with::<Identity>(options).await;
        Self { app, auth_prefix, admin: tokio::sync::Mutex::default() }
    }

    /// Identity's URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.app.addr)
    }

    /// The prefix of the shared revocation keys.
    #[must_use]
    pub fn auth_prefix(&self) -> &str {
        &self.auth_prefix
    }

    /// Settings that make another service trust this identity (JWKS, revocation keys, fallback).
    #[must_use]
    pub fn trust(&self, options: Options) -> Options {
        let redis = self.app.redis().expect("identity has a Redis namespace");
        options
            .set("redis.url", redis.url())
            .set("auth.identity_url", self.url())
            .set("auth.redis_prefix", self.auth_prefix.as_str())
            .set("auth.client_id", SERVICE_CLIENT)
            .set("auth.client_secret", SERVICE_SECRET)
    }

    /// A client of identity's public API.
    pub async fn client(&self) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.app.channel().await)
    }

    /// Registers, verifies (with the token from the outbox) and logs in a user.
    pub async fn user(&self, email: &str) -> TestUser {
        let mut client = self.client().await;
        client
            .register(RegisterRequest {
                email: email.to_owned(),
                password: USER_PASSWORD.to_owned(),
                given_name: "Test".to_owned(),
                family_name: "User".to_owned(),
                ..RegisterRequest::default()
            })
            .await
            .expect("register");
        let user_id = self.user_id(email).await;
        let token = self.verification_token(&user_id).await;
        client.verify_email(VerifyEmailRequest { token }).await.expect("verify email");
        let tokens = self.login(email, USER_PASSWORD).await.expect("login");
        TestUser { user_id, email: email.to_owned(), password: USER_PASSWORD.to_owned(), tokens }
    }

    /// Logs in and answers the tokens.
    ///
    /// # Errors
    /// The login failed.
    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair, tonic::Status> {
        let answer = self
            .client()
            .await
            .login(LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
                device_name: String::new(),
            })
            .await?
            .into_inner();
        match answer.outcome {
            Some(login_response::Outcome::Tokens(tokens)) => Ok(tokens),
            other => panic!("unexpected login outcome: {other:?}"),
        }
    }

    /// Tokens of the bootstrap admin with a recent second factor (`acr = mfa`), as every admin
    /// RPC requires. The first call enrols the admin's MFA through the real RPCs (password login,
    /// `StartMfaEnrollment`, `ConfirmMfaEnrollment`, `StepUp`); later calls refresh the same
    /// session (so the access token is signed by the current key) and step up again when the
    /// second factor gets old; a revoked session means a new login with password and TOTP.
    pub async fn admin(&self) -> TokenPair {
        let mut client = self.client().await;
        let mut admin = self.admin.lock().await;
        if let Some(tokens) = admin.tokens.clone()
            && let Ok(answer) =
                client.refresh_tokens(RefreshTokensRequest { refresh_token: tokens.refresh_token }).await
        {
            let mut pair = answer.into_inner().tokens.expect("tokens");
            if admin.second_factor_at.is_none_or(|at| at.elapsed() > ADMIN_STEP_UP_AFTER) {
                pair = self.step_up(&mut admin, &pair.access_token).await;
            }
            admin.tokens = Some(pair.clone());
            return pair;
        }
        let answer = client
            .login(LoginRequest {
                email: ADMIN_EMAIL.to_owned(),
                password: ADMIN_PASSWORD.to_owned(),
                device_name: String::new(),
            })
            .await
            .expect("admin login")
            .into_inner();
        let pair = match answer.outcome.expect("login outcome") {
            login_response::Outcome::MfaRequired(challenge) => {
                let device = admin.device.as_mut().expect("the admin enrolled through this helper");
                let code = device.next_code().await;
                let pair = client
                    .complete_mfa_login(CompleteMfaLoginRequest {
                        mfa_token: challenge.mfa_token,
                        code: Some(complete_mfa_login_request::Code::TotpCode(code)),
                        device_name: String::new(),
                    })
                    .await
                    .expect("admin MFA login")
                    .into_inner()
                    .tokens
                    .expect("tokens");
                admin.second_factor_at = Some(Instant::now());
                pair
            }
            login_response::Outcome::Tokens(password_only) => {
                let (device, _) = self.enrol_mfa(&password_only.access_token).await;
                admin.device = Some(device);
                self.step_up(&mut admin, &password_only.access_token).await
            }
        };
        admin.tokens = Some(pair.clone());
        pair
    }

    async fn step_up(&self, admin: &mut AdminSession, access_token: &str) -> TokenPair {
        let device = admin.device.as_mut().expect("the admin enrolled through this helper");
        let code = device.next_code().await;
        let pair = self
            .client()
            .await
            .step_up(bearer(
                StepUpRequest { code: Some(step_up_request::Code::TotpCode(code)) },
                access_token,
            ))
            .await
            .expect("admin step-up")
            .into_inner()
            .tokens
            .expect("tokens");
        admin.second_factor_at = Some(Instant::now());
        pair
    }

    /// Enrols TOTP for the holder of `access_token` through the real RPCs; answers the
    /// authenticator device and the 10 recovery codes.
    pub async fn enrol_mfa(&self, access_token: &str) -> (TotpDevice, Vec<String>) {
        let mut client = self.client().await;
        let started = client
            .start_mfa_enrollment(bearer(StartMfaEnrollmentRequest {}, access_token))
            .await
            .expect("start MFA enrolment")
            .into_inner();
        let mut device = TotpDevice::new(&started.secret_base32);
        let code = device.next_code().await;
        let codes = client
            .confirm_mfa_enrollment(bearer(ConfirmMfaEnrollmentRequest { totp_code: code }, access_token))
            .await
            .expect("confirm MFA enrolment")
            .into_inner()
            .recovery_codes;
        (device, codes)
    }

    /// A service token of the test client with `scopes` (empty: all).
    pub async fn service_token(&self, scopes: &[&str]) -> String {
        self.client()
            .await
            .issue_service_token(IssueServiceTokenRequest {
                client_id: SERVICE_CLIENT.to_owned(),
                client_secret: SERVICE_SECRET.to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            })
            .await
            .expect("service token")
            .into_inner()
            .access_token
    }

    /// A user's id, from identity's database.
    pub async fn user_id(&self, email: &str) -> String {
        let mut conn = self.db().await;
        let id: uuid::Uuid =
            sqlx::query_scalar("SELECT user_id FROM users WHERE email_canonical = lower($1)")
                .bind(email.trim())
                .fetch_one(&mut conn)
                .await
                .expect("user exists");
        id.to_string()
    }

    /// The newest verification token sent to a user (from the outbox, as notifications would read it).
    pub async fn verification_token(&self, user_id: &str) -> String {
        let payload = self.newest_event(user_id, "bank.events.v1.EmailVerificationRequested").await;
        EmailVerificationRequested::decode(payload.as_slice()).expect("event").token
    }

    /// The newest password reset token sent to a user.
    pub async fn reset_token(&self, user_id: &str) -> String {
        let payload = self.newest_event(user_id, "bank.events.v1.PasswordResetRequested").await;
        PasswordResetRequested::decode(payload.as_slice()).expect("event").token
    }

    /// The payloads of every outbox event of `event_type`, oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        let mut conn = self.db().await;
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = $1 ORDER BY seq")
            .bind(event_type)
            .fetch_all(&mut conn)
            .await
            .expect("outbox")
    }

    async fn newest_event(&self, user_id: &str, event_type: &str) -> Vec<u8> {
        let mut conn = self.db().await;
        sqlx::query_scalar(
            "SELECT payload FROM outbox WHERE event_type = $1 AND subject = $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(event_type)
        .bind(format!("users/{user_id}"))
        .fetch_one(&mut conn)
        .await
        .expect("event in the outbox")
    }

    /// A connection to identity's database.
    pub async fn db(&self) -> sqlx::PgConnection {
        let url = self.app.database().expect("identity has a database").url().to_owned();
        <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.expect("connect to identity's database")
    }
}

/// `request` with `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    request
}
