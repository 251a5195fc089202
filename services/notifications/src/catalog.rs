//! What notifications knows about each event type: whether it is a security event, whether
//! webhooks may carry it, which email it causes and for whom. Pure rules over the event's canonical
//! JSON (no I/O): [`interpret`] turns one decoded event into what should happen.

use serde_json::Value;
use uuid::Uuid;

/// One known event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// Full payload name, e.g. `bank.events.v1.TransferPosted`.
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Security events are always emailed (when they have an email) and feed the security view.
    pub security: bool,
    /// Whether webhooks may subscribe (never for events carrying secrets or addresses).
    pub webhook: bool,
    /// The email it causes by default (a security event's email cannot be turned off).
    pub email: Option<Template>,
}

/// The email templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Sign-up or email change: the verification link.
    Verification,
    /// The password reset link.
    PasswordReset,
    /// The login was locked after failures.
    Lockout,
    /// A login from a new device.
    NewDevice,
    /// The password was changed or reset.
    PasswordChanged,
    /// A rotated refresh token was replayed; the session was ended.
    TokenReuse,
    /// MFA was turned on.
    MfaEnabled,
    /// MFA was turned off.
    MfaDisabled,
    /// A recovery code was used.
    RecoveryCodeUsed,
    /// The address was changed (sent to the previous one).
    EmailChanged,
    /// Money arrived by deposit.
    Deposit,
    /// Money left by withdrawal.
    Withdrawal,
    /// Money arrived from another account.
    TransferReceived,
    /// The balance crossed below the alert threshold.
    LowBalance,
    /// A card charge was declined.
    CardDeclined,
    /// A webhook delivery was dead-lettered.
    WebhookFailed,
    /// A webhook endpoint was disabled by its breaker.
    WebhookDisabled,
}

impl Template {
    /// The stable name (`SentEmail.template`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Verification => "verification",
            Self::PasswordReset => "password_reset",
            Self::Lockout => "lockout",
            Self::NewDevice => "new_device",
            Self::PasswordChanged => "password_changed",
            Self::TokenReuse => "token_reuse",
            Self::MfaEnabled => "mfa_enabled",
            Self::MfaDisabled => "mfa_disabled",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::EmailChanged => "email_changed",
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::TransferReceived => "transfer_received",
            Self::LowBalance => "low_balance",
            Self::CardDeclined => "card_declined",
            Self::WebhookFailed => "webhook_failed",
            Self::WebhookDisabled => "webhook_disabled",
        }
    }

    /// Emails that are the point of a flow (a link to click), sent whatever the preferences say.
    #[must_use]
    pub const fn transactional(self) -> bool {
        matches!(
            self,
            Self::Verification
                | Self::PasswordReset
                | Self::EmailChanged
                | Self::WebhookFailed
                | Self::WebhookDisabled
        )
    }
}

const fn t(
    name: &'static str,
    description: &'static str,
    security: bool,
    webhook: bool,
    email: Option<Template>,
) -> EventType {
    EventType { name, description, security, webhook, email }
}

