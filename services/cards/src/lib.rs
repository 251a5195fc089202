//! bank-cards: the `cards` service.
//!
//! Owns (in its own PostgreSQL database): cards (PAN in an encrypted vault), authorizations and captures, daily spend, credit lines.
//! Must not depend on another service crate; other services are reached only through their
//! gRPC contracts.
//!
//! Status: the process, its database and migrations, health, reflection and the standard server
//! stack are in place. Its RPCs answer `UNIMPLEMENTED` until the cards issue builds them (see the status
//! table in the README).

use bank_auth::ServiceConfig;
use bank_platform::{
    App, AppBuilder, BoxError, Service, config::TelemetryConfig, db, grpc::GrpcServices, redis,
};
use bank_proto::cards::v1::{
    cards_admin_service_server::{CardsAdminService, CardsAdminServiceServer},
    cards_service_server::{CardsService, CardsServiceServer},
};

/// The embedded, forward-only migrations of the `cards` database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The `cards` service as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Cards;

impl Service for Cards {
    const NAME: &'static str = "cards";
    type Config = ServiceConfig;

    fn telemetry(config: &ServiceConfig) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: ServiceConfig) -> Result<App, BoxError> {
        let pool = db::connect(&config.database, &MIGRATOR).await?;
        let services = GrpcServices::new()
            .serve(CardsServiceServer::new(Api))
            .serve(CardsAdminServiceServer::new(Api))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        let redis = redis::connect(&config.redis).await?;
        // Every RPC needs a token: none of this service's RPCs is public.
        let authenticator = bank_auth::setup::remote(&config.auth, &redis, &[])?;
        AppBuilder::grpc(Self::NAME, &config.server, services)
            .database(pool)
            .redis(redis)
            .relay_outbox()
            .authenticator(authenticator)
            .bind()
            .await
    }
}

/// The tonic implementation of the `cards` contracts. Every RPC keeps the generated default
/// (`UNIMPLEMENTED`) until its issue lands.
#[derive(Debug, Clone, Copy)]
struct Api;

impl CardsService for Api {}

impl CardsAdminService for Api {}
