//! `LedgerService`: balances, history and transfers for users; ledger accounts, holds, thresholds
//! and period summaries for services with the matching scope.

use bank_auth::{Subject, principal};
use bank_platform::{
    ErrorCode,
    grpc::fields::{self, answer, internal, invalid},
    idempotency,
    pagination::Page,
};
use bank_proto::{
    common::v1::{Balances, PageInfo},
    convert::instant,
    ledger::v1::{ledger_service_server::LedgerService, *},
};
use prost::Message as _;
use time::OffsetDateTime;
use tonic::{Request, Response};

use super::{Answer, Api, currency_field, description_field, entry_query, may_read, money_field, not_found};
use crate::{
    accounts::{self, ThresholdCaller},
    convert::{self, money, timestamp},
    domain::{AccountStatus, Destination, Release},
    history,
    holds::{self, CaptureHold, CreateHold, Lookup, RefundHold, ReleaseHold},
    transfers::{self, Transfer},
};

const CREATE_TRANSFER: &str = "/bank.ledger.v1.LedgerService/CreateTransfer";

#[tonic::async_trait]
impl LedgerService for Api {
    async fn create_ledger_account(
        &self,
        request: Request<CreateLedgerAccountRequest>,
    ) -> Answer<CreateLedgerAccountResponse> {
        bank_auth::require_scope(&request, "ledger:accounts")?;
        let req = request.into_inner();
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let owner = fields::uuid("owner_user_id", &req.owner_user_id)?;
        if req.account_number.is_empty() || req.account_number.len() > 34 {
            return Err(invalid("account_number", "INVALID_FORMAT", "1 to 34 characters"));
        }
        let currency = currency_field("currency", &req.currency)?;
        let account = accounts::create(&self.pool, account_id, &req.account_number, owner, currency).await?;
        Ok(Response::new(CreateLedgerAccountResponse { account: Some(convert::ledger_account(&account)) }))
    }

    async fn set_ledger_account_status(
        &self,
        request: Request<SetLedgerAccountStatusRequest>,
    ) -> Answer<SetLedgerAccountStatusResponse> {
        bank_auth::require_scope(&request, "ledger:accounts")?;
        let req = request.into_inner();
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let status = match LedgerAccountStatus::try_from(req.status) {
            Ok(LedgerAccountStatus::Active) => AccountStatus::Active,
            Ok(LedgerAccountStatus::Frozen) => AccountStatus::Frozen,
            Ok(LedgerAccountStatus::Closed) => AccountStatus::Closed,
            Ok(LedgerAccountStatus::Unspecified) | Err(_) => {
                return Err(invalid("status", "REQUIRED", "ACTIVE, FROZEN or CLOSED"));
            }
        };
        let account = accounts::set_status(&self.pool, account_id, status, req.credits_allowed).await?;
        Ok(Response::new(SetLedgerAccountStatusResponse { account: Some(convert::ledger_account(&account)) }))
    }

    async fn set_ledger_overdraft_limit(
        &self,
        request: Request<SetLedgerOverdraftLimitRequest>,
    ) -> Answer<SetLedgerOverdraftLimitResponse> {
        bank_auth::require_scope(&request, "ledger:accounts")?;
        let req = request.into_inner();
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let limit = req.limit.ok_or_else(|| invalid("limit", "REQUIRED", "is required"))?;
        let currency = currency_field("limit.currency", &limit.currency)?;
        if limit.minor_units < 0 {
            return Err(invalid("limit.minor_units", "NEGATIVE", "must not be negative"));
        }
        let account =
            accounts::set_overdraft_limit(&self.pool, account_id, currency, limit.minor_units).await?;
        Ok(Response::new(SetLedgerOverdraftLimitResponse {
            account: Some(convert::ledger_account(&account)),
        }))
    }

