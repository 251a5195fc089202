//! How a service reads the failure of a call it made to another service. Decided once, here:
//! which codes are a definitive refusal (calling again would be refused again, so the refusal is
//! the answer) and which leave the outcome unknown or the peer unreachable (safe to call again;
//! what reconcilers do).

use tonic::Code;

use crate::{ErrorCode, ServiceError, error::reason_of};

/// Whose credentials a call carried. An authentication or permission refusal means something
/// different for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// The calling service's own service token: a refusal is our misconfiguration (credentials,
    /// scopes), not the caller's fault, and fixing the configuration lets a retry succeed.
    Own,
    /// The end user's token, passed on: the peer decided that this user may not, which is final.
    Caller,
}

/// How a peer answered a call that did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// A definitive refusal (e.g. `INSUFFICIENT_FUNDS`) with the peer's reason and message.
    Refused(ServiceError),
    /// The outcome is unknown or the peer (or identity, for the token) could not answer.
    Unavailable(tonic::Status),
}

impl Failure {
    /// A refusal keeps the peer's reason and message; anything else becomes `UNAVAILABLE` with
    /// `hint` for the client (the cause is logged once, here).
    #[must_use]
    pub fn into_client_error(self, hint: &str) -> ServiceError {
        match self {
            Self::Refused(refused) => refused,
            Self::Unavailable(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "upstream call failed");
                ServiceError::new(ErrorCode::Unavailable, hint)
            }
        }
    }
}

/// Classifies a failed call made with `credentials`.
#[must_use]
pub fn classify(status: tonic::Status, credentials: Credentials) -> Failure {
    let fallback = match status.code() {
        Code::FailedPrecondition | Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => {
            ErrorCode::FailedPrecondition
        }
        Code::NotFound => ErrorCode::NotFound,
        Code::PermissionDenied if credentials == Credentials::Caller => ErrorCode::PermissionDenied,
        Code::Unauthenticated if credentials == Credentials::Caller => ErrorCode::Unauthenticated,
        // Transport errors (Unknown), timeouts, overload, internal errors, and our own
        // credentials refused: the outcome is unknown or a retry can succeed.
        Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => return Failure::Unavailable(status),
    };
    let code = reason_of(&status).unwrap_or(fallback);
    Failure::Refused(ServiceError::new(code, status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(failure: &Failure) -> Option<ErrorCode> {
        match failure {
            Failure::Refused(refused) => Some(refused.code),
            Failure::Unavailable(_) => None,
        }
    }

    #[test]
    fn refusals_are_final_and_the_rest_can_be_retried() {
        let funds: tonic::Status =
            ServiceError::new(ErrorCode::InsufficientFunds, "insufficient funds").into();
        assert_eq!(refused(&classify(funds, Credentials::Own)), Some(ErrorCode::InsufficientFunds));
        let missing = tonic::Status::not_found("gone");
        assert_eq!(refused(&classify(missing, Credentials::Own)), Some(ErrorCode::NotFound));
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Internal, Code::Unknown] {
            assert_eq!(refused(&classify(tonic::Status::new(code, "x"), Credentials::Caller)), None);
        }
    }

    #[test]
    fn an_auth_refusal_is_final_for_the_callers_token_and_retryable_for_our_own() {
        for (code, reason) in [
            (Code::PermissionDenied, ErrorCode::PermissionDenied),
            (Code::Unauthenticated, ErrorCode::Unauthenticated),
        ] {
            assert_eq!(refused(&classify(tonic::Status::new(code, "no"), Credentials::Caller)), Some(reason));
            assert_eq!(refused(&classify(tonic::Status::new(code, "no"), Credentials::Own)), None);
        }
    }
}
