//! Exactly once in effect: every committed transfer gets exactly one notification record although
//! the ledger is SIGKILLed in the middle of a load, notifications is SIGKILLed while it consumes,
//! and Redis is unreachable for a while (events wait in the outbox and the stream, then arrive).
//! Both services run as their real binaries; Redis is reached through a proxy the test cuts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::HashMap, time::Duration};

use bank_proto::{
    common::v1::Money,
    ledger::v1::{
        CreateDepositRequest, CreateLedgerAccountRequest, CreateTransferRequest,
        create_transfer_request::Destination, ledger_admin_service_client::LedgerAdminServiceClient,
        ledger_service_client::LedgerServiceClient,
    },
};
use bank_testkit::{
    ServiceProcess, SmtpSink, TcpProxy, TestDatabase, TestIdentity, bearer,
    identity::{SERVICE_CLIENT, SERVICE_SECRET},
    process::binary,
};

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money { currency: "EUR".into(), minor_units })
}

fn keyed<T>(message: T, token: &str, key: &str) -> tonic::Request<T> {
    let mut request = bearer(message, token);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

struct Setup {
    identity: TestIdentity,
    redis: TcpProxy,
    ns: String,
}

impl Setup {
    fn common(&self, prefix: &str, database: &TestDatabase) -> Vec<(String, String)> {
        [
            ("BANK_DATABASE__URL", database.url().to_owned()),
            ("BANK_REDIS__URL", format!("redis://{}", self.redis.addr())),
            ("BANK_REDIS__KEY_PREFIX", format!("{}{prefix}", self.ns)),
            ("BANK_AUTH__IDENTITY_URL", self.identity.url()),
            ("BANK_AUTH__REDIS_PREFIX", self.identity.auth_prefix().to_owned()),
            ("BANK_AUTH__CLIENT_ID", SERVICE_CLIENT.to_owned()),
            ("BANK_AUTH__CLIENT_SECRET", SERVICE_SECRET.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    async fn ledger(&self, database: &TestDatabase) -> ServiceProcess {
        ServiceProcess::start(&binary("ledger"), &self.common("ledger:", database)).await
    }

    async fn notifications(&self, database: &TestDatabase, ledger_url: &str, smtp: u16) -> ServiceProcess {
        let mut env = self.common("notifications:", database);
        for (k, v) in [
            ("BANK_LEDGER_URL", ledger_url.to_owned()),
            ("BANK_CONSUMER__STREAMS", format!("[\"{0}events\", \"{0}ledger:events\"]", self.ns)),
            ("BANK_CONSUMER__BLOCK", "200ms".to_owned()),
            ("BANK_CONSUMER__CLAIM_IDLE", "1s".to_owned()),
            ("BANK_EMAIL__SMTP_HOST", "127.0.0.1".to_owned()),
            ("BANK_EMAIL__SMTP_PORT", smtp.to_string()),
            ("BANK_EMAIL__SMTP_TLS", "none".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
        ServiceProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_notifications")), &env).await
    }
}

/// Sends every keyed transfer until it succeeds (an error is an unknown outcome: retry with the
/// same key), against whatever ledger `channel` currently points at.
async fn transfer_all(
    channel: &tokio::sync::RwLock<tonic::transport::Channel>,
    token: &str,
    transfers: &[(String, CreateTransferRequest)],
) {
    for (key, message) in transfers {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let current = channel.read().await.clone();
            match LedgerServiceClient::new(current).create_transfer(keyed(message.clone(), token, key)).await
            {
                Ok(_) => break,
                Err(status) => {
                    assert!(tokio::time::Instant::now() < deadline, "{key} never succeeded: {status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_transfer_is_notified_exactly_once_through_kills_and_a_redis_outage() {
    let identity = TestIdentity::spawn().await;
    let ns = identity.app.redis().unwrap().prefix().to_owned();
    let setup = Setup { redis: TcpProxy::start(bank_testkit::redis_addr()).await, identity, ns };
    let smtp = SmtpSink::start().await;
    let (ledger_db, notifications_db) = (TestDatabase::create().await, TestDatabase::create().await);

    let ledger = setup.ledger(&ledger_db).await;
    let channel = tokio::sync::RwLock::new(ledger.channel().await);
    let mut notifications = setup.notifications(&notifications_db, &ledger.url(), smtp.port()).await;
    let mut ledger = Some(ledger);

    let alice = setup.identity.user("alice@example.com").await;
    let service = setup.identity.service_token(&["ledger:accounts"]).await;
    let admin = setup.identity.admin().await.access_token;
    let (from, to) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    for (id, number) in
        [(&from, &bank_testkit::account_number("DE44A")), (&to, &bank_testkit::account_number("DE44B"))]
    {
        LedgerServiceClient::new(channel.read().await.clone())
            .create_ledger_account(bearer(
                CreateLedgerAccountRequest {
                    account_id: id.clone(),
                    account_number: number.into(),
                    owner_user_id: alice.user_id.clone(),
                    currency: "EUR".into(),
                },
                &service,
            ))
            .await
            .unwrap();
    }
    LedgerAdminServiceClient::new(channel.read().await.clone())
        .create_deposit(keyed(
            CreateDepositRequest {
                account_id: from.clone(),
                amount: eur(10_000_000),
                ..CreateDepositRequest::default()
            },
            &admin,
            "seed",
        ))
        .await
        .unwrap();
    let transfer = |n: usize| {
        (
            format!("t-{n}"),
            CreateTransferRequest {
                from_account_id: from.clone(),
                destination: Some(Destination::ToAccountNumber(bank_testkit::account_number("DE44B"))),
                amount: eur(i64::try_from(n + 1).unwrap()),
                description: format!("transfer {n}"),
                fx_quote_id: String::new(),
            },
        )
    };
    let token = alice.tokens.access_token.clone();

    // 1. The ledger dies (SIGKILL) while 4 clients are sending; it restarts and the clients retry
    //    their unknown outcomes with the same keys.
    {
        let load = async {
            let batches: Vec<Vec<_>> =
                (0..4).map(|c| (0..10).map(|i| transfer(c * 10 + i)).collect()).collect();
            futures::future::join_all(batches.iter().map(|b| transfer_all(&channel, &token, b))).await;
        };
        let chaos = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            ledger.take().unwrap().kill().await;
            let restarted = setup.ledger(&ledger_db).await;
            *channel.write().await = restarted.channel().await;
            ledger = Some(restarted);
        };
        tokio::join!(load, chaos);
    }

    // 2. notifications dies (SIGKILL) while it consumes the next transfers; a new process (another
    //    consumer name) claims what the dead one left pending.
    {
        let load = async {
            let batch: Vec<_> = (40..70).map(transfer).collect();
            transfer_all(&channel, &token, &batch).await;
        };
        let chaos = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            notifications.kill().await;
        };
        tokio::join!(load, chaos);
        let ledger_url = ledger.as_ref().unwrap().url();
        notifications = setup.notifications(&notifications_db, &ledger_url, smtp.port()).await;
    }

    // 3. Redis is unreachable for ledger and notifications for a while: transfers still commit
    //    (tokens are checked with identity meanwhile), their events wait in the outbox.
    setup.redis.cut();
    let batch: Vec<_> = (70..85).map(transfer).collect();
    transfer_all(&channel, &token, &batch).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    setup.redis.restore();

    // Every transfer applied once; every one notified exactly once, eventually.
    let transfers = count(ledger_db.url(), "SELECT count(*) FROM transfers").await;
    assert_eq!(transfers, 85, "each key applied exactly once");
    let posted = "bank.events.v1.TransferPosted";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let notified = count(
            notifications_db.url(),
            &format!("SELECT count(*) FROM notifications WHERE event_type = '{posted}'"),
        )
        .await;
        if notified >= 85 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut ledger_conn = <sqlx::PgConnection as sqlx::Connection>::connect(ledger_db.url()).await.unwrap();
    let events: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox WHERE event_type = $1")
        .bind(posted)
        .fetch_all(&mut ledger_conn)
        .await
        .unwrap();
    assert_eq!(events.len(), 85, "one event per transfer");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(notifications_db.url()).await.unwrap();
    let records: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT event_id, count(*) FROM notifications WHERE event_type = $1 GROUP BY event_id",
    )
    .bind(posted)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let records: HashMap<uuid::Uuid, i64> = records.into_iter().collect();
    for event in &events {
        assert_eq!(records.get(event), Some(&1), "event {event}: exactly one notification record");
    }
    assert_eq!(records.len(), events.len(), "no record without a committed transfer");
    drop(notifications);
}
