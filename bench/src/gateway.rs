//! `gateway`: the same operation through the REST gateway and through direct gRPC, at the same
//! concurrency, with the same load-generator loop, in the same run (gRPC, REST, gRPC, REST; each
//! side's phases are summed).
//!
//! `--op balance`: `GET /api/v1/accounts/{id}/balance` vs `LedgerService/GetBalances`.
//! `--op transfer`: `POST /api/v1/transfers` (own -> own) vs `LedgerService/CreateTransfer`, each
//! with a fresh `Idempotency-Key`.
//!
//! The gateway runs as in production — authentication with bank-auth (signature + revocation in
//! Redis), the rate limiter's Lua script in Redis on every request (with quotas high enough not to
//! refuse the load), transcoding, the circuit breaker — in front of the same ledger process that
//! the gRPC side calls directly.
//!
//! Targets (gateway issue): REST throughput >= 0.8 x direct; REST p99 <= 1.2 x direct p99 + 3 ms.

use std::sync::Arc;

use axum::body::Bytes;
use bank_gateway::Gateway;
use bank_ledger::Ledger;
use bank_proto::{
    common::v1::Money,
    ledger::v1::{
        CreateTransferRequest, GetBalancesRequest, create_transfer_request::Destination,
        ledger_service_client::LedgerServiceClient,
    },
};
use bank_testkit::{Options, TestIdentity, bearer};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rand::Rng as _;
use sqlx::Connection as _;

use crate::{Outcome, closed_loop};

/// Per client: its token and its two accounts.
struct Fixture {
    owners: Vec<(String, [String; 2])>,
}

async fn fixture(identity: &TestIdentity, ledger_url: &str, clients: usize) -> Fixture {
    let mut db = sqlx::PgConnection::connect(ledger_url).await.unwrap();
    let mut owners = Vec::new();
    for i in 0..clients {
        let user = identity.user(&format!("gw{i}@example.com")).await;
        let mut ids = Vec::new();
        for j in 0..2 {
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO ledger_accounts (account_id, kind, account_number, owner_user_id, currency, overdraft_limit) \
                 VALUES ($1, 'customer', $2, $3::uuid, 'EUR', 1000000000000)",
            )
            .bind(id)
            .bind(format!("GW{i:05}{j}"))
            .bind(&user.user_id)
            .execute(&mut db)
            .await
            .unwrap();
            ids.push(id.to_string());
        }
        owners.push((user.tokens.access_token, [ids[0].clone(), ids[1].clone()]));
    }
    Fixture { owners }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Balance,
    Transfer,
}

async fn grpc(
    channel: tonic::transport::Channel,
    fixture: Arc<Fixture>,
    op: Op,
    clients: usize,
    seconds: u64,
) -> Outcome {
    closed_loop(clients, seconds, move || {
        let mut client = LedgerServiceClient::new(channel.clone());
        let (token, [a, b]) = fixture.owners[rand::thread_rng().gen_range(0..fixture.owners.len())].clone();
        let amount = rand::thread_rng().gen_range(1..=1000);
        async move {
            let result = match op {
                Op::Balance => client
                    .get_balances(bearer(GetBalancesRequest { account_id: a, as_of: None }, &token))
                    .await
                    .map(|_| ()),
                Op::Transfer => {
                    let mut request = bearer(
                        CreateTransferRequest {
                            from_account_id: a,
                            destination: Some(Destination::ToAccountId(b)),
                            amount: Some(Money { currency: "EUR".into(), minor_units: amount }),
                            description: "bench".into(),
                            fx_quote_id: String::new(),
                        },
                        &token,
                    );
                    request
                        .metadata_mut()
                        .insert("idempotency-key", uuid::Uuid::now_v7().to_string().parse().unwrap());
                    client.create_transfer(request).await.map(|_| ())
                }
            };
            result.map_err(|status| eprintln!("gRPC: {:?} {}", status.code(), status.message())).is_ok()
        }
    })
    .await
}

