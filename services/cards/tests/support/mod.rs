//! The world the cards tests run in: identity, the ledger, accounts and cards, each with a fresh
//! database, talking through real gRPC; helpers that go through the real RPCs.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{future::Future, time::Duration};

use bank_accounts::Accounts;
use bank_cards::Cards;
use bank_ledger::Ledger;
use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::{
    accounts::v1::{AccountProduct, OpenAccountRequest, accounts_service_client::AccountsServiceClient},
    cards::v1::{
        Authorization, AuthorizeChargeRequest, CardLimits, IssueCardRequest, IssueCardResponse, Merchant,
        cards_admin_service_client::CardsAdminServiceClient, cards_service_client::CardsServiceClient,
    },
    common::v1::{Balances, Money},
    ledger::v1::{
        CreateDepositRequest, GetBalancesRequest, ledger_admin_service_client::LedgerAdminServiceClient,
        ledger_service_client::LedgerServiceClient,
    },
};
use bank_testkit::{Options, TestApp, TestIdentity, TestUser, bearer};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

/// Two KEKs: `kek-1` (the first primary) and `kek-2` (for rotation).
pub const KEK_1: &str = "kek-1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const KEK_2: &str = "kek-2=HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

pub struct World {
    pub identity: TestIdentity,
    pub ledger: TestApp,
    pub accounts: TestApp,
    pub cards: TestApp,
    pub admin: String,
}

/// The settings cards gets in tests (plus identity's trust settings).
pub fn cards_options(
    identity: &TestIdentity,
    ledger_addr: std::net::SocketAddr,
    accounts: &TestApp,
) -> Options {
    identity
        .trust(Options::default())
        .set("vault.keks", format!("{KEK_1},{KEK_2}"))
        .set("ledger_url", format!("http://{ledger_addr}"))
        .set("accounts_url", format!("http://{}", accounts.addr))
        .set("upstream_timeout", "5s")
        .set("cards.allow_owner_charges", true)
        .set("reconciler.interval", "100ms")
        .set("reconciler.stuck_after", "1s")
        .set("reconciler.max_backoff", "2s")
}

pub async fn world() -> World {
    let identity = TestIdentity::spawn().await;
    let ledger = bank_testkit::spawn_with::<Ledger>(identity.trust(Options::default())).await;
    let accounts = bank_testkit::spawn_with::<Accounts>(
        identity.trust(Options::default()).set("ledger_url", format!("http://{}", ledger.addr)),
    )
    .await;
    let cards = bank_testkit::spawn_with::<Cards>(cards_options(&identity, ledger.addr, &accounts)).await;
    let admin = identity.admin().await.access_token;
    World { identity, ledger, accounts, cards, admin }
}

pub fn eur(minor_units: i64) -> Option<Money> {
    Some(Money { currency: "EUR".into(), minor_units })
}

pub fn keyed<T>(message: T, token: &str, key: &str) -> tonic::Request<T> {
    let mut request = bearer(message, token);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

pub fn fresh_key() -> String {
    Uuid::now_v7().to_string()
}

pub fn token(user: &TestUser) -> &str {
    &user.tokens.access_token
}

#[track_caller]
pub fn assert_reason(status: &tonic::Status, code: Code, reason: ErrorCode) {
    assert_eq!((status.code(), reason_of(status)), (code, Some(reason)), "{status:?}");
}

pub fn merchant(name: &str) -> Option<Merchant> {
    Some(Merchant { name: name.into(), category_code: "5411".into(), ..Merchant::default() })
}

pub fn charge_request(card_id: &str, minor: i64) -> AuthorizeChargeRequest {
    AuthorizeChargeRequest {
        card_id: card_id.into(),
        merchant: merchant("Corner Grocer"),
        amount: eur(minor),
        acquirer_reference: String::new(),
    }
}

/// Polls `check` until it holds (or fails the test after 30 s).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn connect(url: &str) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(url).await.expect("connect")
}

impl World {
    pub async fn client(&self) -> CardsServiceClient<Channel> {
        CardsServiceClient::new(self.cards.channel().await)
    }

    pub async fn admin_client(&self) -> CardsAdminServiceClient<Channel> {
        CardsAdminServiceClient::new(self.cards.channel().await)
    }

