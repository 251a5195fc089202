//! The real `cards` binary, killed with SIGKILL while its ledger calls hang (its ledger upstream
//! goes through a proxy the test stalls): one authorization whose hold the ledger created but whose
//! answer never came back, one whose request never reached the ledger. Both records are committed
//! (`pending`) when cards dies. After a restart the reconciler leaves each authorization and its
//! hold consistent: approved with exactly one hold, the one the ledger has for its reference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bank_accounts::Accounts;
use bank_ledger::Ledger;
use bank_proto::cards::v1::{
    AuthorizationStatus, GetChargeRequest, cards_service_client::CardsServiceClient,
};
use bank_testkit::{
    Options, ServiceProcess, Stall, TcpProxy, TestDatabase, TestIdentity, bearer,
    identity::{SERVICE_CLIENT, SERVICE_SECRET},
};
use support::*;
use tonic::transport::Channel;

/// Starts the real binary; answers it and a channel to its gRPC address.
async fn start(
    database: &TestDatabase,
    identity: &TestIdentity,
    ledger: std::net::SocketAddr,
    accounts: std::net::SocketAddr,
) -> (ServiceProcess, Channel) {
    let redis = identity.app.redis().unwrap();
    let env = [
        ("BANK_DATABASE__URL", database.url().to_owned()),
        ("BANK_REDIS__URL", redis.url().to_owned()),
        ("BANK_REDIS__KEY_PREFIX", format!("{}cards:", redis.prefix())),
        ("BANK_AUTH__IDENTITY_URL", identity.url()),
        ("BANK_AUTH__REDIS_PREFIX", identity.auth_prefix().to_owned()),
        ("BANK_AUTH__CLIENT_ID", SERVICE_CLIENT.to_owned()),
        ("BANK_AUTH__CLIENT_SECRET", SERVICE_SECRET.to_owned()),
        ("BANK_VAULT__KEKS", KEK_1.to_owned()),
        ("BANK_LEDGER_URL", format!("http://{ledger}")),
        ("BANK_ACCOUNTS_URL", format!("http://{accounts}")),
        // Long enough that the stalled calls are still hanging when the process is killed.
        ("BANK_UPSTREAM_TIMEOUT", "60s".to_owned()),
        ("BANK_RECONCILER__INTERVAL", "100ms".to_owned()),
        ("BANK_RECONCILER__STUCK_AFTER", "1s".to_owned()),
        ("BANK_RECONCILER__MAX_BACKOFF", "2s".to_owned()),
    ]
    .map(|(key, value)| (key.to_owned(), value));
    let cards = ServiceProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_cards")), &env).await;
    let channel = cards.channel().await;
    (cards, channel)
}

async fn auth_status(conn: &mut sqlx::PgConnection, authorization_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM authorizations WHERE authorization_id::text = $1")
        .bind(authorization_id)
        .fetch_optional(conn)
        .await
        .unwrap()
}

