//! notifications end to end with real services: identity and the ledger produce events, their
//! outbox relays put them on Redis streams, notifications consumes them and sends email to a real
//! SMTP server and signed webhooks to a real HTTP receiver (both local, in the testkit).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bank_ledger::Ledger;
use bank_notifications::{Notifications, webhooks};
use bank_proto::{
    common::v1::Money,
    identity::v1::{RegisterRequest, VerifyEmailRequest},
    ledger::v1::{
        CreateDepositRequest, CreateLedgerAccountRequest,
        ledger_admin_service_client::LedgerAdminServiceClient, ledger_service_client::LedgerServiceClient,
    },
    notifications::v1::{
        CreateWebhookEndpointRequest, DeadLetterStatus, DeliveryStatus, EventPreference,
        FollowSecurityEventsRequest, GetNotificationPreferencesRequest, GetWebhookDeliveryRequest,
        GetWebhookEndpointRequest, ListDeadLettersRequest, ListLowBalanceAlertsRequest,
        ListSecurityEventsRequest, ListSentEmailsRequest, ListWebhookDeliveriesRequest, NotificationChannel,
        RedeliverWebhookRequest, RetryDeadLetterRequest, RotateWebhookSecretRequest, SendTestWebhookRequest,
        SetLowBalanceAlertRequest, UpdateNotificationPreferencesRequest, UpdateWebhookEndpointRequest,
        WebhookEndpointStatus, notifications_admin_service_client::NotificationsAdminServiceClient,
        notifications_service_client::NotificationsServiceClient,
    },
};
use bank_testkit::{Options, SmtpSink, TestApp, TestIdentity, WebhookReceiver, bearer, spawn_with};
use figment::value::Value;

struct Mesh {
    identity: TestIdentity,
    ledger: TestApp,
    accounts: TestApp,
    notifications: TestApp,
    smtp: SmtpSink,
    /// The Redis key prefix of this mesh (identity's stream is `<ns>events`).
    ns: String,
}

async fn mesh(allow_loopback: bool) -> Mesh {
    mesh_with(allow_loopback, &[]).await
}

/// identity, ledger, accounts and notifications (consuming the three streams), a local SMTP
/// server; `extra` settings for notifications.
async fn mesh_with(allow_loopback: bool, extra: &[(&str, Value)]) -> Mesh {
    let identity = TestIdentity::spawn().await;
    let ns = identity.app.redis().unwrap().prefix().to_owned();
    let ledger = spawn_with::<Ledger>(
        identity.trust(Options::default()).set("redis.key_prefix", format!("{ns}ledger:")),
    )
    .await;
    let accounts = spawn_with::<bank_accounts::Accounts>(
        identity
            .trust(Options::default())
            .set("redis.key_prefix", format!("{ns}accounts:"))
            .set("ledger_url", format!("http://{}", ledger.addr)),
    )
    .await;
    let smtp = SmtpSink::start().await;
    let networks: Vec<String> = if allow_loopback { vec!["127.0.0.0/8".to_owned()] } else { Vec::new() };
    let mut options = identity
        .trust(Options::default())
        .set("redis.key_prefix", format!("{ns}notifications:"))
        .set("ledger_url", format!("http://{}", ledger.addr))
        .set(
            "consumer.streams",
            vec![
                format!("{ns}events"),
                format!("{ns}ledger:events"),
                format!("{ns}accounts:events"),
                format!("{ns}cards:events"),
            ],
        )
        .set("consumer.block", "200ms")
        .set("consumer.claim_idle", "1s")
        .set("email.smtp_host", "127.0.0.1")
        .set("email.smtp_port", i64::from(smtp.port()))
        .set("email.smtp_tls", "none")
        .set("email.link_base_url", "https://app.test")
        .set("email.retry_base", "100ms")
        .set("webhooks.allow_http", true)
        .set("webhooks.allowed_networks", networks)
        .set("webhooks.retry_base", "400ms");
    for (key, value) in extra {
        options = options.set(key, value.clone());
    }
    let notifications = spawn_with::<Notifications>(options).await;
    Mesh { identity, ledger, accounts, notifications, smtp, ns }
}

impl Mesh {
    async fn client(&self) -> NotificationsServiceClient<tonic::transport::Channel> {
        NotificationsServiceClient::new(self.notifications.channel().await)
    }

    async fn admin(&self) -> NotificationsAdminServiceClient<tonic::transport::Channel> {
        NotificationsAdminServiceClient::new(self.notifications.channel().await)
    }

