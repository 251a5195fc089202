//! The identity service through its real gRPC server, PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::identity::v1::{
    ChangePasswordRequest, ConfirmPasswordResetRequest, GetMyProfileRequest, ListMySessionsRequest,
    LoginRequest, LogoutEverywhereRequest, LogoutRequest, RefreshTokensRequest, RegisterRequest,
    RequestPasswordResetRequest, RevokeMySessionRequest, RevokeOtherSessionsRequest, TokenPair,
    UpdateMyProfileRequest, VerifyEmailRequest,
};
use bank_testkit::{
    Options, TestIdentity, bearer,
    identity::{ADMIN_EMAIL, USER_PASSWORD},
    probe,
};
use tonic::Code;

fn reason(status: &tonic::Status) -> Option<ErrorCode> {
    reason_of(status)
}

#[tokio::test]
async fn serves_health_reflection_and_the_admin_port() {
    let identity = TestIdentity::spawn().await;
    probe::assert_standard_surface(
        &identity.app,
        &["bank.identity.v1.IdentityService", "bank.identity.v1.IdentityAdminService"],
    )
    .await;
}

#[tokio::test]
async fn no_rpc_but_the_public_ones_answers_without_a_valid_token() {
    let identity = TestIdentity::spawn().await;
    probe::assert_every_rpc_needs_a_token(
        identity.app.channel().await,
        &["bank.identity.v1.IdentityService", "bank.identity.v1.IdentityAdminService"],
        bank_identity::grpc::PUBLIC_RPCS,
    )
    .await;
}

