//! bank-accounts: the `accounts` service.
//!
//! Owns (in its own PostgreSQL database): customer bank accounts — number (with check digits, see
//! [`domain::number`]), owner, product, currency, status and freeze details, the overdraft limit
//! it mirrors to the ledger — the log of changes mirrored to the ledger (who, why, outcome), and
//! idempotency records. Balances are the ledger's; accounts reads them through the ledger's
//! contract. Must not depend on another service crate; it reaches the ledger and identity only
//! through their gRPC contracts.
//!
//! Layout: `domain/` (numbers, products, the status lifecycle, statement periods; pure), `storage`
//! (the only SQL), `tx` (`bank_platform::tx`: transactions with internal retries), `ledger` (the ledger client with this
//! service's service token), `document` (statement PDF and CSV), `saga` (opening and mirrored
//! changes as sagas of idempotent steps, and the reconciler that finishes them), `grpc/` (the tonic
//! implementations), `convert` (rows as messages).
//!
//! Status: opening, listing, reading, renaming and closing accounts, the administrative search,
//! freeze/unfreeze, overdraft limit and forced close, and monthly statements (JSON, PDF, CSV;
//! `domain::statement`, `document`) work. Interest (`GetInterestSettings`,
//! `UpdateInterestSettings`) answers `UNIMPLEMENTED` until it is built (README status table).

pub mod config;
mod convert;
mod document;
pub mod domain;
mod grpc;
mod ledger;
mod saga;
mod storage;
use bank_platform::tx;

use bank_platform::{
    App, AppBuilder, BoxError, Service, config::TelemetryConfig, db, grpc::GrpcServices, redis,
};
use bank_proto::accounts::v1::{
    accounts_admin_service_server::AccountsAdminServiceServer, accounts_service_server::AccountsServiceServer,
};

pub use config::Config;

/// The embedded, forward-only migrations of the `accounts` database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The `accounts` service as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Accounts;

impl Service for Accounts {
    const NAME: &'static str = "accounts";
    type Config = Config;

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: Config) -> Result<App, BoxError> {
        let pool = db::connect(&config.database, &MIGRATOR).await?;
        let core = saga::Core {
            pool: pool.clone(),
            ledger: ledger::Ledger::connect(&config)?,
            stuck_after: config.reconciler.stuck_after,
        };
        let api = grpc::Api::new(core.clone());
        let services = GrpcServices::new()
            .serve(AccountsServiceServer::new(api.clone()))
            .serve(AccountsAdminServiceServer::new(api))
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