    /// A ledger account of `owner` with `deposit` minor units (EUR) deposited by the admin.
    async fn funded_account(&self, owner: &str, number: &str, deposit: i64) -> String {
        let service = self.identity.service_token(&["ledger:accounts"]).await;
        let id = uuid::Uuid::now_v7().to_string();
        LedgerServiceClient::new(self.ledger.channel().await)
            .create_ledger_account(bearer(
                CreateLedgerAccountRequest {
                    account_id: id.clone(),
                    account_number: number.into(),
                    owner_user_id: owner.into(),
                    currency: "EUR".into(),
                },
                &service,
            ))
            .await
            .unwrap();
        if deposit > 0 {
            let admin = self.identity.admin().await.access_token;
            let mut request = bearer(
                CreateDepositRequest {
                    account_id: id.clone(),
                    amount: Some(Money { currency: "EUR".into(), minor_units: deposit }),
                    description: "Cash deposit".into(),
                    reason: "test".into(),
                    ..CreateDepositRequest::default()
                },
                &admin,
            );
            request
                .metadata_mut()
                .insert("idempotency-key", uuid::Uuid::now_v7().to_string().parse().unwrap());
            LedgerAdminServiceClient::new(self.ledger.channel().await).create_deposit(request).await.unwrap();
        }
        id
    }
}

