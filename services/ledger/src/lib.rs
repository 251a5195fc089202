//! bank-ledger: the `ledger` service.
//!
//! Owns (in its own PostgreSQL database): ledger accounts and their balances (posted, held), the
//! double-entry journal (immutable transactions and entries, a hash chain per account), holds,
//! internal transfers and idempotency records.
//! Must not depend on another service crate; other services reach it only through its contracts.
//!
//! Layout: `posting` (the engine: locks in account-id order, rules checked under the locks,
//! balances and chains updated in one transaction), `storage` (the only SQL), `grpc` (the tonic
//! implementations). Money rules come from `bank-money`; idempotency from `bank-platform`.

pub mod config;
pub mod grpc;
pub mod posting;
pub mod storage;

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
        let api = grpc::Api::new(pool.clone(), config.transfers.clone());
        let services = GrpcServices::new()
            .serve(LedgerServiceServer::new(api.clone()))
            .serve(LedgerAdminServiceServer::new(api))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        let redis = redis::connect(&config.redis).await?;
        // Every RPC needs a token: none of this service's RPCs is public.
        let authenticator = bank_auth::setup::remote(&config.auth, &redis, &[])?;
        let purge_pool = pool.clone();
        let expiry_pool = pool.clone();
        let app = AppBuilder::grpc(Self::NAME, &config.server, services)
            .database(pool)
            .redis(redis)
            .relay_outbox()
            .authenticator(authenticator)
            .task(move |stop| {
                bank_platform::idempotency::purge_periodically(purge_pool, IDEMPOTENCY_RETENTION, stop)
            })
            .task(move |stop| expire_holds(expiry_pool, stop))
            .bind()
            .await?;
        // Exported from the start (at zero), so dashboards and alerts see the series before the
        // first retry or check (the recorder exists once the app is bound).
        metrics::counter!("ledger_posting_retries_total").increment(0);
        Ok(app)
    }
}

/// Expires holds past their `expires_at` every few seconds.
async fn expire_holds(pool: sqlx::PgPool, stop: tokio_util::sync::CancellationToken) {
    loop {
        match grpc::expire_holds(&pool).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "holds expired"),
            Err(status) => tracing::warn!(code = ?status.code(), "expiring holds failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