/// Every event type notifications handles, in contract order.
pub const EVENT_TYPES: &[EventType] = &[
    t("bank.events.v1.UserRegistered", "A user registered.", false, false, None),
    t(
        "bank.events.v1.EmailVerificationRequested",
        "A verification email is due (sign-up or address change).",
        false,
        false,
        Some(Template::Verification),
    ),
    t(
        "bank.events.v1.EmailVerified",
        "An email address was verified.",
        true,
        false,
        Some(Template::EmailChanged),
    ),
    t(
        "bank.events.v1.PasswordResetRequested",
        "A password reset was requested.",
        false,
        false,
        Some(Template::PasswordReset),
    ),
    t("bank.events.v1.LoginFailed", "A login attempt failed.", true, false, None),
    t(
        "bank.events.v1.UserAccountLocked",
        "The password login was locked after repeated failures.",
        true,
        false,
        Some(Template::Lockout),
    ),
    t("bank.events.v1.UserUnlocked", "An administrator unlocked the login.", true, false, None),
    t(
        "bank.events.v1.SessionCreated",
        "A new session started (emailed when from a new device).",
        true,
        false,
        Some(Template::NewDevice),
    ),
    t(
        "bank.events.v1.PasswordChanged",
        "The password was changed or reset.",
        true,
        false,
        Some(Template::PasswordChanged),
    ),
    t(
        "bank.events.v1.RefreshTokenReuseDetected",
        "A used refresh token was presented again; the session was ended.",
        true,
        false,
        Some(Template::TokenReuse),
    ),
    t(
        "bank.events.v1.MfaEnabled",
        "Multi-factor authentication was enabled.",
        true,
        false,
        Some(Template::MfaEnabled),
    ),
    t(
        "bank.events.v1.MfaDisabled",
        "Multi-factor authentication was disabled.",
        true,
        false,
        Some(Template::MfaDisabled),
    ),
    t(
        "bank.events.v1.RecoveryCodeUsed",
        "An MFA recovery code was used.",
        true,
        false,
        Some(Template::RecoveryCodeUsed),
    ),
    t("bank.events.v1.AccountOpened", "An account was opened.", false, true, None),
    t("bank.events.v1.AccountFrozen", "An account was frozen.", false, true, None),
    t("bank.events.v1.AccountUnfrozen", "An account freeze was lifted.", false, true, None),
    t("bank.events.v1.AccountClosed", "An account was closed.", false, true, None),
    t(
        "bank.events.v1.TransferPosted",
        "An internal transfer was posted (the recipient is emailed).",
        false,
        true,
        Some(Template::TransferReceived),
    ),
    t("bank.events.v1.DepositPosted", "A deposit was posted.", false, true, Some(Template::Deposit)),
    t("bank.events.v1.WithdrawalPosted", "A withdrawal was posted.", false, true, Some(Template::Withdrawal)),
    t("bank.events.v1.TransactionReversed", "A transaction was reversed.", false, true, None),
    t("bank.events.v1.HoldCreated", "Funds were put on hold.", false, true, None),
    t("bank.events.v1.HoldCaptured", "A hold was captured.", false, true, None),
    t("bank.events.v1.HoldVoided", "A hold was released.", false, true, None),
    t("bank.events.v1.HoldExpired", "A hold expired.", false, true, None),
    t("bank.events.v1.HoldRefunded", "A captured hold was refunded.", false, true, None),
    t(
        "bank.events.v1.ExternalTransferStatusChanged",
        "An external transfer changed status.",
        false,
        true,
        None,
    ),
    t("bank.events.v1.ScheduledTransferFailed", "A scheduled transfer failed.", false, true, None),
    t("bank.events.v1.CardIssued", "A card was issued.", false, true, None),
    t("bank.events.v1.CardFrozen", "A card was frozen.", false, true, None),
    t("bank.events.v1.CardUnfrozen", "A card was unfrozen.", false, true, None),
    t("bank.events.v1.CardReportedLost", "A card was reported lost.", true, true, None),
    t("bank.events.v1.CardClosed", "A card was closed.", false, true, None),
    t("bank.events.v1.CardPanRevealed", "A card number was revealed to its owner.", true, false, None),
    t("bank.events.v1.CardAuthorizationApproved", "A card charge was approved.", false, true, None),
    t(
        "bank.events.v1.CardAuthorizationDeclined",
        "A card charge was declined.",
        true,
        true,
        Some(Template::CardDeclined),
    ),
    t("bank.events.v1.CardChargeCaptured", "A card charge was captured.", false, true, None),
    t("bank.events.v1.CardChargeVoided", "A card charge was voided.", false, true, None),
    t("bank.events.v1.CardChargeRefunded", "A card charge was refunded.", false, true, None),
    t(
        "bank.events.v1.LowBalanceDetected",
        "The available balance fell below the alert threshold.",
        false,
        true,
        Some(Template::LowBalance),
    ),
    t(
        "bank.events.v1.WebhookDeliveryFailed",
        "A webhook delivery failed for good.",
        false,
        false,
        Some(Template::WebhookFailed),
    ),
    t(
        "bank.events.v1.WebhookEndpointDisabled",
        "A failing webhook endpoint was disabled.",
        false,
        false,
        Some(Template::WebhookDisabled),
    ),
    t("bank.events.v1.WebhookTest", "A test delivery (SendTestWebhook).", false, false, None),
];

