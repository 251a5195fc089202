//! Money movement through the real ledger, identity, PostgreSQL and Redis: double entry, checks
//! inside the posting transaction, idempotency, concurrency and the integrity checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bank_ledger::Ledger;
use bank_platform::{ErrorCode, error::reason_of};
use bank_proto::{
    common::v1::Money,
    ledger::v1::{
        CreateDepositRequest, CreateLedgerAccountRequest, CreateTransferRequest, CreateWithdrawalRequest,
        GetBalancesRequest, ListEntriesRequest, VerifyLedgerInvariantsRequest,
        create_transfer_request::Destination, ledger_admin_service_client::LedgerAdminServiceClient,
        ledger_service_client::LedgerServiceClient,
    },
};
use bank_testkit::{Options, TestApp, TestIdentity, TestUser, bearer};
use tonic::{Code, transport::Channel};

struct World {
    identity: TestIdentity,
    ledger: TestApp,
    admin: String,
    service: String,
}

async fn world() -> World {
    let identity = TestIdentity::spawn().await;
    let ledger = bank_testkit::spawn_with::<Ledger>(identity.trust(Options::default())).await;
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
async fn a_transfer_by_number_moves_money_once_and_a_retry_replays_it() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, "DE00ALICE", 100_000).await;
    let b = w.account(&bob, "DE00BOB", 0).await;
    let mut client = w.client().await;

    let request = transfer(&a, Destination::ToAccountNumber("DE00BOB".into()), 25_000);
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
            transfer(&a, Destination::ToAccountNumber("DE00BOB".into()), 1),
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
            transfer(&b, Destination::ToAccountNumber("DE00ALICE".into()), 5_000),
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
    w.assert_healthy().await;
}

#[tokio::test]
async fn nobody_reads_or_debits_someone_elses_account_and_bad_input_is_refused() {
    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let a = w.account(&alice, "DE01ALICE", 10_000).await;
    let b = w.account(&bob, "DE01BOB", 10_000).await;
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
                transfer(&a, Destination::ToAccountNumber("DE01BOB".into()), amount),
                token,
                "x3",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let details = tonic_types::StatusExt::get_error_details(&err);
        assert_eq!(details.bad_request().unwrap().field_violations[0].field, field);
    }
    let mut xxx = transfer(&a, Destination::ToAccountNumber("DE01BOB".into()), 100);
    xxx.amount = Some(Money { currency: "XXX".into(), minor_units: 100 });
    let err = client.create_transfer(keyed(xxx, token, "x4")).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::CurrencyNotSupported));
    let mut usd = transfer(&a, Destination::ToAccountNumber("DE01BOB".into()), 100);
    usd.amount = Some(Money { currency: "USD".into(), minor_units: 100 });
    let err = client.create_transfer(keyed(usd, token, "x5")).await.unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::CurrencyMismatch));
    let err = client
        .create_transfer(keyed(transfer(&a, Destination::ToAccountId(a.clone()), 100), token, "x6"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .create_transfer(bearer(transfer(&a, Destination::ToAccountNumber("DE01BOB".into()), 100), token))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), Some(ErrorCode::IdempotencyKeyRequired));
    let err = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber("DE01BOB".into()), 1_000_000),
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
    let a = w.account(&alice, "DE02ALICE", 100).await;
    let b = w.account(&bob, "DE02BOB", 0).await;
    let channel = w.ledger.channel().await;
    let mut calls = Vec::new();
    for i in 0..10 {
        let mut client = LedgerServiceClient::new(channel.clone());
        let request = keyed(
            transfer(&a, Destination::ToAccountNumber("DE02BOB".into()), 20),
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
    let a = w.account(&alice, "DE03ALICE", 1_000_000).await;
    let b = w.account(&bob, "DE03BOB", 1_000_000).await;
    let channel = w.ledger.channel().await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut client = LedgerServiceClient::new(channel.clone());
        let (from, to, token) = if i % 2 == 0 {
            (a.clone(), "DE03BOB", alice.tokens.access_token.clone())
        } else {
            (b.clone(), "DE03ALICE", bob.tokens.access_token.clone())
        };
        calls.push(tokio::spawn(async move {
            for n in 0..5 {
                let request = keyed(
                    transfer(&from, Destination::ToAccountNumber(to.into()), 100 + i),
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
    let a = w.account(&alice, "DE04ALICE", 10_000).await;
    let b = w.account(&bob, "DE04BOB", 0).await;
    let channel = w.ledger.channel().await;
    let request = Arc::new(transfer(&a, Destination::ToAccountNumber("DE04BOB".into()), 700));
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
    let a = w.account(&alice, "DE05ALICE", 5_000).await;
    w.account(&bob, "DE05BOB", 0).await;
    w.client()
        .await
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber("DE05BOB".into()), 1_234),
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
    let a = w.account(&alice, "DE06ALICE", 1_000).await;
    let b = w.account(&bob, "DE06BOB", 0).await;
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
            transfer(&a, Destination::ToAccountNumber("DE06BOB".into()), 10),
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
            transfer(&a, Destination::ToAccountNumber("DE06BOB".into()), 10),
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
    let c = w.account(&bob, "DE06BOB2", 0).await;
    let _ = c;
    client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber("DE06BOB2".into()), 1_400),
            &alice.tokens.access_token,
            "o1",
        ))
        .await
        .unwrap();
    assert_eq!(w.available(&alice, &a).await, -395);
    let over = client
        .create_transfer(keyed(
            transfer(&a, Destination::ToAccountNumber("DE06BOB2".into()), 200),
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
    let a = w.account(&alice, "DE07ALICE", 10_000).await;
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
async fn random_transfer_sequences_keep_the_model_and_the_invariants() {
    use proptest::{
        prelude::*,
        test_runner::{Config, TestRunner},
    };

    let w = world().await;
    let alice = w.identity.user("alice@example.com").await;
    let bob = w.identity.user("bob@example.com").await;
    let mut accounts = Vec::new();
    for (i, owner) in [&alice, &alice, &bob, &bob].into_iter().enumerate() {
        let number = format!("DE09P{i}");
        let id = w.account(owner, &number, 1_000).await;
        accounts.push((id, number, owner.tokens.access_token.clone(), owner.clone()));
    }
    let model = std::cell::RefCell::new(vec![1_000i64; 4]);
    let handle = tokio::runtime::Handle::current();
    let channel = w.ledger.channel().await;
    let mut runner = TestRunner::new(Config { cases: 8, failure_persistence: None, ..Config::default() });
    let strategy = proptest::collection::vec((0usize..4, 0usize..4, 1i64..600), 1..25);
    let counter = std::cell::Cell::new(0u64);
    runner
        .run(&strategy, |ops| {
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let mut client = LedgerServiceClient::new(channel.clone());
                    for (from, to, amount) in ops {
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
                            let mut model = model.borrow_mut();
                            model[from] -= amount;
                            model[to] += amount;
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
