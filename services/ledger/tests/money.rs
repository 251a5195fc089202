//! Money movement through the real ledger, identity, PostgreSQL and Redis: double entry, checks
//! inside the posting transaction, idempotency, concurrency and the integrity checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bank_ledger::Ledger;
use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::{
    common::v1::{Money, PageRequest},
    ledger::v1::{
        AdminListEntriesRequest, CaptureHoldRequest, CreateDepositRequest, CreateHoldRequest,
        CreateLedgerAccountRequest, CreateTransferRequest, CreateWithdrawalRequest, EntryDirection,
        EntrySort, GetBalancesRequest, GetLedgerAccountRequest, GetTransactionRequest, GetTransferRequest,
        HoldStatus, ListEntriesRequest, ListSystemAccountsRequest, ListTransfersRequest,
        ReverseTransactionRequest, SetLowBalanceThresholdRequest, SummarizeAccountPeriodsRequest,
        SystemAccountType, TransactionKind, TransferStatus, VerifyLedgerInvariantsRequest, VoidHoldRequest,
        create_transfer_request::Destination, ledger_admin_service_client::LedgerAdminServiceClient,
        ledger_service_client::LedgerServiceClient,
    },
};
use bank_testkit::{Options, TestApp, TestIdentity, TestUser, bearer};
use prost::Message as _;
use tonic::{Code, transport::Channel};

struct World {
    identity: TestIdentity,
    ledger: TestApp,
    admin: String,
    service: String,
}

async fn world() -> World {
    world_with(Options::default()).await
}

async fn world_with(options: Options) -> World {
    let identity = TestIdentity::spawn().await;
    let ledger = bank_testkit::spawn_with::<Ledger>(identity.trust(options)).await;
    let admin = identity.admin().await.access_token;
    let service = identity.service_token(&["ledger:accounts"]).await;
    World { identity, ledger, admin, service }
}

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money { currency: "EUR".into(), minor_units })
}

fn keyed<T>(message: T, token: &str, key: &str) -> tonic::Request<T> {
    let mut request = bearer(message, token);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

impl World {
    async fn client(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.ledger.channel().await)
    }

    async fn admin_client(&self) -> LedgerAdminServiceClient<Channel> {
        LedgerAdminServiceClient::new(self.ledger.channel().await)
    }

    /// A ledger account for `user` (as the accounts service would create it), funded with `minor`.
    async fn account(&self, user: &TestUser, number: &str, minor: i64) -> String {
        let account_id = uuid::Uuid::now_v7().to_string();
        self.client()
            .await
            .create_ledger_account(bearer(
                CreateLedgerAccountRequest {
                    account_id: account_id.clone(),
                    account_number: number.into(),
                    owner_user_id: user.user_id.clone(),
                    currency: "EUR".into(),
                },
                &self.service,
            ))
            .await
            .unwrap();
        if minor > 0 {
            self.admin_client()
                .await
                .create_deposit(keyed(
                    CreateDepositRequest {
                        account_id: account_id.clone(),
                        amount: eur(minor),
                        description: "opening deposit".into(),
                        ..CreateDepositRequest::default()
                    },
                    &self.admin,
                    &uuid::Uuid::now_v7().to_string(),
                ))
                .await
                .unwrap();
        }
        account_id
    }

    async fn available(&self, user: &TestUser, account: &str) -> i64 {
        self.client()
            .await
            .get_balances(bearer(
                GetBalancesRequest { account_id: account.into(), as_of: None },
                &user.tokens.access_token,
            ))
            .await
            .unwrap()
            .into_inner()
            .balances
            .unwrap()
            .available
            .unwrap()
            .minor_units
    }

    async fn assert_healthy(&self) {
        let report = self
            .admin_client()
            .await
            .verify_ledger_invariants(bearer(VerifyLedgerInvariantsRequest {}, &self.admin))
            .await
            .unwrap()
            .into_inner();
        assert!(report.healthy, "invariants broken: {:?}", report.violations);
    }
}

fn transfer(from: &str, to: Destination, minor: i64) -> CreateTransferRequest {
    CreateTransferRequest {
        from_account_id: from.into(),
        destination: Some(to),
        amount: eur(minor),
        description: "rent".into(),
        fx_quote_id: String::new(),
    }
}

#[tokio::test]
async fn a_card_number_in_a_description_is_masked_before_it_is_stored_or_sent() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE00ALICE"), 10_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE00BOB"), 0).await;
    let to = Destination::ToAccountNumber(bank_testkit::account_number("DE00BOB"));
    let mut request = transfer(&a, to, 1_000);
    request.description = "card 4111 1111 1111 1111, ref 12345".into();
    let sent = w
        .client()
        .await
        .create_transfer(keyed(request, &alice.tokens.access_token, "k-pan"))
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    assert_eq!(sent.description, "card **** **** **** 1111, ref 12345");
    let history = w
        .client()
        .await
        .list_entries(bearer(
            ListEntriesRequest { account_id: b.clone(), ..ListEntriesRequest::default() },
            &bob.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(history.iter().any(|e| e.description == "card **** **** **** 1111, ref 12345"), "{history:?}");
    // Neither the tables nor the outbox (the event the recipient's email and webhook are made from)
    // holds the number.
    let dump = w.ledger.database().unwrap().dump();
    assert!(dump.contains("ref 12345"), "the description is stored");
    bank_testkit::assert_nowhere(&dump, "4111 1111 1111 1111", "ledger database");
}

#[tokio::test]
async fn a_transfer_by_number_moves_money_once_and_a_retry_replays_it() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE00ALICE"), 100_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE00BOB"), 0).await;
    let mut client = w.client().await;

    let request = transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE00BOB")), 25_000);
    let first =
        client.create_transfer(keyed(request.clone(), &alice.tokens.access_token, "k-1")).await.unwrap();
    assert!(first.metadata().get("idempotent-replay").is_none());
    let retry =
        client.create_transfer(keyed(request.clone(), &alice.tokens.access_token, "k-1")).await.unwrap();
    assert_eq!(retry.metadata().get("idempotent-replay").unwrap(), "true");
    assert_eq!(first.get_ref().transfer, retry.get_ref().transfer);
    assert_eq!(w.available(&alice, &a).await, 75_000);
    assert_eq!(w.available(&bob, &b).await, 25_000);

    // Same key, another amount: refused with a stable reason, nothing moves.
    let conflict = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE00BOB")), 1),
            &alice.tokens.access_token,
            "k-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&conflict), Some(ErrorCode::IdempotencyKeyReused));
    assert_eq!(conflict.code(), Code::FailedPrecondition);
    // Bob's "k-1" is his own key: his own transfer, never Alice's response.
    let bobs = client
        .create_transfer(keyed(
            transfer(&b, Destination::ToAccountNumber(bank_testkit::account_number("DE00ALICE")), 5_000),
            &bob.tokens.access_token,
            "k-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(bobs.transfer.unwrap().transfer_id, first.into_inner().transfer.unwrap().transfer_id);
    assert_eq!(w.available(&alice, &a).await, 80_000);

    // Both see the entry in their history.
    let history = client
        .list_entries(bearer(
            ListEntriesRequest { account_id: b.clone(), ..ListEntriesRequest::default() },
            &bob.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].amount.as_ref().unwrap().minor_units, 25_000);

    // A mistyped number (one digit off: the check digits catch it) is the client's mistake: 400 on
    // the field, not "no such account"; the grouped form people type is accepted.
    let number = bank_testkit::account_number("DE00BOB");
    let mut typo: Vec<char> = number.chars().collect();
    typo[9] = if typo[9] == '0' { '1' } else { '0' };
    let typo: String = typo.into_iter().collect();
    let err = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(typo), 1),
            &alice.tokens.access_token,
            "k-typo",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason_of(&err)),
        (Code::InvalidArgument, Some(ErrorCode::ValidationFailed)),
        "{err:?}"
    );
    let bad = tonic_types::StatusExt::get_details_bad_request(&err).expect("field violations");
    assert_eq!(bad.field_violations[0].field, "to_account_number");
    assert!(bad.field_violations[0].description.starts_with("INVALID_CHECK_DIGITS: "), "{bad:?}");
    let grouped = format!("{} {} {} {}", &number[0..4], &number[4..8], &number[8..12], &number[12..16]);
    client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(grouped), 1),
            &alice.tokens.access_token,
            "k-grouped",
        ))
        .await
        .unwrap();
    assert_eq!(w.available(&alice, &a).await, 79_999);
    w.assert_healthy().await;
}

