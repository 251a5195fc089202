//! Customer accounts through the real accounts, ledger and identity services, PostgreSQL and
//! Redis: opening with its ledger account (and after a crash or while the ledger is down),
//! balances, closing, freezing, overdraft limits, administrative search, check digits, and the
//! rule that another user's account reads exactly like a missing one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{future::Future, time::Duration};

use bank_accounts::{Accounts, domain::AccountNumber};
use bank_ledger::Ledger;
use bank_platform::{ErrorCode, error::reason_of, idempotency::REPLAYED};
use bank_proto::{
    accounts::v1::{
        Account, AccountProduct, AccountStatus, AdminGetAccountRequest, CloseAccountRequest,
        DownloadStatementRequest, ForceCloseAccountRequest, FreezeAccountRequest, GetAccountRequest,
        GetStatementRequest, ListMyAccountsRequest, ListStatementsRequest, OpenAccountRequest,
        SearchAccountsRequest, SetOverdraftLimitRequest, StatementFormat, UnfreezeAccountRequest,
        UpdateAccountNicknameRequest, accounts_admin_service_client::AccountsAdminServiceClient,
        accounts_service_client::AccountsServiceClient,
    },
    common::v1::{Money, PageRequest},
    events::v1::{AccountClosed, AccountFrozen, AccountOpened},
    ledger::v1::{
        CreateDepositRequest, CreateLedgerAccountRequest, CreateTransferRequest, CreateWithdrawalRequest,
        GetBalancesRequest, create_transfer_request::Destination,
        ledger_admin_service_client::LedgerAdminServiceClient, ledger_service_client::LedgerServiceClient,
    },
};
use bank_testkit::{Options, TcpProxy, TestApp, TestIdentity, TestUser, bearer};
use prost::Message as _;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;
use uuid::Uuid;

struct World {
    identity: TestIdentity,
    ledger: TestApp,
    accounts: TestApp,
    admin: String,
    /// Between accounts and the ledger, when the test cuts the ledger off.
    proxy: Option<TcpProxy>,
}

/// Identity, the ledger trusting it, and accounts calling the ledger (directly or through a proxy
/// the test can cut). The reconciler takes over after 1 s and looks every 100 ms.
async fn world_with(proxied: bool) -> World {
    let identity = TestIdentity::spawn().await;
    let ledger = bank_testkit::spawn_with::<Ledger>(identity.trust(Options::default())).await;
    let proxy = if proxied { Some(TcpProxy::start(ledger.addr).await) } else { None };
    let ledger_addr = proxy.as_ref().map_or(ledger.addr, TcpProxy::addr);
    let accounts = bank_testkit::spawn_with::<Accounts>(
        identity
            .trust(Options::default())
            .set("ledger_url", format!("http://{ledger_addr}"))
            .set("ledger_timeout", "2s")
            .set("reconciler.interval", "100ms")
            .set("reconciler.stuck_after", "1s")
            .set("reconciler.max_backoff", "2s"),
    )
    .await;
    let admin = identity.admin().await.access_token;
    World { identity, ledger, accounts, admin, proxy }
}

async fn world() -> World {
    world_with(false).await
}

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money { currency: "EUR".into(), minor_units })
}

fn keyed<T>(message: T, token: &str, key: &str) -> tonic::Request<T> {
    let mut request = bearer(message, token);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

fn fresh_key() -> String {
    Uuid::now_v7().to_string()
}

fn token(user: &TestUser) -> &str {
    &user.tokens.access_token
}

#[track_caller]
fn assert_reason(status: &tonic::Status, code: Code, reason: ErrorCode) {
    assert_eq!((status.code(), reason_of(status)), (code, Some(reason)), "{status:?}");
}

fn posted(account: &Account) -> i64 {
    account.balances.as_ref().unwrap().posted.as_ref().unwrap().minor_units
}

fn open_request(product: AccountProduct, currency: &str) -> OpenAccountRequest {
    OpenAccountRequest { product: product as i32, currency: currency.into(), nickname: String::new() }
}

/// Polls `check` until it holds (or fails the test after 20 s).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(url: &str) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(url).await.expect("connect")
}

impl World {
    async fn client(&self) -> AccountsServiceClient<Channel> {
        AccountsServiceClient::new(self.accounts.channel().await)
    }

    async fn admin_client(&self) -> AccountsAdminServiceClient<Channel> {
        AccountsAdminServiceClient::new(self.accounts.channel().await)
    }

