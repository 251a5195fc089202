//! Who is calling, as handlers see it.

use bank_platform::{ErrorCode, ServiceError};
use uuid::Uuid;

/// `acr` of a session authenticated with a second factor.
pub const ACR_MFA: &str = "mfa";

/// What a principal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An end user (customer or staff), from a user access token.
    User(Uuid),
    /// A service client (client credentials), from a service token.
    Service(String),
}

/// An authenticated caller, put into request extensions by the [`crate::Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who.
    pub subject: Subject,
    /// Roles (users) or scopes (service clients).
    pub grants: Vec<String>,
    /// The token's `jti`.
    pub token_id: Uuid,
    /// The token's expiry, unix seconds.
    pub expires_at: i64,
    /// The session (user tokens).
    pub session_id: Option<Uuid>,
    /// The token version the token was issued under (user tokens; 0 for services).
    pub token_version: i64,
    /// `pwd` or `mfa` (user tokens; empty for services).
    pub acr: String,
    /// When the user authenticated, unix seconds (user tokens).
    pub auth_time: Option<i64>,
    /// `acr` is `mfa` and `auth_time` is within `auth.step_up_max_age` of the call: step-up
    /// actions are allowed. Decided by the authenticator when the call arrives.
    pub recent_mfa: bool,
    /// How recent the second factor must be (`auth.step_up_max_age`, seconds): the `max_age` a
    /// step-up refusal names.
    pub step_up_max_age: u64,
}

impl Principal {
    /// Whether the principal holds `grant` (a role or a scope).
    #[must_use]
    pub fn has(&self, grant: &str) -> bool {
        self.grants.iter().any(|g| g == grant)
    }

    /// The user id, when the caller is a user.
    #[must_use]
    pub fn user_id(&self) -> Option<Uuid> {
        match &self.subject {
            Subject::User(id) => Some(*id),
            Subject::Service(_) => None,
        }
    }

    /// The principal as text: the user id, or the service client's id (what idempotency keys
    /// and "initiated by" columns are scoped by).
    #[must_use]
    pub fn name(&self) -> String {
        match &self.subject {
            Subject::User(id) => id.to_string(),
            Subject::Service(client) => client.clone(),
        }
    }
}

/// The calling user, or `PERMISSION_DENIED` for a service token (the RPC acts for a person and
/// answers their own objects).
///
/// # Errors
/// No principal, or a service principal.
pub fn require_user<T>(request: &tonic::Request<T>) -> Result<Uuid, tonic::Status> {
    principal(request)?
        .user_id()
        .ok_or_else(|| ServiceError::new(ErrorCode::PermissionDenied, "a user token is required").into())
}

/// The authenticated principal of a call, or `UNAUTHENTICATED`.
///
/// # Errors
/// The call carries no authenticated principal.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| ServiceError::new(ErrorCode::Unauthenticated, "authentication required").into())
}

/// The calling user holding `role`, or `PERMISSION_DENIED` (`UNAUTHENTICATED` without a principal).
///
/// # Errors
/// No principal, a service principal, or a user without the role.
pub fn require_role<T>(request: &tonic::Request<T>, role: &str) -> Result<Principal, tonic::Status> {
    let principal = principal(request)?;
    if principal.user_id().is_some() && principal.has(role) {
        Ok(principal.clone())
    } else {
        Err(ServiceError::new(ErrorCode::PermissionDenied, "not allowed").into())
    }
}

/// The calling service client holding `scope`, or `PERMISSION_DENIED`.
///
/// # Errors
/// No principal, a user principal, or a service without the scope.
pub fn require_scope<T>(request: &tonic::Request<T>, scope: &str) -> Result<Principal, tonic::Status> {
    let principal = principal(request)?;
    if matches!(principal.subject, Subject::Service(_)) && principal.has(scope) {
        Ok(principal.clone())
    } else {
        Err(ServiceError::new(ErrorCode::PermissionDenied, "not allowed").into())
    }
}

