//! `LedgerAdminService`: deposits and withdrawals (tellers and admins, or services with
//! `ledger:cash`), reversals, staff reads and the integrity checks. Every staff RPC needs a recent
//! second factor (`bank_auth::require_staff`).

use bank_auth::{Principal, Subject, principal};
use bank_money::card_number;
use bank_platform::{
    ErrorCode,
    grpc::fields::{self, answer, internal, invalid},
    idempotency,
    pagination::Page,
};
use bank_proto::{
    common::v1::{Money, PageInfo},
    ledger::v1::{ledger_admin_service_server::LedgerAdminService, *},
};
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{Answer, Api, currency_field, description_field, entry_query, money_field, not_found};
use crate::{
    accounts,
    cash::{Cash, Deposit, Withdrawal},
    convert, history, integrity,
    reversals::{self, Reverse},
};

const DEPOSIT: &str = "/bank.ledger.v1.LedgerAdminService/CreateDeposit";
const WITHDRAWAL: &str = "/bank.ledger.v1.LedgerAdminService/CreateWithdrawal";
const REVERSE: &str = "/bank.ledger.v1.LedgerAdminService/ReverseTransaction";

/// Tellers and admins (with a recent second factor, like every admin RPC), or services with
/// `ledger:cash`.
fn may_move_cash(principal: &Principal) -> Result<(), Status> {
    match principal.subject {
        Subject::User(_) => bank_auth::check_staff(principal, &["teller", "admin"]),
        Subject::Service(_) if principal.has("ledger:cash") => Ok(()),
        Subject::Service(_) => Err(fields::refused(ErrorCode::PermissionDenied, "not allowed")),
    }
}

/// A deposit or withdrawal as requested.
struct CashForm<'a> {
    rpc: &'static str,
    encoded: &'a [u8],
    account_id: &'a str,
    amount: Option<&'a Money>,
    description: &'a str,
    reason: &'a str,
    system: i32,
}

/// Authorises and parses a deposit or withdrawal.
fn cash<T>(request: &Request<T>, form: &CashForm<'_>) -> Result<Cash, Status> {
    let principal = principal(request)?;
    may_move_cash(principal)?;
    let key = fields::required_key(request, &principal.name(), form.rpc)?;
    let account = fields::uuid("account_id", form.account_id)?;
    let (currency, amount) = money_field("amount", form.amount)?;
    let description = description_field(form.description)?;
    let system = SystemAccountType::try_from(form.system)
        .map_err(|_| invalid("source", "INVALID", "unknown system account"))?;
    Ok(Cash {
        key,
        request_hash: idempotency::request_hash(form.encoded),
        initiated_by: principal.name(),
        account,
        currency,
        amount,
        description,
        reason: card_number::masked(form.reason.trim().chars().take(500).collect()),
        system: convert::system_type(system),
    })
}

#[tonic::async_trait]
impl LedgerAdminService for Api {
    async fn create_deposit(&self, request: Request<CreateDepositRequest>) -> Answer<CreateDepositResponse> {
        let req = request.get_ref();
        let form = CashForm {
            rpc: DEPOSIT,
            encoded: &req.encode_to_vec(),
            account_id: &req.account_id,
            amount: req.amount.as_ref(),
            description: &req.description,
            reason: &req.reason,
            system: req.source,
        };
        let deposit = Deposit(cash(&request, &form)?);
        let (response, replayed) = self.engine.submit(deposit).await?;
        Ok(answer(response, replayed))
    }

    async fn create_withdrawal(
        &self,
        request: Request<CreateWithdrawalRequest>,
    ) -> Answer<CreateWithdrawalResponse> {
        let req = request.get_ref();
        let form = CashForm {
            rpc: WITHDRAWAL,
            encoded: &req.encode_to_vec(),
            account_id: &req.account_id,
            amount: req.amount.as_ref(),
            description: &req.description,
            reason: &req.reason,
            system: req.destination,
        };
        let withdrawal = Withdrawal(cash(&request, &form)?);
        let (response, replayed) = self.engine.submit(withdrawal).await?;
        Ok(answer(response, replayed))
    }

