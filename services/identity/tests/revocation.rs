//! Revocation holds when Redis does not answer: identity's own database decides, and a revoked
//! token is never accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::identity::v1::{GetMyProfileRequest, LogoutRequest};
use bank_testkit::{Options, TcpProxy, TestIdentity, bearer, identity::USER_PASSWORD};

#[tokio::test]
async fn with_redis_cut_valid_tokens_pass_and_revoked_ones_are_still_refused() {
    let proxy = TcpProxy::start(bank_testkit::redis_addr()).await;
    let identity = TestIdentity::spawn_with(
        Options::default()
            .set("redis.url", format!("redis://{}", proxy.addr()))
            .set("redis.timeout", "300ms"),
    )
    .await;
    let user = identity.user("rita@example.com").await;
    let other = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    let mut client = identity.client().await;
    client.logout(bearer(LogoutRequest {}, &other.access_token)).await.unwrap();

    proxy.cut();
    client.get_my_profile(bearer(GetMyProfileRequest {}, &user.tokens.access_token)).await.unwrap();
    // Redis down is degraded, not unready: identity stays in its Service and says why.
    let channel = identity.app.channel().await;
    let mut degraded = false;
    for _ in 0..50 {
        if bank_testkit::probe::health(channel.clone(), "dependency/redis").await.ok()
            == Some(bank_testkit::probe::ServingStatus::NotServing)
        {
            degraded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(degraded, "the health detail says Redis is down");
    assert_eq!(
        bank_testkit::probe::health(channel.clone(), "").await.unwrap(),
        bank_testkit::probe::ServingStatus::Serving
    );
    assert!(identity.app.readiness().is_ready());
    let err = client.get_my_profile(bearer(GetMyProfileRequest {}, &other.access_token)).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::TokenRevoked));

    // Redis back but emptied of this user's token version (a flushed Redis): still decided right.
    proxy.restore();
    let mut redis = redis::Client::open(bank_testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Everything of this test's namespace is lost, as in a flushed Redis (other tests' keys stay).
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", identity.auth_prefix())).query_async(&mut redis).await.unwrap();
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await.unwrap();
    client.get_my_profile(bearer(GetMyProfileRequest {}, &user.tokens.access_token)).await.unwrap();
    let err = client.get_my_profile(bearer(GetMyProfileRequest {}, &other.access_token)).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::TokenRevoked));
}

/// Item: a revocation made while Redis is unreachable is not lost when Redis comes back with the
/// data it had (AOF): the logout still answers, and the revoked token stays refused afterwards.
#[tokio::test]
async fn a_logout_while_redis_is_down_holds_when_redis_returns_with_its_old_data() {
    let proxy = TcpProxy::start(bank_testkit::redis_addr()).await;
    let identity = TestIdentity::spawn_with(
        Options::default()
            .set("redis.url", format!("redis://{}", proxy.addr()))
            .set("redis.timeout", "300ms"),
    )
    .await;
    let user = identity.user("omar@example.com").await;
    let session = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    let mut client = identity.client().await;
    client.get_my_profile(bearer(GetMyProfileRequest {}, &session.access_token)).await.unwrap();

    proxy.cut();
    // The logout answers (a guard against a hang, not a speed assertion).
    let logout = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.logout(bearer(LogoutRequest {}, &session.access_token)),
    )
    .await
    .expect("logout answers while Redis is down");
    logout.unwrap();

    // Redis returns with everything it held before the outage (the epoch among it), but not the
    // logout: the token is refused at once and from then on.
    proxy.restore();
    for _ in 0..20 {
        let err =
            client.get_my_profile(bearer(GetMyProfileRequest {}, &session.access_token)).await.unwrap_err();
        assert_eq!(reason_of(&err), Some(ErrorCode::TokenRevoked));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Once identity has replayed the logout, Redis itself says so.
    let mut redis = redis::Client::open(bank_testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}jti:*", identity.auth_prefix()))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "the logout reached Redis: {keys:?}");
    // And identity certifies Redis again, so the checker trusts it again (no lasting fallback).
    let mut trusted = false;
    for _ in 0..100 {
        let (_, metrics) = bank_testkit::probe::http_get(identity.app.admin_addr, "/metrics").await;
        if metrics
            .lines()
            .any(|line| line.starts_with("auth_revocation_redis_trusted") && line.ends_with(" 1"))
        {
            trusted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(trusted, "the checker trusts Redis again after the certification");
    let mut db = identity.db().await;
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM revocation_journal").fetch_one(&mut db).await.unwrap();
    assert_eq!(waiting, 0, "every journal row was acknowledged and removed");
    let other = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    client.get_my_profile(bearer(GetMyProfileRequest {}, &other.access_token)).await.unwrap();
}
