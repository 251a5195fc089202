//! `bank.accounts.v1.AccountsAdminService`: back-office operations on any customer's account.
//!
//! Roles: `SearchAccounts` and `AdminGetAccount` allow `admin`, `support` and `teller` (as the
//! contract says); every change needs `admin`. Changes require the `idempotency-key` metadata and
//! an audited `reason`, recorded with the acting administrator in `account_changes`.
//!
//! Not done yet: the contract's step-up requirement (acr=mfa with a recent auth_time) waits for
//! the MFA issue, as in identity's admin API; `UpdateInterestSettings` answers `UNIMPLEMENTED`.

use bank_platform::{
    FieldViolation, ServiceError,
    grpc::fields::{self, answer, internal, invalid},
    idempotency,
    pagination::Page,
};
use bank_proto::{
    accounts::v1::{accounts_admin_service_server::AccountsAdminService, *},
    common::v1::PageInfo,
};
use prost::Message as _;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{Answer, Api, currency_field, not_found};
use crate::{
    convert::View,
    domain::{Action, NumberPrefix, Product, Reason, Status as AccountStatus},
    saga::{self, Change},
    storage::{self, Filter},
};

/// Roles that may read any account.
const READERS: &[&str] = &["admin", "support", "teller"];
/// Roles that may change accounts.
const ADMIN: &[&str] = &["admin"];

const FREEZE: &str = "/bank.accounts.v1.AccountsAdminService/FreezeAccount";
const UNFREEZE: &str = "/bank.accounts.v1.AccountsAdminService/UnfreezeAccount";
const SET_OVERDRAFT_LIMIT: &str = "/bank.accounts.v1.AccountsAdminService/SetOverdraftLimit";
const FORCE_CLOSE: &str = "/bank.accounts.v1.AccountsAdminService/ForceCloseAccount";

/// Page token kind of `SearchAccounts` (keyset position: the account's `seq`).
const PAGE_KIND: &str = "search";

/// The audited reason, or its violation.
fn reason_field(value: &str) -> Result<Reason, tonic::Status> {
    Reason::parse(value).map_err(|e| {
        Status::from(ServiceError::invalid(vec![FieldViolation::new("reason", e.code(), e.to_string())]))
    })
}

/// The search filters, every violation collected.
fn filter(req: &SearchAccountsRequest) -> Result<Filter, tonic::Status> {
    let mut violations = Vec::new();
    let mut filter = Filter::default();
    if !req.account_number.is_empty() {
        match NumberPrefix::parse(&req.account_number) {
            Ok(prefix) => filter.number_prefix = Some(prefix.digits().to_owned()),
            Err(e) => violations.push(FieldViolation::new("account_number", e.code(), e.to_string())),
        }
    }
    if !req.owner_user_id.is_empty() {
        match Uuid::parse_str(&req.owner_user_id) {
            Ok(owner) => filter.owner = Some(owner),
            Err(_) => {
                violations.push(FieldViolation::new("owner_user_id", "INVALID_FORMAT", "must be a UUID"));
            }
        }
    }
    match status_filter(req.status) {
        Ok(status) => filter.status = status,
        Err(violation) => violations.push(violation),
    }
    match AccountProduct::try_from(req.product) {
        Ok(AccountProduct::Unspecified) => {}
        Ok(AccountProduct::Checking) => filter.product = Some(Product::Checking),
        Ok(AccountProduct::Savings) => filter.product = Some(Product::Savings),
        Err(_) => violations.push(FieldViolation::new("product", "INVALID", "unknown product")),
    }
    if !req.currency.is_empty() {
        match currency_field("currency", &req.currency) {
            Ok(currency) => filter.currency = Some(currency.code()),
            Err(violation) => violations.push(violation),
        }
    }
    if violations.is_empty() { Ok(filter) } else { Err(Status::from(ServiceError::invalid(violations))) }
}

/// The status filter (`None` for unspecified: no filter).
fn status_filter(value: i32) -> Result<Option<AccountStatus>, FieldViolation> {
    use bank_proto::accounts::v1::AccountStatus as Proto;
    match Proto::try_from(value) {
        Ok(Proto::Unspecified) => Ok(None),
        Ok(Proto::Pending) => Ok(Some(AccountStatus::Opening)),
        Ok(Proto::Active) => Ok(Some(AccountStatus::Active)),
        Ok(Proto::Frozen) => Ok(Some(AccountStatus::Frozen)),
        Ok(Proto::Closed) => Ok(Some(AccountStatus::Closed)),
        Err(_) => Err(FieldViolation::new("status", "INVALID", "unknown status")),
    }
}

/// An administrative change, checked (the caller already holds `admin`).
fn change(
    admin: Uuid,
    key: idempotency::Key,
    encoded: &[u8],
    account_id: &str,
    reason: &str,
    action: Action,
    currency: Option<&'static str>,
) -> Result<Change, tonic::Status> {
    Ok(Change {
        key,
        request_hash: idempotency::request_hash(encoded),
        account_id: fields::uuid("account_id", account_id)?,
        owner: None,
        action,
        currency,
        actor: admin,
        reason: reason_field(reason)?,
        view: View::Staff,
    })
}