/// A staff user (holding one of `roles`) whose session passed a second factor recently: the rule
/// of every admin RPC. `PERMISSION_DENIED` without such a role (also for service clients);
/// `MFA_REQUIRED` when the session never used a second factor (enrol, then call
/// `IdentityService.StepUp`); `STEP_UP_REQUIRED` when it did, longer ago than
/// `auth.step_up_max_age`.
///
/// # Errors
/// As above, or `UNAUTHENTICATED` without a principal.
pub fn require_staff<T>(request: &tonic::Request<T>, roles: &[&str]) -> Result<Principal, tonic::Status> {
    let principal = principal(request)?;
    check_staff(principal, roles)?;
    Ok(principal.clone())
}

/// [`require_staff`], answering the staff member's user id with the principal.
///
/// # Errors
/// As [`require_staff`].
pub fn require_staff_user<T>(
    request: &tonic::Request<T>,
    roles: &[&str],
) -> Result<(Uuid, Principal), tonic::Status> {
    let principal = require_staff(request, roles)?;
    let user = principal
        .user_id()
        .ok_or_else(|| tonic::Status::from(ServiceError::new(ErrorCode::PermissionDenied, "not allowed")))?;
    Ok((user, principal))
}

/// [`require_staff`] for a principal already in hand.
///
/// # Errors
/// As [`require_staff`].
pub fn check_staff(principal: &Principal, roles: &[&str]) -> Result<(), tonic::Status> {
    if principal.user_id().is_none() || !roles.iter().any(|role| principal.has(role)) {
        return Err(ServiceError::new(ErrorCode::PermissionDenied, "not allowed").into());
    }
    if principal.acr != ACR_MFA {
        return Err(ServiceError::new(
            ErrorCode::MfaRequired,
            "staff actions need a session authenticated with a second factor: enrol MFA, then step up",
        )
        .into());
    }
    require_step_up(principal)
}

/// A user session that passed a second factor within `auth.step_up_max_age`, else
/// `STEP_UP_REQUIRED` with `acr_values` and `max_age` (the client calls `IdentityService.StepUp`
/// and retries; RFC 9470 at the gateway) — or, for a session that never had a second factor,
/// `MFA_ENROLMENT_REQUIRED` (the client enrols; the confirmation steps up). Service principals
/// pass: step-up is about people.
///
/// # Errors
/// `STEP_UP_REQUIRED` or `MFA_ENROLMENT_REQUIRED` as above.
pub fn require_step_up(principal: &Principal) -> Result<(), tonic::Status> {
    if principal.user_id().is_none() || principal.recent_mfa {
        Ok(())
    } else if principal.acr == ACR_MFA {
        Err(step_up_required(principal))
    } else {
        // A session without a second factor: the user had none when it began (an enrolled user
        // logs in with one, and confirming an enrolment steps the session up). Enrolling helps;
        // a user who enrolled in another session since can also StepUp (GetMfaStatus tells).
        Err(ServiceError::new(
            ErrorCode::MfaEnrolmentRequired,
            "this action needs a second factor: enrol MFA (the confirmation steps this session up) and retry",
        )
        .into())
    }
}

/// Like [`require_step_up`] for a user the caller knows has a second factor enrolled (identity,
/// or cards after asking identity): `STEP_UP_REQUIRED` even for a session that began before the
/// enrolment, since StepUp works for it.
///
/// # Errors
/// `STEP_UP_REQUIRED`.
pub fn require_step_up_of_enrolled(principal: &Principal) -> Result<(), tonic::Status> {
    if principal.user_id().is_none() || principal.recent_mfa {
        Ok(())
    } else {
        Err(step_up_required(principal))
    }
}

