//! Cards through the real cards, accounts, ledger and identity services, PostgreSQL and Redis:
//! issuance (PAN, CVV, last four), the charge lifecycle against ledger holds, the daily limit under
//! concurrency, declines with their reasons, the owner rule (another user's card reads like a
//! missing one), PAN reveal (step-up, rate limit, audit), administration and KEK rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bank_cards::Cards;
use bank_platform::{ErrorCode, idempotency::REPLAYED};
use bank_proto::{
    cards::v1::{
        AuthorizationStatus, CaptureChargeRequest, CardLimits, CardStatus, DeclineReason,
        ForceCloseCardRequest, FreezeCardRequest, GetCardRequest, GetChargeRequest, GetVaultStatusRequest,
        ListCardsRequest, ListChargesRequest, ListDeclinesRequest, RefundChargeRequest, ReplaceCardRequest,
        ReportCardLostRequest, RevealCardPanRequest, RotateKeyEncryptionKeyRequest, SearchCardsRequest,
        SetCardLimitsRequest, UnfreezeCardRequest, VoidChargeRequest,
    },
    events::v1::{CardAuthorizationDeclined, CardIssued, CardPanRevealed},
};
use bank_testkit::{Options, bearer};
use prost::Message as _;
use support::*;
use tonic::Code;

