//! The tonic implementations of identity's contracts, and the proto <-> row conversions.

pub mod admin;
mod mfa;
pub mod public;

use bank_money::card_number;
use bank_platform::{ErrorCode, FieldViolation, ServiceError};
use bank_proto::identity::v1::{Role, Session, User, UserStatus};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    context::CallContext,
    domain::password::Violation,
    storage::{audit, sessions::SessionRow, users::UserRow},
};

/// The gRPC paths that need no token.
pub const PUBLIC_RPCS: &[&str] = &[
    "/bank.identity.v1.IdentityService/Register",
    "/bank.identity.v1.IdentityService/VerifyEmail",
    "/bank.identity.v1.IdentityService/ResendVerificationEmail",
    "/bank.identity.v1.IdentityService/Login",
    "/bank.identity.v1.IdentityService/CompleteMfaLogin",
    "/bank.identity.v1.IdentityService/RefreshTokens",
    "/bank.identity.v1.IdentityService/RequestPasswordReset",
    "/bank.identity.v1.IdentityService/ConfirmPasswordReset",
    "/bank.identity.v1.IdentityService/GetJwks",
    "/bank.identity.v1.IdentityService/IssueServiceToken",
];

pub(crate) use bank_platform::grpc::fields::{internal, invalid};
pub(crate) use bank_proto::convert::timestamp;

/// The single answer for every failed credential check.
pub(crate) fn invalid_credentials() -> tonic::Status {
    ServiceError::new(ErrorCode::InvalidCredentials, "invalid credentials").into()
}

/// A locked user who gave the right password: locked until `until` (metadata `locked_until`,
/// RFC 3339) and a retry hint for the real remaining wait.
pub(crate) fn account_locked(until: OffsetDateTime, now: OffsetDateTime) -> tonic::Status {
    let at = until
        .replace_nanosecond(0)
        .unwrap_or(until)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let wait = std::time::Duration::try_from(until - now).unwrap_or_default();
    ServiceError::new(
        ErrorCode::AccountLocked,
        format!("the account is locked after too many failed logins until {at}; try again then or reset the password"),
    )
    .with_metadata("locked_until", at)
    .with_retry_after(wait)
    .into()
}

/// A password that breaks the policy, with every violation.
pub(crate) fn policy_violation(field: &str, violations: &[Violation]) -> tonic::Status {
    let list = violations.iter().map(|v| FieldViolation::new(field, v.code(), v.description())).collect();
    ServiceError {
        code: ErrorCode::PasswordPolicyViolation,
        message: "the password does not meet the password policy".to_owned(),
        violations: list,
        metadata: std::collections::BTreeMap::new(),
    }
    .into()
}

pub(crate) fn role_of(name: &str) -> Role {
    match name {
        "customer" => Role::Customer,
        "support" => Role::Support,
        "teller" => Role::Teller,
        "admin" => Role::Admin,
        _ => Role::Unspecified,
    }
}

#[allow(dead_code)] // used by the admin API
pub(crate) fn role_name(role: Role) -> Option<&'static str> {
    match role {
        Role::Customer => Some("customer"),
        Role::Support => Some("support"),
        Role::Teller => Some("teller"),
        Role::Admin => Some("admin"),
        Role::Unspecified => None,
    }
}

/// A user as the contract shows it; `admin` adds the lock state.
pub(crate) fn user(row: &UserRow, admin: bool) -> User {
    let status = match row.status.as_str() {
        "active" => UserStatus::Active,
        "disabled" => UserStatus::Disabled,
        _ => UserStatus::PendingVerification,
    };
    let now = OffsetDateTime::now_utc();
    User {
        user_id: row.user_id.to_string(),
        email: row.email.clone(),
        email_verified: row.email_verified_at.is_some(),
        given_name: row.given_name.clone(),
        family_name: row.family_name.clone(),
        locale: row.locale.clone(),
        time_zone: row.time_zone.clone(),
        roles: row.roles.iter().map(|r| role_of(r) as i32).collect(),
        status: status as i32,
        mfa_enabled: row.mfa_enabled,
        locked_until: if admin { row.locked_until.filter(|u| *u > now).map(timestamp) } else { None },
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        last_login_at: row.last_login_at.map(timestamp),
    }
}

/// A session as the contract shows it.
pub(crate) fn session(row: &SessionRow, current: Option<Uuid>) -> Session {
    Session {
        session_id: row.session_id.to_string(),
        created_at: Some(timestamp(row.created_at)),
        last_used_at: Some(timestamp(row.last_used_at)),
        expires_at: Some(timestamp(row.expires_at)),
        ip_address: row.ip_address.clone(),
        user_agent: row.user_agent.clone(),
        device_name: row.device_name.clone(),
        current: current == Some(row.session_id),
        mfa_authenticated: row.acr == "mfa",
    }
}