/// `STEP_UP_REQUIRED` naming what satisfies it (RFC 9470): `acr_values` and `max_age`.
fn step_up_required(principal: &Principal) -> tonic::Status {
    ServiceError::new(
        ErrorCode::StepUpRequired,
        "this action needs a recent second factor: call StepUp and retry",
    )
    .with_metadata("acr_values", ACR_MFA)
    .with_metadata("max_age", principal.step_up_max_age.to_string())
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(roles: &[&str]) -> Principal {
        Principal {
            subject: Subject::User(Uuid::now_v7()),
            grants: roles.iter().map(|r| (*r).to_owned()).collect(),
            token_id: Uuid::now_v7(),
            expires_at: 0,
            session_id: Some(Uuid::now_v7()),
            token_version: 1,
            acr: "pwd".to_owned(),
            auth_time: Some(0),
            recent_mfa: false,
            step_up_max_age: 300,
        }
    }

    fn with(principal: Principal) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(principal);
        request
    }

    #[test]
    fn staff_actions_need_the_role_then_mfa_then_a_recent_second_factor() {
        let reason = |r: Result<Principal, tonic::Status>| bank_platform::error::reason_of(&r.unwrap_err());
        assert_eq!(
            reason(require_staff(&with(user(&["customer"])), &["admin"])),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(reason(require_staff(&with(user(&["admin"])), &["admin"])), Some(ErrorCode::MfaRequired));
        let stale = Principal { acr: ACR_MFA.to_owned(), ..user(&["admin"]) };
        assert_eq!(reason(require_staff(&with(stale.clone()), &["admin"])), Some(ErrorCode::StepUpRequired));
        let fresh = Principal { recent_mfa: true, ..stale };
        assert!(require_staff(&with(fresh.clone()), &["support", "admin"]).is_ok());
        // A customer with a fresh second factor is still no staff member.
        let customer = Principal { grants: vec!["customer".into()], ..fresh };
        assert_eq!(reason(require_staff(&with(customer), &["admin"])), Some(ErrorCode::PermissionDenied));
        // Service clients are never staff.
        let service = Principal { subject: Subject::Service("svc".into()), ..user(&["admin"]) };
        assert_eq!(reason(require_staff(&with(service), &["admin"])), Some(ErrorCode::PermissionDenied));
    }

    #[test]
    fn step_up_needs_a_recent_second_factor_from_users_only() {
        let stale = Principal { acr: ACR_MFA.to_owned(), ..user(&["customer"]) };
        let status = require_step_up(&stale).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(bank_platform::error::reason_of(&status), Some(ErrorCode::StepUpRequired));
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!((info.metadata["acr_values"].as_str(), info.metadata["max_age"].as_str()), ("mfa", "300"));
        assert!(require_step_up(&Principal { recent_mfa: true, ..stale.clone() }).is_ok());
        assert!(require_step_up(&Principal { subject: Subject::Service("svc".into()), ..stale }).is_ok());
        // Never a second factor in this session: enrolling is the way, not StepUp.
        let status = require_step_up(&user(&["customer"])).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(bank_platform::error::reason_of(&status), Some(ErrorCode::MfaEnrolmentRequired));
        // ... unless the caller knows a factor was enrolled since the session began.
        let status = require_step_up_of_enrolled(&user(&["customer"])).unwrap_err();
        assert_eq!(bank_platform::error::reason_of(&status), Some(ErrorCode::StepUpRequired));
    }

    #[test]
    fn a_call_without_a_principal_is_unauthenticated() {
        let request = tonic::Request::new(());
        let status = principal(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(bank_platform::error::reason_of(&status), Some(ErrorCode::Unauthenticated));
    }

    #[test]
    fn roles_and_scopes_are_checked() {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(user(&["customer"]));
        assert!(require_role(&request, "customer").is_ok());
        assert_eq!(require_role(&request, "admin").unwrap_err().code(), tonic::Code::PermissionDenied);
        // A user never passes a scope check, even holding a grant of that name.
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(user(&["ledger:holds"]));
        assert_eq!(
            require_scope(&request, "ledger:holds").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}