    async fn ledger_client(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.ledger.channel().await)
    }

    async fn ledger_admin(&self) -> LedgerAdminServiceClient<Channel> {
        LedgerAdminServiceClient::new(self.ledger.channel().await)
    }

    async fn accounts_db(&self) -> sqlx::PgConnection {
        connect(self.accounts.database().unwrap().url()).await
    }

    async fn ledger_db(&self) -> sqlx::PgConnection {
        connect(self.ledger.database().unwrap().url()).await
    }

    /// Opens an account for `user` with a fresh key.
    async fn open(&self, user: &TestUser, product: AccountProduct, currency: &str) -> Account {
        self.client()
            .await
            .open_account(keyed(open_request(product, currency), token(user), &fresh_key()))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
    }

    async fn get(&self, user: &TestUser, account_id: &str) -> Result<Account, tonic::Status> {
        let answer = self
            .client()
            .await
            .get_account(bearer(GetAccountRequest { account_id: account_id.into() }, token(user)))
            .await?;
        Ok(answer.into_inner().account.unwrap())
    }

    async fn admin_get(&self, account_id: &str) -> Account {
        self.admin_client()
            .await
            .admin_get_account(bearer(AdminGetAccountRequest { account_id: account_id.into() }, &self.admin))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
    }

    /// A teller deposit through the ledger's admin API.
    async fn deposit(&self, account_id: &str, minor: i64) -> Result<(), tonic::Status> {
        self.ledger_admin()
            .await
            .create_deposit(keyed(
                CreateDepositRequest {
                    account_id: account_id.into(),
                    amount: eur(minor),
                    description: "cash deposit".into(),
                    ..CreateDepositRequest::default()
                },
                &self.admin,
                &fresh_key(),
            ))
            .await
            .map(|_| ())
    }

    async fn withdraw(&self, account_id: &str, minor: i64) {
        self.ledger_admin()
            .await
            .create_withdrawal(keyed(
                CreateWithdrawalRequest {
                    account_id: account_id.into(),
                    amount: eur(minor),
                    description: "cash withdrawal".into(),
                    ..CreateWithdrawalRequest::default()
                },
                &self.admin,
                &fresh_key(),
            ))
            .await
            .unwrap();
    }

    async fn transfer(&self, user: &TestUser, from: &str, to: &str, minor: i64) -> Result<(), tonic::Status> {
        self.ledger_client()
            .await
            .create_transfer(keyed(
                CreateTransferRequest {
                    from_account_id: from.into(),
                    destination: Some(Destination::ToAccountId(to.into())),
                    amount: eur(minor),
                    description: "test".into(),
                    fx_quote_id: String::new(),
                },
                token(user),
                &fresh_key(),
            ))
            .await
            .map(|_| ())
    }

    async fn freeze(
        &self,
        account_id: &str,
        credits_allowed: bool,
        key: &str,
    ) -> Result<Account, tonic::Status> {
        let request = FreezeAccountRequest {
            account_id: account_id.into(),
            reason: "suspected fraud, case 42".into(),
            credits_allowed,
        };
        let answer = self.admin_client().await.freeze_account(keyed(request, &self.admin, key)).await?;
        Ok(answer.into_inner().account.unwrap())
    }

    /// Payloads of the accounts outbox events of `event_type` about `account_id`.
    async fn events(&self, event_type: &str, account_id: &str) -> Vec<Vec<u8>> {
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = $1 AND subject = $2 ORDER BY seq")
            .bind(event_type)
            .bind(format!("accounts/{account_id}"))
            .fetch_all(&mut self.accounts_db().await)
            .await
            .unwrap()
    }

    /// How many ledger accounts `owner` has (straight from the ledger's database).
    async fn ledger_accounts_of(&self, owner: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM ledger_accounts WHERE owner_user_id = $1")
            .bind(Uuid::parse_str(owner).unwrap())
            .fetch_one(&mut self.ledger_db().await)
            .await
            .unwrap()
    }

    async fn status_in_db(&self, account_id: &str) -> String {
        sqlx::query_scalar("SELECT status FROM accounts WHERE account_id = $1")
            .bind(Uuid::parse_str(account_id).unwrap())
            .fetch_one(&mut self.accounts_db().await)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn opening_creates_the_ledger_account_with_the_same_id_number_owner_and_currency() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let mut request = open_request(AccountProduct::Checking, "EUR");
    request.nickname = "  Main ".into();
    let opened = w
        .client()
        .await
        .open_account(keyed(request, token(&alice), &fresh_key()))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();

    assert_eq!(opened.status, AccountStatus::Active as i32);
    assert_eq!(opened.owner_user_id, alice.user_id);
    assert_eq!((opened.currency.as_str(), opened.nickname.as_str()), ("EUR", "Main"));
    assert_eq!(opened.product, AccountProduct::Checking as i32);
    assert_eq!(posted(&opened), 0);
    let number = AccountNumber::parse(&opened.account_number).expect("a valid number with check digits");
    assert!(number.as_str().starts_with(bank_accounts::domain::number::BANK_CODE));

    // The ledger account exists with exactly this id, number, owner and currency: the same data
    // answers it (idempotent), other data is refused.
    let service = w.identity.service_token(&["ledger:accounts"]).await;
    let same = CreateLedgerAccountRequest {
        account_id: opened.account_id.clone(),
        account_number: opened.account_number.clone(),
        owner_user_id: alice.user_id.clone(),
        currency: "EUR".into(),
    };
    let ledger_account = w
        .ledger_client()
        .await
        .create_ledger_account(bearer(same.clone(), &service))
        .await
        .unwrap()
        .into_inner();
    let ledger_account = ledger_account.account.unwrap();
    assert_eq!(ledger_account.account_id, opened.account_id);
    assert_eq!(ledger_account.account_number, opened.account_number);
    let other = CreateLedgerAccountRequest { currency: "USD".into(), ..same };
    let refused = w.ledger_client().await.create_ledger_account(bearer(other, &service)).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(w.ledger_accounts_of(&alice.user_id).await, 1);
    // The owner reads the balance from the ledger with her own token: the ledger knows her as owner.
    let balances = w
        .ledger_client()
        .await
        .get_balances(bearer(
            GetBalancesRequest { account_id: opened.account_id.clone(), as_of: None },
            token(&alice),
        ))
        .await
        .unwrap();
    assert_eq!(balances.into_inner().balances.unwrap().posted.unwrap().minor_units, 0);

    let events = w.events("bank.events.v1.AccountOpened", &opened.account_id).await;
    assert_eq!(events.len(), 1, "exactly one AccountOpened");
    let event = AccountOpened::decode(events[0].as_slice()).unwrap();
    assert_eq!(event.owner_user_id, alice.user_id);
    assert_eq!(event.account_number_last_four, number.last_four());
    assert_eq!((event.currency.as_str(), event.product), ("EUR", AccountProduct::Checking as i32));
}

