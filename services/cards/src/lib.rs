//! bank-cards: the `cards` service.
//!
//! Owns (in its own PostgreSQL database): debit cards (token = card id, last four digits, expiry,
//! limits, the card day's time zone), the PAN vault (PANs sealed with AES-256-GCM under per-card
//! data keys wrapped by key-encryption keys from a mounted secret file; the CVV is never stored),
//! authorizations with their captures, voids, refunds and expiry, PAN reveals, administrative
//! actions and idempotency records. Must not depend on another service crate: it reaches the
//! ledger (holds, with its own service token), accounts and identity (with the owner's token)
//! only through their gRPC contracts.
//!
//! Layout: `domain` (PAN/Luhn, CVV, expiry, statuses, the authorization decision; pure), `vault`
//! (envelope encryption and KEK rotation), `storage` (the SQL), `tx` (`bank_platform::tx`: transactions with internal
//! retries), `upstream` (the ledger, accounts and identity clients), `saga` (authorization as a
//! saga with the ledger hold, capture/void/refund, the reconciler and the expiry sweep), `grpc`
//! (the tonic implementations), `convert` (rows as messages).
//!
//! Status: everything in the contract works except credit cards: `GetCreditLine`,
//! `ListCardStatements` and `GetCardStatement` answer `UNIMPLEMENTED` (README status table).

pub mod config;
mod convert;
pub mod domain;
mod grpc;
mod rpcs;
mod saga;
mod storage;
use bank_platform::tx;
mod upstream;
mod vault;

use std::sync::Arc;

use bank_platform::{
    App, AppBuilder, BoxError, Service, config::TelemetryConfig, db, grpc::GrpcServices, redis,
};
use bank_proto::cards::v1::{
    cards_admin_service_server::CardsAdminServiceServer, cards_service_server::CardsServiceServer,
};

pub use config::Config;

/// The embedded, forward-only migrations of the `cards` database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The `cards` service as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Cards;

impl Service for Cards {
    const NAME: &'static str = "cards";
    type Config = Config;

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: Config) -> Result<App, BoxError> {
        let pool = db::connect(&config.database, &MIGRATOR).await?;
        // Refuses to start without a usable KEK for every stored key (validated config, then the
        // vault's own check against the database).
        let keyring = vault::Keyring::parse(&config.vault.keks).map_err(|m| format!("vault.keks: {m}"))?;
        let vault = vault::Vault::open(&pool, keyring).await?;
        let core = saga::Core {
            pool: pool.clone(),
            upstreams: upstream::Upstreams::connect(&config)?,
            vault: Arc::new(vault),
            settings: Arc::new(config.cards.clone()),
            stuck_after: config.reconciler.stuck_after,
        };
        for reason in domain::Decline::ALL {
            metrics::counter!("cards_authorizations_total", "result" => "declined", "reason" => reason.as_str())
                .absolute(0);
        }
        let api = grpc::Api::new(core.clone());
        let services = GrpcServices::new()
            .serve(CardsServiceServer::new(api.clone()))
            .serve(CardsAdminServiceServer::new(api))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        let redis = redis::connect(&config.redis).await?;
        // Every RPC needs a token: none of this service's RPCs is public.
        let authenticator = bank_auth::setup::remote(&config.auth, &redis, &[])?;
        let reconciler = config.reconciler.clone();
        AppBuilder::grpc(Self::NAME, &config.server, services)
            .database(pool)
            .redis(redis)
            .relay_outbox()
            .authenticator(authenticator)
            .task(move |stop| saga::reconcile(core, reconciler, stop))
            .purge_idempotency(config.idempotency_retention)
            .bind()
            .await
    }
}
