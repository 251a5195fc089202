//! The ledger as notifications calls it: `SetLowBalanceThreshold` with this service's own service
//! token (scope `ledger:accounts`). User tokens never travel beyond the service they were presented
//! to; notifications decides ownership from its own projection of `AccountOpened` events.

use std::sync::Arc;

use bank_auth::ServiceTokens;
use bank_platform::{
    BoxError,
    grpc::{
        lazy_channel,
        upstream::{self, Credentials, Failure},
    },
};
use bank_proto::{
    common::v1::Money,
    ledger::v1::{SetLowBalanceThresholdRequest, ledger_service_client::LedgerServiceClient},
};
use tonic::{Status, transport::Channel};
use uuid::Uuid;

use crate::config::Config;

/// The ledger client with this service's credentials.
#[derive(Clone)]
pub struct Ledger {
    client: LedgerServiceClient<Channel>,
    tokens: Arc<ServiceTokens>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// A lazily connected client of `ledger_url`, with service tokens from `auth.identity_url`.
    ///
    /// # Errors
    /// An address is not a valid endpoint, or the client credentials are missing.
    pub fn connect(config: &Config) -> Result<Self, BoxError> {
        let ledger = lazy_channel("ledger_url", &config.ledger_url, config.ledger_timeout)?;
        let identity = lazy_channel("auth.identity_url", &config.auth.identity_url, config.ledger_timeout)?;
        let tokens =
            ServiceTokens::from_config(identity, &config.auth, "notifications", &["ledger:accounts"])?;
        Ok(Self { client: LedgerServiceClient::new(ledger), tokens: Arc::new(tokens) })
    }

    /// Sets (or, with `None`, clears) the account's threshold; answers the available balance after.
    ///
    /// # Errors
    /// NOT_FOUND / VALIDATION_FAILED as the ledger answered; UNAVAILABLE when it could not answer.
    pub async fn set_threshold(
        &self,
        account: Uuid,
        threshold: Option<Money>,
    ) -> Result<Option<i64>, Status> {
        let request = self
            .tokens
            .request(SetLowBalanceThresholdRequest { account_id: account.to_string(), threshold })
            .await
            .map_err(|s| {
                Status::from(
                    Failure::Unavailable(s).into_client_error("the ledger is unavailable; try again"),
                )
            })?;
        match self.client.clone().set_low_balance_threshold(request).await {
            Ok(response) => Ok(response
                .into_inner()
                .account
                .and_then(|a| a.balances)
                .and_then(|b| b.available)
                .map(|m| m.minor_units)),
            Err(status) => Err(upstream::classify(status, Credentials::Own)
                .into_client_error("the ledger is unavailable; try again")
                .into()),
        }
    }
}