#[tokio::test]
async fn opening_is_idempotent_and_its_input_is_checked() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let mut client = w.client().await;
    let key = fresh_key();
    let request = open_request(AccountProduct::Savings, "EUR");

    let first = client.open_account(keyed(request.clone(), token(&alice), &key)).await.unwrap();
    assert!(first.metadata().get(REPLAYED).is_none());
    let again = client.open_account(keyed(request.clone(), token(&alice), &key)).await.unwrap();
    assert_eq!(again.metadata().get(REPLAYED).unwrap(), "true");
    let (first, again) = (first.into_inner().account.unwrap(), again.into_inner().account.unwrap());
    assert_eq!(
        (again.account_id.as_str(), again.status),
        (first.account_id.as_str(), AccountStatus::Active as i32)
    );
    assert_eq!(again.account_number, first.account_number);
    assert_eq!(w.ledger_accounts_of(&alice.user_id).await, 1, "one ledger account for two calls");

    // The same key with another request; another user's identical key is a different key.
    let other = open_request(AccountProduct::Savings, "USD");
    let reused = client.open_account(keyed(other, token(&alice), &key)).await.unwrap_err();
    assert_reason(&reused, Code::FailedPrecondition, ErrorCode::IdempotencyKeyReused);
    let bobs = client.open_account(keyed(request.clone(), token(&bob), &key)).await.unwrap().into_inner();
    assert_ne!(bobs.account.unwrap().account_id, first.account_id);

    let missing = client.open_account(bearer(request.clone(), token(&alice))).await.unwrap_err();
    assert_reason(&missing, Code::InvalidArgument, ErrorCode::IdempotencyKeyRequired);
    let unknown = client
        .open_account(keyed(open_request(AccountProduct::Checking, "XXX"), token(&alice), &fresh_key()))
        .await
        .unwrap_err();
    assert_reason(&unknown, Code::InvalidArgument, ErrorCode::CurrencyNotSupported);
    let no_product = client
        .open_account(keyed(open_request(AccountProduct::Unspecified, "EUR"), token(&alice), &fresh_key()))
        .await
        .unwrap_err();
    assert_reason(&no_product, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let mut long = request.clone();
    long.nickname = "x".repeat(51);
    let long = client.open_account(keyed(long, token(&alice), &fresh_key())).await.unwrap_err();
    assert_reason(&long, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let service = w.identity.service_token(&["ledger:accounts"]).await;
    let by_service = client.open_account(keyed(request, &service, &fresh_key())).await.unwrap_err();
    assert_reason(&by_service, Code::PermissionDenied, ErrorCode::PermissionDenied);
    assert_eq!(w.ledger_accounts_of(&alice.user_id).await, 1, "refused requests opened nothing");
}

#[tokio::test]
async fn my_accounts_show_balances_from_the_ledger() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let checking = w.open(&alice, AccountProduct::Checking, "EUR").await;
    let savings = w.open(&alice, AccountProduct::Savings, "USD").await;
    w.deposit(&checking.account_id, 100_000).await.unwrap();

    let mut client = w.client().await;
    let list = client
        .list_my_accounts(bearer(ListMyAccountsRequest::default(), token(&alice)))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = list.accounts.iter().map(|a| a.account_id.as_str()).collect();
    assert_eq!(ids, [checking.account_id.as_str(), savings.account_id.as_str()], "oldest first");
    let balances = list.accounts[0].balances.as_ref().unwrap();
    assert_eq!(balances.posted.as_ref().unwrap().minor_units, 100_000);
    assert_eq!(balances.available.as_ref().unwrap().minor_units, 100_000);
    assert_eq!(posted(&list.accounts[1]), 0);
    assert_eq!(list.accounts[1].balances.as_ref().unwrap().posted.as_ref().unwrap().currency, "USD");
    assert_eq!(posted(&w.get(&alice, &checking.account_id).await.unwrap()), 100_000);

    // Pages of one.
    let first = client
        .list_my_accounts(bearer(
            ListMyAccountsRequest {
                page: Some(PageRequest { page_size: 1, page_token: String::new() }),
                ..Default::default()
            },
            token(&alice),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.accounts.len(), 1);
    let token_2 = first.page_info.unwrap().next_page_token;
    assert!(!token_2.is_empty());
    let second = client
        .list_my_accounts(bearer(
            ListMyAccountsRequest {
                page: Some(PageRequest { page_size: 1, page_token: token_2 }),
                ..Default::default()
            },
            token(&alice),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.accounts[0].account_id, savings.account_id);

    let bobs = client.list_my_accounts(bearer(ListMyAccountsRequest::default(), token(&bob))).await.unwrap();
    assert!(bobs.into_inner().accounts.is_empty());

    // Renaming (the key is honoured: a retry replays).
    let rename =
        UpdateAccountNicknameRequest { account_id: checking.account_id.clone(), nickname: "Holidays".into() };
    let key = fresh_key();
    let renamed = client.update_account_nickname(keyed(rename.clone(), token(&alice), &key)).await.unwrap();
    assert_eq!(renamed.into_inner().account.unwrap().nickname, "Holidays");
    let replay = client.update_account_nickname(keyed(rename, token(&alice), &key)).await.unwrap();
    assert_eq!(replay.metadata().get(REPLAYED).unwrap(), "true");
    let cleared =
        UpdateAccountNicknameRequest { account_id: checking.account_id.clone(), nickname: String::new() };
    let cleared = client.update_account_nickname(bearer(cleared, token(&alice))).await.unwrap().into_inner();
    assert_eq!(cleared.account.unwrap().nickname, "");
    // A card number typed into the nickname is stored masked to its last four (PCI DSS 3.5.1).
    let carded = UpdateAccountNicknameRequest {
        account_id: checking.account_id.clone(),
        nickname: "Visa 4111-1111-1111-1111".into(),
    };
    let carded = client.update_account_nickname(bearer(carded, token(&alice))).await.unwrap().into_inner();
    assert_eq!(carded.account.unwrap().nickname, "Visa ****-****-****-1111");
    let mut opened = open_request(AccountProduct::Savings, "EUR");
    opened.nickname = "4000056655665556".into();
    let opened = client.open_account(keyed(opened, token(&alice), &fresh_key())).await.unwrap().into_inner();
    assert_eq!(opened.account.unwrap().nickname, "************5556");
    let dump = w.accounts.database().unwrap().dump();
    bank_testkit::assert_nowhere(&dump, "4111-1111-1111-1111", "accounts database");
    bank_testkit::assert_nowhere(&dump, "4000056655665556", "accounts database");
    let too_long =
        UpdateAccountNicknameRequest { account_id: checking.account_id.clone(), nickname: "n".repeat(51) };
    let refused = client.update_account_nickname(bearer(too_long, token(&alice))).await.unwrap_err();
    assert_reason(&refused, Code::InvalidArgument, ErrorCode::ValidationFailed);
}

#[tokio::test]
async fn closing_needs_a_zero_balance() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let account = w.open(&alice, AccountProduct::Checking, "EUR").await;
    let id = account.account_id.clone();
    w.deposit(&id, 500).await.unwrap();
    let mut client = w.client().await;
    let close = CloseAccountRequest { account_id: id.clone() };

    let refused = client.close_account(keyed(close.clone(), token(&alice), &fresh_key())).await.unwrap_err();
    assert_reason(&refused, Code::FailedPrecondition, ErrorCode::BalanceNotZero);
    assert_eq!(w.get(&alice, &id).await.unwrap().status, AccountStatus::Active as i32);
    assert!(w.events("bank.events.v1.AccountClosed", &id).await.is_empty());
    let missing_key = client.close_account(bearer(close.clone(), token(&alice))).await.unwrap_err();
    assert_reason(&missing_key, Code::InvalidArgument, ErrorCode::IdempotencyKeyRequired);

    w.withdraw(&id, 500).await;
    let key = fresh_key();
    let closed = client.close_account(keyed(close.clone(), token(&alice), &key)).await.unwrap().into_inner();
    let closed = closed.account.unwrap();
    assert_eq!(closed.status, AccountStatus::Closed as i32);
    assert!(closed.closed_at.is_some());
    let replay = client.close_account(keyed(close.clone(), token(&alice), &key)).await.unwrap();
    assert_eq!(replay.metadata().get(REPLAYED).unwrap(), "true");
    assert_eq!(replay.into_inner().account.unwrap(), closed);
    let again = client.close_account(keyed(close, token(&alice), &fresh_key())).await.unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, ErrorCode::AccountClosed);

    // The ledger account is closed too: nothing posts to it any more.
    let deposit = w.deposit(&id, 100).await.unwrap_err();
    assert_reason(&deposit, Code::FailedPrecondition, ErrorCode::AccountClosed);

    let list =
        client.list_my_accounts(bearer(ListMyAccountsRequest::default(), token(&alice))).await.unwrap();
    assert!(list.into_inner().accounts.is_empty(), "closed accounts are hidden by default");
    let with_closed = ListMyAccountsRequest { include_closed: true, ..ListMyAccountsRequest::default() };
    let list = client.list_my_accounts(bearer(with_closed, token(&alice))).await.unwrap().into_inner();
    assert_eq!(list.accounts.len(), 1);

    let events = w.events("bank.events.v1.AccountClosed", &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(AccountClosed::decode(events[0].as_slice()).unwrap().closed_by_admin, "");
}

#[tokio::test]
async fn a_frozen_account_cannot_be_debited() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let a = w.open(&alice, AccountProduct::Checking, "EUR").await.account_id;
    let b = w.open(&alice, AccountProduct::Checking, "EUR").await.account_id;
    w.deposit(&a, 10_000).await.unwrap();

    let frozen = w.freeze(&a, true, &fresh_key()).await.unwrap();
    assert_eq!(frozen.status, AccountStatus::Frozen as i32);
    let staff_view = w.admin_get(&a).await.freeze.unwrap();
    assert_eq!(staff_view.reason, "suspected fraud, case 42");
    assert!(staff_view.credits_allowed);
    assert!(!staff_view.frozen_by.is_empty());
    let owner_view = w.get(&alice, &a).await.unwrap().freeze.unwrap();
    assert_eq!((owner_view.reason.as_str(), owner_view.frozen_by.as_str()), ("", ""), "staff-only details");

    // The ledger refuses debits inside its posting transaction; credits are still allowed.
    let debit = w.transfer(&alice, &a, &b, 1_000).await.unwrap_err();
    assert_reason(&debit, Code::FailedPrecondition, ErrorCode::AccountFrozen);
    w.deposit(&a, 100).await.unwrap();

    let twice = w.freeze(&a, true, &fresh_key()).await.unwrap_err();
    assert_reason(&twice, Code::FailedPrecondition, ErrorCode::AccountFrozen);
    let close = CloseAccountRequest { account_id: a.clone() };
    let close = w.client().await.close_account(keyed(close, token(&alice), &fresh_key())).await.unwrap_err();
    assert_reason(&close, Code::FailedPrecondition, ErrorCode::AccountFrozen);
    let by_owner = w
        .admin_client()
        .await
        .freeze_account(keyed(
            FreezeAccountRequest { account_id: b.clone(), reason: "me".into(), credits_allowed: true },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap_err();
    assert_reason(&by_owner, Code::PermissionDenied, ErrorCode::PermissionDenied);
    let no_reason = w
        .admin_client()
        .await
        .freeze_account(keyed(
            FreezeAccountRequest { account_id: b.clone(), reason: "  ".into(), credits_allowed: true },
            &w.admin,
            &fresh_key(),
        ))
        .await
        .unwrap_err();
    assert_reason(&no_reason, Code::InvalidArgument, ErrorCode::ValidationFailed);

    let unfreeze = UnfreezeAccountRequest { account_id: a.clone(), reason: "cleared".into() };
    let active =
        w.admin_client().await.unfreeze_account(keyed(unfreeze.clone(), &w.admin, &fresh_key())).await;
    let active = active.unwrap().into_inner().account.unwrap();
    assert_eq!((active.status, active.freeze), (AccountStatus::Active as i32, None));
    w.transfer(&alice, &a, &b, 1_000).await.unwrap();
    let not_frozen = w.admin_client().await.unfreeze_account(keyed(unfreeze, &w.admin, &fresh_key())).await;
    assert_reason(&not_frozen.unwrap_err(), Code::FailedPrecondition, ErrorCode::FailedPrecondition);

    // A freeze without credits refuses deposits too.
    w.freeze(&a, false, &fresh_key()).await.unwrap();
    let credit = w.deposit(&a, 100).await.unwrap_err();
    assert_reason(&credit, Code::FailedPrecondition, ErrorCode::AccountFrozen);

    let frozen_events = w.events("bank.events.v1.AccountFrozen", &a).await;
    assert_eq!(frozen_events.len(), 2);
    let first = AccountFrozen::decode(frozen_events[0].as_slice()).unwrap();
    assert!(first.credits_allowed);
    assert_eq!(first.owner_user_id, alice.user_id);
    assert_eq!(w.events("bank.events.v1.AccountUnfrozen", &a).await.len(), 1);
}

#[tokio::test]
async fn administrators_set_overdraft_limits_and_force_close_frozen_accounts() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let checking = w.open(&alice, AccountProduct::Checking, "EUR").await.account_id;
    let other = w.open(&alice, AccountProduct::Checking, "EUR").await.account_id;
    let savings = w.open(&alice, AccountProduct::Savings, "EUR").await.account_id;
    let mut admin = w.admin_client().await;
    let limit = |account_id: &str, minor: i64, currency: &str| SetOverdraftLimitRequest {
        account_id: account_id.into(),
        limit: Some(Money { currency: currency.into(), minor_units: minor }),
        reason: "credit check passed".into(),
    };

    let set = admin.set_overdraft_limit(keyed(limit(&checking, 5_000, "EUR"), &w.admin, &fresh_key())).await;
    assert_eq!(set.unwrap().into_inner().account.unwrap().overdraft_limit.unwrap().minor_units, 5_000);
    // The ledger enforces it: 30.00 out of an empty account.
    w.transfer(&alice, &checking, &other, 3_000).await.unwrap();
    assert_eq!(posted(&w.get(&alice, &checking).await.unwrap()), -3_000);

    let savings_limit =
        admin.set_overdraft_limit(keyed(limit(&savings, 100, "EUR"), &w.admin, &fresh_key())).await;
    assert_reason(&savings_limit.unwrap_err(), Code::FailedPrecondition, ErrorCode::FailedPrecondition);
    let usd = admin.set_overdraft_limit(keyed(limit(&checking, 100, "USD"), &w.admin, &fresh_key())).await;
    assert_reason(&usd.unwrap_err(), Code::FailedPrecondition, ErrorCode::CurrencyMismatch);
    // Below the current balance: the ledger refuses, the limit stays.
    let below =
        admin.set_overdraft_limit(keyed(limit(&checking, 1_000, "EUR"), &w.admin, &fresh_key())).await;
    assert_reason(&below.unwrap_err(), Code::FailedPrecondition, ErrorCode::FailedPrecondition);
    assert_eq!(w.admin_get(&checking).await.overdraft_limit.unwrap().minor_units, 5_000);

    // Force close: refused while the balance is not zero, allowed for a frozen account at zero.
    let force = |account_id: &str| ForceCloseAccountRequest {
        account_id: account_id.into(),
        reason: "customer left".into(),
    };
    let refused =
        admin.force_close_account(keyed(force(&checking), &w.admin, &fresh_key())).await.unwrap_err();
    assert_reason(&refused, Code::FailedPrecondition, ErrorCode::BalanceNotZero);
    w.transfer(&alice, &other, &checking, 3_000).await.unwrap();
    w.freeze(&other, true, &fresh_key()).await.unwrap();
    let closed = admin.force_close_account(keyed(force(&other), &w.admin, &fresh_key())).await.unwrap();
    let closed = closed.into_inner().account.unwrap();
    assert_eq!((closed.status, closed.freeze), (AccountStatus::Closed as i32, None));
    let events = w.events("bank.events.v1.AccountClosed", &other).await;
    assert_eq!(events.len(), 1);
    assert!(!AccountClosed::decode(events[0].as_slice()).unwrap().closed_by_admin.is_empty());
}

#[tokio::test]
async fn another_users_account_reads_exactly_like_a_missing_one() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let account = w.open(&alice, AccountProduct::Checking, "EUR").await;
    let mut client = w.client().await;
    let random = Uuid::now_v7().to_string();

    let mut answers = Vec::new();
    for id in [account.account_id.as_str(), random.as_str()] {
        let get = client.get_account(bearer(GetAccountRequest { account_id: id.into() }, token(&bob))).await;
        let rename = UpdateAccountNicknameRequest { account_id: id.into(), nickname: "mine now".into() };
        let rename = client.update_account_nickname(bearer(rename, token(&bob))).await;
        let close = CloseAccountRequest { account_id: id.into() };
        let close = client.close_account(keyed(close, token(&bob), &fresh_key())).await;
        let summary: Vec<(Code, Option<ErrorCode>, String)> =
            [get.map(|_| ()), rename.map(|_| ()), close.map(|_| ())]
                .into_iter()
                .map(|answer| {
                    let status = answer.unwrap_err();
                    (status.code(), reason_of(&status), status.message().to_owned())
                })
                .collect();
        answers.push(summary);
    }
    assert_eq!(answers[0], answers[1], "someone else's account and a random id answer alike");
    assert!(
        answers[0]
            .iter()
            .all(|(code, reason, _)| *code == Code::NotFound && *reason == Some(ErrorCode::NotFound))
    );

    let untouched = w.get(&alice, &account.account_id).await.unwrap();
    assert_eq!((untouched.status, untouched.nickname.as_str()), (AccountStatus::Active as i32, ""));
}

