//! The ledger as accounts calls it: its gRPC contract over a lazily connected channel, every call
//! authorised with this service's own service token (client credentials against identity; scopes
//! `ledger:accounts` for the mirrors and `ledger:read` for balances).
//!
//! Why a service token for balances too (rather than forwarding the user's token): accounts has
//! already decided who may see the account from its own authoritative owner column, the
//! administrative views read other people's accounts (which a user token could not), and user
//! tokens then never travel beyond the service they were presented to.

use std::sync::Arc;

use bank_auth::ServiceTokens;
use bank_platform::{
    BoxError,
    grpc::{
        lazy_channel,
        upstream::{self, Credentials},
    },
};
use bank_proto::{
    common::v1::{Balances, Money},
    ledger::v1::{
        CreateLedgerAccountRequest, Entry, EntrySort, GetBalancesRequest, LedgerAccount, LedgerAccountStatus,
        ListEntriesRequest, PeriodSummary, SetLedgerAccountStatusRequest, SetLedgerOverdraftLimitRequest,
        SummarizeAccountPeriodsRequest, ledger_service_client::LedgerServiceClient,
    },
};
use tonic::{Request, transport::Channel};
use uuid::Uuid;

use crate::{config::Config, storage::AccountRow};

pub(crate) use bank_platform::grpc::upstream::Failure;

/// The ledger is called with this service's own token: an authentication or permission refusal
/// is our misconfiguration, which the reconciler outlives once fixed.
fn classify(status: tonic::Status) -> Failure {
    upstream::classify(status, Credentials::Own)
}

/// The ledger client with this service's credentials.
#[derive(Clone)]
pub(crate) struct Ledger {
    client: LedgerServiceClient<Channel>,
    tokens: Arc<ServiceTokens>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("tokens", &self.tokens).finish_non_exhaustive()
    }
}

impl Ledger {
    /// A client of `ledger_url`, with service tokens from `auth.identity_url`. Connects lazily:
    /// the service starts (and answers what it can) while the ledger is down.
    ///
    /// # Errors
    /// An address is not a valid endpoint, or the client credentials are missing.
    pub(crate) fn connect(config: &Config) -> Result<Self, BoxError> {
        let ledger = lazy_channel("ledger_url", &config.ledger_url, config.ledger_timeout)?;
        let identity = lazy_channel("auth.identity_url", &config.auth.identity_url, config.ledger_timeout)?;
        let tokens = ServiceTokens::from_config(
            identity,
            &config.auth,
            "accounts",
            &["ledger:accounts", "ledger:read"],
        )?;
        Ok(Self { client: LedgerServiceClient::new(ledger), tokens: Arc::new(tokens) })
    }

    /// `message` with the service token and the current trace context.
    async fn request<T>(&self, message: T) -> Result<Request<T>, Failure> {
        self.tokens.request(message).await.map_err(Failure::Unavailable)
    }

    /// Creates the ledger account behind `account` (idempotent by account id: a repeat answers the
    /// existing ledger account).
    pub(crate) async fn create_account(&self, account: &AccountRow) -> Result<LedgerAccount, Failure> {
        let request = self
            .request(CreateLedgerAccountRequest {
                account_id: account.account_id.to_string(),
                account_number: account.account_number.clone(),
                owner_user_id: account.owner_user_id.to_string(),
                currency: account.currency.clone(),
            })
            .await?;
        let answer = self.client.clone().create_ledger_account(request).await.map_err(classify)?;
        answer.into_inner().account.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no account")))
    }

    /// Mirrors a status (idempotent: setting the current status is a no-op).
    pub(crate) async fn set_status(
        &self,
        account_id: Uuid,
        status: LedgerAccountStatus,
        credits_allowed: bool,
    ) -> Result<LedgerAccount, Failure> {
        let request = self
            .request(SetLedgerAccountStatusRequest {
                account_id: account_id.to_string(),
                status: status as i32,
                credits_allowed,
            })
            .await?;
        let answer = self.client.clone().set_ledger_account_status(request).await.map_err(classify)?;
        answer.into_inner().account.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no account")))
    }

    /// Mirrors an overdraft limit; `change_id` is the idempotency key of the call.
    pub(crate) async fn set_overdraft_limit(
        &self,
        account_id: Uuid,
        limit: Money,
        change_id: Uuid,
    ) -> Result<LedgerAccount, Failure> {
        let mut request = self
            .request(SetLedgerOverdraftLimitRequest {
                account_id: account_id.to_string(),
                limit: Some(limit),
            })
            .await?;
        if let Ok(key) = change_id.to_string().parse() {
            request.metadata_mut().insert(bank_platform::idempotency::METADATA_KEY, key);
        }
        let answer = self.client.clone().set_ledger_overdraft_limit(request).await.map_err(classify)?;
        answer.into_inner().account.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no account")))
    }

    /// The account's current balances.
    pub(crate) async fn balances(&self, account_id: Uuid) -> Result<Balances, Failure> {
        let request =
            self.request(GetBalancesRequest { account_id: account_id.to_string(), as_of: None }).await?;
        let answer = self.client.clone().get_balances(request).await.map_err(classify)?;
        answer
            .into_inner()
            .balances
            .ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no balances")))
    }

    /// The account's activity between consecutive `boundaries` (ascending), from the journal.
    pub(crate) async fn summarize(
        &self,
        account_id: Uuid,
        boundaries: &[time::OffsetDateTime],
    ) -> Result<Vec<PeriodSummary>, Failure> {
        let request = self
            .request(SummarizeAccountPeriodsRequest {
                account_id: account_id.to_string(),
                boundaries: boundaries.iter().map(|t| crate::convert::timestamp(*t)).collect(),
            })
            .await?;
        let answer = self.client.clone().summarize_account_periods(request).await.map_err(classify)?;
        Ok(answer.into_inner().periods)
    }

    /// Every entry of the account posted in `[from, to)`, oldest first (all pages).
    pub(crate) async fn entries(
        &self,
        account_id: Uuid,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
    ) -> Result<Vec<Entry>, Failure> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = self
                .request(ListEntriesRequest {
                    account_id: account_id.to_string(),
                    page: Some(bank_proto::common::v1::PageRequest { page_size: 200, page_token }),
                    from_time: Some(crate::convert::timestamp(from)),
                    to_time: Some(crate::convert::timestamp(to)),
                    sort: EntrySort::PostedAtAsc as i32,
                    ..ListEntriesRequest::default()
                })
                .await?;
            let page = self.client.clone().list_entries(request).await.map_err(classify)?.into_inner();
            entries.extend(page.entries);
            page_token = page.page_info.map(|p| p.next_page_token).unwrap_or_default();
            if page_token.is_empty() {
                return Ok(entries);
            }
        }
    }
}