/// (how many holds the ledger has for the reference, their ids)
async fn holds_for(conn: &mut sqlx::PgConnection, reference: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT hold_id::text, status, amount FROM holds WHERE created_by = $1 AND reference_id = $2",
    )
    .bind(SERVICE_CLIENT)
    .bind(reference)
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn sigkill_between_the_cards_commit_and_the_ledger_answer_leaves_authorization_and_hold_consistent() {
    let identity = TestIdentity::spawn().await;
    let ledger = bank_testkit::spawn_with::<Ledger>(identity.trust(Options::default())).await;
    let accounts = bank_testkit::spawn_with::<Accounts>(
        identity.trust(Options::default()).set("ledger_url", format!("http://{}", ledger.addr)),
    )
    .await;
    let proxy = TcpProxy::start(ledger.addr).await;
    let database = TestDatabase::create().await;
    let (cards, channel) = start(&database, &identity, proxy.addr(), accounts.addr).await;

    // Helpers of the support world, with this process in place of the in-process cards.
    let w = support::World {
        cards: bank_testkit::spawn_with::<bank_cards::Cards>(cards_options(
            &identity,
            ledger.addr,
            &accounts,
        ))
        .await,
        admin: identity.admin().await.access_token,
        identity,
        ledger,
        accounts,
    };
    let (alice, account) = w.customer("crash.cards@example.com", 100_000).await;
    let issued = CardsServiceClient::new(channel.clone())
        .issue_card(keyed(
            bank_proto::cards::v1::IssueCardRequest { account_id: account.clone(), ..Default::default() },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap()
        .into_inner();
    let card_id = issued.card.unwrap().card_id;
    let acquirer = w.acquirer().await;
    let charge = |amount: i64, key: String| {
        let (channel, acquirer, card_id) = (channel.clone(), acquirer.clone(), card_id.clone());
        async move {
            CardsServiceClient::new(channel)
                .authorize_charge(keyed(charge_request(&card_id, amount), &acquirer, &key))
                .await
        }
    };
    // A first charge opens cards' connection to the ledger through the proxy.
    let warm = charge(1_000, fresh_key()).await.unwrap().into_inner().authorization.unwrap();
    assert_eq!(warm.status, AuthorizationStatus::Approved as i32);

    let mut cards_db = connect(database.url()).await;
    let mut ledger_db = connect(w.ledger.database().unwrap().url()).await;

    // A: the request reaches the ledger (the hold is created), the answer never comes back.
    proxy.stall(Stall::Responses);
    let key_a = fresh_key();
    let in_flight_a = tokio::spawn(charge(2_000, key_a.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let id_a = loop {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT authorization_id::text FROM authorizations WHERE status = 'pending' AND amount = 2000",
        )
        .fetch_optional(&mut cards_db)
        .await
        .unwrap();
        if let Some(id) = found
            && holds_for(&mut ledger_db, &id).await.len() == 1
        {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "A is recorded pending and its hold exists");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // B: nothing reaches the ledger.
    proxy.stall(Stall::Both);
    let key_b = fresh_key();
    let in_flight_b = tokio::spawn(charge(3_000, key_b.clone()));
    let id_b = loop {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT authorization_id::text FROM authorizations WHERE status = 'pending' AND amount = 3000",
        )
        .fetch_optional(&mut cards_db)
        .await
        .unwrap();
        if let Some(id) = found {
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "B is recorded pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(holds_for(&mut ledger_db, &id_b).await.is_empty(), "B never reached the ledger");

    // Kill cards while both calls hang.
    cards.kill().await;
    assert!(in_flight_a.await.unwrap().is_err(), "A's caller never got an answer");
    assert!(in_flight_b.await.unwrap().is_err(), "B's caller never got an answer");
    assert_eq!(auth_status(&mut cards_db, &id_a).await.as_deref(), Some("pending"));
    assert_eq!(auth_status(&mut cards_db, &id_b).await.as_deref(), Some("pending"));
    // The crash point: a hold for A that cards has not confirmed; nothing for B.
    assert_eq!(holds_for(&mut ledger_db, &id_a).await.len(), 1);

    proxy.restore();
    let (_restarted, channel) = start(&database, &w.identity, proxy.addr(), w.accounts.addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while auth_status(&mut cards_db, &id_a).await.as_deref() == Some("pending")
        || auth_status(&mut cards_db, &id_b).await.as_deref() == Some("pending")
    {
        assert!(tokio::time::Instant::now() < deadline, "the reconciler finishes A and B");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (id, amount) in [(&id_a, 2_000), (&id_b, 3_000)] {
        let authorization = CardsServiceClient::new(channel.clone())
            .get_charge(bearer(
                GetChargeRequest { card_id: card_id.clone(), authorization_id: id.clone() },
                token(&alice),
            ))
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        let holds = holds_for(&mut ledger_db, id).await;
        assert_eq!(holds.len(), 1, "exactly one hold for {id}");
        assert_eq!(authorization.status, AuthorizationStatus::Approved as i32);
        assert_eq!(authorization.hold_id, holds[0].0, "the record names the ledger's hold");
        assert_eq!((holds[0].1.as_str(), holds[0].2), ("active", amount));
    }
    // The acquirer's retries with the same keys answer the outcome, and hold nothing more.
    for (key, id) in [(key_a, &id_a), (key_b, &id_b)] {
        let retried = CardsServiceClient::new(channel.clone())
            .authorize_charge(keyed(
                charge_request(&card_id, if *id == id_a { 2_000 } else { 3_000 }),
                &acquirer,
                &key,
            ))
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!((&retried.authorization_id, retried.status), (id, AuthorizationStatus::Approved as i32));
    }
    assert_eq!(triple(&w.balances(&alice, &account).await), (100_000, 6_000, 94_000));
}
