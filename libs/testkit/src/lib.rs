//! bank-testkit: start any bankmesh service the way production does, on port 0, against a fresh
//! uniquely named database (dropped afterwards) and an isolated Redis key namespace, and talk to it
//! through real tonic clients.
//!
//! A dev-dependency only: no production crate may depend on it. Panics are its error handling (it
//! only runs inside tests).
//!
//! Where PostgreSQL and Redis are: `BANK_TEST_DATABASE_URL` (an admin connection that may create
//! databases; default `postgres://postgres@127.0.0.1:5432/postgres`) and `BANK_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`). The README's test command starts both when they are absent.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::missing_panics_doc)]

mod database;
pub mod identity;
pub mod logs;
pub mod probe;
pub mod process;
mod proxy;
pub mod receiver;
mod redis_ns;
pub mod smtp;
mod spawn;

pub use database::TestDatabase;
pub use identity::{TestIdentity, TestUser, TotpDevice, bearer};
pub use process::ServiceProcess;
pub use proxy::{Stall, TcpProxy};
pub use receiver::WebhookReceiver;
pub use redis_ns::TestRedis;
pub use smtp::SmtpSink;
pub use spawn::{Options, TestApp, spawn, spawn_with};

/// The admin connection URL for creating test databases.
#[must_use]
pub fn database_admin_url() -> String {
    std::env::var("BANK_TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The Redis URL tests use (each test gets its own key prefix).
#[must_use]
pub fn redis_url() -> String {
    std::env::var("BANK_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

/// The test Redis as a TCP address (for a [`TcpProxy`] in front of it).
#[must_use]
pub fn redis_addr() -> std::net::SocketAddr {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let with_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:6379") };
    with_port.replace("localhost", "127.0.0.1").parse().expect("the test Redis must be reached over TCP")
}

/// A valid account number (bank code, serial, check digits) derived from `label`: the same label
/// gives the same number, so a test can name its accounts (`account_number("alice")`).
#[must_use]
pub fn account_number(label: &str) -> String {
    // FNV-1a: stable across runs and platforms (std's hasher is not).
    let hash = label
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    bank_money::account_number::AccountNumber::from_serial(hash % 10_000_000_000).as_str().to_owned()
}

/// The test PostgreSQL as a TCP address (for a [`TcpProxy`] in front of it).
#[must_use]
pub fn postgres_addr() -> std::net::SocketAddr {
    let url = database_admin_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let with_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    with_port.replace("localhost", "127.0.0.1").parse().expect("the test PostgreSQL must be reached over TCP")
}

/// Runs `f` on a fresh single-threaded runtime in its own thread and waits for it. For cleanup in
/// `Drop`, which may run inside or outside a Tokio runtime.
pub(crate) fn block_on_thread<F>(f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
        runtime.block_on(f);
    });
    let _ = handle.join();
}

/// The field violations of an `INVALID_ARGUMENT` status as (field, code) pairs: the code is the
/// stable prefix of each violation's description (`CODE: text`).
#[must_use]
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| {
                    let code = v.description.split(':').next().unwrap_or_default().to_owned();
                    (v.field, code)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `secret` appears in `text` neither as written nor hex-encoded (as `pg_dump`
/// writes bytea, e.g. a protobuf event payload).
#[track_caller]
pub fn assert_nowhere(text: &str, secret: &str, what: &str) {
    assert!(!text.contains(secret), "{secret:?} is in the {what}");
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(&hex), "{secret:?} is in the {what}, hex-encoded");
}