#[tokio::test]
async fn nobody_reads_or_debits_someone_elses_account_and_bad_input_is_refused() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE01ALICE"), 10_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE01BOB"), 10_000).await;
    let mut client = w.client().await;
    let token = &alice.tokens.access_token;

    let unknown = uuid::Uuid::now_v7().to_string();
    let theirs = client
        .get_balances(bearer(GetBalancesRequest { account_id: b.clone(), as_of: None }, token))
        .await
        .unwrap_err();
    let nothing = client
        .get_balances(bearer(GetBalancesRequest { account_id: unknown.clone(), as_of: None }, token))
        .await
        .unwrap_err();
    assert_eq!((theirs.code(), theirs.message()), (nothing.code(), nothing.message()));
    assert_eq!(theirs.code(), Code::NotFound);
    let debit = client
        .create_transfer(keyed(transfer(&b, Destination::ToAccountId(a.clone()), 100), token, "x1"))
        .await
        .unwrap_err();
    assert_eq!(debit.code(), Code::NotFound);
    // Another user's account by id is not a destination either (by number it is).
    let by_id = client
        .create_transfer(keyed(transfer(&a, Destination::ToAccountId(b.clone()), 100), token, "x2"))
        .await
        .unwrap_err();
    assert_eq!(by_id.code(), Code::NotFound);
    let history = client
        .list_entries(bearer(
            ListEntriesRequest { account_id: b.clone(), ..ListEntriesRequest::default() },
            token,
        ))
        .await
        .unwrap_err();
    assert_eq!(history.code(), Code::NotFound);

    for (amount, field) in [(0, "amount.minor_units"), (-5, "amount.minor_units")] {
        let err = client
            .create_transfer(keyed(
                transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE01BOB")), amount),
                token,
                "x3",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let details = tonic_types::StatusExt::get_error_details(&err);
        assert_eq!(details.bad_request().unwrap().field_violations[0].field, field);
    }
    let mut xxx = transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE01BOB")), 100);
    xxx.amount = Some(Money { currency: "XXX".into(), minor_units: 100 });
    let err = client.create_transfer(keyed(xxx, token, "x4")).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::CurrencyNotSupported));
    let mut usd = transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE01BOB")), 100);
    usd.amount = Some(Money { currency: "USD".into(), minor_units: 100 });
    let err = client.create_transfer(keyed(usd, token, "x5")).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::CurrencyMismatch));
    let err = client
        .create_transfer(keyed(transfer(&a, Destination::ToAccountId(a.clone()), 100), token, "x6"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .create_transfer(bearer(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE01BOB")), 100),
            token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::IdempotencyKeyRequired));
    let err = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE01BOB")), 100_000),
            token,
            "x7",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::InsufficientFunds));
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(w.available(&alice, &a).await, 10_000, "nothing moved");

    // Customers cannot deposit; tellers/admins can.
    let err = w
        .admin_client()
        .await
        .create_deposit(keyed(
            CreateDepositRequest { account_id: a.clone(), amount: eur(1), ..CreateDepositRequest::default() },
            token,
            "x8",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    w.admin_client()
        .await
        .create_withdrawal(keyed(
            CreateWithdrawalRequest {
                account_id: a.clone(),
                amount: eur(4_000),
                ..CreateWithdrawalRequest::default()
            },
            &w.admin,
            "w1",
        ))
        .await
        .unwrap();
    assert_eq!(w.available(&alice, &a).await, 6_000);
    w.assert_healthy().await;
}

#[tokio::test]
async fn ten_concurrent_debits_of_20_on_100_exactly_five_succeed() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE02ALICE"), 100).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE02BOB"), 0).await;
    let channel = w.ledger.channel().await;
    let mut calls = Vec::new();
    for i in 0..10 {
        let mut client = LedgerServiceClient::new(channel.clone());
        let request = keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE02BOB")), 20),
            &alice.tokens.access_token,
            &format!("c-{i}"),
        );
        calls.push(tokio::spawn(async move { client.create_transfer(request).await }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(err) => assert_eq!(reason_of(&err), Some(ErrorCode::InsufficientFunds), "{err:?}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(w.available(&alice, &a).await, 0);
    assert_eq!(w.available(&bob, &b).await, 100);
    w.assert_healthy().await;
}

#[tokio::test]
async fn sixteen_clients_transferring_both_ways_at_once_all_complete() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE03ALICE"), 1_000_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE03BOB"), 1_000_000).await;
    let channel = w.ledger.channel().await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut client = LedgerServiceClient::new(channel.clone());
        let (from, to, token) = if i % 2 == 0 {
            (a.clone(), bank_testkit::account_number("DE03BOB"), alice.tokens.access_token.clone())
        } else {
            (b.clone(), bank_testkit::account_number("DE03ALICE"), bob.tokens.access_token.clone())
        };
        calls.push(tokio::spawn(async move {
            for n in 0..5 {
                let request = keyed(
                    transfer(&from, Destination::ToAccountNumber(to.clone()), 100 + i),
                    &token,
                    &format!("m-{i}-{n}"),
                );
                client.create_transfer(request).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for call in calls {
        call.await.unwrap().expect("no transfer failed");
    }
    let total = w.available(&alice, &a).await + w.available(&bob, &b).await;
    assert_eq!(total, 2_000_000, "money is neither created nor lost");
    w.assert_healthy().await;
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_make_exactly_one_transfer() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE04ALICE"), 10_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE04BOB"), 0).await;
    let channel = w.ledger.channel().await;
    let request =
        Arc::new(transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE04BOB")), 700));
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut client = LedgerServiceClient::new(channel.clone());
        let request = keyed((*request).clone(), &alice.tokens.access_token, "the-one-key");
        calls.push(tokio::spawn(async move { client.create_transfer(request).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        let response = call.await.unwrap().expect("every duplicate answers the first's response");
        ids.insert(response.into_inner().transfer.unwrap().transfer_id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(w.available(&bob, &b).await, 700);
    assert_eq!(w.available(&alice, &a).await, 9_300);
    w.assert_healthy().await;
}

#[tokio::test]
async fn the_journal_is_append_only_and_tampering_is_detected() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE05ALICE"), 5_000).await;
    w.account(&bob, &bank_testkit::account_number("DE05BOB"), 0).await;
    w.client()
        .await
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE05BOB")), 1_234),
            &alice.tokens.access_token,
            "t",
        ))
        .await
        .unwrap();
    w.assert_healthy().await;

    let url = w.ledger.database().unwrap().url().to_owned();
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let refused = sqlx::query("UPDATE entries SET amount = amount * 2").execute(&mut db).await;
    assert!(refused.is_err(), "entries refuse UPDATE");
    assert!(
        sqlx::query("DELETE FROM transactions").execute(&mut db).await.is_err(),
        "transactions refuse DELETE"
    );

    // Someone with the power to disable the guard still cannot hide an edit.
    sqlx::query("ALTER TABLE entries DISABLE TRIGGER entries_append_only").execute(&mut db).await.unwrap();
    sqlx::query("UPDATE entries SET amount = amount + 1 WHERE amount = 1234").execute(&mut db).await.unwrap();
    sqlx::query("ALTER TABLE entries ENABLE TRIGGER entries_append_only").execute(&mut db).await.unwrap();
    let report = w
        .admin_client()
        .await
        .verify_ledger_invariants(bearer(VerifyLedgerInvariantsRequest {}, &w.admin))
        .await
        .unwrap()
        .into_inner();
    assert!(!report.healthy);
    let broken: Vec<&str> = report.violations.iter().map(|v| v.invariant.as_str()).collect();
    for expected in ["transaction_balanced", "balance_matches_entries", "hash_chain_intact"] {
        assert!(broken.contains(&expected), "{expected} not reported: {broken:?}");
    }
}

#[tokio::test]
async fn frozen_accounts_refuse_debits_and_closing_needs_a_zero_balance() {
    use bank_proto::ledger::v1::{
        LedgerAccountStatus, SetLedgerAccountStatusRequest, SetLedgerOverdraftLimitRequest,
    };
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE06ALICE"), 1_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE06BOB"), 0).await;
    let mut client = w.client().await;
    let status = |account: &str, status: LedgerAccountStatus, credits_allowed: bool| {
        bearer(
            SetLedgerAccountStatusRequest {
                account_id: account.into(),
                status: status as i32,
                credits_allowed,
            },
            &w.service,
        )
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    let missing = client
        .set_ledger_account_status(status(&unknown, LedgerAccountStatus::Frozen, true))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let missing = client
        .set_ledger_overdraft_limit(bearer(
            SetLedgerOverdraftLimitRequest { account_id: unknown, limit: eur(1) },
            &w.service,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    client.set_ledger_account_status(status(&a, LedgerAccountStatus::Frozen, true)).await.unwrap();
    let frozen = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE06BOB")), 10),
            &alice.tokens.access_token,
            "f1",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&frozen), Some(ErrorCode::AccountFrozen));
    // Credits still arrive while credits are allowed.
    w.admin_client()
        .await
        .create_deposit(keyed(
            CreateDepositRequest { account_id: a.clone(), amount: eur(5), ..CreateDepositRequest::default() },
            &w.admin,
            "d1",
        ))
        .await
        .unwrap();
    client.set_ledger_account_status(status(&a, LedgerAccountStatus::Active, false)).await.unwrap();

    let not_zero =
        client.set_ledger_account_status(status(&a, LedgerAccountStatus::Closed, false)).await.unwrap_err();
    assert_eq!(reason_of(&not_zero), Some(ErrorCode::BalanceNotZero));
    client.set_ledger_account_status(status(&b, LedgerAccountStatus::Closed, false)).await.unwrap();
    let closed = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE06BOB")), 10),
            &alice.tokens.access_token,
            "f2",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&closed), Some(ErrorCode::AccountClosed));
    let reopen =
        client.set_ledger_account_status(status(&b, LedgerAccountStatus::Active, false)).await.unwrap_err();
    assert_eq!(reason_of(&reopen), Some(ErrorCode::AccountClosed));

    // An overdraft limit lets the available balance go below zero, that far and no further.
    client
        .set_ledger_overdraft_limit(bearer(
            SetLedgerOverdraftLimitRequest { account_id: a.clone(), limit: eur(500) },
            &w.service,
        ))
        .await
        .unwrap();
    let c = w.account(&bob, &bank_testkit::account_number("DE06BOB2"), 0).await;
    let _ = c;
    client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE06BOB2")), 1_400),
            &alice.tokens.access_token,
            "o1",
        ))
        .await
        .unwrap();
    assert_eq!(w.available(&alice, &a).await, -395);
    let over = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE06BOB2")), 200),
            &alice.tokens.access_token,
            "o2",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&over), Some(ErrorCode::InsufficientFunds));
    w.assert_healthy().await;
}