#[tokio::test]
async fn sign_up_verify_log_in_and_see_the_profile_and_the_one_session() {
    let identity = TestIdentity::spawn().await;
    let mut client = identity.client().await;
    client
        .register(RegisterRequest {
            email: "  Alice@Example.COM ".into(),
            password: USER_PASSWORD.into(),
            given_name: "Alice".into(),
            family_name: "Liddell".into(),
            locale: "en-GB".into(),
            time_zone: "Europe/London".into(),
        })
        .await
        .unwrap();
    let user_id = identity.user_id("alice@example.com").await;

    // Not verified yet: the right password answers EMAIL_NOT_VERIFIED.
    let err = identity.login("alice@example.com", USER_PASSWORD).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::EmailNotVerified));

    let token = identity.verification_token(&user_id).await;
    client.verify_email(VerifyEmailRequest { token: token.clone() }).await.unwrap();
    // A repeat with the used token is fine while the address is current; garbage is not.
    client.verify_email(VerifyEmailRequest { token }).await.unwrap();
    let err = client.verify_email(VerifyEmailRequest { token: "nope".into() }).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::InvalidVerificationToken));

    let tokens = identity.login("ALICE@example.com", USER_PASSWORD).await.unwrap();
    let profile = client
        .get_my_profile(bearer(GetMyProfileRequest {}, &tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(profile.user_id, user_id);
    assert_eq!(profile.email, "Alice@example.com", "domain lower-cased, local part as typed");
    assert!(profile.email_verified);
    assert_eq!(profile.time_zone, "Europe/London");

    let sessions = client
        .list_my_sessions(bearer(ListMySessionsRequest::default(), &tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].current);
    assert_eq!(sessions[0].session_id, tokens.session_id);

    let updated = client
        .update_my_profile(bearer(
            UpdateMyProfileRequest {
                given_name: Some("Alice M.".into()),
                ..UpdateMyProfileRequest::default()
            },
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.given_name, "Alice M.");
    assert_eq!(updated.family_name, "Liddell");
    let err = client
        .update_my_profile(bearer(
            UpdateMyProfileRequest { time_zone: Some("Nowhere".into()), ..UpdateMyProfileRequest::default() },
            &tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A name holding a card number is refused (masking it would not leave a name).
    let err = client
        .update_my_profile(bearer(
            UpdateMyProfileRequest {
                family_name: Some("Liddell 4111-1111-1111-1111".into()),
                ..UpdateMyProfileRequest::default()
            },
            &tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bank_testkit::violations(&err),
        [("family_name".to_owned(), "CONTAINS_CARD_NUMBER".to_owned())]
    );
}

#[tokio::test]
async fn registering_a_taken_address_answers_the_same_and_creates_nothing() {
    let identity = TestIdentity::spawn().await;
    let mut client = identity.client().await;
    let request = RegisterRequest {
        email: "bob@example.com".into(),
        password: USER_PASSWORD.into(),
        given_name: "Bob".into(),
        ..RegisterRequest::default()
    };
    let first = client.register(request.clone()).await.unwrap().into_inner();
    let second = client
        .register(RegisterRequest { email: "BOB@example.com".into(), ..request })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    let mut conn = identity.db().await;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email_canonical = 'bob@example.com'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_weak_password_answers_every_violation() {
    let identity = TestIdentity::spawn().await;
    let err = identity
        .client()
        .await
        .register(RegisterRequest {
            email: "carol@example.com".into(),
            password: "carol".into(),
            given_name: "Carol".into(),
            ..RegisterRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), Some(ErrorCode::PasswordPolicyViolation));
    let details = tonic_types::StatusExt::get_error_details(&err);
    let codes: Vec<String> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.description.split(':').next().unwrap().to_owned())
        .collect();
    for expected in ["TOO_SHORT", "TOO_WEAK", "SIMILAR_TO_EMAIL", "SIMILAR_TO_NAME"] {
        assert!(codes.iter().any(|c| c == expected), "{expected} missing from {codes:?}");
    }
}

#[tokio::test]
async fn five_wrong_passwords_lock_the_account_with_the_same_answer_as_an_unknown_email() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("dave@example.com").await;
    let unknown = identity.login("nobody@example.com", USER_PASSWORD).await.unwrap_err();
    for _ in 0..5 {
        let wrong = identity.login(&user.email, "definitely not the password").await.unwrap_err();
        assert_eq!((wrong.code(), wrong.message()), (unknown.code(), unknown.message()));
        assert_eq!(reason(&wrong), reason(&unknown));
    }
    // Locked: a wrong password is still refused exactly like an unknown address ...
    let wrong = identity.login(&user.email, "definitely not the password").await.unwrap_err();
    assert_eq!((wrong.code(), wrong.message()), (unknown.code(), unknown.message()));
    assert_eq!(reason(&wrong), Some(ErrorCode::InvalidCredentials));
    // ... but the right one proves the caller, who is told it is locked and until when.
    let locked = identity.login(&user.email, USER_PASSWORD).await.unwrap_err();
    assert_eq!((locked.code(), reason(&locked)), (Code::FailedPrecondition, Some(ErrorCode::AccountLocked)));
    let info = tonic_types::StatusExt::get_details_error_info(&locked).unwrap();
    let until = time::OffsetDateTime::parse(
        &info.metadata["locked_until"],
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let wait: u64 = info.metadata["retry_after_seconds"].parse().unwrap();
    let left = (until - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((14 * 60..=15 * 60).contains(&left), "locked until about 15 minutes from now: {left}s");
    assert!(wait.abs_diff(left.unsigned_abs()) <= 2, "the retry hint is the real wait: {wait}s vs {left}s");
    assert!(locked.message().contains(&info.metadata["locked_until"]), "{}", locked.message());

    let locks = identity.events("bank.events.v1.UserAccountLocked").await;
    assert_eq!(locks.len(), 1, "the owner is told once");
    let mut conn = identity.db().await;
    let locked_for: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM locked_until - now())::float8 FROM users WHERE email_canonical = 'dave@example.com'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!((14.0 * 60.0..=15.0 * 60.0).contains(&locked_for), "locked for 15 minutes, got {locked_for}s");

    // A password reset unlocks.
    let mut client = identity.client().await;
    client.request_password_reset(RequestPasswordResetRequest { email: user.email.clone() }).await.unwrap();
    let token = identity.reset_token(&user.user_id).await;
    let new_password = "granite orchards hum beneath rain";
    client
        .confirm_password_reset(ConfirmPasswordResetRequest { token, new_password: new_password.into() })
        .await
        .unwrap();
    identity.login(&user.email, new_password).await.unwrap();
}

async fn refresh(identity: &TestIdentity, refresh_token: &str) -> Result<TokenPair, tonic::Status> {
    identity
        .client()
        .await
        .refresh_tokens(RefreshTokensRequest { refresh_token: refresh_token.to_owned() })
        .await
        .map(|r| r.into_inner().tokens.unwrap())
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_kills_the_whole_session() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("erin@example.com").await;
    let mut client = identity.client().await;
    let first = user.tokens.clone();
    let second = refresh(&identity, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);
    client.get_my_profile(bearer(GetMyProfileRequest {}, &second.access_token)).await.unwrap();

    // The same token again at once (a retry after a lost answer, a second tab): within the reuse
    // interval it gets the same pair, and the session lives on.
    assert_eq!(refresh(&identity, &first.refresh_token).await.unwrap(), second);
    let third = refresh(&identity, &second.refresh_token).await.unwrap();
    assert_ne!(third.refresh_token, second.refresh_token);

    // The first token once more: its pair is no longer the session's live one, so this is a stolen,
    // already rotated token coming back: the family dies.
    let reuse = refresh(&identity, &first.refresh_token).await.unwrap_err();
    assert_eq!(reason(&reuse), Some(ErrorCode::InvalidRefreshToken));
    let dead = refresh(&identity, &third.refresh_token).await.unwrap_err();
    assert_eq!(reason(&dead), Some(ErrorCode::InvalidRefreshToken));
    let refused =
        client.get_my_profile(bearer(GetMyProfileRequest {}, &third.access_token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(reason(&refused), Some(ErrorCode::TokenRevoked));
    assert_eq!(identity.events("bank.events.v1.RefreshTokenReuseDetected").await.len(), 1);
}

#[tokio::test]
async fn a_rotated_token_presented_after_the_reuse_interval_kills_the_session() {
    let identity =
        TestIdentity::spawn_with(Options::default().set("tokens.refresh_reuse_interval", "200ms")).await;
    let user = identity.user("ezra@example.com").await;
    let second = refresh(&identity, &user.tokens.refresh_token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reuse = refresh(&identity, &user.tokens.refresh_token).await.unwrap_err();
    assert_eq!(reason(&reuse), Some(ErrorCode::InvalidRefreshToken));
    let dead = refresh(&identity, &second.refresh_token).await.unwrap_err();
    assert_eq!(reason(&dead), Some(ErrorCode::InvalidRefreshToken));
    assert_eq!(identity.events("bank.events.v1.RefreshTokenReuseDetected").await.len(), 1);
}

#[tokio::test]
async fn two_tabs_refreshing_at_once_get_the_same_pair_and_keep_the_session() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("frank@example.com").await;
    let token = user.tokens.refresh_token.clone();
    let (a, b) = tokio::join!(refresh(&identity, &token), refresh(&identity, &token));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "the same successor pair");
    let mut client = identity.client().await;
    client.get_my_profile(bearer(GetMyProfileRequest {}, &a.access_token)).await.unwrap();
    refresh(&identity, &a.refresh_token).await.unwrap();
    assert!(identity.events("bank.events.v1.RefreshTokenReuseDetected").await.is_empty(), "no alert");
}

#[tokio::test]
async fn with_the_reuse_interval_off_of_two_simultaneous_refreshes_at_most_one_succeeds() {
    let identity =
        TestIdentity::spawn_with(Options::default().set("tokens.refresh_reuse_interval", "0s")).await;
    let user = identity.user("fred@example.com").await;
    let token = user.tokens.refresh_token.clone();
    let (a, b) = tokio::join!(refresh(&identity, &token), refresh(&identity, &token));
    assert!(a.is_err() || b.is_err(), "both refreshes succeeded");
}

#[tokio::test]
async fn logout_refuses_that_access_token_at_once() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("gina@example.com").await;
    let mut client = identity.client().await;
    client.logout(bearer(LogoutRequest {}, &user.tokens.access_token)).await.unwrap();
    let err =
        client.get_my_profile(bearer(GetMyProfileRequest {}, &user.tokens.access_token)).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::TokenRevoked));
    let err = client
        .refresh_tokens(RefreshTokensRequest { refresh_token: user.tokens.refresh_token })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::InvalidRefreshToken));
}

#[tokio::test]
async fn a_password_change_refuses_the_tokens_of_other_sessions() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("hank@example.com").await;
    let other = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    let mut client = identity.client().await;

    let wrong = client
        .change_password(bearer(
            ChangePasswordRequest { current_password: "wrong".into(), new_password: "whatever".into() },
            &user.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&wrong), Some(ErrorCode::InvalidCredentials));
    let reused = client
        .change_password(bearer(
            ChangePasswordRequest {
                current_password: USER_PASSWORD.into(),
                new_password: USER_PASSWORD.into(),
            },
            &user.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&reused), Some(ErrorCode::PasswordPolicyViolation));

    let fresh = client
        .change_password(bearer(
            ChangePasswordRequest {
                current_password: USER_PASSWORD.into(),
                new_password: "seven quiet harbors glow at dawn".into(),
            },
            &user.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    for stale in [&other.access_token, &user.tokens.access_token] {
        let err = client.get_my_profile(bearer(GetMyProfileRequest {}, stale)).await.unwrap_err();
        assert_eq!(reason(&err), Some(ErrorCode::TokenRevoked));
    }
    client.get_my_profile(bearer(GetMyProfileRequest {}, &fresh.access_token)).await.unwrap();
    let err =
        client.refresh_tokens(RefreshTokensRequest { refresh_token: other.refresh_token }).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::InvalidRefreshToken));
    client.refresh_tokens(RefreshTokensRequest { refresh_token: fresh.refresh_token }).await.unwrap();
}

