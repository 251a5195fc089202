//! RFC 9457 `application/problem+json`: the one error shape of the REST API, for the gateway's own
//! refusals (bad JSON, unknown fields, wrong content type, no route) and for every gRPC status an
//! upstream answers with.

use axum::response::{IntoResponse, Response};
use bank_platform::{
    ErrorCode,
    error::{ERROR_DOMAIN, http_status_for_grpc, reason_of},
};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::context;

/// A problem document. The status and the stable `reason` come from the platform's error table.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the problem type: `about:blank` (the `reason` is the machine-readable type).
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// A client-safe explanation of this occurrence.
    pub detail: String,
    /// The gRPC status code name, e.g. `NOT_FOUND`.
    pub code: &'static str,
    /// The stable machine-readable reason (`bank.common.v1.ErrorReason` without its prefix).
    pub reason: &'static str,
    /// The invalid fields, when known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// The request id (also in the `X-Request-Id` response header).
    pub request_id: String,
    /// Seconds before a retry may succeed (`Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Extension members (RFC 9457) from the upstream's `ErrorInfo` metadata, camelCase:
    /// `lockedUntil` on `ACCOUNT_LOCKED`.
    #[serde(flatten)]
    pub extensions: std::collections::BTreeMap<String, String>,
}

/// One invalid request field (from `google.rpc.BadRequest`, or found by the gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The field's path (`amount.minorUnits`) or the query parameter's name.
    pub field: String,
    /// A stable code: `REQUIRED`, `UNKNOWN_FIELD`, `INVALID_VALUE`, ...
    pub code: String,
    /// What is wrong.
    pub description: String,
}

impl Violation {
    /// A violation.
    pub fn new(field: impl Into<String>, code: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), code: code.into(), description: description.into() }
    }
}

impl Problem {
    /// A problem for `code` with a client-safe `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::build(code.http_status(), code_name(code.grpc_code()), code.reason(), detail.into())
    }

    fn build(status: u16, code: &'static str, reason: &'static str, detail: String) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: title(status).to_owned(),
            status,
            detail,
            code,
            reason,
            violations: Vec::new(),
            request_id: context::current_request_id().unwrap_or_default(),
            retry_after: None,
            extensions: std::collections::BTreeMap::new(),
        }
    }

    /// `VALIDATION_FAILED` listing `violations`; the detail names the first.
    #[must_use]
    pub fn invalid(violations: Vec<Violation>) -> Self {
        let detail = match violations.as_slice() {
            [] => "the request is invalid".to_owned(),
            [only] => format!("the request is invalid: {}", only.description),
            [first, rest @ ..] => {
                format!("the request is invalid: {} (and {} more)", first.description, rest.len())
            }
        };
        Self { violations, ..Self::new(ErrorCode::ValidationFailed, detail) }
    }

    /// Overrides the HTTP status (405 keeps the `ROUTE_NOT_FOUND` reason).
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        title(status).clone_into(&mut self.title);
        self
    }

    /// The problem for a status an upstream answered with. Statuses carrying our reason keep their
    /// (client-safe) message; anything else, and every internal error, answers a generic detail and
    /// logs the real one under the request id.
    #[must_use]
    pub fn from_status(rpc: &str, status: &tonic::Status) -> Self {
        let code = status.code();
        let reason = reason_of(status);
        let internal = matches!(code, Code::Unknown | Code::Internal | Code::DataLoss | Code::Ok)
            || reason == Some(ErrorCode::Internal);
        let detail = match reason {
            Some(_) if !internal => status.message().to_owned(),
            Some(_) | None => {
                if internal {
                    tracing::error!(rpc, grpc.code = ?code, grpc.message = status.message(), "upstream internal error");
                } else {
                    tracing::warn!(rpc, grpc.code = ?code, grpc.message = status.message(), "upstream status without a reason");
                }
                generic_detail(code).to_owned()
            }
        };
        let (http, reason) = match reason {
            Some(reason) => (reason.http_status(), reason),
            None => (http_status_for_grpc(code), derived_reason(code)),
        };
        let mut problem = Self::build(http, code_name(code), reason.reason(), detail);
        if let Some(bad) = status.get_details_bad_request() {
            problem.violations = bad
                .field_violations
                .into_iter()
                .map(|v| {
                    // Services write `CODE: description` (bank_platform::ServiceError).
                    let (code, description) = match v.description.split_once(": ") {
                        Some((code, rest)) if is_code(code) => (code.to_owned(), rest.to_owned()),
                        Some(_) | None => ("INVALID".to_owned(), v.description.clone()),
                    };
                    Violation { field: v.field, code, description }
                })
                .collect();
        }
        if let Some(info) = status.get_details_error_info().filter(|info| info.domain == ERROR_DOMAIN) {
            problem.retry_after = info.metadata.get("retry_after_seconds").and_then(|s| s.parse().ok());
            for (key, value) in info.metadata {
                let member = camel_case(&key);
                // Never shadow a member of the problem document itself.
                if key != "retry_after_seconds" && !RESERVED_MEMBERS.contains(&member.as_str()) {
                    problem.extensions.insert(member, value);
                }
            }
        }
        problem
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge() {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

impl Problem {
    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750, RFC 9470): a stale second factor is
    /// `insufficient_user_authentication` with what satisfies it, so a client can tell "step up"
    /// from "refresh or log in again" (`invalid_token`).
    fn challenge(&self) -> Option<HeaderValue> {
        if self.status != 401 {
            return None;
        }
        let value = match self.reason {
            "STEP_UP_REQUIRED" => {
                let mut value = format!(
                    r#"Bearer realm="bankmesh", error="insufficient_user_authentication", error_description="a recent second factor is required", acr_values="{}""#,
                    self.extensions
                        .get("acrValues")
                        .filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric()))
                        .map_or("mfa", String::as_str)
                );
                if let Some(max_age) =
                    self.extensions.get("maxAge").filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                {
                    value.push_str(&format!(", max_age={max_age}"));
                }
                value
            }
            "TOKEN_EXPIRED" | "TOKEN_REVOKED" => {
                r#"Bearer realm="bankmesh", error="invalid_token""#.to_owned()
            }
            _ => r#"Bearer realm="bankmesh""#.to_owned(),
        };
        HeaderValue::from_str(&value).ok()
    }
}