#[tokio::test]
async fn issue_charge_capture_refund_moves_the_ledger_balances() {
    let w = world().await;
    let (alice, account) = w.customer("alice.cards@example.com", 100_000).await;
    let issued = w.issue(&alice, &account, None).await;
    let card = issued.card.clone().unwrap();
    assert_eq!(issued.pan.len(), 16);
    assert!(issued.pan.starts_with("400000") && bank_cards::domain::luhn_valid(&issued.pan));
    assert_eq!(card.last_four, issued.pan[12..]);
    assert_eq!(issued.cvv.len(), 3);
    assert_eq!(card.status, CardStatus::Active as i32);
    assert_eq!(card.cardholder_name, "Test User");
    assert_eq!(card.time_zone, "UTC");
    let issued_events = w.events("bank.events.v1.CardIssued").await;
    assert_eq!(CardIssued::decode(issued_events[0].as_slice()).unwrap().last_four, card.last_four);

    let acquirer = w.acquirer().await;
    let key = fresh_key();
    let approved = w.charge(&acquirer, &card.card_id, 4_000, &key).await.unwrap();
    assert_eq!(approved.status, AuthorizationStatus::Approved as i32, "{approved:?}");
    assert!(!approved.hold_id.is_empty());
    assert_eq!(triple(&w.balances(&alice, &account).await), (100_000, 4_000, 96_000));

    // A retry with the same key answers the same authorization, and holds nothing more.
    let retried = w
        .client()
        .await
        .authorize_charge(keyed(charge_request(&card.card_id, 4_000), &acquirer, &key))
        .await
        .unwrap();
    assert!(retried.metadata().get(REPLAYED).is_some());
    assert_eq!(retried.into_inner().authorization.unwrap().authorization_id, approved.authorization_id);
    assert_eq!(triple(&w.balances(&alice, &account).await), (100_000, 4_000, 96_000));
    let reused = w.charge(&acquirer, &card.card_id, 4_001, &key).await.unwrap_err();
    assert_reason(&reused, Code::FailedPrecondition, ErrorCode::IdempotencyKeyReused);

    // Partial capture: 30.00 of 40.00 posted, the rest released.
    let capture = |amount: Option<i64>, key: String| {
        let (w, acquirer, card_id, auth) =
            (&w, acquirer.clone(), card.card_id.clone(), approved.authorization_id.clone());
        async move {
            w.client()
                .await
                .capture_charge(keyed(
                    CaptureChargeRequest { card_id, authorization_id: auth, amount: amount.and_then(eur) },
                    &acquirer,
                    &key,
                ))
                .await
        }
    };
    let too_much = capture(Some(4_001), fresh_key()).await.unwrap_err();
    assert_reason(&too_much, Code::FailedPrecondition, ErrorCode::AmountExceedsAvailable);
    let captured = capture(Some(3_000), fresh_key()).await.unwrap().into_inner().authorization.unwrap();
    assert_eq!(captured.status, AuthorizationStatus::Captured as i32);
    assert_eq!(captured.captured_amount.unwrap().minor_units, 3_000);
    assert_eq!(triple(&w.balances(&alice, &account).await), (97_000, 0, 97_000));
    let again = capture(Some(2_000), fresh_key()).await.unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, ErrorCode::AuthorizationStateConflict);

    // Refunds: at most the captured amount in total; each once per key.
    let refund = |amount: i64, key: String| {
        let (w, acquirer, card_id, auth) =
            (&w, acquirer.clone(), card.card_id.clone(), approved.authorization_id.clone());
        async move {
            w.client()
                .await
                .refund_charge(keyed(
                    RefundChargeRequest { card_id, authorization_id: auth, amount: eur(amount) },
                    &acquirer,
                    &key,
                ))
                .await
        }
    };
    let refund_key = fresh_key();
    let refunded = refund(1_000, refund_key.clone()).await.unwrap().into_inner();
    assert_eq!(refunded.authorization.unwrap().refunded_amount.unwrap().minor_units, 1_000);
    let replay = refund(1_000, refund_key).await.unwrap();
    assert!(replay.metadata().get(REPLAYED).is_some());
    assert_eq!(replay.into_inner().refund_id, refunded.refund_id);
    assert_eq!(triple(&w.balances(&alice, &account).await), (98_000, 0, 98_000));
    let over = refund(2_001, fresh_key()).await.unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition, "{over:?}");
    assert_eq!(triple(&w.balances(&alice, &account).await), (98_000, 0, 98_000));

    // A second charge voided: the hold is released.
    let second = w.charge(&acquirer, &card.card_id, 500, &fresh_key()).await.unwrap();
    assert_eq!(triple(&w.balances(&alice, &account).await), (98_000, 500, 97_500));
    let voided = w
        .client()
        .await
        .void_charge(keyed(
            VoidChargeRequest {
                card_id: card.card_id.clone(),
                authorization_id: second.authorization_id.clone(),
            },
            &acquirer,
            &fresh_key(),
        ))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(voided.status, AuthorizationStatus::Voided as i32);
    assert_eq!(triple(&w.balances(&alice, &account).await), (98_000, 0, 98_000));

    for event in [
        "bank.events.v1.CardAuthorizationApproved",
        "bank.events.v1.CardChargeCaptured",
        "bank.events.v1.CardChargeRefunded",
        "bank.events.v1.CardChargeVoided",
    ] {
        assert!(!w.events(event).await.is_empty(), "{event} in the outbox");
    }
    // The owner sees the history; the card shows what counts against today's limit (4,000 + 500
    // approved, the void gives its 500 back).
    let charges = w
        .client()
        .await
        .list_charges(bearer(
            ListChargesRequest { card_id: card.card_id.clone(), ..Default::default() },
            token(&alice),
        ))
        .await
        .unwrap()
        .into_inner()
        .authorizations;
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[0].authorization_id, second.authorization_id, "newest first");
    let card_now = w
        .client()
        .await
        .get_card(bearer(GetCardRequest { card_id: card.card_id.clone() }, token(&alice)))
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(card_now.spent_today.unwrap().minor_units, 4_000);
}

