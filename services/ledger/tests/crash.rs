//! SIGKILL in the middle of a transfer load: after a restart, retrying every unknown outcome with its
//! idempotency key applies each key at most once and leaves the ledger's invariants intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bank_proto::{
    common::v1::Money,
    ledger::v1::{
        CreateDepositRequest, CreateLedgerAccountRequest, CreateTransferRequest,
        VerifyLedgerInvariantsRequest, create_transfer_request::Destination,
        ledger_admin_service_client::LedgerAdminServiceClient, ledger_service_client::LedgerServiceClient,
    },
};
use bank_testkit::{
    ServiceProcess, TestDatabase, TestIdentity, bearer,
    identity::{SERVICE_CLIENT, SERVICE_SECRET},
};
use tonic::transport::Channel;

/// Starts the real binary and answers it with a channel to its gRPC address.
async fn start(database: &TestDatabase, identity: &TestIdentity) -> (ServiceProcess, Channel) {
    let redis = identity.app.redis().unwrap();
    let env = [
        ("BANK_DATABASE__URL", database.url().to_owned()),
        ("BANK_REDIS__URL", redis.url().to_owned()),
        ("BANK_REDIS__KEY_PREFIX", format!("{}ledger:", redis.prefix())),
        ("BANK_AUTH__IDENTITY_URL", identity.url()),
        ("BANK_AUTH__REDIS_PREFIX", identity.auth_prefix().to_owned()),
        ("BANK_AUTH__CLIENT_ID", SERVICE_CLIENT.to_owned()),
        ("BANK_AUTH__CLIENT_SECRET", SERVICE_SECRET.to_owned()),
    ]
    .map(|(key, value)| (key.to_owned(), value));
    let ledger = ServiceProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_ledger")), &env).await;
    let channel = ledger.channel().await;
    (ledger, channel)
}

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money { currency: "EUR".into(), minor_units })
}

fn keyed<T>(message: T, token: &str, key: &str) -> tonic::Request<T> {
    let mut request = bearer(message, token);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

#[tokio::test]
async fn sigkill_mid_load_then_retries_apply_every_key_at_most_once() {
    let identity = TestIdentity::spawn().await;
    let database = TestDatabase::create().await;
    let (process, channel) = start(&database, &identity).await;
    let alice = identity.user("alice@example.com").await;
    let bob = identity.user("bob@example.com").await;
    let service = identity.service_token(&["ledger:accounts"]).await;
    let admin = identity.admin().await.access_token;

    let mut ledger = LedgerServiceClient::new(channel.clone());
    let from = uuid::Uuid::now_v7().to_string();
    for (id, number, owner) in [
        (from.clone(), &bank_testkit::account_number("DE10A"), &alice.user_id),
        (uuid::Uuid::now_v7().to_string(), &bank_testkit::account_number("DE10B"), &bob.user_id),
    ] {
        ledger
            .create_ledger_account(bearer(
                CreateLedgerAccountRequest {
                    account_id: id,
                    account_number: number.into(),
                    owner_user_id: owner.clone(),
                    currency: "EUR".into(),
                },
                &service,
            ))
            .await
            .unwrap();
    }
    LedgerAdminServiceClient::new(channel.clone())
        .create_deposit(keyed(
            CreateDepositRequest {
                account_id: from.clone(),
                amount: eur(1_000_000),
                ..CreateDepositRequest::default()
            },
            &admin,
            "seed",
        ))
        .await
        .unwrap();

    // 8 clients send 25 transfers each (key t-<client>-<n>, amount n+1); the process dies midway.
    let request = |client: usize, n: usize| {
        (
            format!("t-{client}-{n}"),
            CreateTransferRequest {
                from_account_id: from.clone(),
                destination: Some(Destination::ToAccountNumber(bank_testkit::account_number("DE10B"))),
                amount: eur(i64::try_from(n + 1).unwrap()),
                description: String::new(),
                fx_quote_id: String::new(),
            },
        )
    };
    let mut load = Vec::new();
    for client in 0..8 {
        let channel = channel.clone();
        let token = alice.tokens.access_token.clone();
        let requests: Vec<_> = (0..25).map(|n| request(client, n)).collect();
        load.push(tokio::spawn(async move {
            let mut ledger = LedgerServiceClient::new(channel);
            let mut unknown = Vec::new();
            for (key, message) in requests {
                if ledger.create_transfer(keyed(message.clone(), &token, &key)).await.is_err() {
                    unknown.push((key, message));
                }
            }
            unknown
        }));
    }
    // Kill once the load is well under way (a tenth of it committed), whatever the machine's speed.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(database.url()).await.unwrap();
    for _ in 0..500 {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transfers").fetch_one(&mut db).await.unwrap();
        if done >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    process.kill().await;
    let mut unknown = Vec::new();
    for task in load {
        unknown.extend(task.await.unwrap());
    }
    assert!(!unknown.is_empty(), "the kill came before the load finished");

    // Restart on the same database and retry every unknown outcome with its own key.
    let (_child, channel) = start(&database, &identity).await;
    let mut ledger = LedgerServiceClient::new(channel.clone());
    for (key, message) in &unknown {
        ledger.create_transfer(keyed(message.clone(), &alice.tokens.access_token, key)).await.unwrap();
    }

    // Every key applied exactly once: 8 x (1 + 2 + ... + 25) moved, one transfer per key.
    let (transfers, moved): (i64, i64) =
        sqlx::query_as("SELECT count(*), COALESCE(sum(amount), 0)::bigint FROM transfers")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(transfers, 8 * 25);
    assert_eq!(moved, 8 * (25 * 26 / 2));
    let report = LedgerAdminServiceClient::new(channel)
        .verify_ledger_invariants(bearer(VerifyLedgerInvariantsRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(report.healthy, "{:?}", report.violations);
}