    pub async fn cards_db(&self) -> sqlx::PgConnection {
        connect(self.cards.database().unwrap().url()).await
    }

    /// A service token with `cards:authorize` (the acquirer).
    pub async fn acquirer(&self) -> String {
        self.identity.service_token(&["cards:authorize"]).await
    }

    /// A user with a EUR checking account holding `deposit`.
    pub async fn customer(&self, email: &str, deposit: i64) -> (TestUser, String) {
        let user = self.identity.user(email).await;
        let account = AccountsServiceClient::new(self.accounts.channel().await)
            .open_account(keyed(
                OpenAccountRequest {
                    product: AccountProduct::Checking as i32,
                    currency: "EUR".into(),
                    nickname: String::new(),
                },
                token(&user),
                &fresh_key(),
            ))
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap();
        if deposit > 0 {
            LedgerAdminServiceClient::new(self.ledger.channel().await)
                .create_deposit(keyed(
                    CreateDepositRequest {
                        account_id: account.account_id.clone(),
                        amount: eur(deposit),
                        description: "cash deposit".into(),
                        ..CreateDepositRequest::default()
                    },
                    &self.admin,
                    &fresh_key(),
                ))
                .await
                .unwrap();
        }
        (user, account.account_id)
    }

    /// Issues a card with optional limits (daily, per transaction).
    pub async fn issue(
        &self,
        user: &TestUser,
        account_id: &str,
        limits: Option<(i64, i64)>,
    ) -> IssueCardResponse {
        self.client()
            .await
            .issue_card(keyed(
                IssueCardRequest {
                    account_id: account_id.into(),
                    cardholder_name: String::new(),
                    limits: limits.map(|(daily, per)| CardLimits {
                        daily_limit: eur(daily),
                        per_transaction_limit: eur(per),
                    }),
                },
                token(user),
                &fresh_key(),
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// A charge by `caller` (the acquirer's or the owner's token).
    pub async fn charge(
        &self,
        caller: &str,
        card_id: &str,
        minor: i64,
        key: &str,
    ) -> Result<Authorization, tonic::Status> {
        Ok(self
            .client()
            .await
            .authorize_charge(keyed(charge_request(card_id, minor), caller, key))
            .await?
            .into_inner()
            .authorization
            .unwrap())
    }

    pub async fn balances(&self, user: &TestUser, account_id: &str) -> Balances {
        LedgerServiceClient::new(self.ledger.channel().await)
            .get_balances(bearer(
                GetBalancesRequest { account_id: account_id.into(), as_of: None },
                token(user),
            ))
            .await
            .unwrap()
            .into_inner()
            .balances
            .unwrap()
    }

    /// The payloads of the cards outbox events of `event_type`, oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        let mut conn = self.cards_db().await;
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = $1 ORDER BY seq")
            .bind(event_type)
            .fetch_all(&mut conn)
            .await
            .unwrap()
    }
}

/// (posted, held, available) in minor units.
pub fn triple(balances: &Balances) -> (i64, i64, i64) {
    (
        balances.posted.as_ref().unwrap().minor_units,
        balances.held.as_ref().unwrap().minor_units,
        balances.available.as_ref().unwrap().minor_units,
    )
}

/// Every 13 to 19 digit Luhn-valid number in `text`, contiguous or in groups of four separated by
/// single spaces or dashes, that stands on its own (not inside a longer alphanumeric token or
/// after a decimal point).
pub fn luhn_numbers(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let standalone_start = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.'));
        if !standalone_start {
            i += 1;
            continue;
        }
        // Collect digits, allowing one separator between groups.
        let mut digits = String::new();
        let mut j = i;
        let mut group = 0;
        let mut separated = None::<u8>;
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                digits.push(char::from(b));
                group += 1;
                j += 1;
            } else if (b == b' ' || b == b'-')
                && group == 4
                && separated.is_none_or(|s| s == b)
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
            {
                separated = Some(b);
                group = 0;
                j += 1;
            } else {
                break;
            }
        }
        let standalone_end = j >= bytes.len() || !bytes[j].is_ascii_alphanumeric();
        if standalone_end && (13..=19).contains(&digits.len()) && bank_cards::domain::luhn_valid(&digits) {
            found.push(digits);
        }
        i = j.max(i + 1);
    }
    found
}