#[tokio::test]
async fn holds_reserve_then_capture_void_refund_and_expire() {
    use bank_proto::ledger::v1::{
        CaptureHoldRequest, CreateHoldRequest, GetHoldRequest, HoldStatus, RefundHoldRequest,
        SystemAccountType, VoidHoldRequest, get_hold_request::Lookup,
    };
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE07ALICE"), 10_000).await;
    let cards = w.identity.service_token(&["ledger:holds"]).await;
    let mut client = w.client().await;
    let hold = |reference: &str, minor: i64, expires_in: i64| {
        let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(expires_in);
        bearer(
            CreateHoldRequest {
                account_id: a.clone(),
                amount: eur(minor),
                reference_id: reference.into(),
                counterparty: SystemAccountType::CardSettlement as i32,
                description: "coffee".into(),
                expires_at: Some(pbjson_types::Timestamp { seconds: at.unix_timestamp(), nanos: 0 }),
            },
            &cards,
        )
    };

    // Reserve 40.00; a repeat with the same reference is the same hold, not a second one.
    let first = client.create_hold(hold("auth-1", 4_000, 3600)).await.unwrap().into_inner();
    let again = client.create_hold(hold("auth-1", 4_000, 3600)).await.unwrap().into_inner();
    assert_eq!(first.hold.as_ref().unwrap().hold_id, again.hold.as_ref().unwrap().hold_id);
    assert_eq!(w.available(&alice, &a).await, 6_000);
    let too_much = client.create_hold(hold("auth-2", 6_001, 3600)).await.unwrap_err();
    assert_eq!(reason_of(&too_much), Some(ErrorCode::InsufficientFunds));

    // Capture 30.00 of it: the rest is released; then refund 10.00 (twice with one reference = once).
    let hold_id = first.hold.unwrap().hold_id;
    let captured = client
        .capture_hold(bearer(CaptureHoldRequest { hold_id: hold_id.clone(), amount: eur(3_000) }, &cards))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(captured.hold.unwrap().status, HoldStatus::Captured as i32);
    assert_eq!(w.available(&alice, &a).await, 7_000);
    let repeat = client
        .capture_hold(bearer(CaptureHoldRequest { hold_id: hold_id.clone(), amount: eur(3_000) }, &cards))
        .await
        .unwrap()
        .into_inner();
    assert!(repeat.transaction.is_none(), "a repeated capture posts nothing");
    assert_eq!(w.available(&alice, &a).await, 7_000);
    // A capture is corrected by a refund, never by a reversal.
    let capture_transaction = captured.transaction.unwrap().transaction_id;
    let err = w
        .admin_client()
        .await
        .reverse_transaction(keyed(reverse(&capture_transaction, "chargeback"), &w.admin, "rev-capture"))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason_of(&err)), (Code::FailedPrecondition, Some(ErrorCode::NotReversible)));
    let refund = |reference: &str, minor: i64| {
        bearer(
            RefundHoldRequest {
                hold_id: hold_id.clone(),
                amount: eur(minor),
                refund_reference_id: reference.into(),
                description: "refund".into(),
            },
            &cards,
        )
    };
    client.refund_hold(refund("r-1", 1_000)).await.unwrap();
    client.refund_hold(refund("r-1", 1_000)).await.unwrap();
    assert_eq!(w.available(&alice, &a).await, 8_000);
    let over = client.refund_hold(refund("r-2", 2_001)).await.unwrap_err();
    assert_eq!(reason_of(&over), Some(ErrorCode::AmountExceedsAvailable));

    // Void releases; capturing a voided hold is refused.
    let second = client.create_hold(hold("auth-3", 500, 3600)).await.unwrap().into_inner().hold.unwrap();
    assert_eq!(w.available(&alice, &a).await, 7_500);
    client
        .void_hold(bearer(
            VoidHoldRequest { hold_id: second.hold_id.clone(), reason: "cancelled".into() },
            &cards,
        ))
        .await
        .unwrap();
    client
        .void_hold(bearer(
            VoidHoldRequest { hold_id: second.hold_id.clone(), reason: "again".into() },
            &cards,
        ))
        .await
        .unwrap();
    assert_eq!(w.available(&alice, &a).await, 8_000);
    let late = client
        .capture_hold(bearer(CaptureHoldRequest { hold_id: second.hold_id.clone(), amount: None }, &cards))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&late), Some(ErrorCode::HoldNotActive));

    // An uncaptured hold expires on its own and releases its reservation.
    let short = client.create_hold(hold("auth-4", 700, 1)).await.unwrap().into_inner().hold.unwrap();
    assert_eq!(w.available(&alice, &a).await, 7_300);
    let mut status = HoldStatus::Active as i32;
    for _ in 0..80 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = client
            .get_hold(bearer(GetHoldRequest { lookup: Some(Lookup::ReferenceId("auth-4".into())) }, &cards))
            .await
            .unwrap()
            .into_inner()
            .hold
            .unwrap()
            .status;
        if status == HoldStatus::Expired as i32 {
            break;
        }
    }
    assert_eq!(status, HoldStatus::Expired as i32, "hold {} expired", short.hold_id);
    assert_eq!(w.available(&alice, &a).await, 8_000);

    // Another service client sees none of these holds.
    let _ = alice;
    w.assert_healthy().await;
}

