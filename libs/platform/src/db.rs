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

/// How a service's statements are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plans {
    /// PostgreSQL's default: custom plans for the first executions of a prepared statement, then
    /// whichever looks cheaper.
    #[default]
    Auto,
    /// `plan_cache_mode = force_generic_plan` on every connection: a prepared statement is planned
    /// once per connection. For services whose hot statements are keyed by ids, where a custom
    /// plan is never better and re-planning every execution is pure cost (the ledger: about 20%
    /// more transfers per second, see docs/adr/0017).
    Generic,
}

/// Connects (failing fast when the database is unreachable) and, unless disabled, runs `migrator`.
///
/// Migrations run under sqlx's Postgres advisory lock, so replicas starting at once apply them once.
///
/// # Errors
/// An invalid URL, an unreachable database, or a failed migration.
pub async fn connect(config: &DatabaseConfig, migrator: &Migrator) -> Result<PgPool, Error> {
    connect_with(config, migrator, Plans::Auto).await
}

/// [`connect`] with a planning mode for every connection of the pool.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(
    config: &DatabaseConfig,
    migrator: &Migrator,
    plans: Plans,
) -> Result<PgPool, Error> {
    let options = PgConnectOptions::from_str(config.url.expose_secret()).map_err(Error::Url)?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let mut pool =
        PgPoolOptions::new().max_connections(config.max_connections).acquire_timeout(config.acquire_timeout);
    if plans == Plans::Generic {
        // A session setting (not a startup option), so it also works behind a session-mode pooler.
        pool = pool.after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::Executor::execute(&mut *conn, "SET plan_cache_mode = force_generic_plan").await?;
                Ok(())
            })
        });
    }
    let pool = pool
        .connect_with(options)
        .await
        .map_err(|source| Error::Connect { target: target.clone(), source })?;
    if config.run_migrations {
        migrator.run(&pool).await.map_err(|source| Error::Migrate { target: target.clone(), source })?;
        tracing::info!(database = %target, migrations = migrator.iter().count(), "database migrated");
    }
    Ok(pool)
}
