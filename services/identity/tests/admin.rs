//! `IdentityAdminService` through the real gRPC server, PostgreSQL and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::{
    common::v1::PageRequest,
    events::v1::UserUnlocked,
    identity::v1::{
        AuditResult, BatchSetUserStatusRequest, CheckTokenStatusRequest, CreateServiceClientRequest,
        CreateServiceClientResponse, DisableServiceClientRequest, DisableUserRequest, EnableUserRequest,
        GetJwksRequest, GetMyProfileRequest, GetUserRequest, IssueServiceTokenRequest, ListAuditLogRequest,
        ListServiceClientsRequest, ListSigningKeysRequest, ListUserSessionsRequest, ListUsersRequest,
        RefreshTokensRequest, ResetUserMfaRequest, RevokeSigningKeyRequest, RevokeUserSessionsRequest, Role,
        RotateServiceClientSecretRequest, RotateSigningKeyRequest, ServiceClientStatus, SetUserRolesRequest,
        SigningKeyState, UnlockUserRequest, UserStatus, VerifyAuditLogRequest,
        identity_admin_service_client::IdentityAdminServiceClient,
    },
};
use bank_testkit::{
    Options, TestIdentity, bearer,
    identity::{ADMIN_EMAIL, USER_PASSWORD},
};
use base64::Engine as _;
use prost::Message as _;
use tonic::{Code, Status, transport::Channel};

type Admin = IdentityAdminServiceClient<Channel>;

const WHY: &str = "ticket OPS-4711: identity confirmed by phone";

async fn admin_client(identity: &TestIdentity) -> Admin {
    IdentityAdminServiceClient::new(identity.app.channel().await)
}

fn reason(status: &Status) -> Option<ErrorCode> {
    reason_of(status)
}

/// The decoded JSON of a JWT's header (0) or payload (1). Test-only: no signature check.
fn jwt(token: &str, part: usize) -> serde_json::Value {
    let segment = token.split('.').nth(part).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).unwrap())
        .unwrap()
}

fn kid(token: &str) -> String {
    jwt(token, 0)["kid"].as_str().unwrap().to_owned()
}

fn page(size: i32, token: &str) -> Option<PageRequest> {
    Some(PageRequest { page_size: size, page_token: token.to_owned() })
}

/// Key settings that let a test rotate within a second: replicas reload the key table every
/// 100 ms and verifiers may refetch the JWKS every 500 ms, so a next key is usable after 600 ms.
fn fast_keys() -> Options {
    Options::default().set("keys.reload_interval", "100ms").set("auth.jwks_min_refetch", "500ms")
}