/// The catalogue entry of `name`.
#[must_use]
pub fn event_type(name: &str) -> Option<&'static EventType> {
    EVENT_TYPES.iter().find(|t| t.name == name)
}

/// Money as the canonical JSON carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units.
    pub minor_units: i64,
}

/// A field of an event's JSON as text ("" when absent).
#[must_use]
pub fn text<'a>(data: &'a Value, field: &str) -> &'a str {
    data.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// A boolean field (false when absent).
#[must_use]
pub fn flag(data: &Value, field: &str) -> bool {
    data.get(field).and_then(Value::as_bool).unwrap_or_default()
}

/// A UUID field.
#[must_use]
pub fn id(data: &Value, field: &str) -> Option<Uuid> {
    Uuid::parse_str(text(data, field)).ok()
}

/// A money field (`{"currency": "EUR", "minorUnits": "100"}`; int64 travels as a string).
#[must_use]
pub fn money(data: &Value, field: &str) -> Option<Money> {
    let m = data.get(field)?;
    let currency = text(m, "currency").to_owned();
    let minor_units = match m.get("minorUnits") {
        Some(Value::String(s)) => s.parse().ok()?,
        Some(Value::Number(n)) => n.as_i64()?,
        _ => 0,
    };
    (!currency.is_empty()).then_some(Money { currency, minor_units })
}

/// One email to send because of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The user it is for.
    pub user_id: Uuid,
    /// Send here instead of the user's known address (verification of a new address, the
    /// previous address after a change, or an event that carries the address).
    pub to: Option<String>,
    /// What to send.
    pub template: Template,
    /// The account it is about (for the last four digits).
    pub account_id: Option<Uuid>,
}

/// A balance seen after a posting (re-arms low-balance alerts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// The account.
    pub account_id: Uuid,
    /// Available after the posting.
    pub available: Money,
}

/// What one event means for notifications.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Interpretation {
    /// The users it concerns (one notification record each).
    pub users: Vec<Uuid>,
    /// The emails it causes (before preferences).
    pub mails: Vec<Mail>,
    /// Balances after it.
    pub balances: Vec<Balance>,
    /// A low-balance crossing on this account.
    pub low_balance: Option<Uuid>,
    /// A security feed line.
    pub security: Option<SecurityLine>,
}

/// One line of the security feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityLine {
    /// The user, when known.
    pub user_id: Option<Uuid>,
    /// One line for people.
    pub summary: String,
    /// Client IP.
    pub ip_address: String,
    /// Client user agent.
    pub user_agent: String,
    /// Card's last four.
    pub card_last_four: String,
    /// Decline reason name (`DECLINE_REASON_*`), for declines.
    pub decline_reason: String,
    /// Amount involved.
    pub amount: Option<Money>,
}

/// Fields naming the users an event concerns.
const USER_FIELDS: &[&str] = &["userId", "ownerUserId", "fromOwnerUserId", "toOwnerUserId"];

