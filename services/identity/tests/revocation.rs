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