#[tokio::test]
async fn sessions_can_be_revoked_one_by_one_all_others_or_everywhere() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("ivy@example.com").await;
    let second = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    let third = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    let mut client = identity.client().await;

    client
        .revoke_my_session(bearer(
            RevokeMySessionRequest { session_id: second.session_id.clone() },
            &user.tokens.access_token,
        ))
        .await
        .unwrap();
    assert!(client.get_my_profile(bearer(GetMyProfileRequest {}, &second.access_token)).await.is_err());
    let again = client
        .revoke_my_session(bearer(
            RevokeMySessionRequest { session_id: second.session_id },
            &user.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    let revoked = client
        .revoke_other_sessions(bearer(RevokeOtherSessionsRequest {}, &user.tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(revoked, 1);
    assert!(client.get_my_profile(bearer(GetMyProfileRequest {}, &third.access_token)).await.is_err());
    client.get_my_profile(bearer(GetMyProfileRequest {}, &user.tokens.access_token)).await.unwrap();

    client.logout_everywhere(bearer(LogoutEverywhereRequest {}, &user.tokens.access_token)).await.unwrap();
    let err =
        client.get_my_profile(bearer(GetMyProfileRequest {}, &user.tokens.access_token)).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::TokenRevoked));
}

#[tokio::test]
async fn the_bootstrap_admin_can_log_in() {
    let identity = TestIdentity::spawn().await;
    let admin = identity.admin().await;
    let profile = identity
        .client()
        .await
        .get_my_profile(bearer(GetMyProfileRequest {}, &admin.access_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(profile.email, ADMIN_EMAIL);
    assert!(profile.roles.contains(&(bank_proto::identity::v1::Role::Admin as i32)));
}

#[tokio::test]
async fn a_login_flood_is_shed_with_resource_exhausted_and_other_rpcs_still_answer() {
    let identity = TestIdentity::spawn_with(
        bank_testkit::Options::default()
            .set("hashing.max_concurrent", 1)
            .set("hashing.max_waiting", 1)
            .set("hashing.argon2.memory_kib", 8192)
            .set("hashing.argon2.iterations", 3),
    )
    .await;
    let user = identity.user("flood@example.com").await;
    let mut flood = Vec::new();
    for _ in 0..12 {
        let mut client = identity.client().await;
        let email = user.email.clone();
        flood.push(tokio::spawn(async move {
            client
                .login(LoginRequest { email, password: USER_PASSWORD.into(), device_name: String::new() })
                .await
        }));
    }
    // Meanwhile a cheap RPC is not stuck behind the hashes.
    let jwks = tokio::time::timeout(
        Duration::from_secs(2),
        identity.client().await.get_jwks(bank_proto::identity::v1::GetJwksRequest {}),
    )
    .await;
    assert!(matches!(jwks, Ok(Ok(_))), "GetJwks answered during the flood");
    let mut shed = 0;
    let mut ok = 0;
    for call in flood {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), Some(ErrorCode::ResourceExhausted));
                shed += 1;
            }
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
}

#[tokio::test]
async fn events_reach_the_identity_stream_through_the_outbox_relay() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("stream@example.com").await;
    let namespace = identity.app.redis().unwrap();
    let stream = format!("{}events", namespace.prefix());
    let mut redis =
        redis::Client::open(namespace.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut types = Vec::new();
    for _ in 0..100 {
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut redis).await.unwrap();
        types = reply
            .ids
            .iter()
            .filter(|e| e.get::<String>("subject").as_deref() == Some(&format!("users/{}", user.user_id)))
            .map(|e| e.get::<String>("type").unwrap())
            .collect();
        if types.iter().any(|t| t == "bank.events.v1.SessionCreated") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        types,
        [
            "bank.events.v1.UserRegistered",
            "bank.events.v1.EmailVerificationRequested",
            "bank.events.v1.EmailVerified",
            "bank.events.v1.SessionCreated"
        ],
        "in outbox order, each once"
    );
}

/// Item: replicas starting together on an empty database all start, and exactly one admin exists.
#[tokio::test]
async fn replicas_starting_together_bootstrap_one_admin() {
    let database = bank_testkit::TestDatabase::create().await;
    let options = || bank_testkit::Options::default().database(false).set("database.url", database.url());
    let (first, second, third) = tokio::join!(
        TestIdentity::spawn_with(options()),
        TestIdentity::spawn_with(options()),
        TestIdentity::spawn_with(options())
    );
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(database.url()).await.unwrap();
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE 'admin' = ANY (roles)")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(admins, 1);
    // Every replica serves the one admin.
    for identity in [&first, &second, &third] {
        identity
            .client()
            .await
            .login(bank_proto::identity::v1::LoginRequest {
                email: bank_testkit::identity::ADMIN_EMAIL.into(),
                password: bank_testkit::identity::ADMIN_PASSWORD.into(),
                device_name: String::new(),
            })
            .await
            .unwrap();
    }
}