    async fn reverse_transaction(
        &self,
        request: Request<ReverseTransactionRequest>,
    ) -> Answer<ReverseTransactionResponse> {
        let admin = bank_auth::require_staff(&request, &["admin"])?.name();
        let key = fields::required_key(&request, &admin, REVERSE)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let transaction = fields::uuid("transaction_id", &req.transaction_id)?;
        let reason = req.reason.trim().to_owned();
        if reason.is_empty() {
            return Err(invalid("reason", "REQUIRED", "a reason is required"));
        }
        if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(invalid("reason", "INVALID", "at most 500 characters, no control characters"));
        }
        let reason = card_number::masked(reason);
        let reverse = Reverse { key, request_hash, admin, transaction, reason };
        let (response, replayed) = reversals::reverse(&self.engine, reverse).await?;
        Ok(answer(response, replayed))
    }

    async fn get_transaction(
        &self,
        request: Request<GetTransactionRequest>,
    ) -> Answer<GetTransactionResponse> {
        bank_auth::require_staff(&request, &["admin", "support"])?;
        let id = fields::uuid("transaction_id", &request.get_ref().transaction_id)?;
        let transaction = reversals::transaction(&self.pool, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| fields::refused(ErrorCode::NotFound, "no such transaction"))?;
        Ok(Response::new(GetTransactionResponse { transaction: Some(transaction) }))
    }

    async fn get_ledger_account(
        &self,
        request: Request<GetLedgerAccountRequest>,
    ) -> Answer<GetLedgerAccountResponse> {
        bank_auth::require_staff(&request, &["admin", "support", "teller"])?;
        let account_id = fields::uuid("account_id", &request.get_ref().account_id)?;
        let account = accounts::get(&self.pool, account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        Ok(Response::new(GetLedgerAccountResponse { account: Some(convert::ledger_account(&account)) }))
    }

    async fn list_system_accounts(
        &self,
        request: Request<ListSystemAccountsRequest>,
    ) -> Answer<ListSystemAccountsResponse> {
        const KIND: &str = "system-accounts";
        bank_auth::require_staff(&request, &["admin", "support"])?;
        let req = request.into_inner();
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, KIND, 50, 200)?;
        let currency =
            if req.currency.is_empty() { None } else { Some(currency_field("currency", &req.currency)?) };
        let rows = accounts::system_accounts(&self.pool, currency, page.position, page.size)
            .await
            .map_err(internal)?;
        let fetched = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let next = page.next_token(KIND, rows.len(), page.position.saturating_add(fetched));
        Ok(Response::new(ListSystemAccountsResponse {
            accounts: rows.iter().map(convert::ledger_account).collect(),
            page_info: Some(PageInfo { next_page_token: next, total_size: None }),
        }))
    }

    async fn admin_list_entries(
        &self,
        request: Request<AdminListEntriesRequest>,
    ) -> Answer<AdminListEntriesResponse> {
        bank_auth::require_staff(&request, &["admin", "support"])?;
        let req = request.into_inner();
        let query = entry_query(
            &req.account_id,
            req.page.as_ref(),
            (req.from_time.as_ref(), req.to_time.as_ref()),
            req.direction,
            (req.min_amount_minor_units, req.max_amount_minor_units),
            req.sort,
        )?;
        let (rows, next) = history::page(&self.pool, &query, |_| true).await?;
        Ok(Response::new(AdminListEntriesResponse {
            entries: rows.iter().map(convert::entry).collect(),
            page_info: Some(PageInfo { next_page_token: next, total_size: None }),
        }))
    }

    async fn verify_account_chain(
        &self,
        request: Request<VerifyAccountChainRequest>,
    ) -> Answer<VerifyAccountChainResponse> {
        bank_auth::require_staff(&request, &["admin"])?;
        let account_id = fields::uuid("account_id", &request.get_ref().account_id)?;
        let account = accounts::get(&self.pool, account_id).await.map_err(internal)?.ok_or_else(not_found)?;
        let verification = integrity::verify_chain(&self.pool, &account).await.map_err(internal)?;
        Ok(Response::new(VerifyAccountChainResponse { verification: Some(verification) }))
    }

    async fn verify_ledger_invariants(
        &self,
        request: Request<VerifyLedgerInvariantsRequest>,
    ) -> Answer<VerifyLedgerInvariantsResponse> {
        bank_auth::require_staff(&request, &["admin"])?;
        let report = integrity::verify_invariants(&self.pool).await.map_err(internal)?;
        Ok(Response::new(report))
    }
}