#[tonic::async_trait]
impl AccountsAdminService for Api {
    async fn search_accounts(
        &self,
        request: Request<SearchAccountsRequest>,
    ) -> Answer<SearchAccountsResponse> {
        bank_auth::require_staff_user(&request, READERS)?;
        let req = request.into_inner();
        let page_request = req.page.clone().unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, PAGE_KIND, 50, 200)?;
        let filter = filter(&req)?;
        let (rows, total) = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            let rows =
                storage::search(&mut conn, &filter, page.position, page.size).await.map_err(internal)?;
            let total = storage::count(&mut conn, &filter).await.map_err(internal)?;
            (rows, total)
        };
        let next_page_token = page.next_token(PAGE_KIND, rows.len(), rows.last().map_or(0, |r| r.seq));
        let accounts = self.with_balances(&rows, View::Staff).await?;
        Ok(Response::new(SearchAccountsResponse {
            accounts,
            page_info: Some(PageInfo { next_page_token, total_size: Some(total) }),
        }))
    }

    async fn admin_get_account(
        &self,
        request: Request<AdminGetAccountRequest>,
    ) -> Answer<AdminGetAccountResponse> {
        bank_auth::require_staff_user(&request, READERS)?;
        let account_id = fields::uuid("account_id", &request.get_ref().account_id)?;
        let row = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::account(&mut conn, account_id, None).await.map_err(internal)?.ok_or_else(not_found)?
        };
        let account = self.one_with_balances(&row, View::Staff).await?;
        Ok(Response::new(AdminGetAccountResponse { account: Some(account) }))
    }

    async fn freeze_account(&self, request: Request<FreezeAccountRequest>) -> Answer<FreezeAccountResponse> {
        let (admin, _) = bank_auth::require_staff_user(&request, ADMIN)?;
        let key = fields::required_key(&request, &admin.to_string(), FREEZE)?;
        let req = request.into_inner();
        let action = Action::Freeze { credits_allowed: req.credits_allowed };
        let change = change(admin, key, &req.encode_to_vec(), &req.account_id, &req.reason, action, None)?;
        let (account, replayed) = saga::change(&self.core, change).await?;
        Ok(answer(FreezeAccountResponse { account: Some(account) }, replayed))
    }

    async fn unfreeze_account(
        &self,
        request: Request<UnfreezeAccountRequest>,
    ) -> Answer<UnfreezeAccountResponse> {
        let (admin, _) = bank_auth::require_staff_user(&request, ADMIN)?;
        let key = fields::required_key(&request, &admin.to_string(), UNFREEZE)?;
        let req = request.into_inner();
        let change =
            change(admin, key, &req.encode_to_vec(), &req.account_id, &req.reason, Action::Unfreeze, None)?;
        let (account, replayed) = saga::change(&self.core, change).await?;
        Ok(answer(UnfreezeAccountResponse { account: Some(account) }, replayed))
    }

    async fn set_overdraft_limit(
        &self,
        request: Request<SetOverdraftLimitRequest>,
    ) -> Answer<SetOverdraftLimitResponse> {
        let (admin, _) = bank_auth::require_staff_user(&request, ADMIN)?;
        let key = fields::required_key(&request, &admin.to_string(), SET_OVERDRAFT_LIMIT)?;
        let req = request.into_inner();
        let limit = req.limit.clone().ok_or_else(|| invalid("limit", "REQUIRED", "is required"))?;
        let currency = currency_field("limit.currency", &limit.currency)
            .map_err(|v| Status::from(ServiceError::invalid(vec![v])))?;
        if limit.minor_units < 0 {
            return Err(invalid("limit.minor_units", "NEGATIVE", "must not be negative"));
        }
        let action = Action::SetOverdraftLimit { limit: limit.minor_units };
        let encoded = req.encode_to_vec();
        let change =
            change(admin, key, &encoded, &req.account_id, &req.reason, action, Some(currency.code()))?;
        let (account, replayed) = saga::change(&self.core, change).await?;
        Ok(answer(SetOverdraftLimitResponse { account: Some(account) }, replayed))
    }

    async fn force_close_account(
        &self,
        request: Request<ForceCloseAccountRequest>,
    ) -> Answer<ForceCloseAccountResponse> {
        let (admin, _) = bank_auth::require_staff_user(&request, ADMIN)?;
        let key = fields::required_key(&request, &admin.to_string(), FORCE_CLOSE)?;
        let req = request.into_inner();
        let change =
            change(admin, key, &req.encode_to_vec(), &req.account_id, &req.reason, Action::ForceClose, None)?;
        let (account, replayed) = saga::change(&self.core, change).await?;
        Ok(answer(ForceCloseAccountResponse { account: Some(account) }, replayed))
    }
}
