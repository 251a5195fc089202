//! No PAN (and no CVV) reaches a log line (at every level down to TRACE, sqlx's statement log and
//! the platform's access log included), an error a client receives, an event payload, or a dump of
//! the cards database — scanned for any 13 to 19 digit Luhn-valid number, with or without
//! separators, and for the exact PANs issued during the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bank_platform::ErrorCode;
use bank_proto::cards::v1::{
    CaptureChargeRequest, FreezeCardRequest, GetCardRequest, IssueCardRequest, Merchant, RefundChargeRequest,
    ReplaceCardRequest, RevealCardPanRequest, VoidChargeRequest,
};
use bank_testkit::bearer;
use support::*;

/// Printable text of bytes (binary as spaces), so numbers inside payloads can be scanned.
fn printable(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { char::from(b) } else { ' ' }).collect()
}

#[test]
fn the_scanner_finds_card_numbers_in_every_shape_and_ignores_ids() {
    assert_eq!(luhn_numbers("pan=4111111111111111 x"), vec!["4111111111111111"]);
    assert_eq!(luhn_numbers("\"4111 1111 1111 1111\""), vec!["4111111111111111"]);
    assert_eq!(luhn_numbers("4111-1111-1111-1111."), vec!["4111111111111111"]);
    assert!(luhn_numbers("4111111111111112").is_empty(), "not Luhn-valid");
    assert!(luhn_numbers("trace 4bf92f3577b34da6a3ce929d0e0e4736").is_empty());
    assert!(luhn_numbers("0.4111111111111111").is_empty(), "a decimal fraction");
}

