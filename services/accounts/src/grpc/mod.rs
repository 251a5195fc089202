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

use bank_money::Currency;
use bank_platform::{ErrorCode, FieldViolation, ServiceError};
use bank_proto::common::v1::Balances;
use futures::{StreamExt as _, TryStreamExt as _};
use tonic::{Response, Status};

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

fn not_found() -> Status {
    crate::saga::not_found().into()
}

/// A supported ISO 4217 code, or the violation (`CURRENCY_NOT_SUPPORTED` for an unknown code).
fn currency_field(field: &str, value: &str) -> Result<Currency, FieldViolation> {
    Currency::parse(value).map_err(|e| FieldViolation::new(field, e.code(), e.to_string()))
}