#[tokio::test]
async fn twenty_concurrent_charges_of_100_with_a_daily_limit_of_1000_approve_exactly_ten() {
    let w = world().await;
    let (alice, account) = w.customer("race.cards@example.com", 1_000_000).await;
    let card = w.issue(&alice, &account, Some((1_000, 1_000))).await.card.unwrap();
    let acquirer = w.acquirer().await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut client = w.client().await;
        let (acquirer, card_id) = (acquirer.clone(), card.card_id.clone());
        tasks.push(tokio::spawn(async move {
            client
                .authorize_charge(keyed(charge_request(&card_id, 100), &acquirer, &fresh_key()))
                .await
                .unwrap()
                .into_inner()
                .authorization
                .unwrap()
        }));
    }
    let mut approved = 0;
    let mut declined = 0;
    for task in tasks {
        let authorization = task.await.unwrap();
        if authorization.status == AuthorizationStatus::Approved as i32 {
            approved += 1;
        } else {
            assert_eq!(
                authorization.decline_reason,
                DeclineReason::DailyLimitExceeded as i32,
                "{authorization:?}"
            );
            declined += 1;
        }
    }
    assert_eq!((approved, declined), (10, 10));
    assert_eq!(triple(&w.balances(&alice, &account).await), (1_000_000, 1_000, 999_000));
    let card = w
        .client()
        .await
        .get_card(bearer(GetCardRequest { card_id: card.card_id.clone() }, token(&alice)))
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(card.spent_today.unwrap().minor_units, 1_000);

    // Approvals and declines by reason, and the authorization latency, on the admin port.
    let (status, metrics) = bank_testkit::probe::http_get(w.cards.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let line = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let declined =
        line("cards_authorizations_total", &["result=\"declined\"", "reason=\"DAILY_LIMIT_EXCEEDED\""]);
    assert!(declined.is_some_and(|n| n >= 10.0), "declines by reason are counted: {declined:?}");
    let approved = line("cards_authorizations_total", &["result=\"approved\""]);
    assert!(approved.is_some_and(|n| n >= 10.0), "approvals are counted: {approved:?}");
    let count = line("cards_authorization_duration_seconds_count", &["result=\"approved\""]);
    let sum = line("cards_authorization_duration_seconds_sum", &["result=\"approved\""]);
    assert!(count.is_some_and(|n| n >= 10.0), "authorization latency is recorded: {count:?}");
    #[allow(clippy::float_arithmetic, clippy::print_stdout)]
    if let (Some(count), Some(sum)) = (count, sum) {
        println!(
            "mean approved authorization latency under 20 concurrent charges: {:.1} ms",
            sum / count * 1000.0
        );
    }

    // For the record (no assertion on time): sequential authorizations on a warm card.
    let card = w.issue(&alice, &account, Some((500_000, 1_000))).await.card.unwrap();
    let mut client = w.client().await;
    let mut took = Vec::new();
    for _ in 0..30 {
        let started = std::time::Instant::now();
        let answer = client
            .authorize_charge(keyed(charge_request(&card.card_id, 100), &acquirer, &fresh_key()))
            .await
            .unwrap()
            .into_inner();
        took.push(started.elapsed());
        assert_eq!(answer.authorization.unwrap().status, AuthorizationStatus::Approved as i32);
    }
    took.sort();
    #[allow(clippy::print_stdout)]
    {
        println!(
            "sequential authorizations (debug build, approve + hold): p50 {:?}, p90 {:?}, max {:?}",
            took[15], took[27], took[29]
        );
    }
}