#[tokio::test]
async fn search_validates_account_numbers_and_counts_matches() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let first = w.open(&alice, AccountProduct::Checking, "EUR").await;
    w.open(&alice, AccountProduct::Savings, "USD").await;
    w.open(&bob, AccountProduct::Checking, "EUR").await;
    let mut admin = w.admin_client().await;
    let search = |request: SearchAccountsRequest| bearer(request, &w.admin);

    let exact = SearchAccountsRequest { account_number: first.account_number.clone(), ..Default::default() };
    let found = admin.search_accounts(search(exact)).await.unwrap().into_inner();
    assert_eq!(found.accounts.len(), 1);
    assert_eq!(found.accounts[0].account_id, first.account_id);
    assert_eq!(found.page_info.unwrap().total_size, Some(1));

    // One wrong digit: refused before any query (the check digits catch it).
    let mut typo = first.account_number.clone().into_bytes();
    typo[15] = if typo[15] == b'9' { b'0' } else { typo[15] + 1 };
    let typo = String::from_utf8(typo).unwrap();
    let refused = admin
        .search_accounts(search(SearchAccountsRequest { account_number: typo, ..Default::default() }))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let violations = refused.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "account_number");
    assert!(violations[0].description.starts_with("INVALID_CHECK_DIGITS"), "{violations:?}");
    let short = SearchAccountsRequest { account_number: "421".into(), ..Default::default() };
    assert_reason(
        &admin.search_accounts(search(short)).await.unwrap_err(),
        Code::InvalidArgument,
        ErrorCode::ValidationFailed,
    );

    let prefix =
        SearchAccountsRequest { account_number: first.account_number[..10].to_owned(), ..Default::default() };
    let by_prefix = admin.search_accounts(search(prefix)).await.unwrap().into_inner();
    assert!(by_prefix.accounts.iter().any(|a| a.account_id == first.account_id));

    let alices = SearchAccountsRequest {
        owner_user_id: alice.user_id.clone(),
        page: Some(PageRequest { page_size: 1, page_token: String::new() }),
        ..Default::default()
    };
    let page = admin.search_accounts(search(alices)).await.unwrap().into_inner();
    let info = page.page_info.unwrap();
    assert_eq!((page.accounts.len(), info.total_size), (1, Some(2)));
    assert!(!info.next_page_token.is_empty());
    let eur_checking = SearchAccountsRequest {
        currency: "EUR".into(),
        product: AccountProduct::Checking as i32,
        status: AccountStatus::Active as i32,
        ..Default::default()
    };
    let page = admin.search_accounts(search(eur_checking)).await.unwrap().into_inner();
    assert_eq!(page.page_info.unwrap().total_size, Some(2));

    let by_customer =
        admin.search_accounts(bearer(SearchAccountsRequest::default(), token(&alice))).await.unwrap_err();
    assert_reason(&by_customer, Code::PermissionDenied, ErrorCode::PermissionDenied);
}

