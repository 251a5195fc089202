//! The email templates: a subject, a text body and an HTML body per [`Template`], filled from the
//! event's JSON. Emails never show more than the last four digits of a card or account number, and
//! never an id, a token other than the link's own, or a full IP address's owner data.

use std::fmt::Write as _;

use serde_json::Value;

use crate::catalog::{self, Money, Template, text};

/// What a template may use besides the event.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// The user's given name ("" when unknown).
    pub given_name: &'a str,
    /// Last four digits of the account concerned ("" when unknown).
    pub account_last_four: &'a str,
    /// Where links point.
    pub link_base_url: &'a str,
}

/// A rendered email.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

impl std::fmt::Debug for Rendered {
    // Bodies can hold single-use links: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered").field("subject", &self.subject).finish_non_exhaustive()
    }
}

/// `12.34 EUR`.
#[must_use]
pub fn amount(money: Option<&Money>) -> String {
    match money {
        Some(m) => match bank_money::Currency::parse(&m.currency) {
            Ok(c) => format!("{} {}", c.format(m.minor_units), c.code()),
            Err(_) => format!("{} (minor units) {}", m.minor_units, m.currency),
        },
        None => String::new(),
    }
}

/// Escapes text for HTML.
#[must_use]
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Keeps the last four characters of a number-like text.
#[must_use]
pub fn last_four(s: &str) -> String {
    let digits: Vec<char> = s.chars().filter(char::is_ascii_digit).collect();
    digits[digits.len().saturating_sub(4)..].iter().collect()
}

/// Lines of an email: paragraphs, and at most one call to action (a link).
struct Body {
    paragraphs: Vec<String>,
    link: Option<(String, String)>,
}

/// Renders `template` for the event `data`.
#[must_use]
pub fn render(template: Template, data: &Value, ctx: &Context<'_>) -> Rendered {
    let account = if ctx.account_last_four.is_empty() {
        "your account".to_owned()
    } else {
        format!("your account ending in {}", last_four(ctx.account_last_four))
    };
    let card = format!("your card ending in {}", last_four(text(data, "cardLastFour")));
    let money = |field: &str| amount(catalog::money(data, field).as_ref());
    let link = |path: &str| {
        let token = text(data, "token");
        format!("{}/{path}?token={token}", ctx.link_base_url.trim_end_matches('/'))
    };
    let ip = text(data, "ipAddress");
    let from_where = if ip.is_empty() { String::new() } else { format!(" from IP address {ip}") };
    let not_you = "If this was not you, reset your password now and contact us.".to_owned();
    let (subject, body) = match template {
        Template::Verification => (
            "Confirm your email address",
            Body {
                paragraphs: vec![
                    "Please confirm your email address to finish setting up bankmesh.".to_owned(),
                    "The link is valid for 24 hours and works once.".to_owned(),
                ],
                link: Some(("Confirm my email address".to_owned(), link("verify-email"))),
            },
        ),
        Template::PasswordReset => (
            "Reset your password",
            Body {
                paragraphs: vec![
                    format!("Someone{from_where} asked to reset your password."),
                    "The link is valid for 15 minutes and works once. If you did not ask, ignore this email: your password stays as it is.".to_owned(),
                ],
                link: Some(("Choose a new password".to_owned(), link("reset-password"))),
            },
        ),
        Template::Lockout => (
            "Your sign-in is locked",
            Body {
                paragraphs: vec![
                    format!("After repeated failed attempts{from_where}, password sign-in is locked for a while."),
                    "If this was not you, reset your password: it also unlocks your sign-in.".to_owned(),
                ],
                link: None,
            },
        ),
        Template::NewDevice => (
            "New sign-in to your account",
            Body {
                paragraphs: vec![
                    format!("Your account was signed in to from a new device{from_where}."),
                    not_you.clone(),
                ],
                link: None,
            },
        ),
        Template::PasswordChanged => (
            "Your password was changed",
            Body {
                paragraphs: vec![
                    format!("Your password was changed{from_where}; your other sessions were signed out."),
                    not_you.clone(),
                ],
                link: None,
            },
        ),
        Template::TokenReuse => (
            "We ended a session to protect your account",
            Body {
                paragraphs: vec![
                    format!("A sign-in token that had already been used was presented again{from_where}. We ended that session."),
                    "Sign in again. If you do not recognise this, change your password.".to_owned(),
                ],
                link: None,
            },
        ),
        Template::MfaEnabled => (
            "Two-factor authentication is on",
            Body { paragraphs: vec!["Two-factor authentication was turned on for your account.".to_owned(), not_you.clone()], link: None },
        ),
        Template::MfaDisabled => (
            "Two-factor authentication is off",
            Body { paragraphs: vec!["Two-factor authentication was turned off for your account.".to_owned(), not_you.clone()], link: None },
        ),
        Template::RecoveryCodeUsed => (
            "A recovery code was used",
            Body {
                paragraphs: vec![
                    format!(
                        "A recovery code was used to sign in{from_where}. You have {} unused codes left.",
                        data.get("remaining").and_then(Value::as_i64).unwrap_or(0)
                    ),
                    not_you.clone(),
                ],
                link: None,
            },
        ),
        Template::EmailChanged => (
            "Your email address was changed",
            Body {
                paragraphs: vec![
                    "The email address of your bankmesh account was changed; this address no longer receives our emails.".to_owned(),
                    "If this was not you, contact us now.".to_owned(),
                ],
                link: None,
            },
        ),
        Template::Deposit => (
            "Money deposited",
            Body { paragraphs: vec![format!("{} was deposited to {account}.", money("amount")), available(&money("availableAfter"))], link: None },
        ),
        Template::Withdrawal => (
            "Money withdrawn",
            Body { paragraphs: vec![format!("{} was withdrawn from {account}.", money("amount")), available(&money("availableAfter"))], link: None },
        ),
        Template::TransferReceived => (
            "Money received",
            Body {
                paragraphs: vec![
                    format!("You received {} on {account}.", money("creditedAmount")),
                    quoted_description(text(data, "description")),
                ],
                link: None,
            },
        ),
        Template::LowBalance => (
            "Low balance",
            Body {
                paragraphs: vec![format!(
                    "The available balance of {account} is {}, below the {} you asked us to watch.",
                    money("available"),
                    money("threshold")
                )],
                link: None,
            },
        ),
        Template::CardDeclined => (
            "A card payment was declined",
            Body {
                paragraphs: vec![
                    format!(
                        "A payment of {} at {} with {card} was declined: {}.",
                        money("amount"),
                        text(data, "merchantName"),
                        catalog::decline_words(text(data, "declineReason"))
                    ),
                    "If you do not recognise it, freeze the card in the app.".to_owned(),
                ],
                link: None,
            },
        ),
        Template::WebhookFailed => (
            "A webhook delivery failed",
            Body {
                paragraphs: vec![format!(
                    "We could not deliver a {} event to one of your webhook endpoints after {} attempts. You can redeliver it from the delivery log.",
                    text(data, "eventType").trim_start_matches("bank.events.v1."),
                    data.get("attempts").and_then(Value::as_i64).unwrap_or(0)
                )],
                link: None,
            },
        ),
        Template::WebhookDisabled => (
            "A webhook endpoint was disabled",
            Body {
                paragraphs: vec![format!(
                    "One of your webhook endpoints failed {} times in a row and was disabled. Fix it, then enable it again.",
                    data.get("consecutiveFailures").and_then(Value::as_i64).unwrap_or(0)
                )],
                link: None,
            },
        ),
    };
    finish(subject, &body, ctx.given_name)
}

