//! The services cards calls, through their gRPC contracts:
//!
//! * the ledger (holds: create, capture, void, refund, get) with this service's own service
//!   token (scope `ledger:holds`); holds are keyed by the authorization id (`reference_id`);
//! * accounts (`GetAccount`) and identity (`GetMyProfile`) with the **owner's own token**, passed
//!   on unchanged: they decide whether the account is the caller's and answer `NOT_FOUND`
//!   otherwise, so cards never needs a broader grant to look at someone's account or profile.

use std::sync::Arc;

use bank_auth::ServiceTokens;
use bank_platform::{
    BoxError, ErrorCode, ServiceError,
    grpc::{
        lazy_channel,
        upstream::{self, Credentials},
    },
    telemetry::inject_current,
};
use bank_proto::{
    accounts::v1::{Account, GetAccountRequest, accounts_service_client::AccountsServiceClient},
    common::v1::Money,
    identity::v1::{GetMyProfileRequest, User, identity_service_client::IdentityServiceClient},
    ledger::v1::{
        CaptureHoldRequest, CaptureHoldResponse, CreateHoldRequest, GetHoldRequest, Hold, RefundHoldRequest,
        RefundHoldResponse, SystemAccountType, VoidHoldRequest, get_hold_request,
        ledger_service_client::LedgerServiceClient,
    },
};
use tonic::{Request, transport::Channel};
use uuid::Uuid;

use crate::config::Config;

pub(crate) use bank_platform::grpc::upstream::Failure;

/// Accounts and identity are called with the owner's own token: their refusal is final.
fn classify(status: tonic::Status) -> Failure {
    upstream::classify(status, Credentials::Caller)
}

/// The ledger is called with this service's own token: an authentication or permission refusal
/// is our misconfiguration, retryable once fixed.
fn classify_ledger(status: tonic::Status) -> Failure {
    upstream::classify(status, Credentials::Own)
}

/// The clients, connected lazily: cards starts (and answers what it can) while they are down.
#[derive(Clone)]
pub(crate) struct Upstreams {
    ledger: LedgerServiceClient<Channel>,
    accounts: AccountsServiceClient<Channel>,
    identity: IdentityServiceClient<Channel>,
    tokens: Arc<ServiceTokens>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("tokens", &self.tokens).finish_non_exhaustive()
    }
}

/// `request` with the caller's own bearer token and the current trace context.
fn on_behalf<T>(message: T, bearer: &str) -> Result<Request<T>, Failure> {
    let mut request = Request::new(message);
    let value = format!("Bearer {bearer}")
        .parse()
        .map_err(|_| Failure::Refused(ServiceError::new(ErrorCode::Unauthenticated, "malformed token")))?;
    request.metadata_mut().insert("authorization", value);
    inject_current(request.metadata_mut());
    Ok(request)
}

impl Upstreams {
    /// Clients of `ledger_url`, `accounts_url` and `auth.identity_url`.
    ///
    /// # Errors
    /// An address is not a valid endpoint, or the client credentials are missing.
    pub(crate) fn connect(config: &Config) -> Result<Self, BoxError> {
        let timeout = config.upstream_timeout;
        let identity = lazy_channel("auth.identity_url", &config.auth.identity_url, timeout)?;
        let tokens = ServiceTokens::from_config(identity.clone(), &config.auth, "cards", &["ledger:holds"])?;
        Ok(Self {
            ledger: LedgerServiceClient::new(lazy_channel("ledger_url", &config.ledger_url, timeout)?),
            accounts: AccountsServiceClient::new(lazy_channel(
                "accounts_url",
                &config.accounts_url,
                timeout,
            )?),
            identity: IdentityServiceClient::new(identity),
            tokens: Arc::new(tokens),
        })
    }

    async fn service<T>(&self, message: T) -> Result<Request<T>, Failure> {
        self.tokens.request(message).await.map_err(Failure::Unavailable)
    }

    /// The caller's account (accounts decides ownership: another user's reads as missing).
    pub(crate) async fn account(&self, bearer: &str, account_id: Uuid) -> Result<Account, Failure> {
        let request = on_behalf(GetAccountRequest { account_id: account_id.to_string() }, bearer)?;
        let answer = self.accounts.clone().get_account(request).await.map_err(classify)?;
        answer.into_inner().account.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no account")))
    }

    /// The caller's profile (name, time zone, whether MFA is on).
    pub(crate) async fn profile(&self, bearer: &str) -> Result<User, Failure> {
        let request = on_behalf(GetMyProfileRequest {}, bearer)?;
        let answer = self.identity.clone().get_my_profile(request).await.map_err(classify)?;
        answer.into_inner().user.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no user")))
    }

    /// Creates (or finds: idempotent by reference) the hold of an authorization.
    pub(crate) async fn create_hold(
        &self,
        account_id: Uuid,
        amount: Money,
        authorization_id: Uuid,
        merchant: &str,
        expires_at: time::OffsetDateTime,
    ) -> Result<Hold, Failure> {
        let request = self
            .service(CreateHoldRequest {
                account_id: account_id.to_string(),
                amount: Some(amount),
                reference_id: authorization_id.to_string(),
                counterparty: SystemAccountType::CardSettlement as i32,
                description: merchant.to_owned(),
                expires_at: Some(crate::convert::timestamp(expires_at)),
            })
            .await?;
        let answer = self.ledger.clone().create_hold(request).await.map_err(classify_ledger)?;
        answer.into_inner().hold.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no hold")))
    }

    /// Captures a hold (all of it when `amount` is `None`).
    pub(crate) async fn capture_hold(
        &self,
        hold_id: Uuid,
        amount: Option<Money>,
    ) -> Result<CaptureHoldResponse, Failure> {
        let request = self.service(CaptureHoldRequest { hold_id: hold_id.to_string(), amount }).await?;
        Ok(self.ledger.clone().capture_hold(request).await.map_err(classify_ledger)?.into_inner())
    }

    /// Releases a hold (idempotent).
    pub(crate) async fn void_hold(&self, hold_id: Uuid, reason: &str) -> Result<Hold, Failure> {
        let request =
            self.service(VoidHoldRequest { hold_id: hold_id.to_string(), reason: reason.to_owned() }).await?;
        let answer = self.ledger.clone().void_hold(request).await.map_err(classify_ledger)?;
        answer.into_inner().hold.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no hold")))
    }

    /// Refunds part of a captured hold (idempotent by `refund_id`).
    pub(crate) async fn refund_hold(
        &self,
        hold_id: Uuid,
        amount: Money,
        refund_id: Uuid,
        description: &str,
    ) -> Result<RefundHoldResponse, Failure> {
        let request = self
            .service(RefundHoldRequest {
                hold_id: hold_id.to_string(),
                amount: Some(amount),
                refund_reference_id: refund_id.to_string(),
                description: description.to_owned(),
            })
            .await?;
        Ok(self.ledger.clone().refund_hold(request).await.map_err(classify_ledger)?.into_inner())
    }

    /// The hold of an authorization, by its reference.
    pub(crate) async fn hold_of(&self, authorization_id: Uuid) -> Result<Hold, Failure> {
        let request = self
            .service(GetHoldRequest {
                lookup: Some(get_hold_request::Lookup::ReferenceId(authorization_id.to_string())),
            })
            .await?;
        let answer = self.ledger.clone().get_hold(request).await.map_err(classify_ledger)?;
        answer.into_inner().hold.ok_or_else(|| Failure::Unavailable(tonic::Status::internal("no hold")))
    }
}
