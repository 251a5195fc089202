//! bank-ledger: the `ledger` service.
//!
//! Owns (in its own PostgreSQL database): ledger accounts and their balances (posted, held), the
//! double-entry journal (immutable transactions and entries, a hash chain per account), holds,
//! internal transfers and idempotency records.
//! Must not depend on another service crate; other services reach it only through its contracts.
//!
//! Layout (ARCHITECTURE.md, "A service crate"): `domain/` (the rules, pure: typed accounts, holds
//! and postings, the batch's in-memory book, the chain), `storage/` (the only SQL), the posting
//! `engine` (batches postings: group commit, ADR 0029), one use-case module per aggregate
//! (`transfers`, `cash`, `holds`, `reversals`, `accounts`, `history`, `integrity`), `convert`
//! (domain <-> contract messages) and `grpc/` (the tonic implementations: parse, authorise, call
//! one use case, answer).

mod accounts;
mod cash;
pub mod config;
mod convert;
pub mod domain;
mod engine;
mod grpc;
mod history;
mod holds;
mod integrity;
mod reversals;
mod storage;
mod transfers;

use std::time::Duration;

use bank_platform::{
    App, AppBuilder, BoxError, Service, config::TelemetryConfig, db, grpc::GrpcServices, redis,
};
use bank_proto::ledger::v1::{
    ledger_admin_service_server::LedgerAdminServiceServer, ledger_service_server::LedgerServiceServer,
};

/// The embedded, forward-only migrations of the `ledger` database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How long idempotency keys are kept.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The `ledger` service as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Ledger;

pub use config::Config;

impl Service for Ledger {
    const NAME: &'static str = "ledger";
    type Config = Config;

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: Config) -> Result<App, BoxError> {
        // Every hot statement is keyed by ids: plan each once per connection (ADR 0017).
        let pool = db::connect_with(&config.database, &MIGRATOR, db::Plans::Generic).await?;
        let (engine, workers) = engine::Engine::new(&pool, &config.engine);
        let api = grpc::Api::new(pool.clone(), engine.clone(), config.transfers.clone());
        let services = GrpcServices::new()
            .serve(LedgerServiceServer::new(api.clone()))
            .serve(LedgerAdminServiceServer::new(api))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        let redis = redis::connect(&config.redis).await?;
        // Every RPC needs a token: none of this service's RPCs is public.
        let authenticator = bank_auth::setup::remote(&config.auth, &redis, &[])?;
        let expiry_pool = pool.clone();
        let app = AppBuilder::grpc(Self::NAME, &config.server, services)
            .database(pool)
            .redis(redis)
            .relay_outbox()
            .authenticator(authenticator)
            .purge_idempotency(IDEMPOTENCY_RETENTION)
            .task(move |stop| workers.run(stop))
            .task(move |stop| holds::expire_periodically(expiry_pool, engine, stop))
            .bind()
            .await?;
        // Exported from the start (at zero), so dashboards and alerts see the series before the
        // first retry or check (the recorder exists once the app is bound).
        metrics::counter!("ledger_posting_retries_total").increment(0);
        Ok(app)
    }
}