fn available(balance: &str) -> String {
    if balance.is_empty() { String::new() } else { format!("Available balance: {balance}.") }
}

fn quoted_description(description: &str) -> String {
    if description.is_empty() { String::new() } else { format!("Reference: \u{201c}{description}\u{201d}") }
}

fn finish(subject: &str, body: &Body, given_name: &str) -> Rendered {
    let greeting = if given_name.is_empty() { "Hello,".to_owned() } else { format!("Hello {given_name},") };
    let paragraphs: Vec<&String> = body.paragraphs.iter().filter(|p| !p.is_empty()).collect();
    let mut text = format!("{greeting}\n\n");
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body style=\"font-family:sans-serif\"><p>{}</p>",
        escape(subject),
        escape(&greeting)
    );
    for p in &paragraphs {
        let _ = write!(text, "{p}\n\n");
        let _ = write!(html, "<p>{}</p>", escape(p));
    }
    if let Some((label, url)) = &body.link {
        let _ = write!(text, "{label}:\n{url}\n\n");
        let _ = write!(html, "<p><a href=\"{}\">{}</a></p>", escape(url), escape(label));
    }
    text.push_str("-- \nbankmesh. This is an automatic message; replies are not read.\n");
    html.push_str("<p style=\"color:#666\">bankmesh. This is an automatic message; replies are not read.</p></body></html>");
    Rendered { subject: subject.to_owned(), text, html }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn deposits_show_money_and_only_the_last_four() {
        let data = json!({"amount": {"currency": "EUR", "minorUnits": "123450"}, "availableAfter": {"currency": "EUR", "minorUnits": "200000"}});
        let ctx = Context {
            given_name: "Bob",
            account_last_four: "DE00 1234 5678 9012",
            link_base_url: "http://x",
        };
        let r = render(Template::Deposit, &data, &ctx);
        assert_eq!(r.subject, "Money deposited");
        assert!(r.text.starts_with("Hello Bob,"), "{}", r.text);
        assert!(r.text.contains("1234.50 EUR was deposited to your account ending in 9012."), "{}", r.text);
        assert!(r.text.contains("Available balance: 2000.00 EUR."));
        assert!(!r.text.contains("5678") && !r.html.contains("5678"));
    }

    #[test]
    fn links_carry_the_token_and_html_is_escaped() {
        let data = json!({"token": "abc_DEF-123"});
        let ctx =
            Context { given_name: "<Eve>", account_last_four: "", link_base_url: "https://app.example/" };
        let r = render(Template::Verification, &data, &ctx);
        assert!(r.text.contains("https://app.example/verify-email?token=abc_DEF-123"));
        assert!(r.html.contains("Hello &lt;Eve&gt;,"));
        assert!(!r.html.contains("<Eve>"));
        assert!(!format!("{r:?}").contains("abc_DEF"), "Debug hides the body");
    }

    #[test]
    fn every_template_renders_something() {
        let templates = crate::catalog::EVENT_TYPES.iter().filter_map(|t| t.email);
        for t in templates {
            let r = render(t, &json!({}), &Context::default());
            assert!(!r.subject.is_empty() && r.text.len() > 40 && r.html.contains("</html>"), "{}", t.name());
        }
    }
}
