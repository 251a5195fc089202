//! Multi-factor authentication through the real identity service, PostgreSQL and Redis: enrolment,
//! the MFA step of a login, single-use codes (also under concurrency), the lockout, step-up,
//! disabling, recovery codes, the admin policy and the admin reset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::{
    events::v1::{MfaDisabled, MfaEnabled, RecoveryCodeUsed},
    identity::v1::{
        ChangePasswordRequest, CompleteMfaLoginRequest, ConfirmMfaEnrollmentRequest,
        ConfirmPasswordResetRequest, DisableMfaRequest, GetMfaStatusRequest, GetMyProfileRequest,
        ListMySessionsRequest, ListUsersRequest, LoginRequest, MfaChallenge, PasswordAndRecoveryCode,
        RegenerateRecoveryCodesRequest, RequestPasswordResetRequest, ResetUserMfaRequest,
        StartMfaEnrollmentRequest, StepUpRequest, TokenPair, complete_mfa_login_request, disable_mfa_request,
        identity_admin_service_client::IdentityAdminServiceClient, login_response, step_up_request,
    },
};
use bank_testkit::{
    Options, TestIdentity, TestUser, TotpDevice, bearer,
    identity::{ADMIN_EMAIL, ADMIN_PASSWORD, USER_PASSWORD},
    probe,
};
use prost::Message as _;
use tonic::Code;

fn reason(status: &tonic::Status) -> Option<ErrorCode> {
    reason_of(status)
}

/// Logs in with the password and expects an MFA challenge.
async fn challenge(identity: &TestIdentity, email: &str) -> MfaChallenge {
    let answer = identity
        .client()
        .await
        .login(LoginRequest {
            email: email.into(),
            password: USER_PASSWORD.into(),
            device_name: "phone".into(),
        })
        .await
        .unwrap()
        .into_inner();
    match answer.outcome {
        Some(login_response::Outcome::MfaRequired(challenge)) => challenge,
        other => panic!("expected an MFA challenge, got {other:?}"),
    }
}

async fn complete(
    identity: &TestIdentity,
    mfa_token: &str,
    code: complete_mfa_login_request::Code,
) -> Result<TokenPair, tonic::Status> {
    identity
        .client()
        .await
        .complete_mfa_login(CompleteMfaLoginRequest {
            mfa_token: mfa_token.into(),
            code: Some(code),
            device_name: String::new(),
        })
        .await
        .map(|r| r.into_inner().tokens.unwrap())
}

fn totp(code: String) -> complete_mfa_login_request::Code {
    complete_mfa_login_request::Code::TotpCode(code)
}

/// A verified user with MFA enrolled: the user, the device and the recovery codes.
async fn enrolled(identity: &TestIdentity, email: &str) -> (TestUser, TotpDevice, Vec<String>) {
    let user = identity.user(email).await;
    let (device, codes) = identity.enrol_mfa(&user.tokens.access_token).await;
    (user, device, codes)
}

async fn step_up(identity: &TestIdentity, token: &str, code: String) -> Result<TokenPair, tonic::Status> {
    identity
        .client()
        .await
        .step_up(bearer(StepUpRequest { code: Some(step_up_request::Code::TotpCode(code)) }, token))
        .await
        .map(|r| r.into_inner().tokens.unwrap())
}