fn reason(status: &tonic::Status) -> String {
    tonic_types::StatusExt::get_error_details(status)
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn sign_up_sends_a_verification_email_whose_link_verifies_the_address() {
    let mesh = mesh(true).await;
    let mut identity = mesh.identity.client().await;
    identity
        .register(RegisterRequest {
            email: "alice@example.com".into(),
            password: bank_testkit::identity::USER_PASSWORD.into(),
            given_name: "Alice".into(),
            family_name: "Liddell".into(),
            ..RegisterRequest::default()
        })
        .await
        .unwrap();
    let mail = mesh
        .smtp
        .wait_for("alice@example.com", "Confirm your email", Duration::from_secs(30))
        .await
        .expect("the verification email arrives at the SMTP server");
    let text = mail.text();
    assert!(text.contains("Hello Alice,"), "{text}");
    let start = text.find("https://app.test/verify-email?token=").expect("a link")
        + "https://app.test/verify-email?token=".len();
    let token: String =
        text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    assert!(token.len() >= 20, "token {token:?}");
    identity.verify_email(VerifyEmailRequest { token }).await.expect("the link's token verifies");
    mesh.identity
        .login("alice@example.com", bank_testkit::identity::USER_PASSWORD)
        .await
        .expect("verified: login works");
    assert!(mail.header("Message-ID").unwrap().ends_with("@bankmesh>"));

    // Operators see it masked, without the body.
    let admin = mesh.identity.admin().await.access_token;
    let emails =
        mesh.admin().await.list_sent_emails(bearer(ListSentEmailsRequest::default(), &admin)).await.unwrap();
    let sent = emails.into_inner().emails;
    let verification = sent.iter().find(|e| e.template == "verification").expect("listed");
    assert_eq!(verification.recipient_masked, "a***@example.com");
}

#[tokio::test]
async fn a_deposit_reaches_a_webhook_signed_after_two_failures_and_is_emailed() {
    let mesh = mesh(true).await;
    let bob = mesh.identity.user("bob@example.com").await;
    let receiver = WebhookReceiver::start(&[500, 500, 200]).await;
    let mut client = mesh.client().await;
    let created = client
        .create_webhook_endpoint(bearer(
            CreateWebhookEndpointRequest {
                url: receiver.url("/hooks/bank"),
                description: "bob's books 5555 5555 5555 4444".into(),
                event_types: vec!["bank.events.v1.DepositPosted".into()],
            },
            &bob.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let secret = created.signing_secret;
    let endpoint = created.endpoint.unwrap();
    // A card number typed into the description is stored masked (PCI DSS 3.5.1).
    assert_eq!(endpoint.description, "bob's books **** **** **** 4444");
    let endpoint = endpoint.endpoint_id;
    assert!(secret.starts_with("whsec_"));

    let account = mesh.funded_account(&bob.user_id, "DE89370400440532013000", 123_450).await;

    let received = receiver.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 3, "500, 500, then 200");
    assert_eq!(received.iter().map(|r| r.answered).collect::<Vec<_>>(), vec![500, 500, 200]);
    let event_id = received[0].header("bankmesh-event-id").unwrap().to_owned();
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r.path, "/hooks/bank");
        assert_eq!(r.header("bankmesh-event-id"), Some(event_id.as_str()), "the same event every time");
        assert_eq!(r.header("bankmesh-delivery-attempt"), Some((i + 1).to_string().as_str()));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            webhooks::verify(r.header("bankmesh-signature").unwrap(), &r.body, &secret, now, 300),
            "signature"
        );
        assert!(!webhooks::verify(r.header("bankmesh-signature").unwrap(), &r.body, "whsec_wrong", now, 300));
    }
    // Backoff between attempts: at least half of retry_base (400ms) doubling per attempt.
    assert!(
        received[1].at - received[0].at >= Duration::from_millis(200),
        "{:?}",
        received[1].at - received[0].at
    );
    assert!(
        received[2].at - received[1].at >= Duration::from_millis(400),
        "{:?}",
        received[2].at - received[1].at
    );
    let body: serde_json::Value = serde_json::from_str(&received[2].body).unwrap();
    assert_eq!(body["type"], "bank.events.v1.DepositPosted");
    assert_eq!(body["id"], event_id.as_str());
    assert_eq!(body["data"]["accountId"], account.as_str());
    assert_eq!(body["data"]["amount"]["minorUnits"], "123450");

    // The delivery log shows the three attempts and their codes.
    let deliveries = client
        .list_webhook_deliveries(bearer(
            ListWebhookDeliveriesRequest {
                endpoint_id: endpoint.clone(),
                ..ListWebhookDeliveriesRequest::default()
            },
            &bob.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(deliveries.len(), 1);
    let delivery = client
        .get_webhook_delivery(bearer(
            GetWebhookDeliveryRequest {
                endpoint_id: endpoint.clone(),
                delivery_id: deliveries[0].delivery_id.clone(),
            },
            &bob.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Succeeded as i32);
    assert_eq!(delivery.attempts.iter().map(|a| a.http_status).collect::<Vec<_>>(), vec![500, 500, 200]);
    assert_eq!(delivery.event_id, event_id);

    // And the deposit email, with only the account's last four digits.
    let mail = mesh
        .smtp
        .wait_for("bob@example.com", "Money deposited", Duration::from_secs(20))
        .await
        .expect("email");
    let text = mail.text();
    assert!(text.contains("1234.50 EUR was deposited to your account"), "{text}");
    assert!(!text.contains("370400440532013000"), "never the full account number");

    // Another user sees none of it.
    let eve = mesh.identity.user("eve@example.com").await;
    let hidden = client
        .get_webhook_delivery(bearer(
            GetWebhookDeliveryRequest { endpoint_id: endpoint, delivery_id: delivery.delivery_id },
            &eve.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn internal_targets_are_refused_unless_configured() {
    let mesh = mesh(false).await;
    let user = mesh.identity.user("carol@example.com").await;
    let mut client = mesh.client().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://10.0.0.8/",
    ] {
        let refused = client
            .create_webhook_endpoint(bearer(
                CreateWebhookEndpointRequest { url: url.into(), ..CreateWebhookEndpointRequest::default() },
                &user.tokens.access_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}");
        assert_eq!(reason(&refused), "WEBHOOK_URL_NOT_ALLOWED", "{url}");
    }
    let unknown = client
        .create_webhook_endpoint(bearer(
            CreateWebhookEndpointRequest {
                url: "https://hooks.example.com/".into(),
                event_types: vec!["bank.events.v1.PasswordResetRequested".into()],
                ..CreateWebhookEndpointRequest::default()
            },
            &user.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&unknown), "VALIDATION_FAILED", "secret-carrying events never go to webhooks");
}

#[tokio::test]
async fn loopback_allowed_by_config_is_still_checked_per_network_and_test_sends_work() {
    let mesh = mesh(true).await;
    let user = mesh.identity.user("dan@example.com").await;
    let mut client = mesh.client().await;
    let metadata = client
        .create_webhook_endpoint(bearer(
            CreateWebhookEndpointRequest {
                url: "http://169.254.169.254/".into(),
                ..CreateWebhookEndpointRequest::default()
            },
            &user.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&metadata), "WEBHOOK_URL_NOT_ALLOWED", "only 127.0.0.0/8 was allowed");
    let receiver = WebhookReceiver::start(&[]).await;
    let endpoint = client
        .create_webhook_endpoint(bearer(
            CreateWebhookEndpointRequest {
                url: receiver.url("/t"),
                ..CreateWebhookEndpointRequest::default()
            },
            &user.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let sent = client
        .send_test_webhook(bearer(
            SendTestWebhookRequest { endpoint_id: endpoint.endpoint.unwrap().endpoint_id },
            &user.tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert!(sent.test);
    assert_eq!(sent.status, DeliveryStatus::Succeeded as i32);
    assert_eq!(sent.attempts.len(), 1);
    assert_eq!(sent.attempts[0].http_status, 200);
    let got = receiver.received().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("bankmesh-event-type"), Some("bank.events.v1.WebhookTest"));
    assert!(webhooks::verify(
        got[0].header("bankmesh-signature").unwrap(),
        &got[0].body,
        &endpoint.signing_secret,
        time::OffsetDateTime::now_utc().unix_timestamp(),
        300
    ));
}

#[tokio::test]
async fn failed_logins_and_lockouts_reach_the_security_feed_and_lockouts_are_emailed() {
    let mesh = mesh(true).await;
    let user = mesh.identity.user("frank@example.com").await;
    for _ in 0..6 {
        let _ = mesh.identity.login(&user.email, "not the password at all").await;
    }
    let mail = mesh.smtp.wait_for("frank@example.com", "sign-in is locked", Duration::from_secs(30)).await;
    assert!(mail.is_some(), "the lockout email arrives");
    let admin = mesh.identity.admin().await.access_token;
    let mut feed = mesh.admin().await;
    let page = feed
        .list_security_events(bearer(
            ListSecurityEventsRequest {
                user_id: user.user_id.clone(),
                wait_seconds: 5,
                ..ListSecurityEventsRequest::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<&str> = page.events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(types.contains(&"bank.events.v1.LoginFailed"), "{types:?}");
    assert!(types.contains(&"bank.events.v1.UserAccountLocked"), "{types:?}");
    assert!(page.page_info.unwrap().next_page_token.len() > 2, "resumable");
    // Customers are refused the admin feed.
    let refused = feed
        .list_security_events(bearer(ListSecurityEventsRequest::default(), &user.tokens.access_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

async fn open_account(mesh: &Mesh, token: &str) -> (String, String) {
    let account = bank_proto::accounts::v1::accounts_service_client::AccountsServiceClient::new(
        mesh.accounts.channel().await,
    )
    .open_account(keyed(
        bank_proto::accounts::v1::OpenAccountRequest {
            product: bank_proto::accounts::v1::AccountProduct::Checking as i32,
            currency: "EUR".into(),
            nickname: String::new(),
        },
        token,
        &uuid::Uuid::now_v7().to_string(),
    ))
    .await
    .unwrap()
    .into_inner()
    .account
    .unwrap();
    (account.account_id, account.account_number)
}

fn keyed<T>(message: T, token: &str, key: &str) -> tonic::Request<T> {
    let mut request = bearer(message, token);
    request.metadata_mut().insert("idempotency-key", key.parse().unwrap());
    request
}

async fn deposit(mesh: &Mesh, account: &str, minor_units: i64) {
    let admin = mesh.identity.admin().await.access_token;
    LedgerAdminServiceClient::new(mesh.ledger.channel().await)
        .create_deposit(keyed(
            CreateDepositRequest {
                account_id: account.into(),
                amount: Some(Money { currency: "EUR".into(), minor_units }),
                reason: "test".into(),
                ..CreateDepositRequest::default()
            },
            &admin,
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await
        .unwrap();
}

async fn send(mesh: &Mesh, token: &str, from: &str, to_number: &str, minor_units: i64) {
    LedgerServiceClient::new(mesh.ledger.channel().await)
        .create_transfer(keyed(
            bank_proto::ledger::v1::CreateTransferRequest {
                from_account_id: from.into(),
                destination: Some(
                    bank_proto::ledger::v1::create_transfer_request::Destination::ToAccountNumber(
                        to_number.into(),
                    ),
                ),
                amount: Some(Money { currency: "EUR".into(), minor_units }),
                description: String::new(),
                fx_quote_id: String::new(),
            },
            token,
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await
        .unwrap();
}

async fn count_mails(smtp: &SmtpSink, to: &str, subject: &str) -> usize {
    smtp.mails()
        .await
        .iter()
        .filter(|m| m.to.iter().any(|t| t == to) && m.subject().contains(subject))
        .count()
}

async fn wait_mails(smtp: &SmtpSink, to: &str, subject: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count_mails(smtp, to, subject).await < n {
        assert!(tokio::time::Instant::now() < deadline, "{n} x {subject:?} to {to} never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn low_balance_alerts_fire_once_per_crossing_and_preferences_are_kept() {
    let mesh = mesh(true).await;
    let gina = mesh.identity.user("gina@example.com").await;
    let token = gina.tokens.access_token.clone();
    let (main, _) = open_account(&mesh, &token).await;
    let (_, savings_number) = open_account(&mesh, &token).await;
    let mut client = mesh.client().await;

    // Defaults: deposits by email and webhook; lockouts by email, which cannot be turned off.
    let prefs = client
        .get_notification_preferences(bearer(GetNotificationPreferencesRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .preferences;
    let of = |prefs: &[EventPreference], t: &str| prefs.iter().find(|p| p.event_type == t).unwrap().clone();
    let email = NotificationChannel::Email as i32;
    let webhook = NotificationChannel::Webhook as i32;
    assert_eq!(of(&prefs, "bank.events.v1.DepositPosted").channels, vec![email, webhook]);
    assert_eq!(of(&prefs, "bank.events.v1.UserAccountLocked").mandatory_channels, vec![email]);
    let updated = client
        .update_notification_preferences(bearer(
            UpdateNotificationPreferencesRequest {
                preferences: vec![
                    EventPreference {
                        event_type: "bank.events.v1.UserAccountLocked".into(),
                        ..EventPreference::default()
                    },
                    EventPreference {
                        event_type: "bank.events.v1.WithdrawalPosted".into(),
                        channels: vec![webhook],
                        ..EventPreference::default()
                    },
                ],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .preferences;
    assert_eq!(of(&updated, "bank.events.v1.UserAccountLocked").channels, vec![email], "mandatory stays on");
    assert_eq!(of(&updated, "bank.events.v1.WithdrawalPosted").channels, vec![webhook]);
    let bad = client
        .update_notification_preferences(bearer(
            UpdateNotificationPreferencesRequest {
                preferences: vec![EventPreference {
                    event_type: "bank.events.v1.PasswordResetRequested".into(),
                    channels: vec![webhook],
                    ..EventPreference::default()
                }],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&bad), "VALIDATION_FAILED");

    // The alert needs notifications to know the account (from AccountOpened); then 50.00.
    let threshold = Some(Money { currency: "EUR".into(), minor_units: 5_000 });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let set = client
            .set_low_balance_alert(bearer(
                SetLowBalanceAlertRequest {
                    account_id: main.clone(),
                    threshold: threshold.clone(),
                    enabled: true,
                    update_mask: None,
                },
                &token,
            ))
            .await;
        match set {
            Ok(answer) => break answer.into_inner().alert.unwrap(),
            Err(status)
                if status.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    assert!(alert.enabled);
    let eve = mesh.identity.user("eve2@example.com").await;
    let foreign = client
        .set_low_balance_alert(bearer(
            SetLowBalanceAlertRequest {
                account_id: main.clone(),
                threshold: threshold.clone(),
                enabled: true,
                update_mask: None,
            },
            &eve.tokens.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::NotFound, "someone else's account is unknown");
    // Only what is sent changes: a new threshold alone keeps the alert on; a masked false turns it
    // off; an unsent threshold is kept.
    let set = |threshold: Option<Money>, enabled: bool, mask: &[&str]| {
        let mut client = client.clone();
        let request = SetLowBalanceAlertRequest {
            account_id: main.clone(),
            threshold,
            enabled,
            update_mask: (!mask.is_empty())
                .then(|| pbjson_types::FieldMask { paths: mask.iter().map(|p| (*p).to_owned()).collect() }),
        };
        let request = bearer(request, &token);
        async move { client.set_low_balance_alert(request).await.unwrap().into_inner().alert.unwrap() }
    };
    let lower = set(Some(Money { currency: "EUR".into(), minor_units: 4_000 }), false, &[]).await;
    assert_eq!((lower.enabled, lower.threshold.unwrap().minor_units), (true, 4_000));
    let off = set(None, false, &["enabled"]).await;
    assert_eq!((off.enabled, off.threshold.unwrap().minor_units), (false, 4_000));
    let on = set(threshold.clone(), true, &[]).await;
    assert_eq!((on.enabled, on.threshold.unwrap().minor_units), (true, 5_000));

    // 100.00 in; 60.00 out -> 40.00: one alert; 5.00 more out: none; 20.00 in -> 55.00 re-arms;
    // 10.00 out -> 45.00: the second alert.
    deposit(&mesh, &main, 10_000).await;
    wait_mails(&mesh.smtp, "gina@example.com", "Money deposited", 1).await;
    send(&mesh, &token, &main, &savings_number, 6_000).await;
    wait_mails(&mesh.smtp, "gina@example.com", "Low balance", 1).await;
    send(&mesh, &token, &main, &savings_number, 500).await;
    deposit(&mesh, &main, 2_000).await;
    wait_mails(&mesh.smtp, "gina@example.com", "Money deposited", 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let alerts = client
            .list_low_balance_alerts(bearer(ListLowBalanceAlertsRequest::default(), &token))
            .await
            .unwrap()
            .into_inner()
            .alerts;
        if alerts[0].armed {
            assert!(alerts[0].last_triggered_at.is_some());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "re-armed above the threshold");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(&mesh, &token, &main, &savings_number, 1_000).await;
    wait_mails(&mesh.smtp, "gina@example.com", "Low balance", 2).await;
    let mail = mesh.smtp.wait_for("gina@example.com", "Low balance", Duration::from_secs(1)).await.unwrap();
    assert!(mail.text().contains("below the 50.00 EUR you asked us to watch"), "{}", mail.text());
    assert_eq!(count_mails(&mesh.smtp, "gina@example.com", "Low balance").await, 2, "once per crossing");
}

#[tokio::test]
async fn poison_events_are_dead_lettered_and_can_be_put_back() {
    let mesh = mesh_with(true, &[("consumer.max_attempts", 2.into())]).await;
    let stream = format!("{}events", mesh.ns);
    let client = redis::Client::open(bank_testkit::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let event_id = uuid::Uuid::now_v7().to_string();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("id")
        .arg(&event_id)
        .arg("type")
        .arg("bank.events.v1.DepositPosted")
        .arg("source")
        .arg("ledger")
        .arg("payload")
        .arg(&[0xff_u8, 0xff, 0xff, 0x01][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let admin = mesh.identity.admin().await.access_token;
    let mut ops = mesh.admin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let letter = loop {
        let letters = ops
            .list_dead_letters(bearer(ListDeadLettersRequest::default(), &admin))
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if let Some(letter) = letters.into_iter().find(|l| l.event_id == event_id) {
            break letter;
        }
        assert!(tokio::time::Instant::now() < deadline, "dead-lettered after 2 attempts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter.stream, stream);
    assert_eq!(letter.attempts, 2);
    assert!(letter.last_error.contains("does not decode"), "{}", letter.last_error);
    let dlq_len: i64 = redis::cmd("XLEN")
        .arg(format!("{}notifications:dead-letters", mesh.ns))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dlq_len, 1, "also on the dead-letter stream");

    let missing_reason = ops
        .retry_dead_letter(bearer(
            RetryDeadLetterRequest { dead_letter_id: letter.dead_letter_id.clone(), reason: String::new() },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&missing_reason), "VALIDATION_FAILED");
    let retried = ops
        .retry_dead_letter(bearer(
            RetryDeadLetterRequest {
                dead_letter_id: letter.dead_letter_id.clone(),
                reason: "fixed the producer".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .dead_letter
        .unwrap();
    assert_eq!(retried.status, DeadLetterStatus::Retried as i32);
    let again = ops
        .retry_dead_letter(bearer(
            RetryDeadLetterRequest { dead_letter_id: letter.dead_letter_id, reason: "twice".into() },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&again), "DEAD_LETTER_STATE_CONFLICT");
    // Back on the stream, it fails again and is dead-lettered a second time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let letters = ops
            .list_dead_letters(bearer(ListDeadLettersRequest::default(), &admin))
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if letters.iter().filter(|l| l.event_id == event_id).count() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "requeued and dead-lettered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_persistently_failing_endpoint_trips_its_breaker_and_its_owner_is_told() {
    let mesh = mesh_with(
        true,
        &[
            ("webhooks.max_attempts", 2.into()),
            ("webhooks.breaker_threshold", 2.into()),
            ("webhooks.retry_base", "100ms".into()),
        ],
    )
    .await;
    let hana = mesh.identity.user("hana@example.com").await;
    let token = hana.tokens.access_token.clone();
    let receiver = WebhookReceiver::start(&[500, 503, 500, 500]).await;
    let mut client = mesh.client().await;
    let endpoint = client
        .create_webhook_endpoint(bearer(
            CreateWebhookEndpointRequest {
                url: receiver.url("/down"),
                ..CreateWebhookEndpointRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    mesh.funded_account(&hana.user_id, "DE12500105170648489890", 5_000).await;
    wait_mails(&mesh.smtp, "hana@example.com", "webhook endpoint was disabled", 1).await;
    wait_mails(&mesh.smtp, "hana@example.com", "webhook delivery failed", 1).await;
    let now = client
        .get_webhook_endpoint(bearer(
            GetWebhookEndpointRequest { endpoint_id: endpoint.endpoint_id.clone() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(now.status, WebhookEndpointStatus::Failing as i32);
    assert_eq!(now.consecutive_failures, 2);
    assert!(now.disabled_reason.contains("HTTP 503"), "{}", now.disabled_reason);
    assert_eq!(receiver.received().await.len(), 2, "nothing more while the breaker is open");
    let admin = mesh.identity.admin().await.access_token;
    let letters = mesh
        .admin()
        .await
        .list_dead_letters(bearer(
            ListDeadLettersRequest { stream: "webhooks".into(), ..ListDeadLettersRequest::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_type, "bank.events.v1.DepositPosted");
    // The owner re-enables it: the breaker resets.
    let enabled = client
        .update_webhook_endpoint(bearer(
            UpdateWebhookEndpointRequest {
                endpoint_id: endpoint.endpoint_id,
                url: endpoint.url,
                enabled: true,
                ..UpdateWebhookEndpointRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(enabled.status, WebhookEndpointStatus::Active as i32);
    assert_eq!(enabled.consecutive_failures, 0);
}

#[tokio::test]
async fn admins_follow_the_security_feed_as_a_stream_and_resume_from_a_cursor() {
    let mesh = mesh(true).await;
    let ivan = mesh.identity.user("ivan@example.com").await;
    let admin = mesh.identity.admin().await.access_token;
    let mut feed = mesh.admin().await;
    let follow = |cursor: String| {
        bearer(
            FollowSecurityEventsRequest {
                cursor,
                user_id: ivan.user_id.clone(),
                event_types: vec!["bank.events.v1.LoginFailed".into()],
            },
            &admin,
        )
    };
    let mut stream = feed.follow_security_events(follow(String::new())).await.unwrap().into_inner();
    let _ = mesh.identity.login(&ivan.email, "wrong password number one").await;
    let first =
        tokio::time::timeout(Duration::from_secs(30), stream.message()).await.unwrap().unwrap().unwrap();
    let event = first.event.unwrap();
    assert_eq!(event.event_type, "bank.events.v1.LoginFailed");
    assert_eq!(event.user_id, ivan.user_id);
    drop(stream);

    // Two more failures while nobody follows; resuming from the cursor gets exactly those.
    let _ = mesh.identity.login(&ivan.email, "wrong password number two").await;
    let _ = mesh.identity.login(&ivan.email, "wrong password number three").await;
    let mut resumed = feed.follow_security_events(follow(first.cursor)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let next =
            tokio::time::timeout(Duration::from_secs(30), resumed.message()).await.unwrap().unwrap().unwrap();
        ids.push(next.event.unwrap().event_id);
    }
    assert!(!ids.contains(&event.event_id), "nothing before the cursor again");
    assert_ne!(ids[0], ids[1]);
    let refused = feed
        .follow_security_events(bearer(FollowSecurityEventsRequest::default(), &ivan.tokens.access_token))
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_rotated_secret_signs_alongside_the_old_one_and_redeliveries_keep_the_event_id() {
    let mesh = mesh(true).await;
    let jo = mesh.identity.user("jo@example.com").await;
    let token = jo.tokens.access_token.clone();
    let receiver = WebhookReceiver::start(&[]).await;
    let mut client = mesh.client().await;
    let created = client
        .create_webhook_endpoint(bearer(
            CreateWebhookEndpointRequest {
                url: receiver.url("/r"),
                ..CreateWebhookEndpointRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let endpoint = created.endpoint.unwrap().endpoint_id;
    let old = created.signing_secret;
    let rotated = client
        .rotate_webhook_secret(bearer(
            RotateWebhookSecretRequest { endpoint_id: endpoint.clone(), previous_secret_ttl_seconds: 3600 },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let new = rotated.signing_secret;
    assert_ne!(old, new);
    assert!(rotated.endpoint.unwrap().previous_secret_expires_at.is_some());

    mesh.funded_account(&jo.user_id, "DE02120300000000202051", 700).await;
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    let signature = got[0].header("bankmesh-signature").unwrap();
    assert_eq!(signature.matches("v1=").count(), 2, "{signature}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(webhooks::verify(signature, &got[0].body, &new, now, 300));
    assert!(webhooks::verify(signature, &got[0].body, &old, now, 300));

    let deliveries = client
        .list_webhook_deliveries(bearer(
            ListWebhookDeliveriesRequest {
                endpoint_id: endpoint.clone(),
                ..ListWebhookDeliveriesRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let again = client
        .redeliver_webhook(bearer(
            RedeliverWebhookRequest { endpoint_id: endpoint, delivery_id: deliveries[0].delivery_id.clone() },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(again.redelivery_of, deliveries[0].delivery_id);
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("bankmesh-event-id"), got[0].header("bankmesh-event-id"), "same event id");
    assert_ne!(got[1].header("bankmesh-delivery-id"), got[0].header("bankmesh-delivery-id"));
}

#[tokio::test]
async fn a_declined_card_charge_is_emailed_with_its_reason_and_shows_in_the_security_feed() {
    use bank_proto::cards::v1::{
        AuthorizationStatus, AuthorizeChargeRequest, CardLimits, IssueCardRequest, Merchant,
        cards_service_client::CardsServiceClient,
    };
    let mesh = mesh(true).await;
    let cards = spawn_with::<bank_cards::Cards>(
        mesh.identity
            .trust(Options::default())
            .set("redis.key_prefix", format!("{}cards:", mesh.ns))
            .set("vault.keks", "kek-1=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .set("ledger_url", format!("http://{}", mesh.ledger.addr))
            .set("accounts_url", format!("http://{}", mesh.accounts.addr))
            .set("cards.allow_owner_charges", true),
    )
    .await;
    let kim = mesh.identity.user("kim@example.com").await;
    let token = kim.tokens.access_token.clone();
    let (account, _) = open_account(&mesh, &token).await;
    deposit(&mesh, &account, 100_000).await;
    let mut client = CardsServiceClient::new(cards.channel().await);
    let issued = client
        .issue_card(keyed(
            IssueCardRequest {
                account_id: account,
                limits: Some(CardLimits {
                    daily_limit: Some(Money { currency: "EUR".into(), minor_units: 5_000 }),
                    per_transaction_limit: None,
                }),
                ..IssueCardRequest::default()
            },
            &token,
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await
        .unwrap()
        .into_inner();
    let card = issued.card.unwrap();
    let last_four = issued.pan[issued.pan.len() - 4..].to_owned();
    let charge = |minor_units: i64| AuthorizeChargeRequest {
        card_id: card.card_id.clone(),
        merchant: Some(Merchant {
            name: "ACME Books".into(),
            category_code: "5942".into(),
            ..Merchant::default()
        }),
        amount: Some(Money { currency: "EUR".into(), minor_units }),
        acquirer_reference: String::new(),
    };
    let declined = client
        .authorize_charge(keyed(charge(6_000), &token, &uuid::Uuid::now_v7().to_string()))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(declined.status, AuthorizationStatus::Declined as i32);

    let mail =
        mesh.smtp.wait_for("kim@example.com", "card payment was declined", Duration::from_secs(30)).await;
    let text = mail.expect("the card-declined email").text();
    assert!(text.contains("60.00 EUR at ACME Books"), "{text}");
    assert!(text.contains(&format!("your card ending in {last_four}")), "{text}");
    assert!(text.contains("daily limit exceeded"), "{text}");
    assert!(!text.contains(&issued.pan), "never the PAN");

    let feed = mesh
        .client()
        .await
        .list_my_security_events(bearer(
            bank_proto::notifications::v1::ListMySecurityEventsRequest::default(),
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let line = feed
        .iter()
        .find(|e| e.event_type == "bank.events.v1.CardAuthorizationDeclined")
        .expect("the decline is in the owner's security feed");
    assert_eq!(line.card_last_four, last_four);
    assert_eq!(line.decline_reason, bank_proto::cards::v1::DeclineReason::DailyLimitExceeded as i32);
    assert_eq!(line.summary, format!("Card ****{last_four} declined at ACME Books: daily limit exceeded"));
}

#[tokio::test]
async fn an_update_changes_only_the_fields_it_sends_over_grpc_and_rest() {
    let mesh = mesh(true).await;
    let dora = mesh.identity.user("dora@example.com").await;
    let token = dora.tokens.access_token.clone();
    let receiver = WebhookReceiver::start(&[200]).await;
    let mut client = mesh.client().await;
    let created = client
        .create_webhook_endpoint(bearer(
            CreateWebhookEndpointRequest {
                url: receiver.url("/hooks"),
                description: "books".into(),
                event_types: vec!["bank.events.v1.DepositPosted".into()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    let id = created.endpoint_id.clone();

    // gRPC, no mask: only the description is sent, so only it changes (`enabled` unsent is not false).
    let renamed = client
        .update_webhook_endpoint(bearer(
            UpdateWebhookEndpointRequest {
                endpoint_id: id.clone(),
                description: "ledger".into(),
                ..UpdateWebhookEndpointRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(renamed.description, "ledger");
    assert_eq!(renamed.status, WebhookEndpointStatus::Active as i32, "still enabled");
    assert_eq!(
        (renamed.url.as_str(), renamed.event_types.as_slice()),
        (created.url.as_str(), created.event_types.as_slice())
    );

    // gRPC with a mask: a masked false disables, an unknown path is refused.
    let masked = |paths: &[&str]| {
        Some(pbjson_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
    };
    let disabled = client
        .update_webhook_endpoint(bearer(
            UpdateWebhookEndpointRequest {
                endpoint_id: id.clone(),
                update_mask: masked(&["enabled"]),
                ..UpdateWebhookEndpointRequest::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(disabled.status, WebhookEndpointStatus::Disabled as i32);
    assert_eq!(disabled.description, "ledger");
    let unknown = client
        .update_webhook_endpoint(bearer(
            UpdateWebhookEndpointRequest {
                endpoint_id: id.clone(),
                update_mask: masked(&["signing_secret"]),
                ..UpdateWebhookEndpointRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bank_testkit::violations(&unknown), [("update_mask".to_owned(), "UNKNOWN_FIELD".to_owned())]);

    // REST (PATCH through the gateway): the body's keys are the mask.
    let gateway = spawn_with::<bank_gateway::Gateway>(
        mesh.identity
            .trust(Options::default().database(false))
            .set("edge.hsts", false)
            .set("upstreams.identity", mesh.identity.url())
            .set("upstreams.notifications", format!("http://{}", mesh.notifications.addr))
            .set("upstreams.required_for_readiness", Vec::<String>::new()),
    )
    .await;
    let path = format!("/api/v1/webhooks/{id}");
    let patch = |body: &'static str| {
        let (path, token) = (path.clone(), token.clone());
        async move {
            let (status, body) =
                bank_testkit::probe::http_json(gateway.addr, "PATCH", &path, Some(&token), Some(body)).await;
            (status, serde_json::from_str::<serde_json::Value>(&body).unwrap())
        }
    };
    let (status, enabled) = patch(r#"{"enabled": true}"#).await;
    assert_eq!(status, 200, "{enabled}");
    assert_eq!(enabled["endpoint"]["status"], "WEBHOOK_ENDPOINT_STATUS_ACTIVE");
    assert_eq!(enabled["endpoint"]["description"], "ledger");
    assert_eq!(enabled["endpoint"]["eventTypes"], serde_json::json!(["bank.events.v1.DepositPosted"]));
    let (status, all) = patch(r#"{"eventTypes": [], "description": ""}"#).await;
    assert_eq!(status, 200, "{all}");
    assert!(all["endpoint"]["eventTypes"].as_array().is_none_or(Vec::is_empty), "all types: {all}");
    assert!(all["endpoint"]["description"].as_str().is_none_or(str::is_empty), "cleared: {all}");
    assert_eq!(all["endpoint"]["status"], "WEBHOOK_ENDPOINT_STATUS_ACTIVE");
    let (status, off) = patch(r#"{"enabled": false}"#).await;
    assert_eq!(
        (status, &off["endpoint"]["status"]),
        (200, &serde_json::json!("WEBHOOK_ENDPOINT_STATUS_DISABLED"))
    );
    let (status, refused) = patch(r#"{"description": "x", "updateMask": "secret"}"#).await;
    assert_eq!((status, refused["reason"].as_str()), (400, Some("VALIDATION_FAILED")), "{refused}");
    let read = client
        .get_webhook_endpoint(bearer(GetWebhookEndpointRequest { endpoint_id: id }, &token))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(read.description, "", "a refused update changes nothing");
}
