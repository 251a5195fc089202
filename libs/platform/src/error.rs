//! The one error-code table: every stable reason a bankmesh API can answer with, and the gRPC code
//! and HTTP status it maps to. Services build a [`ServiceError`] and convert it to a
//! [`tonic::Status`]; the gateway maps the same reason to the same HTTP status.
//!
//! The reason strings are the names of `bank.common.v1.ErrorReason` without the `ERROR_REASON_`
//! prefix, and each maps to the gRPC code and HTTP status its comment in
//! `proto/bank/common/v1/errors.proto` documents; a test keeps the table and the contract equal.

use std::fmt;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The `google.rpc.ErrorInfo.domain` of every error we produce.
pub const ERROR_DOMAIN: &str = "bankmesh";

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => ($reason:literal, $grpc:ident, $http:literal), )*) => {
        /// A stable, machine-readable error reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The stable reason string (`google.rpc.ErrorInfo.reason`, problem+json `reason`).
            #[must_use]
            pub const fn reason(self) -> &'static str {
                match self { $( ErrorCode::$variant => $reason, )* }
            }

            /// The gRPC status code this reason is answered with.
            #[must_use]
            pub const fn grpc_code(self) -> Code {
                match self { $( ErrorCode::$variant => Code::$grpc, )* }
            }

            /// The HTTP status the gateway answers with.
            #[must_use]
            pub const fn http_status(self) -> u16 {
                match self { $( ErrorCode::$variant => $http, )* }
            }

            /// Parses a reason string back into a code.
            #[must_use]
            pub fn from_reason(reason: &str) -> Option<Self> {
                match reason { $( $reason => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// Malformed or invalid input; field violations in google.rpc.BadRequest.
    ValidationFailed => ("VALIDATION_FAILED", InvalidArgument, 400),
    /// Currency code unknown or not supported by this operation.
    CurrencyNotSupported => ("CURRENCY_NOT_SUPPORTED", InvalidArgument, 400),
    /// A money-moving RPC was called without the `idempotency-key` metadata.
    IdempotencyKeyRequired => ("IDEMPOTENCY_KEY_REQUIRED", InvalidArgument, 400),
    /// The idempotency key was already used by this principal for this RPC with a different request.
    IdempotencyKeyReused => ("IDEMPOTENCY_KEY_REUSED", FailedPrecondition, 422),
    /// A request with the same idempotency key is still being processed; retry later.
    IdempotencyRequestInProgress => ("IDEMPOTENCY_REQUEST_IN_PROGRESS", Aborted, 409),
    /// REST only: request body larger than the gateway limit.
    PayloadTooLarge => ("PAYLOAD_TOO_LARGE", InvalidArgument, 413),
    /// REST only: Content-Type not application/json.
    UnsupportedMediaType => ("UNSUPPORTED_MEDIA_TYPE", InvalidArgument, 415),
    /// REST only: no route for this path and method.
    RouteNotFound => ("ROUTE_NOT_FOUND", NotFound, 404),
    /// No credentials, or a token that is malformed, badly signed, of the wrong type or audience.
    Unauthenticated => ("UNAUTHENTICATED", Unauthenticated, 401),
    /// The access (or MFA-pending) token has expired; refresh or log in again.
    TokenExpired => ("TOKEN_EXPIRED", Unauthenticated, 401),
    /// The token was revoked (logout, token version bump, session revoked or refresh-token reuse).
    TokenRevoked => ("TOKEN_REVOKED", Unauthenticated, 401),
    /// Wrong email/password, wrong MFA code, a disabled user, a locked user with a wrong password: one answer.
    InvalidCredentials => ("INVALID_CREDENTIALS", Unauthenticated, 401),
    /// Refresh token unknown, expired or already used (reuse also kills its whole session).
    InvalidRefreshToken => ("INVALID_REFRESH_TOKEN", Unauthenticated, 401),
    /// Email verification or password reset token unknown, used or expired.
    InvalidVerificationToken => ("INVALID_VERIFICATION_TOKEN", InvalidArgument, 400),
    /// Login refused until the email address is verified (answered only after a correct password).
    EmailNotVerified => ("EMAIL_NOT_VERIFIED", FailedPrecondition, 403),
    /// MFA must be enrolled first: the caller's role requires it (admin RPCs) or the action needs a second factor.
    MfaRequired => ("MFA_REQUIRED", PermissionDenied, 403),
    /// The action needs acr=mfa with a recent auth_time; call IdentityService.StepUp and retry
    /// (metadata `acr_values`, `max_age`; REST `WWW-Authenticate`, RFC 9470).
    StepUpRequired => ("STEP_UP_REQUIRED", Unauthenticated, 401),
    /// MFA enrolment or disable in a state that does not allow it (already enabled, not enabled).
    MfaStateConflict => ("MFA_STATE_CONFLICT", FailedPrecondition, 409),
    /// The right password on a locked user: metadata `locked_until`, `retry_after_seconds`.
    AccountLocked => ("ACCOUNT_LOCKED", FailedPrecondition, 423),
    /// A second factor is needed and none is enrolled: enrol (the confirmation steps up) and retry.
    MfaEnrolmentRequired => ("MFA_ENROLMENT_REQUIRED", PermissionDenied, 403),
    /// Authenticated, but the role or service scope does not allow this RPC.
    PermissionDenied => ("PERMISSION_DENIED", PermissionDenied, 403),
    /// The object does not exist or belongs to someone else (never distinguished).
    NotFound => ("NOT_FOUND", NotFound, 404),
    /// The object to create already exists (e.g. a duplicate service client name).
    AlreadyExists => ("ALREADY_EXISTS", AlreadyExists, 409),
    /// Rate limit hit; ErrorInfo metadata "retry_after_seconds", REST `Retry-After`.
    RateLimited => ("RATE_LIMITED", ResourceExhausted, 429),
    /// Server-side capacity bound hit (e.g. the password hashing pool); retry with backoff.
    ResourceExhausted => ("RESOURCE_EXHAUSTED", ResourceExhausted, 503),
    /// A dependency (database, Redis, another service) is unavailable; safe to retry with the same idempotency key.
    Unavailable => ("UNAVAILABLE", Unavailable, 503),
    /// The deadline passed before the outcome was known; retry with the same idempotency key.
    DeadlineExceeded => ("DEADLINE_EXCEEDED", DeadlineExceeded, 504),
    /// The new password breaks the policy; every violation listed in google.rpc.BadRequest.
    PasswordPolicyViolation => ("PASSWORD_POLICY_VIOLATION", InvalidArgument, 400),
    /// The user is disabled by an administrator (only told to admins; users get INVALID_CREDENTIALS).
    UserDisabled => ("USER_DISABLED", FailedPrecondition, 409),
    /// Signing key state does not allow the change (e.g. revoking the only active key).
    SigningKeyStateConflict => ("SIGNING_KEY_STATE_CONFLICT", FailedPrecondition, 409),
    /// Available balance (plus overdraft limit) is below the amount.
    InsufficientFunds => ("INSUFFICIENT_FUNDS", FailedPrecondition, 422),
    /// The account is frozen (debits always refused; credits unless allowed by the freeze).
    AccountFrozen => ("ACCOUNT_FROZEN", FailedPrecondition, 422),
    /// The account is closed.
    AccountClosed => ("ACCOUNT_CLOSED", FailedPrecondition, 422),
    /// The accounts (or the amount and the account) are in different currencies.
    CurrencyMismatch => ("CURRENCY_MISMATCH", FailedPrecondition, 422),
    /// Source and destination are the same account.
    SameAccount => ("SAME_ACCOUNT", InvalidArgument, 400),
    /// The account cannot be closed: balance not zero or active holds remain.
    BalanceNotZero => ("BALANCE_NOT_ZERO", FailedPrecondition, 422),
    /// The hold is not active any more (captured, voided or expired).
    HoldNotActive => ("HOLD_NOT_ACTIVE", FailedPrecondition, 422),
    /// Capture above the held amount, or refund above the captured amount.
    AmountExceedsAvailable => ("AMOUNT_EXCEEDS_AVAILABLE", FailedPrecondition, 422),
    /// The transaction has already been reversed (at most one reversal per transaction).
    AlreadyReversed => ("ALREADY_REVERSED", FailedPrecondition, 409),
    /// The transaction is itself a reversal or of a kind that cannot be reversed.
    NotReversible => ("NOT_REVERSIBLE", FailedPrecondition, 422),
    /// The FX quote has expired or was already used.
    FxQuoteExpired => ("FX_QUOTE_EXPIRED", FailedPrecondition, 422),
    /// The transfer (scheduled or external) is in a state that does not allow the change.
    TransferStateConflict => ("TRANSFER_STATE_CONFLICT", FailedPrecondition, 409),
    /// The account is still being opened (ledger account not created yet); retry shortly.
    AccountNotReady => ("ACCOUNT_NOT_READY", FailedPrecondition, 409),
    /// The card's daily spend limit would be exceeded.
    DailyLimitExceeded => ("DAILY_LIMIT_EXCEEDED", FailedPrecondition, 422),
    /// The amount is above the card's per-transaction limit.
    TransactionLimitExceeded => ("TRANSACTION_LIMIT_EXCEEDED", FailedPrecondition, 422),
    /// The card is frozen.
    CardFrozen => ("CARD_FROZEN", FailedPrecondition, 422),
    /// The card has expired.
    CardExpired => ("CARD_EXPIRED", FailedPrecondition, 422),
    /// The card is closed.
    CardClosed => ("CARD_CLOSED", FailedPrecondition, 422),
    /// The card was reported lost or stolen.
    CardLost => ("CARD_LOST", FailedPrecondition, 422),
    /// Requested limit above the card product's maximum.
    LimitAboveProductMaximum => ("LIMIT_ABOVE_PRODUCT_MAXIMUM", InvalidArgument, 400),
    /// The authorization is not in a state that allows capture, void or refund.
    AuthorizationStateConflict => ("AUTHORIZATION_STATE_CONFLICT", FailedPrecondition, 409),
    /// Webhook URL refused: not HTTPS, or resolves to a loopback/private/link-local address.
    WebhookUrlNotAllowed => ("WEBHOOK_URL_NOT_ALLOWED", InvalidArgument, 400),
    /// The dead letter was already retried or discarded.
    DeadLetterStateConflict => ("DEAD_LETTER_STATE_CONFLICT", FailedPrecondition, 409),
    /// A state precondition failed that has no more specific reason.
    FailedPrecondition => ("FAILED_PRECONDITION", FailedPrecondition, 422),
    /// Concurrent modification detected; re-read and retry.
    Conflict => ("CONFLICT", Aborted, 409),
    /// The RPC exists in the contract but is not implemented yet.
    Unimplemented => ("UNIMPLEMENTED", Unimplemented, 501),
    /// Unexpected server error; details only in the server log under the request id.
    Internal => ("INTERNAL", Internal, 500),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// The HTTP status for a bare gRPC code (when a status carries no reason of ours).
#[must_use]
pub const fn http_status_for_grpc(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::FailedPrecondition => 422,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// One invalid request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `amount.minor_units`.
    pub field: String,
    /// A stable code for the problem, e.g. `REQUIRED`, `TOO_SHORT`.
    pub code: String,
    /// A human-readable description (no secrets, no personal data).
    pub description: String,
}

impl FieldViolation {
    /// Creates a violation.
    pub fn new(field: impl Into<String>, code: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), code: code.into(), description: description.into() }
    }
}

/// An error a service answers a client with: a stable code, a client-safe message and details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The stable reason.
    pub code: ErrorCode,
    /// A client-safe, lowercase message.
    pub message: String,
    /// Field violations (for `VALIDATION_FAILED` and `PASSWORD_POLICY_VIOLATION`).
    pub violations: Vec<FieldViolation>,
    /// `google.rpc.ErrorInfo` metadata (snake_case keys; `retry_after_seconds` becomes the REST
    /// `Retry-After`, the others problem members in camelCase).
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl ServiceError {
    /// Creates an error with a client-safe message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            violations: Vec::new(),
            metadata: std::collections::BTreeMap::new(),
        }
    }

    /// A `VALIDATION_FAILED` error carrying field violations — or `CURRENCY_NOT_SUPPORTED` (with
    /// every violation still attached) when one of them is an unsupported currency, the more
    /// specific reason a client can act on.
    #[must_use]
    pub fn invalid(violations: Vec<FieldViolation>) -> Self {
        let code = if violations.iter().any(|v| v.code == "CURRENCY_NOT_SUPPORTED") {
            ErrorCode::CurrencyNotSupported
        } else {
            ErrorCode::ValidationFailed
        };
        Self {
            code,
            message: "the request is invalid".to_owned(),
            violations,
            metadata: std::collections::BTreeMap::new(),
        }
    }

    /// The same error with one more `ErrorInfo` metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The same error telling the client when a retry may succeed (`retry_after_seconds`, at
    /// least 1; REST `Retry-After`).
    #[must_use]
    pub fn with_retry_after(self, wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.with_metadata("retry_after_seconds", seconds.max(1).to_string())
    }

    /// An internal error. The cause is logged here, once, with the request's span; the client only
    /// sees a generic message.
    ///
    /// A database that cannot be reached is not an internal error: the request may succeed later,
    /// so it answers `UNAVAILABLE` (503 with `Retry-After` at the gateway) and logs a warning.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        if database_unavailable(cause) {
            tracing::warn!(error = %ErrorChain(cause), "database unavailable");
            return Self::new(ErrorCode::Unavailable, "the database is unavailable; retry shortly");
        }
        tracing::error!(error = %ErrorChain(cause), "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

/// Whether `cause` or one of its sources is a database error meaning "unreachable now".
fn database_unavailable(cause: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(cause);
    while let Some(err) = current {
        if let Some(db) = err.downcast_ref::<sqlx::Error>()
            && crate::db::is_unavailable(db)
        {
            return true;
        }
        current = err.source();
    }
    false
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<ServiceError> for tonic::Status {
    fn from(err: ServiceError) -> Self {
        let mut details = ErrorDetails::new();
        let mut metadata: std::collections::HashMap<String, String> = err.metadata.into_iter().collect();
        if err.code == ErrorCode::Unavailable {
            // The gateway turns it into `Retry-After`.
            metadata.entry("retry_after_seconds".to_owned()).or_insert_with(|| "1".to_owned());
        }
        details.set_error_info(err.code.reason(), ERROR_DOMAIN, metadata);
        for v in &err.violations {
            details.add_bad_request_violation(v.field.clone(), format!("{}: {}", v.code, v.description));
        }
        tonic::Status::with_error_details(err.code.grpc_code(), err.message, details)
    }
}

/// Reads our stable reason back out of a status, if it carries one.
#[must_use]
pub fn reason_of(status: &tonic::Status) -> Option<ErrorCode> {
    status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN)
        .and_then(|info| ErrorCode::from_reason(&info.reason))
}

/// Displays an error with its whole `source()` chain: `outer: middle: root`.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.reason()), "duplicate reason {}", code.reason());
            assert_eq!(ErrorCode::from_reason(code.reason()), Some(*code));
        }
    }

    #[test]
    fn status_carries_reason_and_violations() {
        let err = ServiceError::invalid(vec![FieldViolation::new(
            "amount",
            "MUST_BE_POSITIVE",
            "amount must be > 0",
        )]);
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status), Some(ErrorCode::ValidationFailed));
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "amount");
    }

    /// Every `ERROR_REASON_*` value of the contract (but `UNSPECIFIED`) with the `CODE / STATUS`
    /// its comment documents.
    fn documented_reasons() -> Vec<(String, String, u16)> {
        let proto = include_str!("../../../proto/bank/common/v1/errors.proto");
        let start = proto.find("enum ErrorReason {").unwrap();
        let end = start + proto[start..].find("\n}").unwrap();
        let mut out = Vec::new();
        let mut comment = String::new();
        for line in proto[start..end].lines().map(str::trim) {
            if let Some(text) = line.strip_prefix("//") {
                if text.trim_start().starts_with("---") {
                    comment.clear();
                } else {
                    comment.push(' ');
                    comment.push_str(text.trim());
                }
            } else if let Some(rest) = line.strip_prefix("ERROR_REASON_") {
                let name = rest.split_whitespace().next().unwrap().to_owned();
                if name != "UNSPECIFIED" {
                    let slash = comment.rfind(" / ").unwrap_or_else(|| panic!("{name}: no `CODE / STATUS`"));
                    let code = comment[..slash].rsplit(' ').next().unwrap().to_owned();
                    let status: String =
                        comment[slash + 3..].chars().take_while(char::is_ascii_digit).collect();
                    out.push((name, code, status.parse().unwrap()));
                }
                comment.clear();
            }
        }
        out
    }

    fn grpc_code_name(code: Code) -> String {
        // `Code::InvalidArgument` -> `INVALID_ARGUMENT`.
        let mut name = String::new();
        for (i, c) in format!("{code:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
        name
    }

    #[test]
    fn the_table_is_exactly_the_documented_contract() {
        let documented = documented_reasons();
        assert_eq!(
            documented.len(),
            ErrorCode::ALL.len(),
            "the contract and the table list different reasons"
        );
        for (reason, grpc, http) in documented {
            let code =
                ErrorCode::from_reason(&reason).unwrap_or_else(|| panic!("{reason} missing from the table"));
            assert_eq!(grpc_code_name(code.grpc_code()), grpc, "{reason}: gRPC code");
            assert_eq!(code.http_status(), http, "{reason}: HTTP status");
        }
    }

    #[test]
    fn http_status_of_reason_agrees_with_grpc_code_family() {
        for code in ErrorCode::ALL {
            let http = code.http_status();
            assert!((400..600).contains(&http), "{code} maps to {http}");
        }
    }
}
