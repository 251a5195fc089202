//! bank-identity: the `identity` service.
//!
//! Owns (in its own PostgreSQL database): users, credentials (argon2id), password history, sessions
//! (refresh-token families), signing keys (JWKS), service clients and its hash-chained audit log.
//! Must not depend on another service crate; other services reach it only through its contracts.
//!
//! Layout: `domain/` (email, password policy: pure rules), `storage/` (the only SQL), `grpc/` (the
//! tonic implementations), `keys` (signing keys), `tokens` (issuing), `state` (what handlers share,
//! revocation write-through), `bootstrap` (first admin, service clients).

mod bootstrap;
pub mod config;
pub mod context;
pub mod domain;
pub mod grpc;
pub mod hashing;
pub mod keys;
pub mod state;
pub mod storage;
pub mod tokens;

/// A boxed error for background work.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

use std::{sync::Arc, time::Duration};

use bank_auth::{Authenticator, Revocation, RevocationKeys, Verifier};
use bank_platform::{
    App, AppBuilder, BoxError, Service, config::TelemetryConfig, db, grpc::GrpcServices, redis,
};
use bank_proto::identity::v1::{
    identity_admin_service_server::IdentityAdminServiceServer, identity_service_server::IdentityServiceServer,
};

pub use config::Config;

/// The embedded, forward-only migrations of the `identity` database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The `identity` service as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Identity;

impl Service for Identity {
    const NAME: &'static str = "identity";
    type Config = Config;

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: Config) -> Result<App, BoxError> {
        let pool = db::connect(&config.database, &MIGRATOR).await?;
        let redis = redis::connect(&config.redis).await?;
        let kek = keys::Kek::parse(&config.keys.kek).map_err(|m| format!("keys.kek: {m}"))?;
        let leeway = config.auth.leeway;
        let retire_after = config.tokens.access_ttl + leeway + config.keys.reload_interval;
        let keys = keys::Keys::init(pool.clone(), kek, config.keys.rotation_interval, retire_after).await?;
        let hasher = hashing::Hasher::new(
            config.hashing.argon2,
            config.hashing.max_concurrent,
            config.hashing.max_waiting,
        )
        .map_err(|m| format!("hashing: {m}"))?;
        let revocation_keys = RevocationKeys::new(&config.auth.redis_prefix);
        let revocations = state::Revocations::new(
            redis.clone(),
            revocation_keys.clone(),
            config.tokens.access_ttl + leeway,
        );
        let issuer = tokens::Issuer::new(
            keys.clone(),
            config.auth.issuer.clone(),
            config.auth.audience.clone(),
            config.tokens.access_ttl,
            config.tokens.service_token_ttl,
        );
        let config = Arc::new(config);
        let state = state::State {
            pool: pool.clone(),
            revocations: revocations.clone(),
            keys: keys.clone(),
            issuer,
            hasher,
            config: config.clone(),
        };
        bootstrap::run(&state).await?;
        // Not fatal: until it succeeds (the background task retries), verifiers ask identity.
        if let Err(err) = revocations.sync(&pool).await {
            tracing::warn!(error = %err, "syncing revocations to redis failed; will retry");
        }

        // Identity verifies its own tokens from its key ring and asks its own database when Redis
        // cannot vouch.
        let mut local_auth = config.auth.clone();
        local_auth.jwks_max_age = Duration::from_secs(1);
        // Reading the local ring is free: refetch on every unknown kid (rotations are seen at once).
        local_auth.jwks_min_refetch = Duration::ZERO;
        let verifier = Arc::new(Verifier::new(Arc::new(keys::LocalJwks(keys.clone())), &local_auth));
        let revocation = Arc::new(Revocation::new(
            redis.conn.clone(),
            revocation_keys,
            Duration::from_millis(250),
            Some(Arc::new(state::LocalStatus::new(pool.clone()))),
        ));
        let authenticator = Arc::new(
            Authenticator::new(verifier, revocation, grpc::PUBLIC_RPCS)
                .with_step_up_max_age(config.auth.step_up_max_age),
        );

        let services = GrpcServices::new()
            .serve(IdentityServiceServer::new(grpc::public::Api::new(state.clone())))
            .serve(IdentityAdminServiceServer::new(grpc::admin::AdminApi::new(state)))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        let reload = config.keys.reload_interval;
        let hydrate_pool = pool.clone();
        AppBuilder::grpc(Self::NAME, &config.server, services)
            .database(pool)
            .redis(redis)
            .relay_outbox()
            .authenticator(authenticator)
            .task(move |stop| keys.run(reload, stop))
            .task(move |stop| revocations.keep_in_sync(hydrate_pool, Duration::from_secs(1), stop))
            .bind()
            .await
    }
}