#[tokio::test]
async fn enrol_with_a_qr_code_then_log_in_with_a_totp_code_and_with_a_recovery_code() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("mia@example.com").await;
    let token = user.tokens.access_token.clone();
    let mut client = identity.client().await;
    let status = client.get_mfa_status(bearer(GetMfaStatusRequest {}, &token)).await.unwrap().into_inner();
    assert!(!status.enabled && !status.required_by_role);

    let started =
        client.start_mfa_enrollment(bearer(StartMfaEnrollmentRequest {}, &token)).await.unwrap().into_inner();
    assert!(started.otpauth_uri.starts_with("otpauth://totp/bankmesh:mia@example.com?secret="));
    assert!(started.otpauth_uri.contains(&format!("secret={}&", started.secret_base32)));
    assert_eq!(&started.qr_code_png[..8], b"\x89PNG\r\n\x1a\n");
    // A wrong first code enables nothing; the right one answers ten recovery codes.
    let mut device = TotpDevice::new(&started.secret_base32);
    let wrong = client
        .confirm_mfa_enrollment(bearer(ConfirmMfaEnrollmentRequest { totp_code: "000000".into() }, &token))
        .await;
    if let Err(status) = wrong {
        assert_eq!(reason(&status), Some(ErrorCode::InvalidCredentials));
    }
    let codes = client
        .confirm_mfa_enrollment(bearer(
            ConfirmMfaEnrollmentRequest { totp_code: device.next_code().await },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(codes.len(), 10);
    let again = client.start_mfa_enrollment(bearer(StartMfaEnrollmentRequest {}, &token)).await.unwrap_err();
    assert_eq!(reason(&again), Some(ErrorCode::MfaStateConflict));
    let status = client.get_mfa_status(bearer(GetMfaStatusRequest {}, &token)).await.unwrap().into_inner();
    assert!(status.enabled && status.enabled_at.is_some());
    assert_eq!(status.recovery_codes_remaining, 10);
    let profile = client.get_my_profile(bearer(GetMyProfileRequest {}, &token)).await.unwrap().into_inner();
    assert!(profile.user.unwrap().mfa_enabled);
    assert_eq!(identity.events("bank.events.v1.MfaEnabled").await.len(), 1);
    MfaEnabled::decode(identity.events("bank.events.v1.MfaEnabled").await[0].as_slice()).unwrap();

    // A password alone no longer opens a session; the TOTP step does, with acr = mfa.
    let first = challenge(&identity, &user.email).await;
    assert!(!first.mfa_token.is_empty() && first.expires_at.is_some() && first.methods.len() == 2);
    let tokens = complete(&identity, &first.mfa_token, totp(device.next_code().await)).await.unwrap();
    let sessions = client
        .list_my_sessions(bearer(ListMySessionsRequest::default(), &tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let current = sessions.iter().find(|s| s.current).unwrap();
    assert!(current.mfa_authenticated);
    assert_eq!(current.device_name, "phone");
    // The challenge is used up.
    let reused = complete(&identity, &first.mfa_token, totp(device.next_code().await)).await.unwrap_err();
    assert_eq!(reason(&reused), Some(ErrorCode::InvalidCredentials));

    // A recovery code works once, and says how many are left.
    let second = challenge(&identity, &user.email).await;
    let recovery = complete_mfa_login_request::Code::RecoveryCode(codes[3].to_uppercase());
    complete(&identity, &second.mfa_token, recovery.clone()).await.unwrap();
    let third = challenge(&identity, &user.email).await;
    let status = complete(&identity, &third.mfa_token, recovery).await.unwrap_err();
    assert_eq!(reason(&status), Some(ErrorCode::InvalidCredentials));
    let used = identity.events("bank.events.v1.RecoveryCodeUsed").await;
    assert_eq!(used.len(), 1);
    assert_eq!(RecoveryCodeUsed::decode(used[0].as_slice()).unwrap().remaining, 9);
    // Malformed codes are input errors, not guesses.
    let malformed = complete(&identity, &third.mfa_token, totp("12ab56".into())).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn each_code_is_accepted_once_also_by_two_parallel_logins() {
    let identity = TestIdentity::spawn().await;
    let (user, mut device, _) = enrolled(&identity, "noah@example.com").await;
    for round in 0..2 {
        let (a, b) = (challenge(&identity, &user.email).await, challenge(&identity, &user.email).await);
        let code = device.next_code().await;
        let (first, second) = tokio::join!(
            complete(&identity, &a.mfa_token, totp(code.clone())),
            complete(&identity, &b.mfa_token, totp(code.clone())),
        );
        assert_eq!(
            usize::from(first.is_ok()) + usize::from(second.is_ok()),
            1,
            "round {round}: one of two parallel logins with one code succeeds"
        );
        let refused = match (first, second) {
            (Ok(_), Err(refused)) | (Err(refused), Ok(_)) => refused,
            other => panic!("round {round}: {other:?}"),
        };
        assert_eq!(reason(&refused), Some(ErrorCode::InvalidCredentials));
        // The same code once more, with a fresh challenge: refused too.
        let c = challenge(&identity, &user.email).await;
        assert!(complete(&identity, &c.mfa_token, totp(code)).await.is_err());
    }
}

#[tokio::test]
async fn the_mfa_pending_token_is_refused_by_every_other_rpc() {
    let identity = TestIdentity::spawn().await;
    let (user, _, _) = enrolled(&identity, "olga@example.com").await;
    let pending = challenge(&identity, &user.email).await.mfa_token;
    let public = bank_identity::grpc::PUBLIC_RPCS;
    for (path, streaming) in
        probe::rpcs(&["bank.identity.v1.IdentityService", "bank.identity.v1.IdentityAdminService"])
    {
        if public.contains(&path.as_str()) {
            continue;
        }
        let status = probe::call_empty(identity.app.channel().await, &path, streaming, Some(&pending)).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{path} accepted the MFA-pending token");
    }
}

#[tokio::test]
async fn wrong_codes_count_toward_the_lockout_like_wrong_passwords() {
    let identity = TestIdentity::spawn().await;
    let (user, mut device, _) = enrolled(&identity, "pia@example.com").await;
    let pending = challenge(&identity, &user.email).await;
    let good = device.next_code().await;
    let wrong = if good == "123456" { "654321" } else { "123456" };
    for _ in 0..5 {
        let status = complete(&identity, &pending.mfa_token, totp(wrong.into())).await.unwrap_err();
        assert_eq!(reason(&status), Some(ErrorCode::InvalidCredentials));
    }
    // The challenge is spent and the account is locked: the right code no longer helps...
    assert!(complete(&identity, &pending.mfa_token, totp(good)).await.is_err());
    // ...and neither does the right password, which is told the account is locked (the password
    // proves the caller; a wrong one still answers INVALID_CREDENTIALS).
    let status = identity.login(&user.email, USER_PASSWORD).await.unwrap_err();
    assert_eq!(reason(&status), Some(ErrorCode::AccountLocked));
    let status = identity.login(&user.email, "not the password at all").await.unwrap_err();
    assert_eq!(reason(&status), Some(ErrorCode::InvalidCredentials));
    let mut conn = identity.db().await;
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'user.login' AND result = 'failure' AND reason = 'wrong second factor'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(failures, 5);
    let locked: bool = sqlx::query_scalar("SELECT locked_until > now() FROM users WHERE email = $1")
        .bind(&user.email)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(locked);
}

#[tokio::test]
async fn changing_the_password_needs_a_recent_second_factor_once_enrolled() {
    let identity = TestIdentity::spawn().await;
    // The enrolling session logged in with the password only.
    let (user, mut device, _) = enrolled(&identity, "quinn@example.com").await;
    let change = |token: &str| {
        bearer(
            ChangePasswordRequest {
                current_password: USER_PASSWORD.into(),
                new_password: "a brand new passphrase, orange kettles 42".into(),
            },
            token,
        )
    };
    let mut client = identity.client().await;
    let refused = client.change_password(change(&user.tokens.access_token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(reason(&refused), Some(ErrorCode::StepUpRequired));
    // A wrong step-up code is refused; the right one answers acr=mfa tokens for the same session.
    let status = step_up(&identity, &user.tokens.access_token, "000000".into()).await;
    assert!(status.is_err());
    let stepped = step_up(&identity, &user.tokens.access_token, device.next_code().await).await.unwrap();
    assert_eq!(stepped.session_id, user.tokens.session_id);
    client.change_password(change(&stepped.access_token)).await.unwrap();
}

#[tokio::test]
async fn a_password_reset_leaves_mfa_enabled() {
    let identity = TestIdentity::spawn().await;
    let (user, mut device, _) = enrolled(&identity, "rosa@example.com").await;
    let mut client = identity.client().await;
    client.request_password_reset(RequestPasswordResetRequest { email: user.email.clone() }).await.unwrap();
    let token = identity.reset_token(&user.user_id).await;
    let new_password = "marble pelicans whistle in the fog 2026";
    client
        .confirm_password_reset(ConfirmPasswordResetRequest { token, new_password: new_password.into() })
        .await
        .unwrap();
    let answer = client
        .login(LoginRequest {
            email: user.email.clone(),
            password: new_password.into(),
            device_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(login_response::Outcome::MfaRequired(pending)) = answer.outcome else {
        panic!("a reset must not remove MFA");
    };
    complete(&identity, &pending.mfa_token, totp(device.next_code().await)).await.unwrap();
}

#[tokio::test]
async fn recovery_codes_regenerate_and_mfa_disables_with_proof() {
    let identity = TestIdentity::spawn().await;
    let (user, mut device, old_codes) = enrolled(&identity, "sam@example.com").await;
    let token = user.tokens.access_token.clone();
    let mut client = identity.client().await;
    let fresh = client
        .regenerate_recovery_codes(bearer(
            RegenerateRecoveryCodesRequest { totp_code: device.next_code().await },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !old_codes.contains(c)));
    let disable = |password: &str, code: &str| {
        bearer(
            DisableMfaRequest {
                proof: Some(disable_mfa_request::Proof::PasswordAndRecoveryCode(PasswordAndRecoveryCode {
                    password: password.into(),
                    recovery_code: code.into(),
                })),
            },
            &token,
        )
    };
    // An old code, or the wrong password, proves nothing.
    let status = client.disable_mfa(disable(USER_PASSWORD, &old_codes[0])).await.unwrap_err();
    assert_eq!(reason(&status), Some(ErrorCode::InvalidCredentials));
    let status = client.disable_mfa(disable("not the password at all", &fresh[0])).await.unwrap_err();
    assert_eq!(reason(&status), Some(ErrorCode::InvalidCredentials));
    client.disable_mfa(disable(USER_PASSWORD, &fresh[0])).await.unwrap();
    let status = client.get_mfa_status(bearer(GetMfaStatusRequest {}, &token)).await.unwrap().into_inner();
    assert!(!status.enabled);
    identity.login(&user.email, USER_PASSWORD).await.expect("a password login without MFA");
    let again = client.disable_mfa(disable(USER_PASSWORD, &fresh[1])).await.unwrap_err();
    assert_eq!(reason(&again), Some(ErrorCode::MfaStateConflict));
    assert_eq!(identity.events("bank.events.v1.MfaDisabled").await.len(), 1);
}

#[tokio::test]
async fn admin_rpcs_need_mfa_and_an_admin_resets_a_users_mfa() {
    let identity = TestIdentity::spawn_with(Options::default()).await;
    // The bootstrap admin with a password-only session: refused, with the reason to enrol.
    let password_only = identity.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let mut admin = IdentityAdminServiceClient::new(identity.app.channel().await);
    let status =
        admin.list_users(bearer(ListUsersRequest::default(), &password_only.access_token)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), Some(ErrorCode::MfaRequired));
    let mut client = identity.client().await;
    let status = client
        .get_mfa_status(bearer(GetMfaStatusRequest {}, &password_only.access_token))
        .await
        .unwrap()
        .into_inner();
    assert!(status.required_by_role && !status.enabled);

    // Enrolled and stepped up (the testkit does it through the real RPCs): allowed.
    let stepped = identity.admin().await;
    admin.list_users(bearer(ListUsersRequest::default(), &stepped.access_token)).await.unwrap();
    // An admin cannot switch MFA off.
    let (user, _, codes) = enrolled(&identity, "tara@example.com").await;
    let _ = codes;
    let refused = client
        .disable_mfa(bearer(
            DisableMfaRequest {
                proof: Some(disable_mfa_request::Proof::PasswordAndRecoveryCode(PasswordAndRecoveryCode {
                    password: ADMIN_PASSWORD.into(),
                    recovery_code: "0000-0000-0000-0000".into(),
                })),
            },
            &stepped.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), Some(ErrorCode::PermissionDenied));

    // A user lost their device: the admin resets MFA; the user's sessions end.
    let reset =
        ResetUserMfaRequest { user_id: user.user_id.clone(), reason: "lost phone, ID checked".into() };
    let answer =
        admin.reset_user_mfa(bearer(reset.clone(), &stepped.access_token)).await.unwrap().into_inner();
    assert!(!answer.user.unwrap().mfa_enabled);
    let again = admin.reset_user_mfa(bearer(reset, &stepped.access_token)).await.unwrap_err();
    assert_eq!(reason(&again), Some(ErrorCode::MfaStateConflict));
    let gone =
        client.get_my_profile(bearer(GetMyProfileRequest {}, &user.tokens.access_token)).await.unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
    identity.login(&user.email, USER_PASSWORD).await.expect("a password login after the reset");
    let disabled = identity.events("bank.events.v1.MfaDisabled").await;
    let event = MfaDisabled::decode(disabled.last().unwrap().as_slice()).unwrap();
    assert_eq!(event.user_id, user.user_id);
    assert!(!event.disabled_by_admin.is_empty());
}