/// Reads one decoded event (canonical proto3 JSON of its payload).
#[must_use]
pub fn interpret(kind: &EventType, data: &Value) -> Interpretation {
    let mut out = Interpretation::default();
    for field in USER_FIELDS {
        if let Some(user) = id(data, field)
            && !out.users.contains(&user)
        {
            out.users.push(user);
        }
    }
    let short = kind.name.trim_start_matches("bank.events.v1.");
    let user = out.users.first().copied();
    let mail_to_owner = |template: Template, to: Option<String>, account: Option<Uuid>| {
        user.map(|user_id| Mail { user_id, to, template, account_id: account })
    };
    let email = || {
        let e = text(data, "email");
        (!e.is_empty()).then(|| e.to_owned())
    };
    match short {
        "EmailVerificationRequested"
        | "PasswordResetRequested"
        | "UserAccountLocked"
        | "PasswordChanged"
        | "RefreshTokenReuseDetected"
        | "MfaEnabled"
        | "MfaDisabled"
        | "RecoveryCodeUsed" => {
            out.mails.extend(kind.email.and_then(|t| mail_to_owner(t, email(), None)));
        }
        "SessionCreated" if flag(data, "newDevice") => {
            out.mails.extend(mail_to_owner(Template::NewDevice, email(), None));
        }
        "EmailVerified" => {
            let previous = text(data, "previousEmail");
            if !previous.is_empty() {
                out.mails.extend(mail_to_owner(Template::EmailChanged, Some(previous.to_owned()), None));
            }
        }
        "DepositPosted" | "WithdrawalPosted" => {
            let account = id(data, "accountId");
            out.mails.extend(kind.email.and_then(|t| mail_to_owner(t, None, account)));
            if let (Some(account_id), Some(available)) = (account, money(data, "availableAfter")) {
                out.balances.push(Balance { account_id, available });
            }
        }
        "TransferPosted" => {
            let (from, to) = (id(data, "fromOwnerUserId"), id(data, "toOwnerUserId"));
            if let Some(to) = to.filter(|to| Some(*to) != from) {
                out.mails.push(Mail {
                    user_id: to,
                    to: None,
                    template: Template::TransferReceived,
                    account_id: id(data, "toAccountId"),
                });
            }
            for (account, available) in
                [("fromAccountId", "fromAvailableAfter"), ("toAccountId", "toAvailableAfter")]
            {
                if let (Some(account_id), Some(available)) = (id(data, account), money(data, available)) {
                    out.balances.push(Balance { account_id, available });
                }
            }
        }
        "TransactionReversed" => {
            for change in data.get("changes").and_then(Value::as_array).into_iter().flatten() {
                if let Some(user) = id(change, "ownerUserId")
                    && !out.users.contains(&user)
                {
                    out.users.push(user);
                }
                if let (Some(account_id), Some(available)) =
                    (id(change, "accountId"), money(change, "availableAfter"))
                {
                    out.balances.push(Balance { account_id, available });
                }
            }
        }
        "LowBalanceDetected" => {
            let account = id(data, "accountId");
            out.low_balance = account;
            out.mails.extend(mail_to_owner(Template::LowBalance, None, account));
        }
        "CardAuthorizationDeclined" => {
            out.mails.extend(mail_to_owner(Template::CardDeclined, None, id(data, "accountId")));
        }
        "WebhookDeliveryFailed" | "WebhookEndpointDisabled" => {
            out.mails.extend(kind.email.and_then(|t| mail_to_owner(t, None, None)));
        }
        _ => {}
    }
    if kind.security {
        out.security = Some(security_line(short, user, data));
    }
    out
}

fn security_line(short: &str, user_id: Option<Uuid>, data: &Value) -> SecurityLine {
    let ip = text(data, "ipAddress").to_owned();
    let card = text(data, "cardLastFour").to_owned();
    let amount = money(data, "amount");
    let reason = text(data, "declineReason").to_owned();
    let summary = match short {
        "LoginFailed" if flag(data, "mfaStep") => "Login failed: wrong second factor".to_owned(),
        "LoginFailed" if user_id.is_none() => "Login failed for an unknown address".to_owned(),
        "LoginFailed" => format!(
            "Login failed ({} in a row)",
            data.get("failureCount").and_then(Value::as_i64).unwrap_or(1)
        ),
        "UserAccountLocked" => "Login locked after repeated failures".to_owned(),
        "UserUnlocked" => "Login unlocked by an administrator".to_owned(),
        "SessionCreated" if flag(data, "newDevice") => "New sign-in from a new device".to_owned(),
        "SessionCreated" => "New sign-in".to_owned(),
        "PasswordChanged" => "Password changed".to_owned(),
        "RefreshTokenReuseDetected" => "A used sign-in token was replayed; the session was ended".to_owned(),
        "MfaEnabled" => "Two-factor authentication enabled".to_owned(),
        "MfaDisabled" => "Two-factor authentication disabled".to_owned(),
        "RecoveryCodeUsed" => "A recovery code was used".to_owned(),
        "EmailVerified" => "Email address verified".to_owned(),
        "CardReportedLost" => format!("Card ****{card} reported lost"),
        "CardPanRevealed" => format!("Card number ****{card} revealed"),
        "CardAuthorizationDeclined" => {
            format!("Card ****{card} declined at {}: {}", text(data, "merchantName"), decline_words(&reason))
        }
        other => other.to_owned(),
    };
    SecurityLine {
        user_id,
        summary,
        ip_address: ip,
        user_agent: text(data, "userAgent").to_owned(),
        card_last_four: card,
        decline_reason: reason,
        amount,
    }
}