/// The members of the problem document (extensions may not take their names).
const RESERVED_MEMBERS: [&str; 9] =
    ["type", "title", "status", "detail", "code", "reason", "violations", "request_id", "requestId"];

/// `locked_until` -> `lockedUntil` (the JSON casing of the bodies).
fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn title(status: u16) -> &'static str {
    StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error")
}

fn is_code(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// `INVALID_ARGUMENT`, `NOT_FOUND`, ...
#[must_use]
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The reason for a status that carries none of ours (from tonic, the transport or a proxy).
fn derived_reason(code: Code) -> ErrorCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::ValidationFailed,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists => ErrorCode::AlreadyExists,
        Code::PermissionDenied => ErrorCode::PermissionDenied,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        Code::Aborted => ErrorCode::Conflict,
        Code::Unimplemented => ErrorCode::Unimplemented,
        Code::Cancelled | Code::Unavailable => ErrorCode::Unavailable,
        Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => ErrorCode::Internal,
    }
}

/// What a client is told when the upstream's message cannot be trusted to be client-safe.
fn generic_detail(code: Code) -> &'static str {
    match code {
        Code::Cancelled => "the request was cancelled",
        Code::InvalidArgument | Code::OutOfRange => "the request is invalid",
        Code::DeadlineExceeded => "the deadline passed before the outcome was known",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "too many requests; retry later",
        Code::FailedPrecondition => "the request cannot be carried out in the current state",
        Code::Aborted => "a concurrent change got in the way; retry",
        Code::Unimplemented => "not implemented yet",
        Code::Unavailable => "the service is unavailable; retry later",
        Code::Unauthenticated => "authentication required",
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => "internal error",
    }
}

#[cfg(test)]
mod tests {
    use bank_platform::{FieldViolation, ServiceError};

    use super::*;

    #[test]
    fn a_service_error_keeps_its_reason_message_and_violations() {
        let status = tonic::Status::from(ServiceError {
            code: ErrorCode::PasswordPolicyViolation,
            message: "the password breaks the policy".to_owned(),
            violations: vec![FieldViolation::new("password", "TOO_SHORT", "at least 12 characters")],
            metadata: std::collections::BTreeMap::new(),
        });
        let problem = Problem::from_status("/x.Y/Z", &status);
        assert_eq!(problem.status, 400);
        assert_eq!(problem.code, "INVALID_ARGUMENT");
        assert_eq!(problem.reason, "PASSWORD_POLICY_VIOLATION");
        assert_eq!(problem.detail, "the password breaks the policy");
        assert_eq!(
            problem.violations,
            vec![Violation::new("password", "TOO_SHORT", "at least 12 characters")]
        );
    }

    #[test]
    fn an_unavailable_service_answers_503_with_retry_after() {
        let status = tonic::Status::from(ServiceError::new(
            ErrorCode::Unavailable,
            "the database is unavailable; retry shortly",
        ));
        let problem = Problem::from_status("/x.Y/Z", &status);
        assert_eq!((problem.status, problem.reason), (503, "UNAVAILABLE"));
        assert_eq!(problem.retry_after, Some(1));
        let response = problem.into_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }

    #[test]
    fn statuses_without_our_reason_get_a_generic_detail() {
        let problem =
            Problem::from_status("/x.Y/Z", &tonic::Status::unavailable("tcp connect error: 10.0.0.7:50052"));
        assert_eq!((problem.status, problem.reason, problem.code), (503, "UNAVAILABLE", "UNAVAILABLE"));
        assert!(!problem.detail.contains("10.0.0.7"), "{}", problem.detail);

        let problem = Problem::from_status("/x.Y/Z", &tonic::Status::internal("db password is hunter2"));
        assert_eq!((problem.status, problem.reason), (500, "INTERNAL"));
        assert_eq!(problem.detail, "internal error");
    }

    #[test]
    fn internal_errors_with_a_reason_are_still_generic() {
        let status =
            tonic::Status::from(ServiceError::new(ErrorCode::Internal, "pool timed out at 10.1.2.3"));
        let problem = Problem::from_status("/x.Y/Z", &status);
        assert_eq!((problem.status, problem.detail.as_str()), (500, "internal error"));
    }

    #[test]
    fn the_reason_decides_the_http_status() {
        let status =
            tonic::Status::from(ServiceError::new(ErrorCode::InsufficientFunds, "insufficient funds"));
        assert_eq!(Problem::from_status("/x.Y/Z", &status).status, 422);
        let status = tonic::Status::from(ServiceError::new(ErrorCode::EmailNotVerified, "verify first"));
        assert_eq!(Problem::from_status("/x.Y/Z", &status).status, 403);
    }
}