#[tokio::test]
async fn uncaptured_authorizations_expire_and_release_their_hold() {
    let w = world().await;
    let (alice, account) = w.customer("expiry.cards@example.com", 10_000).await;
    let card = w.issue(&alice, &account, None).await.card.unwrap();
    let approved = w.charge(token(&alice), &card.card_id, 2_500, &fresh_key()).await.unwrap();
    assert_eq!(triple(&w.balances(&alice, &account).await), (10_000, 2_500, 7_500));
    // Its capture window ends now (the ledger's own hold expiry is a day later).
    let mut conn = w.cards_db().await;
    sqlx::query("UPDATE authorizations SET expires_at = now() WHERE authorization_id = $1::uuid")
        .bind(&approved.authorization_id)
        .execute(&mut conn)
        .await
        .unwrap();
    eventually("the reconciler expires the authorization", || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM authorizations WHERE authorization_id = $1::uuid")
                .bind(&approved.authorization_id)
                .fetch_one(&mut w.cards_db().await)
                .await
                .unwrap();
        status == "expired"
    })
    .await;
    assert_eq!(triple(&w.balances(&alice, &account).await), (10_000, 0, 10_000));
    let voided = w.events("bank.events.v1.CardChargeVoided").await;
    let event = bank_proto::events::v1::CardChargeVoided::decode(voided[0].as_slice()).unwrap();
    assert!(event.expired && event.authorization_id == approved.authorization_id);
    let capture = w
        .client()
        .await
        .capture_charge(keyed(
            CaptureChargeRequest {
                card_id: card.card_id.clone(),
                authorization_id: approved.authorization_id.clone(),
                amount: None,
            },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap_err();
    assert_reason(&capture, Code::FailedPrecondition, ErrorCode::AuthorizationStateConflict);
}

#[tokio::test]
async fn declines_carry_their_reason_and_reach_the_security_feed() {
    let w = world().await;
    let (alice, account) = w.customer("declines.cards@example.com", 5_000).await;
    let card = w.issue(&alice, &account, Some((10_000, 3_000))).await.card.unwrap();
    let acquirer = w.acquirer().await;
    let mut client = w.client().await;

    client
        .freeze_card(bearer(FreezeCardRequest { card_id: card.card_id.clone() }, token(&alice)))
        .await
        .unwrap();
    let frozen = w.charge(&acquirer, &card.card_id, 100, &fresh_key()).await.unwrap();
    assert_eq!(frozen.status, AuthorizationStatus::Declined as i32);
    assert_eq!(frozen.decline_reason, DeclineReason::CardFrozen as i32);
    assert!(frozen.hold_id.is_empty());
    let declined = w.events("bank.events.v1.CardAuthorizationDeclined").await;
    let event = CardAuthorizationDeclined::decode(declined.last().unwrap().as_slice()).unwrap();
    assert_eq!(
        (event.authorization_id.as_str(), event.decline_reason),
        (frozen.authorization_id.as_str(), DeclineReason::CardFrozen as i32)
    );
    assert_eq!(event.card_last_four, card.last_four);
    client
        .unfreeze_card(bearer(UnfreezeCardRequest { card_id: card.card_id.clone() }, token(&alice)))
        .await
        .unwrap();

    let over_limit = w.charge(&acquirer, &card.card_id, 3_001, &fresh_key()).await.unwrap();
    assert_eq!(over_limit.decline_reason, DeclineReason::TransactionLimitExceeded as i32);
    let mut usd = charge_request(&card.card_id, 100);
    usd.amount = Some(bank_proto::common::v1::Money { currency: "USD".into(), minor_units: 100 });
    let usd = client.authorize_charge(keyed(usd, &acquirer, &fresh_key())).await.unwrap().into_inner();
    assert_eq!(usd.authorization.unwrap().decline_reason, DeclineReason::CurrencyMismatch as i32);
    // The ledger decides funds: 5,000 available.
    w.charge(&acquirer, &card.card_id, 3_000, &fresh_key()).await.unwrap();
    let broke = w.charge(&acquirer, &card.card_id, 2_500, &fresh_key()).await.unwrap();
    assert_eq!(broke.decline_reason, DeclineReason::InsufficientFunds as i32, "{broke:?}");
    assert_eq!(triple(&w.balances(&alice, &account).await), (5_000, 3_000, 2_000));

    // Past its expiry month the card declines CARD_EXPIRED and reads as EXPIRED.
    let mut conn = w.cards_db().await;
    sqlx::query("UPDATE cards SET expiry_year = 2020 WHERE card_id = $1::uuid")
        .bind(&card.card_id)
        .execute(&mut conn)
        .await
        .unwrap();
    let expired = w.charge(&acquirer, &card.card_id, 100, &fresh_key()).await.unwrap();
    assert_eq!(expired.decline_reason, DeclineReason::CardExpired as i32);
    let read = client
        .get_card(bearer(GetCardRequest { card_id: card.card_id.clone() }, token(&alice)))
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(read.status, CardStatus::Expired as i32);

    // Every decline is recorded and listed for staff by reason.
    let declines = w
        .admin_client()
        .await
        .list_declines(bearer(
            ListDeclinesRequest { card_id: card.card_id.clone(), ..ListDeclinesRequest::default() },
            &w.admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .authorizations;
    assert_eq!(declines.len(), 5);
    let frozen_only = w
        .admin_client()
        .await
        .list_declines(bearer(
            ListDeclinesRequest {
                reason: DeclineReason::CardFrozen as i32,
                ..ListDeclinesRequest::default()
            },
            &w.admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .authorizations;
    assert_eq!(frozen_only.len(), 1);

    // A charge without a key, with bad input, or from a service without the scope is refused.
    let no_key =
        client.authorize_charge(bearer(charge_request(&card.card_id, 1), &acquirer)).await.unwrap_err();
    assert_reason(&no_key, Code::InvalidArgument, ErrorCode::IdempotencyKeyRequired);
    let mut bad = charge_request(&card.card_id, -5);
    bad.merchant = None;
    let bad = client.authorize_charge(keyed(bad, &acquirer, &fresh_key())).await.unwrap_err();
    assert_reason(&bad, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let wrong_scope = w.identity.service_token(&["ledger:read"]).await;
    let denied = w.charge(&wrong_scope, &card.card_id, 1, &fresh_key()).await.unwrap_err();
    assert_reason(&denied, Code::PermissionDenied, ErrorCode::PermissionDenied);
}

#[tokio::test]
async fn another_users_card_reads_exactly_like_a_missing_one() {
    let w = world().await;
    let (alice, account) = w.customer("owner.cards@example.com", 10_000).await;
    let (bob, _) = w.customer("other.cards@example.com", 0).await;
    let card = w.issue(&alice, &account, None).await.card.unwrap();
    let missing = uuid::Uuid::now_v7().to_string();
    let mut client = w.client().await;
    for card_id in [card.card_id.clone(), missing] {
        let get = client
            .get_card(bearer(GetCardRequest { card_id: card_id.clone() }, token(&bob)))
            .await
            .unwrap_err();
        assert_reason(&get, Code::NotFound, ErrorCode::NotFound);
        assert_eq!(get.message(), "no such card");
        let freeze = client
            .freeze_card(bearer(FreezeCardRequest { card_id: card_id.clone() }, token(&bob)))
            .await
            .unwrap_err();
        assert_reason(&freeze, Code::NotFound, ErrorCode::NotFound);
        assert_eq!(freeze.message(), "no such card");
        // Owner charges are on in tests: Bob charging Alice's card is refused like a missing card.
        let charge = w.charge(token(&bob), &card_id, 100, &fresh_key()).await.unwrap_err();
        assert_reason(&charge, Code::NotFound, ErrorCode::NotFound);
        assert_eq!(charge.message(), "no such card");
        let reveal = client
            .reveal_card_pan(bearer(RevealCardPanRequest { card_id: card_id.clone() }, token(&bob)))
            .await
            .unwrap_err();
        assert_reason(&reveal, Code::NotFound, ErrorCode::NotFound);
        let list = client
            .list_charges(bearer(ListChargesRequest { card_id, ..Default::default() }, token(&bob)))
            .await
            .unwrap_err();
        assert_reason(&list, Code::NotFound, ErrorCode::NotFound);
    }
    let bobs =
        client.list_cards(bearer(ListCardsRequest::default(), token(&bob))).await.unwrap().into_inner();
    assert!(bobs.cards.is_empty());
    // Issuing on someone else's account is NOT_FOUND too (accounts decides, with Bob's own token).
    let issue = client
        .issue_card(bearer(
            bank_proto::cards::v1::IssueCardRequest { account_id: account.clone(), ..Default::default() },
            token(&bob),
        ))
        .await
        .unwrap_err();
    assert_reason(&issue, Code::NotFound, ErrorCode::NotFound);
    // Alice's card is untouched and works.
    let approved = w.charge(token(&alice), &card.card_id, 100, &fresh_key()).await.unwrap();
    assert_eq!(approved.status, AuthorizationStatus::Approved as i32);
    let charge = client
        .get_charge(bearer(
            GetChargeRequest {
                card_id: card.card_id.clone(),
                authorization_id: approved.authorization_id.clone(),
            },
            token(&bob),
        ))
        .await
        .unwrap_err();
    assert_reason(&charge, Code::NotFound, ErrorCode::NotFound);
}

#[tokio::test]
async fn limits_lost_replacement_and_close() {
    let w = world().await;
    let (alice, account) = w.customer("manage.cards@example.com", 10_000).await;
    let mut client = w.client().await;
    let above = client
        .issue_card(bearer(
            bank_proto::cards::v1::IssueCardRequest {
                account_id: account.clone(),
                limits: Some(CardLimits { daily_limit: eur(10_000_000), per_transaction_limit: None }),
                ..Default::default()
            },
            token(&alice),
        ))
        .await
        .unwrap_err();
    assert_reason(&above, Code::InvalidArgument, ErrorCode::LimitAboveProductMaximum);
    let card = w.issue(&alice, &account, None).await.card.unwrap();
    let limited = client
        .set_card_limits(bearer(
            SetCardLimitsRequest {
                card_id: card.card_id.clone(),
                limits: Some(CardLimits { daily_limit: eur(2_000), per_transaction_limit: None }),
            },
            token(&alice),
        ))
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(limited.limits.unwrap().daily_limit.unwrap().minor_units, 2_000);
    let too_high = client
        .set_card_limits(bearer(
            SetCardLimitsRequest {
                card_id: card.card_id.clone(),
                limits: Some(CardLimits { daily_limit: None, per_transaction_limit: eur(250_001) }),
            },
            token(&alice),
        ))
        .await
        .unwrap_err();
    assert_reason(&too_high, Code::InvalidArgument, ErrorCode::LimitAboveProductMaximum);

    // An approved charge stays capturable after the card is reported lost.
    let approved = w.charge(token(&alice), &card.card_id, 700, &fresh_key()).await.unwrap();
    let lost = client
        .report_card_lost(bearer(
            ReportCardLostRequest { card_id: card.card_id.clone(), stolen: true },
            token(&alice),
        ))
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(lost.status, CardStatus::Lost as i32);
    let declined = w.charge(token(&alice), &card.card_id, 100, &fresh_key()).await.unwrap();
    assert_eq!(declined.decline_reason, DeclineReason::CardLost as i32);
    let unfreeze = client
        .unfreeze_card(bearer(UnfreezeCardRequest { card_id: card.card_id.clone() }, token(&alice)))
        .await
        .unwrap_err();
    assert_reason(&unfreeze, Code::FailedPrecondition, ErrorCode::CardLost);
    let captured = client
        .capture_charge(keyed(
            CaptureChargeRequest {
                card_id: card.card_id.clone(),
                authorization_id: approved.authorization_id.clone(),
                amount: None,
            },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(captured.captured_amount.unwrap().minor_units, 700);

    let replaced = client
        .replace_card(keyed(
            ReplaceCardRequest { card_id: card.card_id.clone() },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap()
        .into_inner();
    let new_card = replaced.card.clone().unwrap();
    assert_eq!(new_card.account_id, account);
    assert_eq!(new_card.replaces_card_id, card.card_id);
    assert_eq!(new_card.limits.as_ref().unwrap().daily_limit.as_ref().unwrap().minor_units, 2_000);
    assert_ne!(replaced.pan[12..], *"", "the new PAN is shown once");
    assert_eq!(new_card.last_four, replaced.pan[12..]);
    let again = client
        .replace_card(keyed(
            ReplaceCardRequest { card_id: card.card_id.clone() },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap_err();
    assert_reason(&again, Code::FailedPrecondition, ErrorCode::CardClosed);
    let listed =
        client.list_cards(bearer(ListCardsRequest::default(), token(&alice))).await.unwrap().into_inner();
    assert_eq!(
        listed.cards.iter().map(|c| c.card_id.as_str()).collect::<Vec<_>>(),
        vec![new_card.card_id.as_str()]
    );
    let all = client
        .list_cards(bearer(ListCardsRequest { include_inactive: true, ..Default::default() }, token(&alice)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.cards.len(), 2);

    let closed = client
        .close_card(bearer(
            bank_proto::cards::v1::CloseCardRequest { card_id: new_card.card_id.clone() },
            token(&alice),
        ))
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(closed.status, CardStatus::Closed as i32);
    let frozen = client
        .freeze_card(bearer(FreezeCardRequest { card_id: new_card.card_id.clone() }, token(&alice)))
        .await
        .unwrap_err();
    assert_reason(&frozen, Code::FailedPrecondition, ErrorCode::CardClosed);
}

#[tokio::test]
async fn reveal_is_audited_rate_limited_and_needs_a_recent_second_factor_with_mfa() {
    let w = world().await;
    let (alice, account) = w.customer("reveal.cards@example.com", 0).await;
    let issued = w.issue(&alice, &account, None).await;
    let card_id = issued.card.unwrap().card_id;
    let mut client = w.client().await;
    for _ in 0..5 {
        let revealed = client
            .reveal_card_pan(bearer(RevealCardPanRequest { card_id: card_id.clone() }, token(&alice)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revealed.pan, issued.pan);
    }
    let limited = client
        .reveal_card_pan(bearer(RevealCardPanRequest { card_id: card_id.clone() }, token(&alice)))
        .await
        .unwrap_err();
    assert_reason(&limited, Code::ResourceExhausted, ErrorCode::RateLimited);
    let audited = w.events("bank.events.v1.CardPanRevealed").await;
    assert_eq!(audited.len(), 5);
    assert_eq!(CardPanRevealed::decode(audited[0].as_slice()).unwrap().card_id, card_id);

    // With MFA enrolled, a session without a recent second factor must step up first.
    let (bob, bob_account) = w.customer("reveal.mfa@example.com", 0).await;
    let bob_card = w.issue(&bob, &bob_account, None).await.card.unwrap();
    w.identity.enrol_mfa(token(&bob)).await;
    let step_up = client
        .reveal_card_pan(bearer(RevealCardPanRequest { card_id: bob_card.card_id.clone() }, token(&bob)))
        .await
        .unwrap_err();
    assert_reason(&step_up, Code::Unauthenticated, ErrorCode::StepUpRequired);
}

#[tokio::test]
async fn staff_search_force_close_with_void_and_rotate_the_kek() {
    let w = world().await;
    let (alice, account) = w.customer("staff.cards@example.com", 10_000).await;
    let card = w.issue(&alice, &account, None).await.card.unwrap();
    let approved = w.charge(token(&alice), &card.card_id, 1_200, &fresh_key()).await.unwrap();
    let mut admin = w.admin_client().await;
    let found = admin
        .search_cards(bearer(
            SearchCardsRequest {
                last_four: card.last_four.clone(),
                owner_user_id: alice.user_id.clone(),
                ..Default::default()
            },
            &w.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.page_info.unwrap().total_size, Some(1));
    // Customers are not staff.
    let denied = admin.search_cards(bearer(SearchCardsRequest::default(), token(&alice))).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let no_reason = admin
        .force_close_card(bearer(
            ForceCloseCardRequest { card_id: card.card_id.clone(), ..Default::default() },
            &w.admin,
        ))
        .await
        .unwrap_err();
    assert_reason(&no_reason, Code::InvalidArgument, ErrorCode::ValidationFailed);
    let closed = admin
        .force_close_card(bearer(
            ForceCloseCardRequest {
                card_id: card.card_id.clone(),
                reason: "fraud ring".into(),
                void_pending: true,
            },
            &w.admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(closed.status, CardStatus::Closed as i32);
    let charge = w
        .client()
        .await
        .get_charge(bearer(
            GetChargeRequest {
                card_id: card.card_id.clone(),
                authorization_id: approved.authorization_id.clone(),
            },
            token(&alice),
        ))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(charge.status, AuthorizationStatus::Voided as i32);
    assert_eq!(triple(&w.balances(&alice, &account).await), (10_000, 0, 10_000));

    // KEK rotation re-wraps every data key; the PAN still opens, under kek-2 alone too.
    let second = w.issue(&alice, &account, None).await;
    let status =
        admin.get_vault_status(bearer(GetVaultStatusRequest {}, &w.admin)).await.unwrap().into_inner();
    let kek1 = status.keys.iter().find(|k| k.kek_id == "kek-1").unwrap();
    assert!(kek1.primary);
    assert_eq!(kek1.wrapped_data_keys, 3, "the index key and one data key per card");
    let unknown = admin
        .rotate_key_encryption_key(bearer(
            RotateKeyEncryptionKeyRequest { new_kek_id: "kek-9".into(), reason: "yearly".into() },
            &w.admin,
        ))
        .await
        .unwrap_err();
    assert_reason(&unknown, Code::NotFound, ErrorCode::NotFound);
    let rotated = admin
        .rotate_key_encryption_key(bearer(
            RotateKeyEncryptionKeyRequest { new_kek_id: "kek-2".into(), reason: "yearly".into() },
            &w.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rotated.rewrapped_count, rotated.remaining_count), (3, 0));
    let kek2 = rotated.keys.iter().find(|k| k.kek_id == "kek-2").unwrap();
    assert!(kek2.primary && kek2.wrapped_data_keys == 3);

    let second_id = second.card.unwrap().card_id;
    let only_new = bank_testkit::spawn_with::<Cards>(
        cards_options(&w.identity, w.ledger.addr, &w.accounts)
            .database(false)
            .set("database.url", w.cards.database().unwrap().url())
            .set("vault.keks", KEK_2),
    )
    .await;
    let revealed =
        bank_proto::cards::v1::cards_service_client::CardsServiceClient::new(only_new.channel().await)
            .reveal_card_pan(bearer(RevealCardPanRequest { card_id: second_id }, token(&alice)))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(revealed.pan, second.pan);

    // Without the KEK that wraps the stored keys, cards refuses to start.
    let sources = bank_platform::config::Sources::default()
        .with("database.url", w.cards.database().unwrap().url())
        .with("redis.url", bank_testkit::redis_url())
        .with("auth.client_id", "x")
        .with("auth.client_secret", "y")
        .with("vault.keks", KEK_1)
        .with("server.listen_addr", "127.0.0.1:0")
        .with("server.admin_addr", "127.0.0.1:0");
    let config = bank_platform::config::load::<bank_cards::Config>(&sources).unwrap();
    let refused = <Cards as bank_platform::Service>::build(config).await.expect_err("refuses to start");
    assert!(refused.to_string().contains("kek-2"), "{refused}");
    let _ = Options::default();
}

/// A raw HTTP/1.1 request to the gateway; answers (status, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    key: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn charges_go_through_the_generated_rest_route() {
    let w = world().await;
    let (alice, account) = w.customer("rest.cards@example.com", 10_000).await;
    let card = w.issue(&alice, &account, None).await.card.unwrap();
    let gateway = bank_testkit::spawn_with::<bank_gateway::Gateway>(
        w.identity
            .trust(Options::default().database(false).redis(true).set("edge.hsts", false))
            .set("upstreams.identity", w.identity.url())
            .set("upstreams.cards", format!("http://{}", w.cards.addr))
            .set("upstreams.required_for_readiness", vec!["identity".to_owned(), "cards".to_owned()]),
    )
    .await;
    let body = r#"{"merchant":{"name":"Corner Grocer","categoryCode":"5411"},"amount":{"currency":"EUR","minorUnits":"4000"}}"#;
    let path = format!("/api/v1/cards/{}/charges", card.card_id);
    let (status, answer) = http(gateway.addr, "POST", &path, token(&alice), "rest-1", body).await;
    assert_eq!(status, 200, "{answer}");
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(json["authorization"]["status"], "AUTHORIZATION_STATUS_APPROVED", "{answer}");
    assert_eq!(triple(&w.balances(&alice, &account).await), (10_000, 4_000, 6_000));
    // A decline is a 200 answer with its reason; a client mistake is a problem with a stable reason.
    let over = r#"{"merchant":{"name":"Corner Grocer","categoryCode":"5411"},"amount":{"currency":"EUR","minorUnits":"9000"}}"#;
    let (status, answer) = http(gateway.addr, "POST", &path, token(&alice), "rest-2", over).await;
    assert_eq!(status, 200, "{answer}");
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(json["authorization"]["declineReason"], "DECLINE_REASON_INSUFFICIENT_FUNDS", "{answer}");
    let bad = r#"{"merchant":{"name":"Corner Grocer","categoryCode":"54"},"amount":{"currency":"EUR","minorUnits":"1"}}"#;
    let (status, answer) = http(gateway.addr, "POST", &path, token(&alice), "rest-3", bad).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("VALIDATION_FAILED") && answer.contains("merchant.category_code"), "{answer}");
}
