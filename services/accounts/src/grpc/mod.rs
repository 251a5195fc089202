//! The tonic implementations of the accounts contracts: `public` (`AccountsService`, the owner's
//! RPCs) and `admin` (`AccountsAdminService`). Handlers authorise first, parse the request into
//! domain types (answering `VALIDATION_FAILED` with every field violation), then call `saga` or
//! `storage`.
//!
//! Statements (`statements`) are computed on demand from the ledger (docs/adr/0013). Not built yet
//! (they answer `UNIMPLEMENTED`, the generated default): interest (`GetInterestSettings`,
//! `UpdateInterestSettings`), which needs the ledger's interest postings.

mod admin;
mod public;
mod statements;

use bank_auth::{Principal, principal};
use bank_money::Currency;
use bank_platform::{ErrorCode, FieldViolation, ServiceError, idempotency};
use bank_proto::common::v1::Balances;
use futures::{StreamExt as _, TryStreamExt as _};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{self, View},
    domain::Status as AccountStatus,
    ledger::Failure,
    saga::Core,
    storage::AccountRow,
};

type Answer<T> = Result<Response<T>, Status>;

/// The accounts API (owner and administrative RPCs).
#[derive(Debug, Clone)]
pub(crate) struct Api {
    core: Core,
}

impl Api {
    /// The API over the shared core.
    pub(crate) const fn new(core: Core) -> Self {
        Self { core }
    }

    /// The rows as messages for `view`, with balances from the ledger (a few calls at a time;
    /// none for accounts still opening).
    async fn with_balances(
        &self,
        rows: &[AccountRow],
        view: View,
    ) -> Result<Vec<bank_proto::accounts::v1::Account>, Status> {
        // Owned inputs: the futures must not borrow across the `buffered` stream (a `Send` bound
        // of the generated server traits).
        let wanted: Vec<(uuid::Uuid, bool)> =
            rows.iter().map(|row| (row.account_id, row.status == AccountStatus::Opening)).collect();
        let ledger = self.core.ledger.clone();
        let balances: Vec<Option<Balances>> =
            futures::stream::iter(wanted.into_iter().map(move |(id, opening)| {
                let ledger = ledger.clone();
                async move { if opening { Ok(None) } else { ledger.balances(id).await.map(Some) } }
            }))
            .buffered(8)
            .try_collect()
            .await
            .map_err(balances_error)?;
        Ok(rows.iter().zip(balances).map(|(row, balances)| convert::account(row, balances, view)).collect())
    }

    /// One row as a message for `view`, with balances.
    async fn one_with_balances(
        &self,
        row: &AccountRow,
        view: View,
    ) -> Result<bank_proto::accounts::v1::Account, Status> {
        let mut accounts = self.with_balances(std::slice::from_ref(row), view).await?;
        accounts.pop().ok_or_else(|| Status::internal("no account"))
    }
}

fn balances_error(failure: Failure) -> Status {
    match failure {
        Failure::Refused(refused) => {
            // An account that is not opening always has its ledger account: this is a bug.
            tracing::error!(reason = %refused, "the ledger refused to answer balances");
            ServiceError::new(ErrorCode::Internal, "internal error").into()
        }
        failure @ Failure::Unavailable(_) => failure
            .into_client_error("the ledger is unreachable, balances cannot be read; retry shortly")
            .into(),
    }
}

fn internal<E: std::error::Error + 'static>(err: E) -> Status {
    ServiceError::internal(&err).into()
}

fn invalid(field: &str, code: &str, description: &str) -> Status {
    ServiceError::invalid(vec![FieldViolation::new(field, code, description)]).into()
}

fn not_found() -> Status {
    crate::saga::not_found().into()
}

/// A required UUID field.
fn uuid_field(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(invalid(field, "REQUIRED", "is required"));
    }
    Uuid::parse_str(value).map_err(|_| invalid(field, "INVALID_FORMAT", "must be a UUID"))
}

/// A supported ISO 4217 code, or the violation (`CURRENCY_NOT_SUPPORTED` for an unknown code).
fn currency_field(field: &str, value: &str) -> Result<Currency, FieldViolation> {
    Currency::parse(value).map_err(|e| FieldViolation::new(field, e.code(), e.to_string()))
}

/// The error for collected violations: `CURRENCY_NOT_SUPPORTED` when a currency was the problem
/// (with every violation attached), else `VALIDATION_FAILED`.
fn refuse(violations: Vec<FieldViolation>) -> Status {
    let currency = violations.iter().any(|v| v.code == "CURRENCY_NOT_SUPPORTED");
    let mut error = ServiceError::invalid(violations);
    if currency {
        error.code = ErrorCode::CurrencyNotSupported;
    }
    error.into()
}

/// The calling user (a service token is refused: these RPCs act for a person).
fn user<T>(request: &Request<T>) -> Result<Uuid, Status> {
    principal(request)?
        .user_id()
        .ok_or_else(|| ServiceError::new(ErrorCode::PermissionDenied, "a user token is required").into())
}

/// The calling user holding one of `roles`, with a recent second factor (every admin RPC's rule).
fn staff<T>(request: &Request<T>, roles: &[&str]) -> Result<(Uuid, Principal), Status> {
    let principal = bank_auth::require_staff(request, roles)?;
    let user = principal
        .user_id()
        .ok_or_else(|| Status::from(ServiceError::new(ErrorCode::PermissionDenied, "not allowed")))?;
    Ok((user, principal))
}

/// The required idempotency key of a call, scoped to the user and the RPC.
fn required_key<T>(request: &Request<T>, user: Uuid, rpc: &'static str) -> Result<idempotency::Key, Status> {
    idempotency::key_of(request.metadata(), &user.to_string(), rpc, true)?.ok_or_else(|| {
        ServiceError::new(ErrorCode::IdempotencyKeyRequired, "an idempotency key is required").into()
    })
}

/// A response, marked as a replay when it is one.
fn answer<T>(message: T, replayed: bool) -> Response<T> {
    let mut response = Response::new(message);
    if replayed {
        response
            .metadata_mut()
            .insert(idempotency::REPLAYED, tonic::metadata::MetadataValue::from_static("true"));
    }
    response
}
