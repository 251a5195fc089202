//! PostgreSQL: the pool and the embedded migrations.

use std::str::FromStr as _;

use secrecy::ExposeSecret as _;
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// The database could not be reached or migrated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `database.url` does not parse.
    #[error("database.url: invalid URL: {0}")]
    Url(#[source] sqlx::Error),
    /// The first connection failed.
    #[error("database.url: cannot connect to {target}: {source}")]
    Connect {
        /// `host:port/database` (never the password).
        target: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database: migrations failed on {target}: {source}")]
    Migrate {
        /// `host:port/database`.
        target: String,
        /// The cause.
        source: sqlx::migrate::MigrateError,
    },
}

/// Connects (failing fast when the database is unreachable) and, unless disabled, runs `migrator`.
///
/// Migrations run under sqlx's Postgres advisory lock, so replicas starting at once apply them once.
///
/// # Errors
/// An invalid URL, an unreachable database, or a failed migration.
pub async fn connect(config: &DatabaseConfig, migrator: &Migrator) -> Result<PgPool, Error> {
    let options = PgConnectOptions::from_str(config.url.expose_secret()).map_err(Error::Url)?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(|source| Error::Connect { target: target.clone(), source })?;
    if config.run_migrations {
        migrator.run(&pool).await.map_err(|source| Error::Migrate { target: target.clone(), source })?;
        tracing::info!(database = %target, migrations = migrator.iter().count(), "database migrated");
    }
    Ok(pool)
}