/// A decline reason for people.
#[must_use]
pub fn decline_words(reason: &str) -> String {
    reason.trim_start_matches("DECLINE_REASON_").replace('_', " ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_type_is_in_the_contract_once() {
        let pool = prost_reflect::DescriptorPool::decode(bank_proto::FILE_DESCRIPTOR_SET).unwrap();
        for (i, t) in EVENT_TYPES.iter().enumerate() {
            assert!(pool.get_message_by_name(t.name).is_some(), "{} is not a message", t.name);
            assert!(EVENT_TYPES[..i].iter().all(|o| o.name != t.name), "{} twice", t.name);
            assert!(!(t.webhook && t.name.ends_with("Requested")), "{} carries a secret", t.name);
        }
        let events = pool.get_message_by_name("bank.events.v1.Event").unwrap();
        let package = events.parent_file();
        for message in package.messages() {
            let name = message.full_name();
            if name != "bank.events.v1.Event" && name != "bank.events.v1.AccountBalanceChange" {
                assert!(event_type(name).is_some(), "{name} is not in the catalogue");
            }
        }
    }

    #[test]
    fn a_transfer_concerns_both_owners_and_mails_only_the_recipient() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
        let data = json!({
            "fromOwnerUserId": a.to_string(), "toOwnerUserId": b.to_string(),
            "fromAccountId": x.to_string(), "toAccountId": y.to_string(),
            "fromAvailableAfter": {"currency": "EUR", "minorUnits": "500"},
            "toAvailableAfter": {"currency": "EUR", "minorUnits": "1500"},
        });
        let i = interpret(event_type("bank.events.v1.TransferPosted").unwrap(), &data);
        assert_eq!(i.users, vec![a, b]);
        assert_eq!(
            i.mails,
            vec![Mail { user_id: b, to: None, template: Template::TransferReceived, account_id: Some(y) }]
        );
        assert_eq!(i.balances.len(), 2);
        assert_eq!(i.balances[0].available, Money { currency: "EUR".into(), minor_units: 500 });
        // To oneself: no "money received" email.
        let own = json!({"fromOwnerUserId": a.to_string(), "toOwnerUserId": a.to_string()});
        let i = interpret(event_type("bank.events.v1.TransferPosted").unwrap(), &own);
        assert_eq!(i.users, vec![a]);
        assert!(i.mails.is_empty());
    }

    #[test]
    fn new_sessions_mail_only_from_new_devices_and_feed_security() {
        let u = Uuid::now_v7();
        let kind = event_type("bank.events.v1.SessionCreated").unwrap();
        let old = interpret(kind, &json!({"userId": u.to_string(), "email": "a@example.com"}));
        assert!(old.mails.is_empty());
        assert_eq!(old.security.unwrap().summary, "New sign-in");
        let new =
            interpret(kind, &json!({"userId": u.to_string(), "email": "a@example.com", "newDevice": true}));
        assert_eq!(new.mails[0].to.as_deref(), Some("a@example.com"));
        assert_eq!(new.mails[0].template, Template::NewDevice);
    }

    #[test]
    fn declines_read_well() {
        let u = Uuid::now_v7();
        let data = json!({"ownerUserId": u.to_string(), "cardLastFour": "4242", "merchantName": "ACME",
            "declineReason": "DECLINE_REASON_DAILY_LIMIT_EXCEEDED", "amount": {"currency": "EUR", "minorUnits": "4000"}});
        let i = interpret(event_type("bank.events.v1.CardAuthorizationDeclined").unwrap(), &data);
        let line = i.security.unwrap();
        assert_eq!(line.summary, "Card ****4242 declined at ACME: daily limit exceeded");
        assert_eq!(line.amount.unwrap().minor_units, 4000);
        assert_eq!(i.mails[0].template, Template::CardDeclined);
    }
}