    async fn create_hold(&self, request: Request<CreateHoldRequest>) -> Answer<CreateHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let req = request.into_inner();
        let account = fields::uuid("account_id", &req.account_id)?;
        let (currency, amount) = money_field("amount", req.amount.as_ref())?;
        if req.reference_id.is_empty() || req.reference_id.len() > 128 {
            return Err(invalid("reference_id", "REQUIRED", "1 to 128 characters"));
        }
        let counterparty = match SystemAccountType::try_from(req.counterparty) {
            Ok(SystemAccountType::Unspecified) | Err(_) => {
                return Err(invalid("counterparty", "REQUIRED", "a system account type"));
            }
            Ok(kind) => convert::system_type(kind),
        };
        let description = description_field(&req.description)?;
        let now = OffsetDateTime::now_utc();
        let expires_at = match req.expires_at {
            Some(t) => OffsetDateTime::from_unix_timestamp(t.seconds)
                .ok()
                .filter(|t| *t > now && *t <= now + time::Duration::days(31))
                .ok_or_else(|| {
                    invalid("expires_at", "OUT_OF_RANGE", "in the future, at most 31 days ahead")
                })?,
            None => now + time::Duration::days(7),
        };
        let hold = CreateHold {
            created_by: caller.name(),
            reference: req.reference_id,
            account,
            currency,
            amount,
            counterparty,
            description,
            expires_at,
        };
        let (response, _) = self.engine.submit(hold).await?;
        Ok(Response::new(response))
    }

    async fn capture_hold(&self, request: Request<CaptureHoldRequest>) -> Answer<CaptureHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let req = request.into_inner();
        let hold = fields::uuid("hold_id", &req.hold_id)?;
        let amount = match req.amount.as_ref() {
            Some(m) => Some(money_field("amount", Some(m))?),
            None => None,
        };
        let (response, _) =
            self.engine.submit(CaptureHold { initiated_by: caller.name(), hold, amount }).await?;
        Ok(Response::new(response))
    }

    async fn void_hold(&self, request: Request<VoidHoldRequest>) -> Answer<VoidHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let hold = fields::uuid("hold_id", &request.get_ref().hold_id)?;
        let release = ReleaseHold { created_by: Some(caller.name()), hold, release: Release::Void };
        let (response, _) = self.engine.submit(release).await?;
        Ok(Response::new(response))
    }

    async fn refund_hold(&self, request: Request<RefundHoldRequest>) -> Answer<RefundHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let req = request.into_inner();
        let hold = fields::uuid("hold_id", &req.hold_id)?;
        let (currency, amount) = money_field("amount", req.amount.as_ref())?;
        if req.refund_reference_id.is_empty() || req.refund_reference_id.len() > 128 {
            return Err(invalid("refund_reference_id", "REQUIRED", "1 to 128 characters"));
        }
        let description = description_field(&req.description)?;
        let refund = RefundHold {
            initiated_by: caller.name(),
            hold,
            reference: req.refund_reference_id,
            currency,
            amount,
            description,
        };
        let (response, _) = self.engine.submit(refund).await?;
        Ok(Response::new(response))
    }

    async fn get_hold(&self, request: Request<GetHoldRequest>) -> Answer<GetHoldResponse> {
        let caller = bank_auth::require_scope(&request, "ledger:holds")?;
        let lookup = match &request.get_ref().lookup {
            Some(get_hold_request::Lookup::HoldId(id)) => Lookup::Id(fields::uuid("hold_id", id)?),
            Some(get_hold_request::Lookup::ReferenceId(reference)) if !reference.is_empty() => {
                Lookup::Reference(reference)
            }
            _ => return Err(invalid("lookup", "REQUIRED", "hold_id or reference_id is required")),
        };
        let hold = holds::get(&self.pool, lookup, &caller.name())
            .await
            .map_err(internal)?
            .ok_or_else(|| fields::refused(ErrorCode::NotFound, "no such hold"))?;
        Ok(Response::new(GetHoldResponse { hold: Some(convert::hold(&hold)) }))
    }

    async fn get_balances(&self, request: Request<GetBalancesRequest>) -> Answer<GetBalancesResponse> {
        let principal = principal(&request)?.clone();
        let req = request.into_inner();
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let as_of = match &req.as_of {
            Some(t) => {
                let at = fields::time("as_of", instant(t))?;
                if at > OffsetDateTime::now_utc() {
                    return Err(invalid("as_of", "OUT_OF_RANGE", "must not be in the future"));
                }
                Some(at)
            }
            None => None,
        };
        let account = accounts::get(&self.pool, account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        if !may_read(&principal, &account) {
            return Err(not_found());
        }
        let balances = match as_of {
            Some(at) => {
                let posted = accounts::posted_before(&self.pool, account_id, at).await.map_err(internal)?;
                Balances {
                    posted: Some(money(&account.currency, posted)),
                    held: None,
                    available: None,
                    as_of: Some(timestamp(at)),
                }
            }
            None => convert::balances(&account),
        };
        Ok(Response::new(GetBalancesResponse {
            balances: Some(balances),
            overdraft_limit: Some(money(&account.currency, account.overdraft_limit)),
        }))
    }

    async fn list_entries(&self, request: Request<ListEntriesRequest>) -> Answer<ListEntriesResponse> {
        let principal = principal(&request)?.clone();
        let req = request.into_inner();
        let query = entry_query(
            &req.account_id,
            req.page.as_ref(),
            (req.from_time.as_ref(), req.to_time.as_ref()),
            req.direction,
            (req.min_amount_minor_units, req.max_amount_minor_units),
            req.sort,
        )?;
        let (rows, next) = history::page(&self.pool, &query, |account| may_read(&principal, account)).await?;
        Ok(Response::new(ListEntriesResponse {
            entries: rows.iter().map(convert::entry).collect(),
            page_info: Some(PageInfo { next_page_token: next, total_size: None }),
        }))
    }

    async fn create_transfer(
        &self,
        request: Request<CreateTransferRequest>,
    ) -> Answer<CreateTransferResponse> {
        let principal = principal(&request)?.clone();
        let Some(user) = principal.user_id() else {
            return Err(fields::refused(ErrorCode::PermissionDenied, "a user token is required"));
        };
        let key = fields::required_key(&request, &user.to_string(), CREATE_TRANSFER)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let from = fields::uuid("from_account_id", &req.from_account_id)?;
        let (currency, amount) = money_field("amount", req.amount.as_ref())?;
        // Large transfers need a recent second factor (checked before anything is stored, so the
        // retry after StepUp with the same key is a fresh attempt, not a conflict).
        if amount.minor_units() > self.transfers.step_up_above(currency.code()) {
            bank_auth::require_step_up(&principal)?;
        }
        let description = description_field(&req.description)?;
        if !req.fx_quote_id.is_empty() {
            return Err(fields::refused(
                ErrorCode::CurrencyMismatch,
                "cross-currency transfers are not supported yet",
            ));
        }
        let to = match req.destination {
            Some(create_transfer_request::Destination::ToAccountId(id)) => {
                Destination::Id(fields::uuid("to_account_id", &id)?)
            }
            Some(create_transfer_request::Destination::ToAccountNumber(number)) if !number.is_empty() => {
                // A mistyped number is the client's mistake (400), not "no such account" (404).
                let parsed = bank_money::account_number::AccountNumber::parse(&number)
                    .map_err(|err| invalid("to_account_number", err.code(), &err.to_string()))?;
                Destination::Number(parsed.as_str().to_owned())
            }
            _ => {
                return Err(invalid(
                    "destination",
                    "REQUIRED",
                    "to_account_id or to_account_number is required",
                ));
            }
        };
        let transfer = Transfer { key, request_hash, user, from, to, amount, currency, description };
        let (response, replayed) = transfers::create(&self.engine, transfer).await?;
        Ok(answer(response, replayed))
    }

    async fn get_transfer(&self, request: Request<GetTransferRequest>) -> Answer<GetTransferResponse> {
        let user = bank_auth::require_user(&request)?;
        let transfer_id = fields::uuid("transfer_id", &request.get_ref().transfer_id)?;
        let row = transfers::get(&self.pool, transfer_id, user)
            .await
            .map_err(internal)?
            .ok_or_else(|| fields::refused(ErrorCode::NotFound, "no such transfer"))?;
        Ok(Response::new(GetTransferResponse { transfer: Some(convert::transfer(&row, user)) }))
    }

    async fn list_transfers(&self, request: Request<ListTransfersRequest>) -> Answer<ListTransfersResponse> {
        const KIND: &str = "transfers";
        let user = bank_auth::require_user(&request)?;
        let req = request.into_inner();
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, KIND, 50, 200)?;
        let account = fields::optional_uuid("account_id", &req.account_id)?;
        let before = if page.position == 0 { i64::MAX } else { page.position };
        // Only the caller's own account; anyone else's answers like a missing one.
        let rows = transfers::list(&self.pool, user, account, before, page.size)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        let next = page.next_token(KIND, rows.len(), rows.last().map_or(0, |r| r.seq));
        Ok(Response::new(ListTransfersResponse {
            transfers: rows.iter().map(|r| convert::transfer(r, user)).collect(),
            page_info: Some(PageInfo { next_page_token: next, total_size: None }),
        }))
    }

    async fn set_low_balance_threshold(
        &self,
        request: Request<SetLowBalanceThresholdRequest>,
    ) -> Answer<SetLowBalanceThresholdResponse> {
        let principal = principal(&request)?.clone();
        let req = request.into_inner();
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let threshold = match req.threshold {
            Some(t) => {
                let currency = currency_field("threshold.currency", &t.currency)?;
                if t.minor_units < 0 {
                    return Err(invalid("threshold.minor_units", "NEGATIVE", "must not be negative"));
                }
                Some((currency, t.minor_units))
            }
            None => None,
        };
        let caller = match &principal.subject {
            Subject::User(user) => ThresholdCaller::User(*user),
            Subject::Service(_) => ThresholdCaller::Service { allowed: principal.has("ledger:accounts") },
        };
        let account = accounts::set_low_balance_threshold(&self.pool, account_id, caller, threshold).await?;
        Ok(Response::new(SetLowBalanceThresholdResponse { account: Some(convert::ledger_account(&account)) }))
    }

    async fn summarize_account_periods(
        &self,
        request: Request<SummarizeAccountPeriodsRequest>,
    ) -> Answer<SummarizeAccountPeriodsResponse> {
        bank_auth::require_scope(&request, "ledger:read")?;
        let req = request.into_inner();
        let account_id = fields::uuid("account_id", &req.account_id)?;
        if !(2..=121).contains(&req.boundaries.len()) {
            return Err(invalid("boundaries", "OUT_OF_RANGE", "2 to 121 boundaries"));
        }
        let boundaries = req
            .boundaries
            .iter()
            .map(|t| fields::time("boundaries", instant(t)))
            .collect::<Result<Vec<_>, _>>()?;
        if boundaries.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid("boundaries", "NOT_ASCENDING", "must be strictly ascending"));
        }
        let periods = history::summaries(&self.pool, account_id, &boundaries).await?;
        Ok(Response::new(SummarizeAccountPeriodsResponse { periods }))
    }
}