#[tokio::test]
async fn the_reconciler_finishes_openings_interrupted_by_a_crash() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let owner = Uuid::parse_str(&alice.user_id).unwrap();
    let service = w.identity.service_token(&["ledger:accounts"]).await;
    // Crash after step 1 (no ledger account yet), and after step 2 (the ledger account exists).
    let before_ledger = (Uuid::now_v7(), AccountNumber::random());
    let after_ledger = (Uuid::now_v7(), AccountNumber::random());
    w.ledger_client()
        .await
        .create_ledger_account(bearer(
            CreateLedgerAccountRequest {
                account_id: after_ledger.0.to_string(),
                account_number: after_ledger.1.to_string(),
                owner_user_id: alice.user_id.clone(),
                currency: "EUR".into(),
            },
            &service,
        ))
        .await
        .unwrap();
    let mut db = w.accounts_db().await;
    for (id, number) in [&before_ledger, &after_ledger] {
        sqlx::query(
            "INSERT INTO accounts (account_id, account_number, owner_user_id, product, currency, status, saga_retry_at) \
             VALUES ($1, $2, $3, 'checking', 'EUR', 'opening', now() + interval '2 seconds')",
        )
        .bind(id)
        .bind(number.as_str())
        .bind(owner)
        .execute(&mut db)
        .await
        .unwrap();
    }
    // Pending until then, without balances.
    let pending = w.get(&alice, &before_ledger.0.to_string()).await.unwrap();
    assert_eq!((pending.status, pending.balances), (AccountStatus::Pending as i32, None));

    for (id, _) in [&before_ledger, &after_ledger] {
        let id = id.to_string();
        eventually("the reconciler activates the account", || async {
            w.get(&alice, &id).await.unwrap().status == AccountStatus::Active as i32
        })
        .await;
        assert_eq!(w.events("bank.events.v1.AccountOpened", &id).await.len(), 1);
    }
    assert_eq!(w.ledger_accounts_of(&alice.user_id).await, 2, "no second ledger account");
    w.deposit(&before_ledger.0.to_string(), 100).await.unwrap();
}

