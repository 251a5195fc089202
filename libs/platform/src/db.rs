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

/// Databases the readiness check last found unreachable, by `host:port/database`. Transactions on
/// them fail at once with `UNAVAILABLE` instead of waiting `database.acquire_timeout` for a
/// connection that cannot come (the next successful check clears the mark). Keyed by database, not
/// process-wide, because tests run several services in one process.
static DOWN: std::sync::LazyLock<std::sync::RwLock<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);
/// How many databases are marked: the common case (none) costs one atomic load.
static DOWN_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn key(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or_default())
}

/// Records what the readiness check found (`crate::health::PostgresCheck`).
pub(crate) fn mark(pool: &PgPool, up: bool) {
    let key = key(pool);
    let mut down = DOWN.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let changed = if up { down.remove(&key) } else { down.insert(key) };
    if changed {
        DOWN_COUNT.store(down.len(), std::sync::atomic::Ordering::Release);
    }
}

/// Whether the last readiness check found this pool's database unreachable.
#[must_use]
pub fn known_down(pool: &PgPool) -> bool {
    if DOWN_COUNT.load(std::sync::atomic::Ordering::Acquire) == 0 {
        return false;
    }
    DOWN.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&key(pool))
}

/// Whether a database error means "the database cannot be reached now" (the caller should retry
/// later: `UNAVAILABLE`) rather than a fault of this request or a bug.
#[must_use]
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    if let sqlx::Error::Database(db) = err {
        // connection exceptions; admin/crash shutdown, cannot connect now; too many connections;
        // read-only standby after a failover.
        return db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "25006")
        });
    }
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}