/// Waits until the next key has been published long enough to be rotated in (see [`fast_keys`]).
async fn settle_next_key(admin: &mut Admin, token: &str) {
    let keys = admin
        .list_signing_keys(bearer(ListSigningKeysRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let created = keys.iter().find(|k| k.state == SigningKeyState::Next as i32).unwrap().created_at.unwrap();
    let created = std::time::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(created.seconds).unwrap())
        + Duration::from_nanos(u64::try_from(created.nanos).unwrap());
    let ready = created + Duration::from_millis(800);
    if let Ok(wait) = ready.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

/// Whether `token` still opens the caller's own profile.
async fn profile_works(identity: &TestIdentity, token: &str) -> Result<(), Status> {
    identity.client().await.get_my_profile(bearer(GetMyProfileRequest {}, token)).await.map(|_| ())
}

/// The identifiers the admin RPCs act on.
struct Targets {
    user_id: String,
    client_id: String,
    kid: String,
    new_client_name: String,
}

/// Calls every implemented admin RPC with `token`, in an order that keeps an admin's token alive.
async fn every_rpc(admin: &mut Admin, token: &str, t: &Targets) -> Vec<(&'static str, Result<(), Status>)> {
    let user_id = t.user_id.clone();
    let why = WHY.to_owned();
    let mut out: Vec<(&'static str, Result<(), Status>)> = Vec::new();
    out.push(("ListUsers", admin.list_users(bearer(ListUsersRequest::default(), token)).await.map(|_| ())));
    out.push((
        "GetUser",
        admin.get_user(bearer(GetUserRequest { user_id: user_id.clone() }, token)).await.map(|_| ()),
    ));
    out.push((
        "ListUserSessions",
        admin
            .list_user_sessions(bearer(
                ListUserSessionsRequest { user_id: user_id.clone(), page: None },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out.push((
        "ListAuditLog",
        admin.list_audit_log(bearer(ListAuditLogRequest::default(), token)).await.map(|_| ()),
    ));
    out.push((
        "VerifyAuditLog",
        admin.verify_audit_log(bearer(VerifyAuditLogRequest::default(), token)).await.map(|_| ()),
    ));
    out.push((
        "ListSigningKeys",
        admin.list_signing_keys(bearer(ListSigningKeysRequest::default(), token)).await.map(|_| ()),
    ));
    out.push((
        "ListServiceClients",
        admin.list_service_clients(bearer(ListServiceClientsRequest::default(), token)).await.map(|_| ()),
    ));
    out.push((
        "UnlockUser",
        admin
            .unlock_user(bearer(UnlockUserRequest { user_id: user_id.clone(), reason: why.clone() }, token))
            .await
            .map(|_| ()),
    ));
    out.push((
        "DisableUser",
        admin
            .disable_user(bearer(DisableUserRequest { user_id: user_id.clone(), reason: why.clone() }, token))
            .await
            .map(|_| ()),
    ));
    out.push((
        "EnableUser",
        admin
            .enable_user(bearer(EnableUserRequest { user_id: user_id.clone(), reason: why.clone() }, token))
            .await
            .map(|_| ()),
    ));
    out.push((
        "BatchSetUserStatus",
        admin
            .batch_set_user_status(bearer(
                BatchSetUserStatusRequest {
                    user_ids: vec![user_id.clone()],
                    status: UserStatus::Active as i32,
                    reason: why.clone(),
                },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out.push((
        "SetUserRoles",
        admin
            .set_user_roles(bearer(
                SetUserRolesRequest {
                    user_id: user_id.clone(),
                    roles: vec![Role::Customer as i32],
                    reason: why.clone(),
                },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out.push((
        "RevokeUserSessions",
        admin
            .revoke_user_sessions(bearer(
                RevokeUserSessionsRequest { user_id: user_id.clone(), reason: why.clone() },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out.push((
        "RevokeSigningKey",
        admin
            .revoke_signing_key(bearer(
                RevokeSigningKeyRequest { key_id: t.kid.clone(), reason: why.clone() },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out.push((
        "RotateSigningKey",
        admin
            .rotate_signing_key(bearer(RotateSigningKeyRequest { reason: why.clone() }, token))
            .await
            .map(|_| ()),
    ));
    out.push((
        "CreateServiceClient",
        admin
            .create_service_client(bearer(
                CreateServiceClientRequest {
                    name: t.new_client_name.clone(),
                    scopes: vec!["ledger:read".to_owned()],
                    reason: why.clone(),
                },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out.push((
        "RotateServiceClientSecret",
        admin
            .rotate_service_client_secret(bearer(
                RotateServiceClientSecretRequest {
                    client_id: t.client_id.clone(),
                    previous_secret_ttl_seconds: 0,
                    reason: why.clone(),
                },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out.push((
        "DisableServiceClient",
        admin
            .disable_service_client(bearer(
                DisableServiceClientRequest { client_id: t.client_id.clone(), reason: why },
                token,
            ))
            .await
            .map(|_| ()),
    ));
    out
}

async fn create_client(
    admin: &mut Admin,
    token: &str,
    name: &str,
    scopes: &[&str],
) -> CreateServiceClientResponse {
    admin
        .create_service_client(bearer(
            CreateServiceClientRequest {
                name: name.to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                reason: WHY.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn issue(identity: &TestIdentity, client_id: &str, secret: &str) -> Result<String, Status> {
    identity
        .client()
        .await
        .issue_service_token(IssueServiceTokenRequest {
            client_id: client_id.to_owned(),
            client_secret: secret.to_owned(),
            scopes: Vec::new(),
        })
        .await
        .map(|r| r.into_inner().access_token)
}

#[tokio::test]
async fn a_customer_is_refused_every_admin_rpc_and_the_admin_may_call_them_all() {
    let identity = TestIdentity::spawn_with(fast_keys()).await;
    let customer = identity.user("cora@example.com").await;
    let mut admin = admin_client(&identity).await;
    // Rotate once, so that a retiring key exists to revoke; the admin then uses the new key.
    let first_admin = identity.admin().await.access_token;
    settle_next_key(&mut admin, &first_admin).await;
    let keys = admin
        .rotate_signing_key(bearer(RotateSigningKeyRequest { reason: WHY.into() }, &first_admin))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let retiring = keys.iter().find(|k| k.state == SigningKeyState::Retiring as i32).unwrap().key_id.clone();
    let admin_tokens = identity.admin().await;
    let prepared = create_client(&mut admin, &admin_tokens.access_token, "prepared", &["ledger:read"]).await;
    let targets = Targets {
        user_id: customer.user_id.clone(),
        client_id: prepared.client.unwrap().client_id,
        kid: retiring,
        new_client_name: "made-by-the-test".to_owned(),
    };

    let refused = every_rpc(&mut admin, &customer.tokens.access_token, &targets).await;
    assert_eq!(refused.len(), 18);
    for (rpc, answer) in &refused {
        let err = answer.as_ref().expect_err(rpc);
        assert_eq!(err.code(), Code::PermissionDenied, "{rpc}: {err:?}");
        assert_eq!(reason(err), Some(ErrorCode::PermissionDenied), "{rpc}");
    }
    // A service token holds no role either; no token at all is refused before any handler.
    let service = identity.service_token(&[]).await;
    let err = admin.list_users(bearer(ListUsersRequest::default(), &service)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin.list_users(ListUsersRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Refusals are audited against the caller.
    let denied = admin
        .list_audit_log(bearer(
            ListAuditLogRequest {
                actor_id: customer.user_id.clone(),
                result: AuditResult::Denied as i32,
                page: page(200, ""),
                ..ListAuditLogRequest::default()
            },
            &admin_tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(denied.len(), 18);
    assert!(denied.iter().any(|e| e.action == "user.disable" && e.actor_type == "user"));

    settle_next_key(&mut admin, &admin_tokens.access_token).await;
    for (rpc, answer) in every_rpc(&mut admin, &admin_tokens.access_token, &targets).await {
        answer.unwrap_or_else(|e| panic!("{rpc}: {e:?}"));
    }

    // ResetUserMfa: the customer (no MFA) cannot call it; for the admin there is nothing to reset.
    // (The admin pass revoked the customer's sessions, so the customer logs in again.)
    let customer_again = identity.login(&customer.email, USER_PASSWORD).await.unwrap().access_token;
    for (token, expected) in
        [(&admin_tokens.access_token, Code::FailedPrecondition), (&customer_again, Code::PermissionDenied)]
    {
        let err = admin
            .reset_user_mfa(bearer(
                ResetUserMfaRequest { user_id: customer.user_id.clone(), reason: WHY.into() },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), expected);
    }
}

#[tokio::test]
async fn list_users_pages_newest_first_with_a_total_and_refuses_a_bad_page_token() {
    let identity = TestIdentity::spawn().await;
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(identity.user(&format!("pager{i}@example.com")).await.user_id);
    }
    expected.reverse(); // newest first
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = Vec::new();
    loop {
        let answer = admin
            .list_users(bearer(
                ListUsersRequest {
                    query: "PAGER".into(),
                    page: page(2, &page_token),
                    ..ListUsersRequest::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let info = answer.page_info.unwrap();
        assert_eq!(info.total_size, Some(5));
        pages.push(answer.users.len());
        seen.extend(answer.users.into_iter().map(|u| u.user_id));
        if info.next_page_token.is_empty() {
            break;
        }
        page_token = info.next_page_token;
    }
    assert_eq!(pages, [2, 2, 1]);
    assert_eq!(seen, expected);

    let admins = admin
        .list_users(bearer(
            ListUsersRequest { role: Role::Admin as i32, ..ListUsersRequest::default() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admins.page_info.unwrap().total_size, Some(1));
    assert_eq!(admins.users[0].email, ADMIN_EMAIL);
    let disabled = admin
        .list_users(bearer(
            ListUsersRequest { status: UserStatus::Disabled as i32, ..ListUsersRequest::default() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.users.is_empty());
    assert_eq!(disabled.page_info.unwrap().total_size, Some(0));
    let locked = admin
        .list_users(bearer(ListUsersRequest { locked_only: true, ..ListUsersRequest::default() }, &token))
        .await
        .unwrap()
        .into_inner();
    assert!(locked.users.is_empty());

    for bad in [
        ListUsersRequest { page: page(2, "garbage!"), ..ListUsersRequest::default() },
        ListUsersRequest { page: page(-1, ""), ..ListUsersRequest::default() },
        ListUsersRequest { status: 42, ..ListUsersRequest::default() },
    ] {
        let err = admin.list_users(bearer(bad, &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(reason(&err), Some(ErrorCode::ValidationFailed));
    }
}

#[tokio::test]
async fn a_locked_user_is_unlocked_by_an_admin_and_the_audit_log_says_who_and_why() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("lou@example.com").await;
    let admin_id = identity.user_id(ADMIN_EMAIL).await;
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;
    let get = |admin: &mut Admin| {
        let mut admin = admin.clone();
        let request = bearer(GetUserRequest { user_id: user.user_id.clone() }, &token);
        async move { admin.get_user(request).await.unwrap().into_inner() }
    };

    for _ in 0..4 {
        identity.login(&user.email, "wrong").await.unwrap_err();
    }
    let before = get(&mut admin).await;
    assert_eq!(before.failed_login_count, 4);
    assert!(before.user.unwrap().locked_until.is_none());
    identity.login(&user.email, "wrong").await.unwrap_err();
    let locked = get(&mut admin).await;
    assert_eq!(locked.failed_login_count, 5);
    assert!(locked.user.unwrap().locked_until.is_some());
    let err = identity.login(&user.email, USER_PASSWORD).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::AccountLocked));

    let err = admin
        .unlock_user(bearer(UnlockUserRequest { user_id: "nope".into(), reason: " ".into() }, &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = tonic_types::StatusExt::get_error_details(&err)
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["user_id", "reason"]);
    let err = admin
        .unlock_user(bearer(
            UnlockUserRequest { user_id: uuid::Uuid::now_v7().to_string(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A card number typed into the reason is kept masked (PCI DSS 3.5.1).
    let why = format!("{WHY} 4111 1111 1111 1111");
    let unlocked = admin
        .unlock_user(bearer(UnlockUserRequest { user_id: user.user_id.clone(), reason: why }, &token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(unlocked.locked_until.is_none());
    assert_eq!(get(&mut admin).await.failed_login_count, 0);
    identity.login(&user.email, USER_PASSWORD).await.unwrap();

    let entries = admin
        .list_audit_log(bearer(
            ListAuditLogRequest {
                target_id: user.user_id.clone(),
                action_prefix: "user.unlock".into(),
                ..ListAuditLogRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!((entry.actor_type.as_str(), entry.actor_id.as_str()), ("user", admin_id.as_str()));
    assert_eq!(entry.reason, format!("{WHY} **** **** **** 1111"));
    assert_eq!(entry.result, AuditResult::Success as i32);
    assert_eq!(entry.target_type, "user");

    let events = identity.events("bank.events.v1.UserUnlocked").await;
    assert_eq!(events.len(), 1);
    let event = UserUnlocked::decode(events[0].as_slice()).unwrap();
    assert_eq!((event.user_id, event.unlocked_by), (user.user_id, admin_id));
}

#[tokio::test]
async fn a_disabled_user_loses_tokens_and_logins_until_enabled() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("dina@example.com").await;
    let admin_id = identity.user_id(ADMIN_EMAIL).await;
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;
    profile_works(&identity, &user.tokens.access_token).await.unwrap();

    let disabled = admin
        .disable_user(bearer(
            DisableUserRequest { user_id: user.user_id.clone(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(disabled.status, UserStatus::Disabled as i32);
    let err = profile_works(&identity, &user.tokens.access_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = identity
        .client()
        .await
        .refresh_tokens(RefreshTokensRequest { refresh_token: user.tokens.refresh_token.clone() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::InvalidRefreshToken));
    let err = identity.login(&user.email, USER_PASSWORD).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::InvalidCredentials));
    let sessions = admin
        .list_user_sessions(bearer(
            ListUserSessionsRequest { user_id: user.user_id.clone(), page: None },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(sessions.is_empty(), "every session was revoked");

    let enabled = admin
        .enable_user(bearer(EnableUserRequest { user_id: user.user_id.clone(), reason: WHY.into() }, &token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(enabled.status, UserStatus::Active as i32);
    let fresh = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    profile_works(&identity, &fresh.access_token).await.unwrap();

    // Nobody disables themself (here also the last admin).
    let err = admin
        .disable_user(bearer(DisableUserRequest { user_id: admin_id, reason: WHY.into() }, &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = admin
        .disable_user(bearer(
            DisableUserRequest { user_id: uuid::Uuid::now_v7().to_string(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_batch_answers_per_user_and_never_fails_as_a_whole_for_one_bad_id() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("bart@example.com").await;
    let admin_id = identity.user_id(ADMIN_EMAIL).await;
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let results = admin
        .batch_set_user_status(bearer(
            BatchSetUserStatusRequest {
                user_ids: vec![user.user_id.clone(), unknown.clone(), "not-a-uuid".into(), admin_id.clone()],
                status: UserStatus::Disabled as i32,
                reason: WHY.into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    let summary: Vec<(&str, bool, &str)> =
        results.iter().map(|r| (r.user_id.as_str(), r.ok, r.error_reason.as_str())).collect();
    assert_eq!(
        summary,
        [
            (user.user_id.as_str(), true, ""),
            (unknown.as_str(), false, "NOT_FOUND"),
            ("not-a-uuid", false, "VALIDATION_FAILED"),
            (admin_id.as_str(), false, "FAILED_PRECONDITION"),
        ]
    );
    identity.login(&user.email, USER_PASSWORD).await.unwrap_err();
    profile_works(&identity, &token).await.unwrap();

    let results = admin
        .batch_set_user_status(bearer(
            BatchSetUserStatusRequest {
                user_ids: vec![user.user_id.clone()],
                status: UserStatus::Active as i32,
                reason: WHY.into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results[0].ok);
    identity.login(&user.email, USER_PASSWORD).await.unwrap();

    for bad in [
        BatchSetUserStatusRequest {
            user_ids: (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect(),
            status: UserStatus::Disabled as i32,
            reason: WHY.into(),
        },
        BatchSetUserStatusRequest {
            user_ids: Vec::new(),
            status: UserStatus::Disabled as i32,
            reason: WHY.into(),
        },
        BatchSetUserStatusRequest {
            user_ids: vec![user.user_id.clone()],
            status: UserStatus::PendingVerification as i32,
            reason: WHY.into(),
        },
    ] {
        let err = admin.batch_set_user_status(bearer(bad, &token)).await.unwrap_err();
        assert_eq!(reason(&err), Some(ErrorCode::ValidationFailed));
    }
}

#[tokio::test]
async fn new_roles_refuse_old_tokens_and_travel_in_new_ones() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("sam@example.com").await;
    let other = identity.user("olga@example.com").await;
    let admin_id = identity.user_id(ADMIN_EMAIL).await;
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;

    let changed = admin
        .set_user_roles(bearer(
            SetUserRolesRequest {
                user_id: user.user_id.clone(),
                roles: vec![Role::Support as i32],
                reason: WHY.into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(changed.roles, [Role::Customer as i32, Role::Support as i32], "customer is always kept");
    let err = profile_works(&identity, &user.tokens.access_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), Some(ErrorCode::TokenRevoked));

    let support = identity.login(&user.email, USER_PASSWORD).await.unwrap().access_token;
    assert_eq!(jwt(&support, 1)["roles"], serde_json::json!(["customer", "support"]));
    // Staff RPCs need a second factor: refused until the new support agent enrols and steps up.
    let err = admin.list_users(bearer(ListUsersRequest::default(), &support)).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::MfaRequired));
    let (mut device, _) = identity.enrol_mfa(&support).await;
    let code = device.next_code().await;
    let support = identity
        .client()
        .await
        .step_up(bearer(
            bank_proto::identity::v1::StepUpRequest {
                code: Some(bank_proto::identity::v1::step_up_request::Code::TotpCode(code)),
            },
            &support,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    // Support: the read-only views and unlocking, nothing else.
    admin.list_users(bearer(ListUsersRequest::default(), &support)).await.unwrap();
    admin.get_user(bearer(GetUserRequest { user_id: other.user_id.clone() }, &support)).await.unwrap();
    admin
        .list_user_sessions(bearer(
            ListUserSessionsRequest { user_id: other.user_id.clone(), page: None },
            &support,
        ))
        .await
        .unwrap();
    admin.list_audit_log(bearer(ListAuditLogRequest::default(), &support)).await.unwrap();
    admin
        .unlock_user(bearer(
            UnlockUserRequest { user_id: other.user_id.clone(), reason: WHY.into() },
            &support,
        ))
        .await
        .unwrap();
    let refused = [
        admin
            .disable_user(bearer(
                DisableUserRequest { user_id: other.user_id.clone(), reason: WHY.into() },
                &support,
            ))
            .await
            .map(|_| ()),
        admin.verify_audit_log(bearer(VerifyAuditLogRequest::default(), &support)).await.map(|_| ()),
        admin.list_signing_keys(bearer(ListSigningKeysRequest::default(), &support)).await.map(|_| ()),
        admin
            .set_user_roles(bearer(
                SetUserRolesRequest {
                    user_id: user.user_id.clone(),
                    roles: vec![Role::Admin as i32],
                    reason: WHY.into(),
                },
                &support,
            ))
            .await
            .map(|_| ()),
    ];
    for answer in refused {
        assert_eq!(answer.unwrap_err().code(), Code::PermissionDenied);
    }

    // The last active admin keeps the role; unknown and unspecified roles are refused.
    let err = admin
        .set_user_roles(bearer(
            SetUserRolesRequest { user_id: admin_id.clone(), roles: vec![], reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = admin
        .set_user_roles(bearer(
            SetUserRolesRequest {
                user_id: user.user_id.clone(),
                roles: vec![Role::Unspecified as i32, 99],
                reason: WHY.into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        tonic_types::StatusExt::get_error_details(&err).bad_request().unwrap().field_violations.len(),
        2
    );
    let err = admin
        .set_user_roles(bearer(
            SetUserRolesRequest {
                user_id: uuid::Uuid::now_v7().to_string(),
                roles: vec![Role::Teller as i32],
                reason: WHY.into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // With a second admin the first may step down.
    admin
        .set_user_roles(bearer(
            SetUserRolesRequest {
                user_id: user.user_id.clone(),
                roles: vec![Role::Admin as i32, Role::Admin as i32],
                reason: WHY.into(),
            },
            &token,
        ))
        .await
        .unwrap();
    let stepped_down = admin
        .set_user_roles(bearer(
            SetUserRolesRequest { user_id: admin_id, roles: vec![Role::Teller as i32], reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(stepped_down.roles, [Role::Customer as i32, Role::Teller as i32]);
}

#[tokio::test]
async fn revoking_a_users_sessions_refuses_all_their_tokens() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("rita@example.com").await;
    let second = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;
    let list = |admin: &Admin| {
        let mut admin = admin.clone();
        let request =
            bearer(ListUserSessionsRequest { user_id: user.user_id.clone(), page: page(1, "") }, &token);
        async move { admin.list_user_sessions(request).await.unwrap().into_inner() }
    };

    let first_page = list(&admin).await;
    assert_eq!(first_page.sessions.len(), 1);
    assert!(!first_page.sessions[0].current);
    assert!(!first_page.page_info.unwrap().next_page_token.is_empty());

    let revoked = admin
        .revoke_user_sessions(bearer(
            RevokeUserSessionsRequest { user_id: user.user_id.clone(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked_count;
    assert_eq!(revoked, 2);
    for stale in [&user.tokens.access_token, &second.access_token] {
        let err = profile_works(&identity, stale).await.unwrap_err();
        assert_eq!(reason(&err), Some(ErrorCode::TokenRevoked));
    }
    let err = identity
        .client()
        .await
        .refresh_tokens(RefreshTokensRequest { refresh_token: second.refresh_token })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::InvalidRefreshToken));
    assert!(list(&admin).await.sessions.is_empty());
    let fresh = identity.login(&user.email, USER_PASSWORD).await.unwrap();
    profile_works(&identity, &fresh.access_token).await.unwrap();

    let err = admin
        .list_user_sessions(bearer(
            ListUserSessionsRequest { user_id: uuid::Uuid::now_v7().to_string(), page: None },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_and_revoking_the_old_key_refuses_them() {
    let identity = TestIdentity::spawn_with(fast_keys()).await;
    let user = identity.user("kim@example.com").await;
    let before = user.tokens.access_token.clone();
    let old_kid = kid(&before);
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;

    settle_next_key(&mut admin, &token).await;
    let keys = admin
        .rotate_signing_key(bearer(RotateSigningKeyRequest { reason: WHY.into() }, &token))
        .await
        .unwrap()
        .into_inner()
        .keys;
    // The new next key is not known to every verifier yet: a second rotation must wait.
    let err = admin
        .rotate_signing_key(bearer(RotateSigningKeyRequest { reason: WHY.into() }, &token))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::SigningKeyStateConflict));
    let state_of = |kid: &str| keys.iter().find(|k| k.key_id == kid).map(|k| k.state);
    assert_eq!(state_of(&old_kid), Some(SigningKeyState::Retiring as i32));
    let active = keys.iter().find(|k| k.state == SigningKeyState::Active as i32).unwrap();
    assert_ne!(active.key_id, old_kid);
    assert!(active.public_key.as_ref().is_some_and(|jwk| jwk.kid == active.key_id));
    assert_eq!(keys.iter().filter(|k| k.state == SigningKeyState::Next as i32).count(), 1);

    // Retiring keys stay published: the old token still works; new tokens carry the new kid.
    profile_works(&identity, &before).await.unwrap();
    let after = identity.login(&user.email, USER_PASSWORD).await.unwrap().access_token;
    assert_eq!(kid(&after), active.key_id);
    let jwks: Vec<String> = identity
        .client()
        .await
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert!(jwks.contains(&old_kid) && jwks.contains(&active.key_id), "{jwks:?}");

    // Emergency revoke of the old key, by an admin whose token the new key signed.
    let token = identity.admin().await.access_token;
    assert_eq!(kid(&token), active.key_id);
    let revoked = admin
        .revoke_signing_key(bearer(
            RevokeSigningKeyRequest { key_id: old_kid.clone(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(revoked.state, SigningKeyState::Revoked as i32);
    assert!(revoked.retired_at.is_some());
    let jwks = identity.client().await.get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys;
    assert!(jwks.iter().all(|k| k.kid != old_kid), "unpublished at once");
    // Identity's own verifier drops the key when its JWKS cache refreshes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match profile_works(&identity, &before).await {
            Err(err) => {
                assert_eq!(err.code(), Code::Unauthenticated);
                break;
            }
            Ok(()) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
            Ok(()) => panic!("a token of the revoked key is still accepted"),
        }
    }
    profile_works(&identity, &after).await.unwrap();

    let err = admin
        .revoke_signing_key(bearer(
            RevokeSigningKeyRequest { key_id: old_kid.clone(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), Some(ErrorCode::SigningKeyStateConflict));
    let err = admin
        .revoke_signing_key(bearer(
            RevokeSigningKeyRequest { key_id: "no-such-kid".into(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let listed = admin
        .list_signing_keys(bearer(ListSigningKeysRequest { page: page(1, "") }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 1);
    let next_page = listed.page_info.unwrap().next_page_token;
    assert!(!next_page.is_empty());
    let all = admin
        .list_signing_keys(bearer(ListSigningKeysRequest { page: page(100, "") }, &token))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(
        all.iter().find(|k| k.key_id == old_kid).map(|k| k.state),
        Some(SigningKeyState::Revoked as i32)
    );
    let actions: Vec<String> = admin
        .list_audit_log(bearer(
            ListAuditLogRequest { action_prefix: "signing_key.".into(), ..ListAuditLogRequest::default() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["signing_key.revoke", "signing_key.rotate"]);
}

#[tokio::test]
async fn service_clients_are_created_rotated_with_a_grace_and_disabled() {
    let identity = TestIdentity::spawn().await;
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;

    let created =
        create_client(&mut admin, &token, "partner-acme", &["identity:introspect", "identity:introspect"])
            .await;
    let client = created.client.unwrap();
    assert_eq!(client.scopes, ["identity:introspect"]);
    assert_eq!(client.status, ServiceClientStatus::Active as i32);
    let first_secret = created.client_secret;
    assert!(first_secret.len() >= 32);
    issue(&identity, &client.client_id, &first_secret).await.unwrap();

    let err = admin
        .create_service_client(bearer(
            CreateServiceClientRequest {
                name: "partner-acme".into(),
                scopes: vec!["ledger:read".into()],
                reason: WHY.into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = admin
        .create_service_client(bearer(
            CreateServiceClientRequest {
                name: "Partner ACME".into(),
                scopes: vec!["ledger".into(), "Ledger:Read".into()],
                reason: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        tonic_types::StatusExt::get_error_details(&err).bad_request().unwrap().field_violations.len(),
        4
    );

    // A grace period: both secrets work.
    let rotator = admin.clone();
    let rotate = |ttl: i32, client_id: String| {
        let mut admin = rotator.clone();
        let request = bearer(
            RotateServiceClientSecretRequest {
                client_id,
                previous_secret_ttl_seconds: ttl,
                reason: WHY.into(),
            },
            &token,
        );
        async move { admin.rotate_service_client_secret(request).await }
    };
    let rotated = rotate(3600, client.client_id.clone()).await.unwrap().into_inner();
    assert!(rotated.client.unwrap().secret_rotated_at.is_some());
    let second_secret = rotated.client_secret;
    assert_ne!(second_secret, first_secret);
    issue(&identity, &client.client_id, &first_secret).await.unwrap();
    issue(&identity, &client.client_id, &second_secret).await.unwrap();
    // No grace: only the newest works.
    let third_secret = rotate(0, client.client_id.clone()).await.unwrap().into_inner().client_secret;
    for old in [&first_secret, &second_secret] {
        let err = issue(&identity, &client.client_id, old).await.unwrap_err();
        assert_eq!(reason(&err), Some(ErrorCode::InvalidCredentials));
    }
    let live = issue(&identity, &client.client_id, &third_secret).await.unwrap();
    assert_eq!(rotate(86_401, client.client_id.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(rotate(60, "no-such-client".into()).await.unwrap_err().code(), Code::NotFound);

    // The client's own token introspects itself while the client is active.
    let jti = jwt(&live, 1)["jti"].as_str().unwrap().to_owned();
    let about_live = CheckTokenStatusRequest {
        token_id: jti,
        user_id: client.client_id.clone(),
        session_id: String::new(),
        token_version: 0,
    };
    let status = identity
        .client()
        .await
        .check_token_status(bearer(about_live.clone(), &live))
        .await
        .unwrap()
        .into_inner();
    assert!(!status.revoked);

    let disabled = admin
        .disable_service_client(bearer(
            DisableServiceClientRequest { client_id: client.client_id.clone(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    assert_eq!(disabled.status, ServiceClientStatus::Disabled as i32);
    let err = issue(&identity, &client.client_id, &third_secret).await.unwrap_err();
    assert_eq!(reason(&err), Some(ErrorCode::InvalidCredentials));
    let err =
        identity.client().await.check_token_status(bearer(about_live.clone(), &live)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), Some(ErrorCode::TokenRevoked));
    let introspector = identity.service_token(&["identity:introspect"]).await;
    let status = identity
        .client()
        .await
        .check_token_status(bearer(about_live, &introspector))
        .await
        .unwrap()
        .into_inner();
    assert!(status.revoked);

    let clients = admin
        .list_service_clients(bearer(ListServiceClientsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .clients;
    let summary: Vec<(&str, i32)> = clients.iter().map(|c| (c.name.as_str(), c.status)).collect();
    assert_eq!(
        summary,
        [
            ("partner-acme", ServiceClientStatus::Disabled as i32),
            ("test-service", ServiceClientStatus::Active as i32)
        ]
    );
    let err = admin
        .disable_service_client(bearer(
            DisableServiceClientRequest { client_id: "no-such-client".into(), reason: WHY.into() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn the_audit_log_verifies_refuses_edits_and_detects_tampering() {
    let identity = TestIdentity::spawn().await;
    let user = identity.user("tess@example.com").await;
    let token = identity.admin().await.access_token;
    let mut admin = admin_client(&identity).await;
    for _ in 0..5 {
        identity.login(&user.email, "wrong").await.unwrap_err();
    }
    admin
        .unlock_user(bearer(UnlockUserRequest { user_id: user.user_id.clone(), reason: WHY.into() }, &token))
        .await
        .unwrap();
    let verifier = admin.clone();
    let verify = |from: i64, to: i64| {
        let mut admin = verifier.clone();
        let request = bearer(VerifyAuditLogRequest { from_sequence: from, to_sequence: to }, &token);
        async move { admin.verify_audit_log(request).await.map(tonic::Response::into_inner) }
    };

    let intact = verify(0, 0).await.unwrap();
    assert!(intact.intact, "{intact:?}");
    assert!(intact.entries_checked >= 8, "{intact:?}");
    assert!(intact.checked_at.is_some());
    assert_eq!(verify(0, 0).await.unwrap().first_broken_sequence, 0);

    let unlock = admin
        .list_audit_log(bearer(
            ListAuditLogRequest {
                target_id: user.user_id.clone(),
                action_prefix: "user.unlock".into(),
                ..ListAuditLogRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries
        .remove(0);
    assert_eq!(verify(unlock.sequence, unlock.sequence).await.unwrap().entries_checked, 1);
    assert_eq!(verify(5, 2).await.unwrap_err().code(), Code::InvalidArgument);

    // Keyset pages, newest first.
    let first = admin
        .list_audit_log(bearer(
            ListAuditLogRequest { page: page(2, ""), ..ListAuditLogRequest::default() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let next = first.page_info.unwrap().next_page_token;
    let second = admin
        .list_audit_log(bearer(
            ListAuditLogRequest { page: page(2, &next), ..ListAuditLogRequest::default() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries.len(), 2);
    assert!(first.entries[0].sequence > first.entries[1].sequence);
    assert!(second.entries[0].sequence < first.entries[1].sequence);
    let err = admin
        .list_audit_log(bearer(
            ListAuditLogRequest { page: page(2, "bm90LWEtdG9rZW4"), ..ListAuditLogRequest::default() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The table refuses edits even to a superuser...
    let mut db = identity.db().await;
    for statement in [
        "UPDATE audit_log SET reason = 'nothing happened' WHERE sequence = $1",
        "DELETE FROM audit_log WHERE sequence = $1",
    ] {
        let err = sqlx::query(statement).bind(unlock.sequence).execute(&mut db).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    let err = sqlx::query("TRUNCATE audit_log").execute(&mut db).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");

    // ...so switch the guard off as the superuser to prove the chain catches an edit.
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET reason = 'nothing happened' WHERE sequence = $1")
        .bind(unlock.sequence)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only").execute(&mut db).await.unwrap();

    let broken = verify(0, 0).await.unwrap();
    assert!(!broken.intact);
    assert_eq!(broken.first_broken_sequence, unlock.sequence);
    assert!(!broken.problem.is_empty());
}