#[tokio::test]
async fn while_the_ledger_is_down_requests_answer_unavailable_and_the_reconciler_finishes() {
    let w = world_with(true).await;
    let proxy = w.proxy.as_ref().unwrap();
    let alice = w.identity.user("alice@example.com").await;
    let mut client = w.client().await;
    let key = fresh_key();
    let request = open_request(AccountProduct::Checking, "EUR");

    proxy.cut();
    let down = client.open_account(keyed(request.clone(), token(&alice), &key)).await.unwrap_err();
    assert_reason(&down, Code::Unavailable, ErrorCode::Unavailable);
    let again = client.open_account(keyed(request.clone(), token(&alice), &key)).await.unwrap_err();
    assert_reason(&again, Code::Unavailable, ErrorCode::Unavailable);
    let list = ListMyAccountsRequest::default();
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT account_id, status FROM accounts")
        .fetch_all(&mut w.accounts_db().await)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one account for the key, however often it is retried");
    assert_eq!(rows[0].1, "opening");
    let id = rows[0].0.to_string();

    proxy.restore();
    eventually("the reconciler opens the account", || async { w.status_in_db(&id).await == "active" }).await;
    let retried = client.open_account(keyed(request, token(&alice), &key)).await.unwrap();
    assert_eq!(retried.metadata().get(REPLAYED).unwrap(), "true");
    let account = retried.into_inner().account.unwrap();
    assert_eq!((account.account_id.as_str(), account.status), (id.as_str(), AccountStatus::Active as i32));
    assert_eq!(w.ledger_accounts_of(&alice.user_id).await, 1);
    assert_eq!(w.events("bank.events.v1.AccountOpened", &id).await.len(), 1);
    let listed = client.list_my_accounts(bearer(list, token(&alice))).await.unwrap().into_inner();
    assert_eq!(posted(&listed.accounts[0]), 0);

    // A freeze while the ledger is down is recorded, answered UNAVAILABLE, and finished.
    proxy.cut();
    let freeze_key = fresh_key();
    let down = w.freeze(&id, false, &freeze_key).await.unwrap_err();
    assert_reason(&down, Code::Unavailable, ErrorCode::Unavailable);
    let other = w.freeze(&id, true, &fresh_key()).await.unwrap_err();
    assert_reason(&other, Code::Aborted, ErrorCode::Conflict);
    let balances =
        client.get_account(bearer(GetAccountRequest { account_id: id.clone() }, token(&alice))).await;
    assert_reason(&balances.unwrap_err(), Code::Unavailable, ErrorCode::Unavailable);
    proxy.restore();
    eventually("the reconciler applies the freeze", || async { w.status_in_db(&id).await == "frozen" }).await;
    let replay = w
        .admin_client()
        .await
        .freeze_account(keyed(
            FreezeAccountRequest {
                account_id: id.clone(),
                reason: "suspected fraud, case 42".into(),
                credits_allowed: false,
            },
            &w.admin,
            &freeze_key,
        ))
        .await
        .unwrap();
    assert_eq!(replay.metadata().get(REPLAYED).unwrap(), "true");
    assert_eq!(replay.into_inner().account.unwrap().status, AccountStatus::Frozen as i32);
    let credit = w.deposit(&id, 100).await.unwrap_err();
    assert_reason(&credit, Code::FailedPrecondition, ErrorCode::AccountFrozen);
    assert_eq!(w.events("bank.events.v1.AccountFrozen", &id).await.len(), 1);
}

/// Checks a PDF structurally: the header, `startxref` pointing at the xref table, every in-use
/// xref entry pointing at `N 0 obj`, the trailer's size; answers the document as text.
fn parse_pdf(pdf: &[u8]) -> String {
    assert!(pdf.starts_with(b"%PDF-1."), "header");
    let text = String::from_utf8_lossy(pdf).into_owned();
    assert!(text.trim_end().ends_with("%%EOF"));
    let startxref: usize =
        text.rsplit("startxref").next().unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(pdf[startxref..].starts_with(b"xref"), "startxref points at the xref table");
    // Offsets count bytes of the document (its binary comment makes the lossy text longer).
    let tail = String::from_utf8_lossy(&pdf[startxref..]).into_owned();
    let mut lines = tail.lines().skip(1);
    let header: Vec<usize> = lines.next().unwrap().split(' ').map(|n| n.parse().unwrap()).collect();
    let (first, count) = (header[0], header[1]);
    assert_eq!(first, 0);
    for number in 0..count {
        let entry = lines.next().unwrap();
        assert_eq!(entry.len(), 19, "xref entries are 20 bytes with their newline: {entry:?}");
        let offset: usize = entry[..10].parse().unwrap();
        if entry.ends_with('n') || entry.ends_with("n ") {
            assert!(
                pdf[offset..].starts_with(format!("{number} 0 obj").as_bytes()),
                "object {number} at {offset}"
            );
        }
    }
    assert!(text.contains(&format!("/Size {count}")));
    assert!(text.contains("/Root 1 0 R"));
    text
}

