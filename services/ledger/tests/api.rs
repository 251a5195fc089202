//! The `ledger` service through real gRPC clients, against a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank_ledger::Ledger;

bank_testkit::standard_service_tests!(
    bank_ledger::Ledger,
    bank_ledger::MIGRATOR,
    ["bank.ledger.v1.LedgerService", "bank.ledger.v1.LedgerAdminService"]
);

#[tokio::test]
async fn replicas_starting_at_once_apply_the_migrations_once() {
    let database = bank_testkit::TestDatabase::create().await;
    let config: bank_platform::config::DatabaseConfig = serde_json::from_value(serde_json::json!({
        "url": database.url(),
    }))
    .unwrap();
    let (a, b, c) = tokio::join!(
        bank_platform::db::connect(&config, &bank_ledger::MIGRATOR),
        bank_platform::db::connect(&config, &bank_ledger::MIGRATOR),
        bank_platform::db::connect(&config, &bank_ledger::MIGRATOR),
    );
    let pool = a.unwrap();
    b.unwrap();
    c.unwrap();
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, i64::try_from(bank_ledger::MIGRATOR.iter().count()).unwrap());
}

#[tokio::test]
async fn with_its_redis_cut_it_asks_identity_and_never_accepts_a_revoked_token() {
    use bank_platform::{ErrorCode, error::reason_of};
    use bank_proto::{
        identity::v1::LogoutRequest,
        ledger::v1::{GetBalancesRequest, ledger_service_client::LedgerServiceClient},
    };
    use bank_testkit::{Options, TcpProxy, bearer, identity::USER_PASSWORD};

    let identity = bank_testkit::TestIdentity::spawn().await;
    let proxy = TcpProxy::start(bank_testkit::redis_addr()).await;
    let app = bank_testkit::spawn_with::<Ledger>(
        identity.trust(Options::default()).set("redis.url", format!("redis://{}", proxy.addr())),
    )
    .await;
    let user = identity.user("sam@example.com").await;
    let other = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    identity.client().await.logout(bearer(LogoutRequest {}, &other.access_token)).await.unwrap();
    let mut ledger = LedgerServiceClient::new(app.channel().await);

    proxy.cut();
    // Authenticated through identity's CheckTokenStatus (the empty request itself is then refused).
    let passed = ledger
        .get_balances(bearer(GetBalancesRequest::default(), &user.tokens.access_token))
        .await
        .unwrap_err();
    assert_eq!(passed.code(), tonic::Code::InvalidArgument, "{passed:?}");
    let revoked =
        ledger.get_balances(bearer(GetBalancesRequest::default(), &other.access_token)).await.unwrap_err();
    assert_eq!(reason_of(&revoked), Some(ErrorCode::TokenRevoked));

    // Neither Redis nor identity: refuse with UNAVAILABLE rather than guess.
    identity.app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let unknown = ledger
        .get_balances(bearer(GetBalancesRequest::default(), &user.tokens.access_token))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unavailable, "{unknown:?}");
}