/// Random sequences of transfers (proptest) against the real ledger: every outcome matches a simple
/// model (insufficient funds refused, same account refused, otherwise the money moves), and the
/// ledger's invariants hold after every sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_transfer_and_reversal_sequences_keep_the_model_and_the_invariants() {
    use proptest::{
        prelude::*,
        test_runner::{Config, TestRunner},
    };

    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let mut accounts = Vec::new();
    for (i, owner) in [&alice, &alice, &bob, &bob].into_iter().enumerate() {
        let number = bank_testkit::account_number(&format!("DE09P{i}"));
        let id = w.account(owner, &number, 1_000).await;
        accounts.push((id, number, owner.tokens.access_token.clone(), owner.clone()));
    }
    let model = std::cell::RefCell::new(vec![1_000i64; 4]);
    let handle = tokio::runtime::Handle::current();
    let channel = w.ledger.channel().await;
    let mut runner = TestRunner::new(Config { cases: 8, failure_persistence: None, ..Config::default() });
    // Each op is a transfer; `undo` 0 reverses it right away, 1 tries twice (the second refused).
    let strategy = proptest::collection::vec((0usize..4, 0usize..4, 1i64..600, 0u8..4), 1..25);
    let counter = std::cell::Cell::new(0u64);
    runner
        .run(&strategy, |ops| {
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let mut client = LedgerServiceClient::new(channel.clone());
                    let mut admin = LedgerAdminServiceClient::new(channel.clone());
                    for (from, to, amount, undo) in ops {
                        counter.set(counter.get() + 1);
                        let (from_id, _, token, _) = &accounts[from];
                        let request = keyed(
                            transfer(from_id, Destination::ToAccountNumber(accounts[to].1.clone()), amount),
                            token,
                            &format!("p-{}", counter.get()),
                        );
                        let answer = client.create_transfer(request).await;
                        if from == to {
                            prop_assert_eq!(answer.unwrap_err().code(), Code::InvalidArgument);
                        } else if model.borrow()[from] < amount {
                            prop_assert_eq!(
                                reason_of(&answer.unwrap_err()),
                                Some(ErrorCode::InsufficientFunds)
                            );
                        } else {
                            prop_assert!(answer.is_ok(), "{answer:?}");
                            {
                                let mut model = model.borrow_mut();
                                model[from] -= amount;
                                model[to] += amount;
                            }
                            if undo <= 1 {
                                let transaction_id =
                                    answer.unwrap().into_inner().transfer.unwrap().transaction_id;
                                for attempt in 0..=undo {
                                    let reversal = admin
                                        .reverse_transaction(keyed(
                                            reverse(&transaction_id, "model"),
                                            &w.admin,
                                            &format!("p-{}-undo-{attempt}", counter.get()),
                                        ))
                                        .await;
                                    if attempt == 0 {
                                        prop_assert!(reversal.is_ok(), "{reversal:?}");
                                        let mut model = model.borrow_mut();
                                        model[from] += amount;
                                        model[to] -= amount;
                                    } else {
                                        prop_assert_eq!(
                                            reason_of(&reversal.unwrap_err()),
                                            Some(ErrorCode::AlreadyReversed)
                                        );
                                    }
                                }
                            }
                        }
                    }
                    for (i, (id, _, _, owner)) in accounts.iter().enumerate() {
                        let expected = model.borrow()[i];
                        prop_assert_eq!(w.available(owner, id).await, expected);
                    }
                    Ok(())
                })
            })
        })
        .unwrap();
    assert_eq!(model.borrow().iter().sum::<i64>(), 4_000, "money is neither created nor lost");
    w.assert_healthy().await;
}

impl World {
    /// Transfers `minor` from `from` to the account numbered `to` as `user`; answers (transfer id,
    /// transaction id).
    async fn send(&self, user: &TestUser, from: &str, to: &str, minor: i64) -> (String, String) {
        let transfer = self
            .client()
            .await
            .create_transfer(keyed(
                transfer(from, Destination::ToAccountNumber(to.into()), minor),
                &user.tokens.access_token,
                &uuid::Uuid::now_v7().to_string(),
            ))
            .await
            .unwrap()
            .into_inner()
            .transfer
            .unwrap();
        (transfer.transfer_id, transfer.transaction_id)
    }

    async fn db(&self) -> sqlx::PgConnection {
        let url = self.ledger.database().unwrap().url().to_owned();
        <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap()
    }

    async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = $1 ORDER BY seq")
            .bind(event_type)
            .fetch_all(&mut self.db().await)
            .await
            .unwrap()
    }

    async fn posted(&self, user: &TestUser, account: &str) -> i64 {
        self.client()
            .await
            .get_balances(bearer(
                GetBalancesRequest { account_id: account.into(), as_of: None },
                &user.tokens.access_token,
            ))
            .await
            .unwrap()
            .into_inner()
            .balances
            .unwrap()
            .posted
            .unwrap()
            .minor_units
    }
}

fn reverse(transaction_id: &str, reason: &str) -> ReverseTransactionRequest {
    ReverseTransactionRequest { transaction_id: transaction_id.into(), reason: reason.into() }
}

#[tokio::test]
async fn an_admin_reverses_a_transaction_once_with_a_reason_and_the_invariants_hold() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE10ALICE"), 10_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE10BOB"), 0).await;
    let (transfer_id, transaction_id) =
        w.send(&alice, &a, &bank_testkit::account_number("DE10BOB"), 2_500).await;
    // Bob spends part of it first: the correction may take him below zero.
    w.send(&bob, &b, &bank_testkit::account_number("DE10ALICE"), 2_000).await;
    let mut admin = w.admin_client().await;

    // Refusals: not an admin, no key, no reason, unknown transaction.
    let err = admin
        .reverse_transaction(keyed(reverse(&transaction_id, "fraud"), &alice.tokens.access_token, "r0"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::PermissionDenied));
    let err =
        admin.reverse_transaction(bearer(reverse(&transaction_id, "fraud"), &w.admin)).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::IdempotencyKeyRequired));
    let err =
        admin.reverse_transaction(keyed(reverse(&transaction_id, "  "), &w.admin, "r0")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&err);
    assert_eq!(details.bad_request().unwrap().field_violations[0].field, "reason");
    let err = admin
        .reverse_transaction(keyed(reverse(&uuid::Uuid::now_v7().to_string(), "x"), &w.admin, "r00"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::NotFound));

    let first = admin
        .reverse_transaction(keyed(reverse(&transaction_id, "sent by mistake"), &w.admin, "r1"))
        .await
        .unwrap();
    assert!(first.metadata().get("idempotent-replay").is_none());
    let reversal = first.into_inner().reversal.unwrap();
    assert_eq!(reversal.kind, TransactionKind::Reversal as i32);
    assert_eq!(reversal.reverses_transaction_id, transaction_id);
    assert_eq!(reversal.reason, "sent by mistake");
    let mut amounts: Vec<(String, i64)> = reversal
        .postings
        .iter()
        .map(|p| (p.account_id.clone(), p.amount.as_ref().unwrap().minor_units))
        .collect();
    amounts.sort();
    let mut expected = vec![(a.clone(), 2_500), (b.clone(), -2_500)];
    expected.sort();
    assert_eq!(amounts, expected, "the mirrored postings");
    assert_eq!(w.posted(&alice, &a).await, 10_000 - 2_500 + 2_000 + 2_500);
    assert_eq!(w.posted(&bob, &b).await, -2_000);

    // The same key replays; the same key with another request is refused.
    let replay = admin
        .reverse_transaction(keyed(reverse(&transaction_id, "sent by mistake"), &w.admin, "r1"))
        .await
        .unwrap();
    assert_eq!(replay.metadata().get("idempotent-replay").unwrap(), "true");
    assert_eq!(replay.into_inner().reversal.unwrap(), reversal);
    let err = admin
        .reverse_transaction(keyed(reverse(&transaction_id, "another reason"), &w.admin, "r1"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::IdempotencyKeyReused));
    // At most one reversal; a reversal is not reversible.
    let err = admin
        .reverse_transaction(keyed(reverse(&transaction_id, "again"), &w.admin, "r2"))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason_of(&err)), (Code::FailedPrecondition, Some(ErrorCode::AlreadyReversed)));
    let err = admin
        .reverse_transaction(keyed(reverse(&reversal.transaction_id, "undo"), &w.admin, "r3"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::NotReversible));
    assert_eq!(w.posted(&bob, &b).await, -2_000, "nothing moved");

    // The original points at its reversal; the transfer reads as reversed.
    let original = admin
        .get_transaction(bearer(GetTransactionRequest { transaction_id: transaction_id.clone() }, &w.admin))
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap();
    assert_eq!(original.reversed_by_transaction_id, reversal.transaction_id);
    let read = w
        .client()
        .await
        .get_transfer(bearer(GetTransferRequest { transfer_id }, &alice.tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap();
    assert_eq!(read.status, TransferStatus::Reversed as i32);
    let events = w.events("bank.events.v1.TransactionReversed").await;
    assert_eq!(events.len(), 1);
    let event = bank_proto::events::v1::TransactionReversed::decode(events[0].as_slice()).unwrap();
    assert_eq!(event.reversal_transaction_id, reversal.transaction_id);
    assert_eq!(event.changes.len(), 2);

    // Eight admins racing with their own keys on one deposit: exactly one reversal.
    let deposit = w
        .admin_client()
        .await
        .create_deposit(keyed(
            CreateDepositRequest {
                account_id: a.clone(),
                amount: eur(700),
                ..CreateDepositRequest::default()
            },
            &w.admin,
            "dep",
        ))
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap()
        .transaction_id;
    let racers = (0..8).map(|i| {
        let deposit = deposit.clone();
        let token = w.admin.clone();
        let channel = w.admin_client();
        async move {
            channel
                .await
                .reverse_transaction(keyed(reverse(&deposit, "duplicate"), &token, &format!("race-{i}")))
                .await
        }
    });
    let results = futures::future::join_all(racers).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason_of(err), Some(ErrorCode::AlreadyReversed), "{err:?}");
    }
    w.assert_healthy().await;
}