async fn rest(base: Arc<String>, fixture: Arc<Fixture>, op: Op, clients: usize, seconds: u64) -> Outcome {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    closed_loop(clients, seconds, move || {
        let client = client.clone();
        let (token, [a, b]) = fixture.owners[rand::thread_rng().gen_range(0..fixture.owners.len())].clone();
        let amount = rand::thread_rng().gen_range(1..=1000);
        let base = base.clone();
        async move {
            let builder = http::Request::builder().header("authorization", format!("Bearer {token}"));
            let request = match op {
                Op::Balance => builder
                    .method("GET")
                    .uri(format!("{base}/api/v1/accounts/{a}/balance"))
                    .body(Full::new(Bytes::new())),
                Op::Transfer => {
                    let body = serde_json::json!({
                        "fromAccountId": a,
                        "toAccountId": b,
                        "amount": {"currency": "EUR", "minorUnits": amount.to_string()},
                        "description": "bench",
                    });
                    builder
                        .method("POST")
                        .uri(format!("{base}/api/v1/transfers"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
                }
            }
            .unwrap();
            match client.request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map(http_body_util::Collected::to_bytes)
                        .unwrap_or_default();
                    if status.is_success() {
                        true
                    } else {
                        eprintln!("REST: {status} {}", String::from_utf8_lossy(&body));
                        false
                    }
                }
                Err(err) => {
                    eprintln!("REST: {err}");
                    false
                }
            }
        }
    })
    .await
}

fn merge(a: Outcome, b: Outcome) -> Outcome {
    let mut latency = a.latency;
    latency.add(b.latency).unwrap();
    Outcome { ops: a.ops + b.ops, errors: a.errors + b.errors, elapsed: a.elapsed + b.elapsed, latency }
}

/// Runs the scenario and prints the table.
pub(crate) async fn run(clients: usize, seconds: u64, op: &str) {
    let op = match op {
        "balance" => Op::Balance,
        "transfer" => Op::Transfer,
        other => panic!("unknown --op {other}; try balance or transfer"),
    };
    let name = if op == Op::Balance { "balance read" } else { "own transfer" };
    println!("# gateway: {name}, {clients} clients, 2 x {seconds} s per side, interleaved");
    let identity = TestIdentity::spawn().await;
    let ledger = bank_testkit::spawn_with::<Ledger>(
        identity
            .trust(Options::default())
            .set("database.max_connections", u32::try_from(clients).unwrap().max(8)),
    )
    .await;
    let gateway = bank_testkit::spawn_with::<Gateway>(
        identity
            .trust(Options::default().database(false).redis(true))
            .set("upstreams.identity", identity.url())
            .set("upstreams.ledger", format!("http://{}", ledger.addr))
            .set("upstreams.required_for_readiness", vec!["identity".to_owned(), "ledger".to_owned()])
            .set("rate_limits.per_ip.limit", 100_000_000)
            .set("rate_limits.per_user.limit", 100_000_000),
    )
    .await;
    let fixture = Arc::new(fixture(&identity, ledger.database().unwrap().url(), clients).await);
    let channel = ledger.channel().await;
    let base = Arc::new(format!("http://{}", gateway.addr));

    let g1 = grpc(channel.clone(), fixture.clone(), op, clients, seconds).await;
    let r1 = rest(base.clone(), fixture.clone(), op, clients, seconds).await;
    let g2 = grpc(channel.clone(), fixture.clone(), op, clients, seconds).await;
    let r2 = rest(base.clone(), fixture.clone(), op, clients, seconds).await;
    let direct = merge(g1, g2);
    let via_rest = merge(r1, r2);

    println!("| path | ops | errors | ops/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (path, outcome) in [("direct gRPC", &direct), ("REST via gateway", &via_rest)] {
        println!(
            "| {path} | {} | {} | {:.0} | {:.2} | {:.2} |",
            outcome.ops,
            outcome.errors,
            outcome.rate(),
            outcome.ms(0.5),
            outcome.ms(0.99)
        );
    }
    let ratio = via_rest.rate() / direct.rate();
    let limit = 1.2 * direct.ms(0.99) + 3.0;
    println!("\nthroughput: REST/gRPC = {ratio:.2} (target >= 0.80): {}", verdict(ratio >= 0.8));
    println!(
        "p99: REST {:.2} ms vs limit {limit:.2} ms (1.2 x gRPC p99 {:.2} + 3): {}",
        via_rest.ms(0.99),
        direct.ms(0.99),
        verdict(via_rest.ms(0.99) <= limit)
    );
    println!("errors: gRPC {}, REST {}", direct.errors, via_rest.errors);
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}
