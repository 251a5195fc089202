//! bank-notifications: the `notifications` service.
//!
//! Owns (in its own PostgreSQL database): notification preferences, webhook endpoints, deliveries and attempts, emails, the processed-event inbox.
//! Must not depend on another service crate; other services are reached only through their
//! gRPC contracts.
//!
//! Status: the process, its database and migrations, health, reflection and the standard server
//! stack are in place. Its RPCs answer `UNIMPLEMENTED` until the events and notifications issue builds them (see the status
//! table in the README).

use bank_auth::ServiceConfig;
use bank_platform::{
    App, AppBuilder, BoxError, Service, config::TelemetryConfig, db, grpc::GrpcServices, redis,
};
use bank_proto::notifications::v1::{
    notifications_admin_service_server::{NotificationsAdminService, NotificationsAdminServiceServer},
    notifications_service_server::{NotificationsService, NotificationsServiceServer},
};

/// The embedded, forward-only migrations of the `notifications` database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The `notifications` service as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Notifications;

impl Service for Notifications {
    const NAME: &'static str = "notifications";
    type Config = ServiceConfig;

    fn telemetry(config: &ServiceConfig) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: ServiceConfig) -> Result<App, BoxError> {
        let pool = db::connect(&config.database, &MIGRATOR).await?;
        let services = GrpcServices::new()
            .serve(NotificationsServiceServer::new(Api))
            .serve(NotificationsAdminServiceServer::new(Api))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        let redis = redis::connect(&config.redis).await?;
        // Every RPC needs a token: none of this service's RPCs is public.
        let authenticator = bank_auth::setup::remote(&config.auth, &redis, &[])?;
        AppBuilder::grpc(Self::NAME, &config.server, services)
            .database(pool)
            .redis(redis)
            .authenticator(authenticator)
            .bind()
            .await
    }
}

/// The tonic implementation of the `notifications` contracts. Every RPC keeps the generated default
/// (`UNIMPLEMENTED`) until its issue lands.
#[derive(Debug, Clone, Copy)]
struct Api;

impl NotificationsService for Api {}

impl NotificationsAdminService for Api {}