#[tokio::test]
async fn transfers_are_read_and_listed_only_by_their_parties_newest_first() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let carol = w.identity.user("carol@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE11ALICE"), 10_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE11BOB"), 0).await;
    w.account(&carol, &bank_testkit::account_number("DE11CAROL"), 0).await;
    let mut sent = Vec::new();
    for minor in [100, 200, 300] {
        sent.push(w.send(&alice, &a, &bank_testkit::account_number("DE11BOB"), minor).await.0);
    }
    let (to_carol, _) = w.send(&bob, &b, &bank_testkit::account_number("DE11CAROL"), 50).await;
    let mut client = w.client().await;

    // Alice pages through her three, newest first.
    let list = |token: &str, account: &str, page_size: i32, page_token: String| {
        bearer(
            ListTransfersRequest {
                page: Some(PageRequest { page_size, page_token }),
                account_id: account.into(),
            },
            token,
        )
    };
    let first = client
        .list_transfers(list(&alice.tokens.access_token, "", 2, String::new()))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = first.transfers.iter().map(|t| t.transfer_id.as_str()).collect();
    assert_eq!(ids, [sent[2].as_str(), sent[1].as_str()]);
    let token = first.page_info.unwrap().next_page_token;
    assert!(!token.is_empty());
    let second =
        client.list_transfers(list(&alice.tokens.access_token, "", 2, token)).await.unwrap().into_inner();
    assert_eq!(second.transfers.len(), 1);
    assert_eq!(second.transfers[0].transfer_id, sent[0]);
    assert!(second.page_info.unwrap().next_page_token.is_empty());
    // Alice is not the recipient: she sees the number, not the account id.
    assert!(second.transfers[0].to_account_id.is_empty());
    assert_eq!(second.transfers[0].to_account_number, bank_testkit::account_number("DE11BOB"));

    // Bob sees what he received and what he sent; filtered by his own account; not by Alice's.
    let bobs = client
        .list_transfers(list(&bob.tokens.access_token, &b, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.transfers.len(), 4);
    assert_eq!(bobs.transfers[0].transfer_id, to_carol);
    assert_eq!(bobs.transfers[1].to_account_id, b, "the recipient sees his account id");
    let err = client.list_transfers(list(&bob.tokens.access_token, &a, 0, String::new())).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::NotFound));
    let carols = client
        .list_transfers(list(&carol.tokens.access_token, "", 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(carols.transfers.len(), 1);

    // Reading one: the parties can, anyone else gets exactly what a missing id gets.
    let read = |token: &str, id: &str| bearer(GetTransferRequest { transfer_id: id.into() }, token);
    let got = client.get_transfer(read(&bob.tokens.access_token, &sent[0])).await.unwrap().into_inner();
    assert_eq!(got.transfer.unwrap().amount.unwrap().minor_units, 100);
    client.get_transfer(read(&alice.tokens.access_token, &sent[0])).await.unwrap();
    let theirs = client.get_transfer(read(&carol.tokens.access_token, &sent[0])).await.unwrap_err();
    let missing = client
        .get_transfer(read(&carol.tokens.access_token, &uuid::Uuid::now_v7().to_string()))
        .await
        .unwrap_err();
    assert_eq!((theirs.code(), theirs.message()), (missing.code(), missing.message()));
    assert_eq!(reason_of(&theirs), Some(ErrorCode::NotFound));

    // Bad input.
    let err = client.get_transfer(read(&carol.tokens.access_token, "nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        client.list_transfers(list(&alice.tokens.access_token, "", 2, "garbage".into())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        client.list_transfers(list(&alice.tokens.access_token, "", -1, String::new())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.list_transfers(list(&w.service, "", 0, String::new())).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::PermissionDenied));
}

fn amounts(entries: &[bank_proto::ledger::v1::Entry]) -> Vec<i64> {
    entries.iter().map(|e| e.amount.as_ref().unwrap().minor_units).collect()
}

#[tokio::test]
async fn history_filters_by_time_direction_and_amount_and_sorts_from_the_allowlist() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE12ALICE"), 10_000).await;
    w.account(&bob, &bank_testkit::account_number("DE12BOB"), 0).await;
    for minor in [100, 500, 300, 2_000] {
        w.send(&alice, &a, &bank_testkit::account_number("DE12BOB"), minor).await;
    }
    let mut client = w.client().await;
    let token = alice.tokens.access_token.clone();
    let query = |f: &dyn Fn(&mut ListEntriesRequest)| {
        let mut request = ListEntriesRequest { account_id: a.clone(), ..ListEntriesRequest::default() };
        f(&mut request);
        bearer(request, &token)
    };

    let all = client.list_entries(query(&|_| {})).await.unwrap().into_inner().entries;
    assert_eq!(amounts(&all), [-2_000, -300, -500, -100, 10_000], "newest first by default");
    let oldest = client
        .list_entries(query(&|r| r.sort = EntrySort::PostedAtAsc as i32))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(amounts(&oldest), [10_000, -100, -500, -300, -2_000]);
    let debits = client
        .list_entries(query(&|r| r.direction = EntryDirection::Debit as i32))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(debits.len(), 4);
    let credits = client
        .list_entries(query(&|r| r.direction = EntryDirection::Credit as i32))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(amounts(&credits), [10_000]);
    let ranged = client
        .list_entries(query(&|r| {
            r.min_amount_minor_units = 300;
            r.max_amount_minor_units = 2_000;
            r.sort = EntrySort::AmountAsc as i32;
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(amounts(&ranged), [-300, -500, -2_000]);
    // A time window from the second entry (inclusive) to the fourth (exclusive).
    let (from, to) = (oldest[1].posted_at, oldest[3].posted_at);
    let window = client
        .list_entries(query(&|r| {
            r.from_time = from;
            r.to_time = to;
            r.sort = EntrySort::PostedAtAsc as i32;
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(amounts(&window), [-100, -500]);

    // Keyset pages in every order, each page continuing where the last stopped.
    for (sort, expected) in [
        (EntrySort::AmountDesc, vec![10_000, -2_000, -500, -300, -100]),
        (EntrySort::AmountAsc, vec![-100, -300, -500, -2_000, 10_000]),
        (EntrySort::PostedAtDesc, vec![-2_000, -300, -500, -100, 10_000]),
        (EntrySort::PostedAtAsc, vec![10_000, -100, -500, -300, -2_000]),
    ] {
        let mut seen = Vec::new();
        let mut page_token = String::new();
        loop {
            let page_token_now = page_token.clone();
            let page = client
                .list_entries(query(&|r| {
                    r.sort = sort as i32;
                    r.page = Some(PageRequest { page_size: 2, page_token: page_token_now.clone() });
                }))
                .await
                .unwrap()
                .into_inner();
            seen.extend(amounts(&page.entries));
            page_token = page.page_info.unwrap().next_page_token;
            if page_token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, expected, "{sort:?}");
    }

    // A token of one order is refused by another; nonsense is refused with field violations.
    let token_of_amounts = client
        .list_entries(query(&|r| {
            r.sort = EntrySort::AmountDesc as i32;
            r.page = Some(PageRequest { page_size: 1, page_token: String::new() });
        }))
        .await
        .unwrap()
        .into_inner()
        .page_info
        .unwrap()
        .next_page_token;
    let err = client
        .list_entries(query(&|r| {
            r.page = Some(PageRequest { page_size: 1, page_token: token_of_amounts.clone() });
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for (bad, field) in [
        (&(|r: &mut ListEntriesRequest| r.sort = 99) as &dyn Fn(&mut ListEntriesRequest), "sort"),
        (&|r: &mut ListEntriesRequest| r.direction = 7, "direction"),
        (&|r: &mut ListEntriesRequest| r.min_amount_minor_units = -1, "min_amount_minor_units"),
        (
            &|r: &mut ListEntriesRequest| {
                r.min_amount_minor_units = 500;
                r.max_amount_minor_units = 100;
            },
            "max_amount_minor_units",
        ),
        (
            &|r: &mut ListEntriesRequest| {
                r.from_time = Some(pbjson_types::Timestamp { seconds: 2_000, nanos: 0 });
                r.to_time = Some(pbjson_types::Timestamp { seconds: 1_000, nanos: 0 });
            },
            "to_time",
        ),
    ] {
        let err = client.list_entries(query(bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        let details = tonic_types::StatusExt::get_error_details(&err);
        assert_eq!(details.bad_request().unwrap().field_violations[0].field, field);
    }
    // A filter value that looks like SQL is just a value (and the sort is an enum, never text).
    let err = client
        .list_entries(bearer(
            ListEntriesRequest {
                account_id: "1; DROP TABLE entries".into(),
                ..ListEntriesRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Support staff read any account's history with the same filters.
    let admin_view = w
        .admin_client()
        .await
        .admin_list_entries(bearer(
            AdminListEntriesRequest {
                account_id: a.clone(),
                direction: EntryDirection::Credit as i32,
                ..AdminListEntriesRequest::default()
            },
            &w.admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(amounts(&admin_view), [10_000]);
    let err = w
        .admin_client()
        .await
        .admin_list_entries(bearer(
            AdminListEntriesRequest { account_id: a.clone(), ..AdminListEntriesRequest::default() },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::PermissionDenied));
}

#[tokio::test]
async fn historical_balances_and_period_summaries_come_from_the_journal() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE13ALICE"), 10_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE13BOB"), 0).await;
    w.send(&alice, &a, &bank_testkit::account_number("DE13BOB"), 2_500).await;
    let mut client = w.client().await;
    let token = alice.tokens.access_token.clone();
    let entries = client
        .list_entries(bearer(
            ListEntriesRequest {
                account_id: a.clone(),
                sort: EntrySort::PostedAtAsc as i32,
                ..ListEntriesRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let deposit_at = entries[0].posted_at.unwrap();
    let transfer_at = entries[1].posted_at.unwrap();
    let plus_micro =
        |t: pbjson_types::Timestamp| pbjson_types::Timestamp { seconds: t.seconds, nanos: t.nanos + 1_000 };
    let as_of = |at: pbjson_types::Timestamp| {
        bearer(GetBalancesRequest { account_id: a.clone(), as_of: Some(at) }, &token)
    };

    let balances =
        |r: tonic::Response<bank_proto::ledger::v1::GetBalancesResponse>| r.into_inner().balances.unwrap();
    let before = balances(client.get_balances(as_of(deposit_at)).await.unwrap());
    assert_eq!(before.posted.unwrap().minor_units, 0, "strictly before the first entry");
    assert!(before.held.is_none() && before.available.is_none());
    assert_eq!(before.as_of, Some(deposit_at));
    let between = balances(client.get_balances(as_of(transfer_at)).await.unwrap());
    assert_eq!(between.posted.unwrap().minor_units, 10_000);
    let after = balances(client.get_balances(as_of(plus_micro(transfer_at))).await.unwrap());
    assert_eq!(after.posted.unwrap().minor_units, 7_500);
    assert_eq!(w.posted(&alice, &a).await, 7_500, "the journal agrees with the maintained balance");

    let future = pbjson_types::Timestamp { seconds: transfer_at.seconds + 3_600, nanos: 0 };
    let err = client.get_balances(as_of(future)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .get_balances(bearer(GetBalancesRequest { account_id: b.clone(), as_of: Some(transfer_at) }, &token))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::NotFound));

    // Period summaries for statements (service scope ledger:read).
    let reader = w.identity.service_token(&["ledger:read"]).await;
    let summarize = |boundaries: Vec<pbjson_types::Timestamp>, token: &str| {
        bearer(SummarizeAccountPeriodsRequest { account_id: a.clone(), boundaries }, token)
    };
    let periods = client
        .summarize_account_periods(summarize(vec![deposit_at, transfer_at, plus_micro(transfer_at)], &reader))
        .await
        .unwrap()
        .into_inner()
        .periods;
    let minor = |m: &Option<Money>| m.as_ref().unwrap().minor_units;
    assert_eq!(periods.len(), 2);
    assert_eq!(
        (
            minor(&periods[0].opening_balance),
            minor(&periods[0].total_credits),
            minor(&periods[0].closing_balance)
        ),
        (0, 10_000, 10_000)
    );
    assert_eq!(
        (
            minor(&periods[1].opening_balance),
            minor(&periods[1].total_debits),
            minor(&periods[1].closing_balance)
        ),
        (10_000, 2_500, 7_500)
    );
    assert_eq!(periods[1].entry_count, 1);
    let err = client
        .summarize_account_periods(summarize(vec![transfer_at, deposit_at], &reader))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        client.summarize_account_periods(summarize(vec![deposit_at, transfer_at], &token)).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::PermissionDenied));
}

#[tokio::test]
async fn crossing_below_the_threshold_writes_one_event_per_crossing_in_the_posting() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE14ALICE"), 10_000).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE14BOB"), 0).await;
    let mut client = w.client().await;
    let set = |account: &str, threshold: Option<Money>, token: &str| {
        bearer(SetLowBalanceThresholdRequest { account_id: account.into(), threshold }, token)
    };

    let err =
        client.set_low_balance_threshold(set(&a, eur(5_000), &bob.tokens.access_token)).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::NotFound), "not Bob's account");
    let err =
        client.set_low_balance_threshold(set(&a, eur(-1), &alice.tokens.access_token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let usd = Some(Money { currency: "USD".into(), minor_units: 5 });
    let err = client.set_low_balance_threshold(set(&a, usd, &alice.tokens.access_token)).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::CurrencyMismatch));
    let account = client
        .set_low_balance_threshold(set(&a, eur(5_000), &alice.tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(account.low_balance_threshold, eur(5_000));

    const EVENT: &str = "bank.events.v1.LowBalanceDetected";
    w.send(&alice, &a, &bank_testkit::account_number("DE14BOB"), 4_000).await; // 6 000: above
    assert!(w.events(EVENT).await.is_empty());
    w.send(&alice, &a, &bank_testkit::account_number("DE14BOB"), 2_000).await; // 4 000: crossed
    w.send(&alice, &a, &bank_testkit::account_number("DE14BOB"), 1_000).await; // 3 000: still below, no second event
    assert_eq!(w.events(EVENT).await.len(), 1);
    w.admin_client()
        .await
        .create_deposit(keyed(
            CreateDepositRequest {
                account_id: a.clone(),
                amount: eur(3_000),
                ..CreateDepositRequest::default()
            },
            &w.admin,
            "back-up",
        ))
        .await
        .unwrap(); // 6 000: re-armed
    w.admin_client()
        .await
        .create_withdrawal(keyed(
            CreateWithdrawalRequest {
                account_id: a.clone(),
                amount: eur(2_000),
                ..CreateWithdrawalRequest::default()
            },
            &w.admin,
            "down-again",
        ))
        .await
        .unwrap(); // 4 000: crossed again
    let events = w.events(EVENT).await;
    assert_eq!(events.len(), 2);
    let event = bank_proto::events::v1::LowBalanceDetected::decode(events[1].as_slice()).unwrap();
    assert_eq!(event.account_id, a);
    assert_eq!(event.owner_user_id, alice.user_id);
    assert_eq!(event.available, eur(4_000));
    assert_eq!(event.threshold, eur(5_000));
    assert_eq!(event.account_number_last_four, bank_testkit::account_number("DE14ALICE")[12..]);
    // Each alert names the event of the posting that caused it (written in the same transaction).
    let mut causes = Vec::new();
    for payload in &events {
        let alert = bank_proto::events::v1::LowBalanceDetected::decode(payload.as_slice()).unwrap();
        let (cause_type,): (String,) =
            sqlx::query_as("SELECT event_type FROM outbox WHERE event_id = $1::uuid")
                .bind(&alert.cause_event_id)
                .fetch_one(&mut w.db().await)
                .await
                .unwrap();
        causes.push(cause_type);
    }
    assert_eq!(causes, ["bank.events.v1.TransferPosted", "bank.events.v1.WithdrawalPosted"]);

    // A service mirroring the owner's alert may set it too; clearing it stops the events.
    client.set_low_balance_threshold(set(&b, eur(10), &w.service)).await.unwrap();
    client.set_low_balance_threshold(set(&a, None, &alice.tokens.access_token)).await.unwrap();
    w.send(&alice, &a, &bank_testkit::account_number("DE14BOB"), 3_500).await;
    assert_eq!(w.events(EVENT).await.len(), 2);
    w.assert_healthy().await;
}

#[tokio::test]
async fn metrics_count_transfers_postings_retries_and_invariant_checks() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE15ALICE"), 1_000).await;
    w.account(&bob, &bank_testkit::account_number("DE15BOB"), 0).await;
    w.send(&alice, &a, &bank_testkit::account_number("DE15BOB"), 100).await;
    let err = w
        .client()
        .await
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE15BOB")), 100_000),
            &alice.tokens.access_token,
            "too-much",
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::InsufficientFunds));
    w.assert_healthy().await;
    let (status, body) = bank_testkit::probe::http_get(w.ledger.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "ledger_transfers_total{result=\"posted\"}",
        "ledger_transfers_total{result=\"INSUFFICIENT_FUNDS\"}",
        "ledger_posting_duration_seconds_bucket{result=\"committed\"",
        "ledger_posting_duration_seconds_count{result=\"refused\"}",
        "ledger_posting_retries_total",
        "ledger_invariant_checks_total{result=\"healthy\"}",
    ] {
        assert!(body.contains(expected), "{expected} missing from\n{body}");
    }
}

#[tokio::test]
async fn staff_read_any_ledger_account_and_the_system_accounts_in_pages() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE16ALICE"), 1_000).await;
    let mut admin = w.admin_client().await;
    let account = admin
        .get_ledger_account(bearer(GetLedgerAccountRequest { account_id: a.clone() }, &w.admin))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(account.owner_user_id, alice.user_id);
    assert_eq!(account.balances.unwrap().posted, eur(1_000));
    let err = admin
        .get_ledger_account(bearer(
            GetLedgerAccountRequest { account_id: a.clone() },
            &alice.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::PermissionDenied));
    let err = admin
        .get_ledger_account(bearer(
            GetLedgerAccountRequest { account_id: uuid::Uuid::now_v7().to_string() },
            &w.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::NotFound));

    // A withdrawal to another system account makes two EUR system accounts (cash from the deposit).
    w.admin_client()
        .await
        .create_withdrawal(keyed(
            CreateWithdrawalRequest {
                account_id: a.clone(),
                amount: eur(100),
                destination: SystemAccountType::Suspense as i32,
                ..CreateWithdrawalRequest::default()
            },
            &w.admin,
            "to-suspense",
        ))
        .await
        .unwrap();
    let list = |currency: &str, page_token: String| {
        bearer(
            ListSystemAccountsRequest {
                page: Some(PageRequest { page_size: 1, page_token }),
                currency: currency.into(),
            },
            &w.admin,
        )
    };
    let first = admin.list_system_accounts(list("EUR", String::new())).await.unwrap().into_inner();
    let second = admin
        .list_system_accounts(list("EUR", first.page_info.unwrap().next_page_token))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<i32> = first.accounts.iter().chain(&second.accounts).map(|a| a.system_type).collect();
    assert_eq!(types, [SystemAccountType::Cash as i32, SystemAccountType::Suspense as i32]);
    let posted: i64 = first
        .accounts
        .iter()
        .chain(&second.accounts)
        .map(|a| a.balances.as_ref().unwrap().posted.as_ref().unwrap().minor_units)
        .sum();
    assert_eq!(posted, -900, "the system side of 1 000 in and 100 out");
    let usd = admin.list_system_accounts(list("USD", String::new())).await.unwrap().into_inner();
    assert!(usd.accounts.is_empty());
    let err = admin.list_system_accounts(list("EURO", String::new())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_large_transfer_needs_a_recent_second_factor_and_goes_through_after_step_up() {
    use bank_proto::identity::v1::{
        ConfirmMfaEnrollmentRequest, StartMfaEnrollmentRequest, StepUpRequest, step_up_request,
    };
    let w = world().await;
    let alice = w.identity.user("alice-large@example.com").await;
    let bob = w.identity.user("bob-large@example.com").await;
    let from = w.account(&alice, &bank_testkit::account_number("DE00LARGE1"), 500_000).await;
    w.account(&bob, &bank_testkit::account_number("DE00LARGE2"), 0).await;
    let transfer = |minor: i64| CreateTransferRequest {
        from_account_id: from.clone(),
        destination: Some(Destination::ToAccountNumber(bank_testkit::account_number("DE00LARGE2"))),
        amount: eur(minor),
        ..CreateTransferRequest::default()
    };
    let password_only = alice.tokens.access_token.clone();
    // Up to the threshold (1,000.00 by default) a password session suffices.
    w.client().await.create_transfer(keyed(transfer(100_000), &password_only, "small")).await.unwrap();
    // Above it, with no second factor enrolled: MFA_ENROLMENT_REQUIRED (403: StepUp could not
    // help), and nothing moved.
    let refused = w
        .client()
        .await
        .create_transfer(keyed(transfer(100_001), &password_only, "large"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&refused), Some(ErrorCode::MfaEnrolmentRequired));
    assert_eq!(w.available(&alice, &from).await, 400_000);
    // Enrolling is the way: its confirmation answers a stepped-up pair, and the same request with
    // the same key is accepted.
    let mut identity = w.identity.client().await;
    let started = identity
        .start_mfa_enrollment(bearer(StartMfaEnrollmentRequest {}, &password_only))
        .await
        .unwrap()
        .into_inner();
    let mut device = bank_testkit::identity::TotpDevice::new(&started.secret_base32);
    let code = device.next_code().await;
    let enrolled = identity
        .confirm_mfa_enrollment(bearer(ConfirmMfaEnrollmentRequest { totp_code: code }, &password_only))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    w.client()
        .await
        .create_transfer(keyed(transfer(100_001), &enrolled.access_token, "large"))
        .await
        .unwrap();
    assert_eq!(w.available(&alice, &from).await, 400_000 - 100_001);

    // Once the second factor is older than auth.step_up_max_age (5 min; the session's factor is
    // dated back an hour, and a refresh carries that into the token): STEP_UP_REQUIRED (401,
    // RFC 9470: acr_values and max_age say what to do), and StepUp answers a pair that may.
    let mut db = w.identity.db().await;
    sqlx::query("UPDATE sessions SET auth_time = now() - interval '1 hour' WHERE session_id = $1::uuid")
        .bind(&enrolled.session_id)
        .execute(&mut db)
        .await
        .unwrap();
    let enrolled = identity
        .refresh_tokens(bank_proto::identity::v1::RefreshTokensRequest {
            refresh_token: enrolled.refresh_token,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let stale = w
        .client()
        .await
        .create_transfer(keyed(transfer(100_002), &enrolled.access_token, "later"))
        .await
        .unwrap_err();
    assert_eq!((stale.code(), reason_of(&stale)), (Code::Unauthenticated, Some(ErrorCode::StepUpRequired)));
    let info = tonic_types::StatusExt::get_details_error_info(&stale).unwrap();
    assert_eq!((info.metadata["acr_values"].as_str(), info.metadata["max_age"].as_str()), ("mfa", "300"));
    let code = device.next_code().await;
    let stepped = identity
        .step_up(bearer(
            StepUpRequest { code: Some(step_up_request::Code::TotpCode(code)) },
            &enrolled.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    w.client().await.create_transfer(keyed(transfer(100_002), &stepped.access_token, "later")).await.unwrap();
    w.assert_healthy().await;
}

#[tokio::test]
async fn staff_rpcs_refuse_an_admin_session_without_a_second_factor() {
    let identity = TestIdentity::spawn().await;
    // Before any enrolment the bootstrap admin can log in with the password alone.
    let password_only = identity
        .login(bank_testkit::identity::ADMIN_EMAIL, bank_testkit::identity::ADMIN_PASSWORD)
        .await
        .unwrap()
        .access_token;
    let ledger = bank_testkit::spawn_with::<Ledger>(identity.trust(Options::default())).await;
    let mut admin = LedgerAdminServiceClient::new(ledger.channel().await);
    let status = admin
        .verify_ledger_invariants(bearer(VerifyLedgerInvariantsRequest {}, &password_only))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&status), Some(ErrorCode::MfaRequired));
    let deposit = CreateDepositRequest {
        account_id: uuid::Uuid::now_v7().to_string(),
        amount: eur(100),
        ..CreateDepositRequest::default()
    };
    let status =
        admin.create_deposit(keyed(deposit, &password_only, "deposit-without-mfa")).await.unwrap_err();
    assert_eq!(reason_of(&status), Some(ErrorCode::MfaRequired));
    // With a second factor the same admin may.
    let stepped = identity.admin().await.access_token;
    admin.verify_ledger_invariants(bearer(VerifyLedgerInvariantsRequest {}, &stepped)).await.unwrap();
}

/// Holds the row lock of `account` in a transaction of its own, so that a batch touching it waits
/// (and everything submitted meanwhile queues behind it) until [`Blocker::release`].
struct Blocker(sqlx::Transaction<'static, sqlx::Postgres>);

impl Blocker {
    async fn lock(w: &World, account: &str) -> Self {
        let url = w.ledger.database().unwrap().url().to_owned();
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM ledger_accounts WHERE account_id = $1::uuid FOR UPDATE")
            .bind(account)
            .execute(&mut *tx)
            .await
            .unwrap();
        Self(tx)
    }

    async fn release(self) {
        self.0.rollback().await.unwrap();
    }
}

/// How many batches the engine committed and how many had more than `size` postings (from the
/// `ledger_batch_size` histogram on the admin port).
async fn batches(w: &World, size: u32) -> (u64, u64) {
    let (_, body) = bank_testkit::probe::http_get(w.ledger.admin_addr, "/metrics").await;
    let value = |name: &str| -> u64 {
        body.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse::<u64>().ok()))
            .unwrap_or(0)
    };
    let total = value("ledger_batch_size_count");
    (total, total - value(&format!("ledger_batch_size_bucket{{le=\"{size}\"}}")))
}

#[tokio::test]
async fn a_batch_applies_postings_in_arrival_order_and_answers_each_its_own_result() {
    // One worker: while its batch waits for a locked account, everything else queues into one batch.
    let w = world_with(Options::default().set("engine.workers", 1)).await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let carol = w.identity.user("carol@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE21ALICE"), 100).await;
    let b = w.account(&bob, &bank_testkit::account_number("DE21BOB"), 0).await;
    let c = w.account(&carol, &bank_testkit::account_number("DE21CAROL"), 500).await;
    let channel = w.ledger.channel().await;
    let send = |token: String, request: CreateTransferRequest, key: &str| {
        let mut client = LedgerServiceClient::new(channel.clone());
        let request = keyed(request, &token, key);
        tokio::spawn(async move { client.create_transfer(request).await })
    };

    let blocker = Blocker::lock(&w, &c).await;
    let first = send(
        carol.tokens.access_token.clone(),
        transfer(&c, Destination::ToAccountNumber(bank_testkit::account_number("DE21BOB")), 5),
        "c-1",
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let to_bob =
        |minor| transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE21BOB")), minor);
    let alice_token = alice.tokens.access_token.clone();
    let mut calls = Vec::new();
    for (minor, key) in [(60, "a-1"), (60, "a-2"), (60, "a-1"), (40, "a-3"), (41, "a-1"), (1, "a-4")] {
        calls.push(send(alice_token.clone(), to_bob(minor), key));
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    blocker.release().await;

    assert!(first.await.unwrap().is_ok());
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let ok = |i: usize| results[i].as_ref().unwrap();
    let reason = |i: usize| reason_of(results[i].as_ref().unwrap_err());
    // 100: 60 goes, the second 60 finds 40 left, the repeat of a-1 replays it, 40 empties the
    // account, a-1 with another amount is a reused key, and 1 more is refused.
    let posted = ok(0).get_ref().transfer.clone().unwrap().transfer_id;
    assert_eq!(reason(1), Some(ErrorCode::InsufficientFunds));
    assert_eq!(ok(2).get_ref().transfer.clone().unwrap().transfer_id, posted, "the repeat replays");
    assert_eq!(ok(2).metadata().get("idempotent-replay").unwrap(), "true");
    assert!(ok(0).metadata().get("idempotent-replay").is_none());
    assert_eq!(ok(3).get_ref().from_balances.clone().unwrap().available, eur(0));
    assert_eq!(reason(4), Some(ErrorCode::IdempotencyKeyReused));
    assert_eq!(reason(5), Some(ErrorCode::InsufficientFunds));
    assert_eq!(w.available(&alice, &a).await, 0);
    assert_eq!(w.available(&bob, &b).await, 105);
    let (total, larger) = batches(&w, 4).await;
    assert!(larger >= 1, "the six queued postings were one batch ({total} batches)");
    w.assert_healthy().await;
}

#[tokio::test]
async fn a_posting_the_database_refuses_is_isolated_and_its_batch_commits() {
    let w = world_with(Options::default().set("engine.workers", 1)).await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE22ALICE"), 10_000).await;
    w.account(&bob, &bank_testkit::account_number("DE22BOB"), 0).await;
    let carol = w.identity.user("carol@example.com").await;
    let c = w.account(&carol, &bank_testkit::account_number("DE22CAROL"), 100).await;
    // A rule only the database knows (as a bug or a corrupt row would be): it refuses the whole
    // statement of any batch that carries the poison.
    sqlx::query("ALTER TABLE transfers ADD CONSTRAINT no_poison CHECK (description <> 'poison')")
        .execute(&mut w.db().await)
        .await
        .unwrap();
    let channel = w.ledger.channel().await;
    let blocker = Blocker::lock(&w, &c).await;
    let mut carol_client = LedgerServiceClient::new(channel.clone());
    let carol_token = carol.tokens.access_token.clone();
    let first = tokio::spawn(async move {
        carol_client
            .create_transfer(keyed(
                transfer(&c, Destination::ToAccountNumber(bank_testkit::account_number("DE22BOB")), 1),
                &carol_token,
                "c",
            ))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut calls = Vec::new();
    for i in 0..21 {
        let mut client = LedgerServiceClient::new(channel.clone());
        let mut request =
            transfer(&a, Destination::ToAccountNumber(bank_testkit::account_number("DE22BOB")), 100);
        if i == 10 {
            request.description = "poison".into();
        }
        let request = keyed(request, &alice.tokens.access_token, &format!("k{i}"));
        calls.push(tokio::spawn(async move { client.create_transfer(request).await }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    blocker.release().await;
    assert!(first.await.unwrap().is_ok());
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.unwrap() {
            Ok(_) => assert_ne!(i, 10),
            Err(status) => {
                assert_eq!(i, 10, "only the poison fails: {status:?}");
                assert_eq!(status.code(), Code::Internal);
            }
        }
    }
    assert_eq!(w.available(&alice, &a).await, 10_000 - 20 * 100);
    let (_, body) = bank_testkit::probe::http_get(w.ledger.admin_addr, "/metrics").await;
    assert!(body.contains("ledger_batch_isolations_total"), "the batch was split:\n{body}");
    w.assert_healthy().await;
}

#[tokio::test]
async fn holds_in_one_batch_keep_one_hold_per_reference_and_one_outcome_per_hold() {
    let w = world_with(Options::default().set("engine.workers", 1)).await;
    let alice = w.identity.user("alice@example.com").await;
    let a = w.account(&alice, &bank_testkit::account_number("DE23ALICE"), 1_000).await;
    let carol = w.identity.user("carol@example.com").await;
    let c = w.account(&carol, &bank_testkit::account_number("DE23CAROL"), 100).await;
    let cards = w.identity.service_token(&["ledger:holds"]).await;
    let channel = w.ledger.channel().await;
    let hold = |reference: &str, minor| CreateHoldRequest {
        account_id: a.clone(),
        amount: eur(minor),
        reference_id: reference.into(),
        counterparty: SystemAccountType::CardSettlement as i32,
        description: "coffee".into(),
        expires_at: None,
    };
    let existing = LedgerServiceClient::new(channel.clone())
        .create_hold(bearer(hold("before", 100), &cards))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap()
        .hold_id;

    let blocker = Blocker::lock(&w, &c).await;
    let mut carol_client = LedgerServiceClient::new(channel.clone());
    let carol_token = carol.tokens.access_token.clone();
    let first = tokio::spawn(async move {
        carol_client
            .create_transfer(keyed(
                transfer(&c, Destination::ToAccountNumber(bank_testkit::account_number("DE23ALICE")), 1),
                &carol_token,
                "c",
            ))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        let mut client = LedgerServiceClient::new(channel.clone());
        let request = bearer(hold("same", 200), &cards);
        created.push(tokio::spawn(async move { client.create_hold(request).await }));
    }
    let mut client = LedgerServiceClient::new(channel.clone());
    let capture = bearer(CaptureHoldRequest { hold_id: existing.clone(), amount: eur(60) }, &cards);
    let captured = tokio::spawn(async move { client.capture_hold(capture).await });
    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    let mut client = LedgerServiceClient::new(channel.clone());
    let void = bearer(VoidHoldRequest { hold_id: existing.clone(), reason: String::new() }, &cards);
    let voided = tokio::spawn(async move { client.void_hold(void).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    blocker.release().await;
    assert!(first.await.unwrap().is_ok());

    let mut ids = std::collections::HashSet::new();
    for call in created {
        ids.insert(call.await.unwrap().unwrap().into_inner().hold.unwrap().hold_id);
    }
    assert_eq!(ids.len(), 1, "one hold per reference");
    let captured = captured.await.unwrap().unwrap().into_inner();
    assert_eq!(captured.hold.unwrap().status, HoldStatus::Captured as i32);
    assert!(captured.transaction.is_some());
    assert_eq!(reason_of(&voided.await.unwrap().unwrap_err()), Some(ErrorCode::HoldNotActive));
    // 1 000 + 1 from Carol - 60 captured, 200 held by the new hold.
    assert_eq!(w.posted(&alice, &a).await, 941);
    assert_eq!(w.available(&alice, &a).await, 741);
    w.assert_healthy().await;
}
