//! `loadgen`: bankmesh load generators. Each scenario starts the real services in-process against
//! a fresh database on this machine's PostgreSQL and Redis, drives them through real tonic clients
//! over loopback, measures an anchor in the same run, and prints one result table. Every loop is
//! bounded by time; nothing leaves 127.0.0.1.
//!
//! ```text
//! loadgen login [--clients 4] [--seconds 15]
//! loadgen transfers [--clients 32] [--seconds 15] [--accounts 100000] [--pool N] [--workers N]
//!                   [--max-batch N] [--baseline-p50-ms X]
//! loadgen gateway [--op balance|transfer] [--clients 32] [--seconds 10]
//! ```
//!
//! `login`: password logins per second at `--clients` concurrent clients, against the anchor:
//! argon2id verifications per second with the same parameters and the same concurrency, measured
//! in the same run. Target (identity issue): logins/s >= 0.8 x argon2/s.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used, clippy::float_arithmetic)]
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod gateway;
mod transfers;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version};
use bank_proto::identity::v1::LoginRequest;
use bank_testkit::{Options, TestIdentity, identity::USER_PASSWORD};
use hdrhistogram::Histogram;

/// Production argon2id parameters (identity's defaults).
const MEMORY_KIB: u32 = 19_456;
const ITERATIONS: u32 = 2;

struct Args {
    scenario: String,
    clients: usize,
    seconds: u64,
    accounts: usize,
    op: String,
    /// The ledger's `database.max_connections` (`None`: the service's default).
    pool: Option<u32>,
    /// The ledger's `engine.workers` (`None`: the service's default).
    workers: Option<u32>,
    /// The ledger's `engine.max_batch` (`None`: the service's default).
    max_batch: Option<u32>,
    /// The 1-client p50 of the build before the posting engine, to judge the 1-client row against.
    baseline_p50_ms: Option<f64>,
}

fn args() -> Args {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "login".to_owned());
    let default_clients = if scenario == "login" { 4 } else { 32 };
    let default_seconds = if scenario == "gateway" { 10 } else { 15 };
    let mut parsed = Args {
        scenario,
        clients: default_clients,
        seconds: default_seconds,
        accounts: 100_000,
        op: "balance".to_owned(),
        pool: None,
        workers: None,
        max_batch: None,
        baseline_p50_ms: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--clients" | "-c" => parsed.clients = value.parse().expect("--clients N"),
            "--seconds" => parsed.seconds = value.parse().expect("--seconds N"),
            "--accounts" => parsed.accounts = value.parse().expect("--accounts N"),
            "--op" => parsed.op = value,
            "--pool" => parsed.pool = Some(value.parse().expect("--pool N")),
            "--workers" => parsed.workers = Some(value.parse().expect("--workers N")),
            "--max-batch" => parsed.max_batch = Some(value.parse().expect("--max-batch N")),
            "--baseline-p50-ms" => parsed.baseline_p50_ms = Some(value.parse().expect("--baseline-p50-ms X")),
            other => panic!("unknown flag {other}"),
        }
    }
    parsed
}

pub(crate) struct Outcome {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
}

impl Outcome {
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs `op` on `clients` tasks for `seconds`, closed loop.
pub(crate) async fn closed_loop<F, Fut>(clients: usize, seconds: u64, op: F) -> Outcome
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut ops, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let began = Instant::now();
                if op().await {
                    ops += 1;
                    latency.record(began.elapsed().as_micros() as u64).unwrap();
                } else {
                    errors += 1;
                }
            }
            (ops, errors, latency)
        }));
    }
    let mut outcome = Outcome {
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    };
    for task in tasks {
        let (ops, errors, latency) = task.await.unwrap();
        outcome.ops += ops;
        outcome.errors += errors;
        outcome.latency.add(latency).unwrap();
    }
    outcome.elapsed = start.elapsed();
    outcome
}

async fn login(args: &Args) {
    println!(
        "# login: {} clients, {} s per phase, argon2id m={MEMORY_KIB} KiB t={ITERATIONS} p=1",
        args.clients, args.seconds
    );
    let identity = TestIdentity::spawn_with(
        Options::default()
            .set("hashing.argon2.memory_kib", MEMORY_KIB)
            .set("hashing.argon2.iterations", ITERATIONS)
            .set("lockout.threshold", 1000),
    )
    .await;
    let user = identity.user("bench@example.com").await;

    // Anchor: raw argon2id verifications with the same parameters and concurrency.
    let params = Params::new(MEMORY_KIB, ITERATIONS, 1, None).unwrap();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let phc = Arc::new(argon.hash_password(USER_PASSWORD.as_bytes()).unwrap().to_string());
    let anchor = closed_loop(args.clients, args.seconds, move || {
        let phc = phc.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let argon = Argon2::new(
                    Algorithm::Argon2id,
                    Version::V0x13,
                    Params::new(MEMORY_KIB, ITERATIONS, 1, None).unwrap(),
                );
                argon.verify_password(USER_PASSWORD.as_bytes(), &PasswordHash::new(&phc).unwrap()).is_ok()
            })
            .await
            .unwrap_or(false)
        }
    })
    .await;

    // Subject: full gRPC logins (hash verify + session, refresh token, audit entry, outbox event).
    let channel = identity.app.channel().await;
    let email = user.email.clone();
    let subject = closed_loop(args.clients, args.seconds, move || {
        let mut client =
            bank_proto::identity::v1::identity_service_client::IdentityServiceClient::new(channel.clone());
        let email = email.clone();
        async move {
            client
                .login(LoginRequest { email, password: USER_PASSWORD.to_owned(), device_name: String::new() })
                .await
                .is_ok()
        }
    })
    .await;

    println!("| run | ops | errors | ops/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (name, outcome) in [("argon2id verify (anchor)", &anchor), ("gRPC Login (subject)", &subject)] {
        println!(
            "| {name} | {} | {} | {:.1} | {:.1} | {:.1} |",
            outcome.ops,
            outcome.errors,
            outcome.rate(),
            outcome.ms(0.5),
            outcome.ms(0.99)
        );
    }
    let ratio = subject.rate() / anchor.rate();
    println!("\nlogin/argon2 = {ratio:.2} (target >= 0.80): {}", if ratio >= 0.8 { "PASS" } else { "FAIL" });
}

#[tokio::main]
async fn main() {
    let args = args();
    match args.scenario.as_str() {
        "login" => login(&args).await,
        "transfers" => transfers::run(&args).await,
        "gateway" => gateway::run(args.clients, args.seconds, &args.op).await,
        other => panic!("unknown scenario {other}; try: login, transfers, gateway"),
    }
}
