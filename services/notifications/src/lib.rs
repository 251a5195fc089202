//! bank-notifications: the `notifications` service.
//!
//! Owns (in its own PostgreSQL database): notification preferences, webhook endpoints, deliveries
//! and attempts, emails, the processed-event inbox, the security feed, and projections of users and
//! accounts built from other services' events. Must not depend on another service crate; other
//! services are reached only through their gRPC contracts and their event streams.
//!
//! Inside the process: one [`consumer`] task per event stream applies events through the
//! [`inbox`] (exactly once in effect); the [`mailer`] sends queued emails over SMTP; the
//! [`webhooks`] dispatcher delivers signed webhooks; [`grpc`] answers the API.

pub mod catalog;
pub mod config;
pub mod consumer;
pub mod grpc;
pub mod inbox;
pub mod ledger;
pub mod mailer;
pub mod templates;
pub mod webhooks;

use std::sync::Arc;

use bank_platform::{
    App, AppBuilder, BoxError, Service, config::TelemetryConfig, db, grpc::GrpcServices, redis,
};
use bank_proto::notifications::v1::{
    notifications_admin_service_server::NotificationsAdminServiceServer,
    notifications_service_server::NotificationsServiceServer,
};
use secrecy::ExposeSecret as _;

pub use config::Config;

/// The embedded, forward-only migrations of the `notifications` database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The `notifications` service as the platform runs it.
#[derive(Debug, Clone, Copy)]
pub struct Notifications;

fn consumer_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("notifications-{}", uuid::Uuid::new_v4()))
}

impl Service for Notifications {
    const NAME: &'static str = "notifications";
    type Config = Config;

    fn telemetry(config: &Config) -> &TelemetryConfig {
        &config.telemetry
    }

    async fn build(config: Config) -> Result<App, BoxError> {
        if bank_platform::config::Sources::from_process().environment().is_production_like() {
            config.check_production()?;
        }
        let pool = db::connect(&config.database, &MIGRATOR).await?;
        let redis = redis::connect(&config.redis).await?;
        let ledger = ledger::Ledger::connect(&config)?;
        let settings = Arc::new(inbox::Settings { link_base_url: config.email.link_base_url.clone() });
        let wake = inbox::Wake::default();
        let policy = Arc::new(webhooks::Policy::new(&config.webhooks));
        let dispatcher = webhooks::Dispatcher {
            pool: pool.clone(),
            config: Arc::new(config.webhooks.clone()),
            policy: Arc::clone(&policy),
            tls: webhooks::tls(),
            settings: Arc::clone(&settings),
            wake_mail: Arc::clone(&wake.mail),
        };
        let api = grpc::Api {
            pool: pool.clone(),
            policy,
            dispatcher: dispatcher.clone(),
            ledger,
            redis: redis.conn.clone(),
            max_endpoints: i64::from(config.webhooks.max_endpoints),
            wake: wake.clone(),
        };
        let services = GrpcServices::new()
            .serve(NotificationsServiceServer::new(api.clone()))
            .serve(NotificationsAdminServiceServer::new(api))
            .descriptors(bank_proto::FILE_DESCRIPTOR_SET);
        // Every RPC needs a token: none of this service's RPCs is public.
        let authenticator = bank_auth::setup::remote(&config.auth, &redis, &[])?;

        // The consumers: one dedicated connection each (blocking reads), answering within
        // redis.timeout (consumer.block is shorter, checked at start).
        let client = ::redis::Client::open(config.redis.url.expose_secret())?;
        let manager = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis.timeout))
            .set_response_timeout(Some(config.redis.timeout));
        let decoder = Arc::new(inbox::Decoder::new());
        let consumer_config = Arc::new(config.consumer.clone());
        let name = consumer_name(&config.consumer.consumer);
        let dead_letters = redis.key(&config.consumer.dead_letter_stream);
        let mut builder = AppBuilder::grpc(Self::NAME, &config.server, services)
            .database(pool.clone())
            .redis(redis)
            .relay_outbox()
            .authenticator(authenticator);
        for stream in &config.consumer.streams {
            let conn =
                ::redis::aio::ConnectionManager::new_with_config(client.clone(), manager.clone()).await?;
            let consumer = consumer::Consumer {
                pool: pool.clone(),
                conn,
                decoder: Arc::clone(&decoder),
                settings: Arc::clone(&settings),
                config: Arc::clone(&consumer_config),
                name: name.clone(),
                dead_letters: dead_letters.clone(),
                wake: wake.clone(),
            };
            let stream = stream.clone();
            builder = builder.task(move |stop| consumer.run(stream, stop));
        }
        let transport = mailer::transport(&config.email)?;
        let (mail_pool, email, mail_wake) = (pool.clone(), config.email.clone(), Arc::clone(&wake.mail));
        builder = builder.task(move |stop| mailer::run(mail_pool, email, transport, mail_wake, stop));
        let webhook_wake = Arc::clone(&wake.webhooks);
        builder = builder.task(move |stop| dispatcher.run(webhook_wake, stop));
        builder.purge_idempotency(config.idempotency_retention).bind().await
    }
}