/// An audit entry for a call.
pub(crate) fn entry(ctx: &CallContext, action: &'static str, result: &'static str) -> audit::Entry {
    audit::Entry {
        actor_type: "user",
        action,
        result,
        request_id: ctx.request_id.clone(),
        trace_id: ctx.trace_id.clone(),
        ip_address: ctx.ip_address.clone(),
        user_agent: ctx.user_agent.clone(),
        ..audit::Entry::default()
    }
}

/// Names: 1..=`max` characters (given) or 0..=`max` (family), no control characters, no card
/// number (a name with one is refused: masking it would not leave a name).
pub(crate) fn check_name(field: &str, value: &str, required: bool, max: usize) -> Option<FieldViolation> {
    let violation = check_text(field, value, required, max);
    if violation.is_none() && card_number::contains_card_number(value) {
        return Some(FieldViolation::new(
            field,
            card_number::VIOLATION_CODE,
            "must not contain a card number",
        ));
    }
    violation
}

/// Free text (an audited reason): 1..=`max` characters when required, no control characters.
/// Callers store it through [`masked_text`].
pub(crate) fn check_text(field: &str, value: &str, required: bool, max: usize) -> Option<FieldViolation> {
    let trimmed = value.trim();
    if required && trimmed.is_empty() {
        return Some(FieldViolation::new(field, "REQUIRED", "is required"));
    }
    if trimmed.chars().count() > max {
        return Some(FieldViolation::new(field, "TOO_LONG", format!("at most {max} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Some(FieldViolation::new(field, "INVALID_CHARACTERS", "must not contain control characters"));
    }
    None
}

/// Free text as stored: trimmed, card numbers masked to their last four (PCI DSS 3.5.1).
pub(crate) fn masked_text(value: &str) -> String {
    card_number::mask_card_numbers(value.trim()).into_owned()
}

/// A BCP 47 language tag (shape only): `en`, `de-AT`, `zh-Hant-TW`.
pub(crate) fn check_locale(field: &str, value: &str) -> Option<FieldViolation> {
    let mut parts = value.split('-');
    let language_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic()));
    let rest_ok = parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
    (!(language_ok && rest_ok && value.len() <= 35)).then(|| {
        FieldViolation::new(field, "INVALID_FORMAT", "must be a BCP 47 language tag such as en or de-AT")
    })
}

/// An IANA time zone name (shape only): `UTC`, `Europe/Vienna`, `America/Argentina/Buenos_Aires`.
pub(crate) fn check_time_zone(field: &str, value: &str) -> Option<FieldViolation> {
    let ok = value == "UTC"
        || (value.len() <= 64
            && value.contains('/')
            && value.split('/').all(|p| {
                !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
            }));
    (!ok).then(|| {
        FieldViolation::new(field, "INVALID_FORMAT", "must be an IANA time zone such as Europe/Vienna")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_and_time_zones_are_checked_by_shape() {
        for good in ["en", "de-AT", "zh-Hant-TW"] {
            assert!(check_locale("locale", good).is_none(), "{good}");
        }
        for bad in ["", "e", "english", "en_US", "de-", "de-A"] {
            assert!(check_locale("locale", bad).is_some(), "{bad}");
        }
        for good in ["UTC", "Europe/Vienna", "America/Argentina/Buenos_Aires", "Etc/GMT+5"] {
            assert!(check_time_zone("time_zone", good).is_none(), "{good}");
        }
        for bad in ["", "Vienna", "Europe//Vienna", "Europe/Vi enna", "../../etc/passwd"] {
            assert!(check_time_zone("time_zone", bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn names_are_required_bounded_and_printable() {
        assert!(check_name("given_name", "Alice", true, 100).is_none());
        assert_eq!(check_name("given_name", "  ", true, 100).unwrap().code, "REQUIRED");
        assert!(check_name("family_name", "", false, 100).is_none());
        assert_eq!(check_name("given_name", &"x".repeat(101), true, 100).unwrap().code, "TOO_LONG");
        assert_eq!(check_name("given_name", "a\u{7}b", true, 100).unwrap().code, "INVALID_CHARACTERS");
        assert_eq!(
            check_name("given_name", "4111 1111 1111 1111", true, 100).unwrap().code,
            "CONTAINS_CARD_NUMBER"
        );
        assert!(check_text("reason", "card 4111 1111 1111 1111", true, 100).is_none());
        assert_eq!(masked_text(" card 4111 1111 1111 1111 "), "card **** **** **** 1111");
    }
}