#[tokio::test]
async fn no_pan_reaches_logs_errors_events_or_the_database_dump() {
    let capture = bank_testkit::logs::Capture::install("cards");

    let w = world().await;
    let (alice, account) = w.customer("pan.keeper@example.com", 50_000).await;
    let (bob, _) = w.customer("pan.snoop@example.com", 0).await;
    let acquirer = w.acquirer().await;
    let mut client = w.client().await;
    let mut errors: Vec<String> = Vec::new();
    let mut pans: Vec<String> = Vec::new();

    let issued = w.issue(&alice, &account, Some((20_000, 10_000))).await;
    let card_id = issued.card.clone().unwrap().card_id;
    pans.push(issued.pan.clone());
    let cvv = issued.cvv.clone();
    // Positive control: the scanner recognises the PANs this service issues.
    assert_eq!(luhn_numbers(&format!("x {} y", issued.pan)), vec![issued.pan.clone()]);
    // Even a Debug print of the response (a panic message, a careless log line) shows no secret.
    let printed = format!("{issued:?}");
    assert!(luhn_numbers(&printed).is_empty() && !printed.contains(&issued.pan), "{printed}");

    let revealed = client
        .reveal_card_pan(bearer(RevealCardPanRequest { card_id: card_id.clone() }, token(&alice)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.pan, issued.pan);

    let approved = w.charge(&acquirer, &card_id, 1_500, &fresh_key()).await.unwrap();
    let declined = w.charge(&acquirer, &card_id, 15_000, &fresh_key()).await.unwrap();
    assert_ne!(declined.decline_reason, 0, "over the per-transaction limit");
    client
        .capture_charge(keyed(
            CaptureChargeRequest {
                card_id: card_id.clone(),
                authorization_id: approved.authorization_id.clone(),
                amount: None,
            },
            &acquirer,
            &fresh_key(),
        ))
        .await
        .unwrap();
    client
        .refund_charge(keyed(
            RefundChargeRequest {
                card_id: card_id.clone(),
                authorization_id: approved.authorization_id.clone(),
                amount: eur(500),
            },
            &acquirer,
            &fresh_key(),
        ))
        .await
        .unwrap();
    let to_void = w.charge(&acquirer, &card_id, 700, &fresh_key()).await.unwrap();
    client
        .void_charge(keyed(
            VoidChargeRequest {
                card_id: card_id.clone(),
                authorization_id: to_void.authorization_id.clone(),
            },
            &acquirer,
            &fresh_key(),
        ))
        .await
        .unwrap();
    client.freeze_card(bearer(FreezeCardRequest { card_id: card_id.clone() }, token(&alice))).await.unwrap();
    w.charge(&acquirer, &card_id, 100, &fresh_key()).await.unwrap();
    let replaced = client
        .replace_card(keyed(ReplaceCardRequest { card_id: card_id.clone() }, token(&alice), &fresh_key()))
        .await
        .unwrap()
        .into_inner();
    pans.push(replaced.pan.clone());

    // Card numbers typed into free text: masked to the last four in the cardholder name and the
    // merchant's name and city; refused in the merchant id and the acquirer reference.
    let named = client
        .issue_card(keyed(
            IssueCardRequest {
                account_id: account.clone(),
                cardholder_name: "A 4000 0566 5566 5556".into(),
                limits: None,
            },
            token(&alice),
            &fresh_key(),
        ))
        .await
        .unwrap()
        .into_inner();
    pans.push(named.pan.clone());
    let named_card = named.card.unwrap();
    assert_eq!(named_card.cardholder_name, "A **** **** **** 5556");
    let mut typed = charge_request(&named_card.card_id, 300);
    typed.merchant = Some(Merchant {
        name: "Shop 5555-5555-5555-4444".into(),
        category_code: "5411".into(),
        city: "4242424242424242".into(),
        ..Merchant::default()
    });
    let masked = client.authorize_charge(keyed(typed, &acquirer, &fresh_key())).await.unwrap().into_inner();
    let merchant = masked.authorization.unwrap().merchant.unwrap();
    assert_eq!(
        (merchant.name.as_str(), merchant.city.as_str()),
        ("Shop ****-****-****-4444", "************4242")
    );
    for (field, shape) in
        [("merchant.merchant_id", "4111 1111 1111 1111"), ("acquirer_reference", "4111111111111111")]
    {
        let mut refused = charge_request(&named_card.card_id, 300);
        if field == "acquirer_reference" {
            refused.acquirer_reference = shape.into();
        } else {
            refused.merchant.as_mut().unwrap().merchant_id = shape.into();
        }
        let status = client.authorize_charge(keyed(refused, &acquirer, &fresh_key())).await.unwrap_err();
        assert_reason(&status, tonic::Code::InvalidArgument, ErrorCode::ValidationFailed);
        let details = bank_testkit::violations(&status);
        assert!(details.iter().any(|(f, c)| f == field && c == "CONTAINS_CARD_NUMBER"), "{details:?}");
        errors.push(format!("{status:?}"));
    }

    // Errors of every kind: someone else's card, bad input, bad keys, a closed card, PAN-like input.
    let attempts: Vec<tonic::Status> = vec![
        client.get_card(bearer(GetCardRequest { card_id: card_id.clone() }, token(&bob))).await.unwrap_err(),
        client
            .reveal_card_pan(bearer(RevealCardPanRequest { card_id: card_id.clone() }, token(&bob)))
            .await
            .unwrap_err(),
        client
            .reveal_card_pan(bearer(RevealCardPanRequest { card_id: card_id.clone() }, token(&alice)))
            .await
            .unwrap_err(),
        client
            .get_card(bearer(GetCardRequest { card_id: issued.pan.clone() }, token(&alice)))
            .await
            .unwrap_err(),
        w.charge(&acquirer, &issued.pan, 100, &fresh_key()).await.unwrap_err(),
        client
            .issue_card(bearer(
                IssueCardRequest { account_id: "not-a-uuid".into(), ..Default::default() },
                token(&alice),
            ))
            .await
            .unwrap_err(),
        w.charge(token(&bob), &card_id, 100, &fresh_key()).await.unwrap_err(),
    ];
    for status in attempts {
        errors.push(format!("{status:?}"));
        errors.push(status.message().to_owned());
    }

    // Let the relay publish and every task log.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let logs = capture.text();
    assert!(logs.lines().count() > 100, "the capture saw the flows: {} lines", logs.lines().count());
    assert!(logs.contains("AuthorizeCharge"), "the access log of the charges was captured");

    let payloads: Vec<Vec<u8>> = {
        let mut conn = w.cards_db().await;
        sqlx::query_scalar("SELECT payload FROM outbox ORDER BY seq").fetch_all(&mut conn).await.unwrap()
    };
    assert!(payloads.len() >= 10, "events were written: {}", payloads.len());
    let events: String = payloads.iter().map(|p| printable(p)).collect::<Vec<_>>().join("\n");

    let dump = w.cards.database().unwrap().dump();
    assert!(
        dump.contains("COPY public.cards") && dump.contains("COPY public.vault_pans"),
        "the dump has the card tables"
    );

    for (what, text) in [("log", &logs), ("error", &errors.join("\n")), ("event", &events), ("dump", &dump)] {
        let found = luhn_numbers(text);
        assert!(found.is_empty(), "{} card-like number(s) in the {what} output", found.len());
        for pan in &pans {
            assert!(!text.contains(pan.as_str()), "a PAN in the {what} output");
            // bytea is dumped as hex: the PAN's ASCII bytes in hex must not be there either.
            let hex: String = pan.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(!text.contains(&hex), "a PAN (as hex bytes) in the {what} output");
        }
        assert!(!text.contains(&format!("\"cvv\":\"{cvv}\"")), "a CVV in the {what} output");
    }
}
