//! `bank.accounts.v1.AccountsService`: the owner's RPCs. Every RPC needs a user token and acts
//! only on the caller's own accounts: another user's account id reads exactly like a missing one
//! (the lookups filter by owner in SQL, so both take the same path and answer the same
//! `NOT_FOUND`).
//!
//! Idempotency: `OpenAccount` and `CloseAccount` require the `idempotency-key` metadata;
//! `UpdateAccountNickname` honours it when given.
//!
//! Statements (`ListStatements`, `GetStatement`, `DownloadStatement`) live in `statements`;
//! `GetInterestSettings` answers `UNIMPLEMENTED` (the generated default) until it is built.

use bank_platform::{
    FieldViolation, ServiceError,
    grpc::fields::{self, answer, internal},
    idempotency,
    pagination::Page,
};
use bank_proto::{
    accounts::v1::{accounts_service_server::AccountsService, *},
    common::v1::PageInfo,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{Answer, Api, currency_field, not_found};
use crate::{
    convert::{self, View},
    domain::{Action, Nickname, Product, Reason},
    saga::{self, Change, Open},
    storage, tx,
};

const OPEN_ACCOUNT: &str = "/bank.accounts.v1.AccountsService/OpenAccount";
const UPDATE_NICKNAME: &str = "/bank.accounts.v1.AccountsService/UpdateAccountNickname";
const CLOSE_ACCOUNT: &str = "/bank.accounts.v1.AccountsService/CloseAccount";

/// Page token kind of `ListMyAccounts` (keyset position: the account's `seq`).
const PAGE_KIND: &str = "accounts";

#[tonic::async_trait]
impl AccountsService for Api {
    async fn open_account(&self, request: Request<OpenAccountRequest>) -> Answer<OpenAccountResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = fields::required_key(&request, &owner.to_string(), OPEN_ACCOUNT)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let mut violations = Vec::new();
        let product = match AccountProduct::try_from(req.product) {
            Ok(AccountProduct::Checking) => Some(Product::Checking),
            Ok(AccountProduct::Savings) => Some(Product::Savings),
            Ok(AccountProduct::Unspecified) | Err(_) => {
                violations.push(FieldViolation::new("product", "REQUIRED", "CHECKING or SAVINGS"));
                None
            }
        };
        let currency = currency_field("currency", &req.currency).map_err(|v| violations.push(v)).ok();
        let nickname = Nickname::parse(&req.nickname)
            .map_err(|e| violations.push(FieldViolation::new("nickname", e.code(), e.to_string())))
            .ok();
        let (Some(product), Some(currency), Some(nickname)) = (product, currency, nickname) else {
            return Err(Status::from(ServiceError::invalid(violations)));
        };
        let open = Open { key, request_hash, owner, product, currency: currency.code(), nickname };
        let (account, replayed) = saga::open(&self.core, open).await?;
        Ok(answer(OpenAccountResponse { account: Some(account) }, replayed))
    }

    async fn list_my_accounts(
        &self,
        request: Request<ListMyAccountsRequest>,
    ) -> Answer<ListMyAccountsResponse> {
        let owner = bank_auth::require_user(&request)?;
        let req = request.into_inner();
        let page_request = req.page.unwrap_or_default();
        let page = Page::parse(page_request.page_size, &page_request.page_token, PAGE_KIND, 50, 200)?;
        let rows = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::owned(&mut conn, owner, req.include_closed, page.position, page.size)
                .await
                .map_err(internal)?
        };
        let next_page_token = page.next_token(PAGE_KIND, rows.len(), rows.last().map_or(0, |r| r.seq));
        let accounts = self.with_balances(&rows, View::Owner).await?;
        Ok(Response::new(ListMyAccountsResponse {
            accounts,
            page_info: Some(PageInfo { next_page_token, total_size: None }),
        }))
    }

    async fn get_account(&self, request: Request<GetAccountRequest>) -> Answer<GetAccountResponse> {
        let owner = bank_auth::require_user(&request)?;
        let account_id = fields::uuid("account_id", &request.get_ref().account_id)?;
        let row = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::account(&mut conn, account_id, Some(owner))
                .await
                .map_err(internal)?
                .ok_or_else(not_found)?
        };
        let account = self.one_with_balances(&row, View::Owner).await?;
        Ok(Response::new(GetAccountResponse { account: Some(account) }))
    }

    async fn update_account_nickname(
        &self,
        request: Request<UpdateAccountNicknameRequest>,
    ) -> Answer<UpdateAccountNicknameResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = idempotency::key_of(request.metadata(), &owner.to_string(), UPDATE_NICKNAME, false)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let nickname = Nickname::parse(&req.nickname).map_err(|e| {
            Status::from(ServiceError::invalid(vec![FieldViolation::new(
                "nickname",
                e.code(),
                e.to_string(),
            )]))
        })?;
        // Balances first (outside the transaction: no network call while holding row locks).
        let row = {
            let mut conn = self.core.pool.acquire().await.map_err(internal)?;
            storage::account(&mut conn, account_id, Some(owner))
                .await
                .map_err(internal)?
                .ok_or_else(not_found)?
        };
        let balances = self.one_with_balances(&row, View::Owner).await?.balances;
        let (account, replayed) = tx::run(&self.core.pool, |conn| {
            let key = key.clone();
            let request_hash = request_hash.clone();
            let nickname = nickname.clone();
            let balances = balances.clone();
            Box::pin(async move {
                storage::lock(conn, account_id, Some(owner)).await?.ok_or_else(saga::not_found)?;
                if let Some(key) = &key
                    && let idempotency::Begin::Replay(bytes) =
                        idempotency::begin(conn, key, &request_hash).await?
                {
                    let account = Account::decode(bytes.as_slice())
                        .map_err(|e| tx::Error::Database(sqlx::Error::Decode(Box::new(e))))?;
                    return Ok((account, true));
                }
                let row = storage::set_nickname(conn, account_id, nickname.as_str()).await?;
                let account = convert::account(&row, balances, View::Owner);
                if let Some(key) = &key {
                    idempotency::complete(conn, key, &account.encode_to_vec()).await?;
                }
                Ok((account, false))
            })
        })
        .await?;
        Ok(answer(UpdateAccountNicknameResponse { account: Some(account) }, replayed))
    }

    async fn close_account(&self, request: Request<CloseAccountRequest>) -> Answer<CloseAccountResponse> {
        let owner = bank_auth::require_user(&request)?;
        let key = fields::required_key(&request, &owner.to_string(), CLOSE_ACCOUNT)?;
        let req = request.into_inner();
        let request_hash = idempotency::request_hash(&req.encode_to_vec());
        let account_id = fields::uuid("account_id", &req.account_id)?;
        let change = Change {
            key,
            request_hash,
            account_id,
            owner: Some(owner),
            action: Action::Close,
            currency: None,
            actor: owner,
            reason: Reason::none(),
            view: View::Owner,
        };
        let (account, replayed) = saga::change(&self.core, change).await?;
        Ok(answer(CloseAccountResponse { account: Some(account) }, replayed))
    }

    async fn list_statements(
        &self,
        request: Request<ListStatementsRequest>,
    ) -> Answer<ListStatementsResponse> {
        let owner = bank_auth::require_user(&request)?;
        let req = request.into_inner();
        let (statements, page_info) =
            Api::list_statements(self, owner, &req.account_id, req.page.as_ref()).await?;
        Ok(Response::new(ListStatementsResponse { statements, page_info: Some(page_info) }))
    }

    async fn get_statement(&self, request: Request<GetStatementRequest>) -> Answer<GetStatementResponse> {
        let owner = bank_auth::require_user(&request)?;
        let req = request.into_inner();
        let statement = Api::get_statement(self, owner, &req.account_id, &req.statement_id).await?;
        Ok(Response::new(GetStatementResponse { statement: Some(statement) }))
    }

    async fn download_statement(
        &self,
        request: Request<DownloadStatementRequest>,
    ) -> Answer<DownloadStatementResponse> {
        let owner = bank_auth::require_user(&request)?;
        let req = request.into_inner();
        let csv = match StatementFormat::try_from(req.format) {
            Ok(StatementFormat::Unspecified | StatementFormat::Pdf) => false,
            Ok(StatementFormat::Csv) => true,
            Err(_) => return Err(fields::invalid("format", "INVALID", "PDF or CSV")),
        };
        let (content_type, data, filename) =
            Api::download_statement(self, owner, &req.account_id, &req.statement_id, csv).await?;
        Ok(Response::new(DownloadStatementResponse {
            file: Some(bank_proto::google::api::HttpBody { content_type, data, extensions: Vec::new() }),
            filename,
        }))
    }
}
