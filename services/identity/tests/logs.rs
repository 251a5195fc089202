//! No password, token or full email address reaches a log line, whatever the flow — at every level
//! down to TRACE, including the platform's access log and sqlx's statement log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank_proto::identity::v1::{
    ChangePasswordRequest, ConfirmPasswordResetRequest, GetMyProfileRequest, LogoutRequest,
    RefreshTokensRequest, RegisterRequest, RequestPasswordResetRequest,
};
use bank_testkit::{TestIdentity, bearer, identity::USER_PASSWORD};

#[tokio::test]
async fn no_secret_or_full_email_is_ever_logged() {
    let capture = bank_testkit::logs::Capture::install("identity");

    let identity = TestIdentity::spawn().await;
    let mut client = identity.client().await;
    let user = identity.user("secret.keeper@example.com").await;
    let mut secrets: Vec<String> = vec![
        USER_PASSWORD.to_owned(),
        user.tokens.access_token.clone(),
        user.tokens.refresh_token.clone(),
        "secret.keeper@example.com".to_owned(),
    ];
    secrets.push(identity.verification_token(&user.user_id).await);

    let wrong_password = "Wrong-Password-That-Must-Not-Leak-17";
    secrets.push(wrong_password.to_owned());
    let _ = identity.login(&user.email, wrong_password).await;
    let _ = identity.login("unknown.person@example.com", wrong_password).await;
    secrets.push("unknown.person@example.com".to_owned());

    let refreshed = client
        .refresh_tokens(RefreshTokensRequest { refresh_token: user.tokens.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.extend([refreshed.access_token.clone(), refreshed.refresh_token.clone()]);
    let _ = client
        .refresh_tokens(RefreshTokensRequest { refresh_token: user.tokens.refresh_token.clone() })
        .await;

    let second = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    secrets.extend([second.access_token.clone(), second.refresh_token.clone()]);
    let new_password = "thirteen amber comets sing softly";
    secrets.push(new_password.to_owned());
    let changed = client
        .change_password(bearer(
            ChangePasswordRequest {
                current_password: USER_PASSWORD.into(),
                new_password: new_password.into(),
            },
            &second.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.extend([changed.access_token.clone(), changed.refresh_token.clone()]);
    client.get_my_profile(bearer(GetMyProfileRequest {}, &changed.access_token)).await.unwrap();
    client.logout(bearer(LogoutRequest {}, &changed.access_token)).await.unwrap();

    client.request_password_reset(RequestPasswordResetRequest { email: user.email.clone() }).await.unwrap();
    let reset = identity.reset_token(&user.user_id).await;
    secrets.push(reset.clone());
    let reset_password = "quiet violet engines cross the bay";
    secrets.push(reset_password.to_owned());
    client
        .confirm_password_reset(ConfirmPasswordResetRequest {
            token: reset,
            new_password: reset_password.into(),
        })
        .await
        .unwrap();
    let weak = "weakling";
    secrets.push(weak.to_owned());
    let _ = client
        .register(RegisterRequest {
            email: "another.person@example.com".into(),
            password: weak.into(),
            given_name: "Another".into(),
            ..RegisterRequest::default()
        })
        .await;
    secrets.push("another.person@example.com".to_owned());

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = capture.text();
    assert!(logs.lines().count() > 50, "the capture saw the flows: {} lines", logs.lines().count());
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line contains a secret or full email ({} chars)",
            secret.len()
        );
    }
    // Any JWT at all would be a token.
    assert!(!logs.contains("eyJ"), "a JWT reached the logs");
}
