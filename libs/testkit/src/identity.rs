//! A real identity service for tests, with a bootstrap admin and a service client, and helpers that
//! go through its real RPCs (sign-up, verification, login) to hand tests real tokens.

use bank_identity::Identity;
use bank_proto::{
    events::v1::{EmailVerificationRequested, PasswordResetRequested},
    identity::v1::{
        IssueServiceTokenRequest, LoginRequest, RegisterRequest, TokenPair, VerifyEmailRequest,
        identity_service_client::IdentityServiceClient, login_response,
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
}

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
        Self { app, auth_prefix }
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

    /// The bootstrap admin's tokens.
    pub async fn admin(&self) -> TokenPair {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("admin login")
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