#[tokio::test]
async fn monthly_statements_reconcile_with_the_ledger_as_json_pdf_and_csv() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let account = w.open(&alice, AccountProduct::Checking, "EUR").await;
    let bobs = w.open(&bob, AccountProduct::Checking, "EUR").await;
    let a = account.account_id.clone();
    // The account was opened three months ago (as far as statements are concerned).
    sqlx::query("UPDATE accounts SET opened_at = now() - interval '80 days' WHERE account_id = $1::uuid")
        .bind(&a)
        .execute(&mut w.accounts_db().await)
        .await
        .unwrap();
    w.deposit(&a, 100_000).await.unwrap();
    w.ledger_client()
        .await
        .create_transfer(keyed(
            CreateTransferRequest {
                from_account_id: a.clone(),
                destination: Some(Destination::ToAccountNumber(bobs.account_number.clone())),
                amount: eur(25_000),
                description: "rent (october)".into(),
                fx_quote_id: String::new(),
            },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap();
    let mut client = w.client().await;

    // Newest first, one per calendar month since opening, in pages.
    let list = |page_size: i32, page_token: String| {
        bearer(
            ListStatementsRequest {
                account_id: a.clone(),
                page: Some(PageRequest { page_size, page_token }),
            },
            token(&alice),
        )
    };
    let first = client.list_statements(list(2, String::new())).await.unwrap().into_inner();
    let mut statements = first.statements.clone();
    let mut page_token = first.page_info.unwrap().next_page_token;
    while !page_token.is_empty() {
        let page = client.list_statements(list(2, page_token)).await.unwrap().into_inner();
        statements.extend(page.statements);
        page_token = page.page_info.unwrap().next_page_token;
    }
    assert!((3..=4).contains(&statements.len()), "{statements:?}");
    let periods: Vec<&str> = statements.iter().map(|s| s.period.as_str()).collect();
    let mut sorted = periods.clone();
    sorted.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(periods, sorted, "newest first");
    let current = &statements[0];
    let minor = |m: &Option<Money>| m.as_ref().unwrap().minor_units;
    assert_eq!(
        (minor(&current.opening_balance), minor(&current.closing_balance), current.line_count),
        (0, 75_000, 2)
    );
    assert_eq!((minor(&current.total_credits), minor(&current.total_debits)), (100_000, 25_000));
    assert!(current.lines.is_empty(), "lists carry no lines");
    for older in &statements[1..] {
        assert_eq!(
            (minor(&older.opening_balance), minor(&older.closing_balance), older.line_count),
            (0, 0, 0)
        );
    }

    // The statement with its lines reconciles, and both ends equal the ledger's balances.
    let get = |statement_id: &str, user: &TestUser, account_id: &str| {
        bearer(
            GetStatementRequest { account_id: account_id.into(), statement_id: statement_id.into() },
            token(user),
        )
    };
    let statement = client
        .get_statement(get(&current.statement_id, &alice, &a))
        .await
        .unwrap()
        .into_inner()
        .statement
        .unwrap();
    assert_eq!(statement.lines.len(), 2);
    let sum: i64 = statement.lines.iter().map(|l| minor(&l.amount)).sum();
    assert_eq!(minor(&statement.opening_balance) + sum, minor(&statement.closing_balance));
    assert_eq!(minor(&statement.lines[1].balance_after), minor(&statement.closing_balance));
    assert_eq!(statement.lines[1].description, "rent (october)");
    let service = w.identity.service_token(&["ledger:read"]).await;
    let ledger = w.ledger_client().await;
    let ledger_at = |at: Option<pbjson_types::Timestamp>| {
        let (mut ledger, request) =
            (ledger.clone(), bearer(GetBalancesRequest { account_id: a.clone(), as_of: at }, &service));
        async move {
            ledger
                .get_balances(request)
                .await
                .unwrap()
                .into_inner()
                .balances
                .unwrap()
                .posted
                .unwrap()
                .minor_units
        }
    };
    assert_eq!(ledger_at(statement.period_start).await, minor(&statement.opening_balance));
    assert_eq!(ledger_at(None).await, minor(&statement.closing_balance), "the current month closes at now");
    let oldest = statements.last().unwrap();
    let old = client
        .get_statement(get(&oldest.statement_id, &alice, &a))
        .await
        .unwrap()
        .into_inner()
        .statement
        .unwrap();
    assert!(old.lines.is_empty());
    assert_eq!(ledger_at(old.period_end).await, minor(&old.closing_balance));

    // The PDF: structurally sound, with the closing balance and a masked account number.
    let download = |format: StatementFormat| {
        bearer(
            DownloadStatementRequest {
                account_id: a.clone(),
                statement_id: current.statement_id.clone(),
                format: format as i32,
            },
            token(&alice),
        )
    };
    let pdf = client.download_statement(download(StatementFormat::Unspecified)).await.unwrap().into_inner();
    let file = pdf.file.unwrap();
    assert_eq!(file.content_type, "application/pdf");
    let last_four = &account.account_number[12..];
    assert_eq!(pdf.filename, format!("statement-{}-{last_four}.pdf", current.period));
    let text = parse_pdf(&file.data);
    assert!(text.contains("Closing balance: 750.00 EUR"), "{text}");
    assert!(text.contains("Opening balance: 0.00 EUR"));
    assert!(text.contains(&format!("****{last_four}")));
    assert!(!text.contains(&account.account_number), "the full number never appears");
    assert!(text.contains("rent \\(october\\)"), "escaped description");
    let csv = client.download_statement(download(StatementFormat::Csv)).await.unwrap().into_inner();
    let file = csv.file.unwrap();
    assert_eq!(file.content_type, "text/csv; charset=utf-8");
    let csv = String::from_utf8(file.data).unwrap();
    assert!(csv.contains("-250.00,750.00\r\n"), "{csv}");

    // Nobody else's statements; unknown or made-up ids read like missing ones; bad input refused.
    let theirs = client.get_statement(get(&current.statement_id, &bob, &a)).await.unwrap_err();
    let unknown = client
        .get_statement(get(&current.statement_id, &bob, &Uuid::now_v7().to_string()))
        .await
        .unwrap_err();
    assert_eq!((theirs.code(), theirs.message()), (unknown.code(), unknown.message()));
    assert_reason(&theirs, Code::NotFound, ErrorCode::NotFound);
    let foreign = client.get_statement(get(&current.statement_id, &bob, &bobs.account_id)).await.unwrap_err();
    assert_reason(&foreign, Code::NotFound, ErrorCode::NotFound);
    let made_up = client.get_statement(get(&Uuid::now_v7().to_string(), &alice, &a)).await.unwrap_err();
    assert_reason(&made_up, Code::NotFound, ErrorCode::NotFound);
    let err = client.get_statement(get("nope", &alice, &a)).await.unwrap_err();
    assert_reason(&err, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let err = client
        .list_statements(bearer(ListStatementsRequest { account_id: a.clone(), page: None }, token(&bob)))
        .await
        .unwrap_err();
    assert_reason(&err, Code::NotFound, ErrorCode::NotFound);
    let mut bad_format = download(StatementFormat::Pdf);
    bad_format.get_mut().format = 42;
    let err = client.download_statement(bad_format).await.unwrap_err();
    assert_reason(&err, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let err = client.list_statements(list(2, "garbage".into())).await.unwrap_err();
    assert_reason(&err, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let err = client
        .list_statements(bearer(
            ListStatementsRequest { account_id: "nope".into(), page: None },
            token(&alice),
        ))
        .await
        .unwrap_err();
    assert_reason(&err, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let err = client
        .list_statements(bearer(ListStatementsRequest { account_id: a.clone(), page: None }, &w.admin))
        .await
        .unwrap_err();
    assert_reason(&err, Code::NotFound, ErrorCode::NotFound);

    // An account still being opened has no statements yet (the ledger does not know it).
    // (Not due for the reconciler for an hour, so it stays opening for this test.)
    sqlx::query(
        "UPDATE accounts SET status = 'opening', saga_retry_at = now() + interval '1 hour' WHERE account_id = $1::uuid",
    )
        .bind(&bobs.account_id)
        .execute(&mut w.accounts_db().await)
        .await
        .unwrap();
    let err = client
        .list_statements(bearer(
            ListStatementsRequest { account_id: bobs.account_id.clone(), page: None },
            token(&bob),
        ))
        .await
        .unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, ErrorCode::AccountNotReady);
}

#[tokio::test]
async fn every_statement_reconciles_with_the_ledgers_balances_at_its_period_boundaries() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let account = w.open(&alice, AccountProduct::Savings, "EUR").await;
    let a = account.account_id.clone();
    sqlx::query("UPDATE accounts SET opened_at = now() - interval '80 days' WHERE account_id = $1::uuid")
        .bind(&a)
        .execute(&mut w.accounts_db().await)
        .await
        .unwrap();
    w.deposit(&a, 40_000).await.unwrap();
    w.deposit(&a, 2_000).await.unwrap();
    w.withdraw(&a, 5_000).await;
    // Postings can only happen now; move the first deposit 40 days into the past directly in the
    // ledger's journal (the hash chain would flag this; statements only read posted_at and amounts).
    let mut ledger_db = w.ledger_db().await;
    sqlx::query("ALTER TABLE entries DISABLE TRIGGER entries_append_only")
        .execute(&mut ledger_db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE entries SET posted_at = posted_at - interval '40 days' WHERE transaction_id = \
         (SELECT transaction_id FROM entries WHERE account_id = $1::uuid ORDER BY sequence LIMIT 1)",
    )
    .bind(&a)
    .execute(&mut ledger_db)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE entries ENABLE TRIGGER entries_append_only")
        .execute(&mut ledger_db)
        .await
        .unwrap();

    let mut client = w.client().await;
    let statements = client
        .list_statements(bearer(ListStatementsRequest { account_id: a.clone(), page: None }, token(&alice)))
        .await
        .unwrap()
        .into_inner()
        .statements;
    let service = w.identity.service_token(&["ledger:read"]).await;
    let mut ledger = w.ledger_client().await;
    let minor = |m: &Option<Money>| m.as_ref().unwrap().minor_units;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut with_lines = 0;
    for (i, listed) in statements.iter().enumerate() {
        let statement = client
            .get_statement(bearer(
                GetStatementRequest { account_id: a.clone(), statement_id: listed.statement_id.clone() },
                token(&alice),
            ))
            .await
            .unwrap()
            .into_inner()
            .statement
            .unwrap();
        let sum: i64 = statement.lines.iter().map(|l| minor(&l.amount)).sum();
        assert_eq!(
            minor(&statement.opening_balance) + sum,
            minor(&statement.closing_balance),
            "{}",
            statement.period
        );
        assert_eq!(statement.line_count, i32::try_from(statement.lines.len()).unwrap());
        with_lines += usize::from(!statement.lines.is_empty());
        let end = statement.period_end.unwrap();
        let end = (u64::try_from(end.seconds).unwrap() <= now).then_some(end);
        for (at, expected) in
            [(statement.period_start, &statement.opening_balance), (end, &statement.closing_balance)]
        {
            let balances = ledger
                .get_balances(bearer(GetBalancesRequest { account_id: a.clone(), as_of: at }, &service))
                .await
                .unwrap()
                .into_inner()
                .balances
                .unwrap();
            assert_eq!(minor(&balances.posted), minor(expected), "{} at {at:?}", statement.period);
        }
        // Each month opens where the one before closed.
        if let Some(before) = statements.get(i + 1) {
            assert_eq!(minor(&statement.opening_balance), minor(&before.closing_balance));
        }
    }
    assert_eq!(with_lines, 2, "the back-dated deposit's month and the current month");
    assert_eq!(minor(&statements[0].closing_balance), 37_000);
    assert_eq!(minor(&statements[0].opening_balance), 40_000);
}

/// Item: while accounts' database is unreachable, a read answers `UNAVAILABLE` (503 with
/// `Retry-After` at the gateway), not `INTERNAL`; once readiness has seen the database down it
/// answers without waiting for a connection; and it serves again when the database returns.
#[tokio::test]
async fn with_its_database_down_accounts_answers_unavailable_with_a_retry_hint() {
    let identity = TestIdentity::spawn().await;
    let database = bank_testkit::TestDatabase::create().await;
    let proxy = TcpProxy::start(bank_testkit::postgres_addr()).await;
    let accounts = bank_testkit::spawn_with::<Accounts>(
        identity
            .trust(Options::default())
            .database(false)
            .set("database.url", database.url_via(proxy.addr()))
            .set("database.acquire_timeout", "3s"),
    )
    .await;
    let alice = identity.user("alice@example.com").await;
    let mut client = AccountsServiceClient::new(accounts.channel().await);
    client.list_my_accounts(bearer(ListMyAccountsRequest::default(), token(&alice))).await.unwrap();

    proxy.cut();
    assert!(
        accounts.wait_ready(false, std::time::Duration::from_secs(10)).await,
        "readiness follows PostgreSQL"
    );
    let err =
        client.list_my_accounts(bearer(ListMyAccountsRequest::default(), token(&alice))).await.unwrap_err();
    assert_reason(&err, Code::Unavailable, ErrorCode::Unavailable);
    let info = err.get_details_error_info().expect("error info");
    assert_eq!(info.metadata.get("retry_after_seconds").map(String::as_str), Some("1"));
    // A write too, and nothing half-done.
    let err = client
        .open_account(keyed(open_request(AccountProduct::Checking, "EUR"), token(&alice), &fresh_key()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    proxy.restore();
    assert!(
        accounts.wait_ready(true, std::time::Duration::from_secs(10)).await,
        "recovers without a restart"
    );
    let list = client
        .list_my_accounts(bearer(ListMyAccountsRequest::default(), token(&alice)))
        .await
        .unwrap()
        .into_inner();
    assert!(list.accounts.is_empty(), "the refused open left nothing behind");
}
