//! An e-mail address that has been checked: [`Email::parse`] is the only way to make one.
//!
//! The rules are deliberately practical rather than a full RFC 5322 grammar (which accepts quoted
//! strings, comments and IP literals that no bank customer needs):
//!
//! - surrounding whitespace is trimmed; nothing else is rewritten except the domain's case;
//! - the address is at most 254 octets (RFC 5321 path limit) and the local part at most 64 octets;
//! - exactly one `@`, with a non-empty local part before it;
//! - the domain has at least two labels separated by dots; no label is empty, longer than 63 octets,
//!   or starts or ends with `-`; labels hold letters, digits and `-` only (Unicode letters are
//!   accepted, so internationalised domains may be given in either Unicode or punycode form);
//! - no whitespace or control character anywhere.
//!
//! The domain is lower-cased (domains are case-insensitive); the local part is kept as typed
//! because, strictly, it is case-sensitive and the user may care how it is shown. Uniqueness is
//! decided on [`Email::canonical`], the whole address lower-cased.
//!
//! An address is personal data: `Debug` and [`Email::redacted`] show only the first character of
//! the local part (`a***@example.com`), so an `Email` can sit in a traced struct without leaking.
//! `Display` and [`Email::as_str`] give the full address, for sending mail and storing it.

use std::fmt;

/// Longest accepted address in octets (RFC 5321 §4.5.3.1.3: a 256-octet path minus the `<>`).
pub const MAX_LEN: usize = 254;
/// Longest accepted local part in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest accepted domain label in octets (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Why a string is not an acceptable e-mail address. Messages never contain the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Empty, or only whitespace.
    #[error("an email address is required")]
    Required,
    /// Longer than [`MAX_LEN`] octets.
    #[error("the email address is longer than 254 characters")]
    TooLong,
    /// The part before `@` is longer than [`MAX_LOCAL_LEN`] octets.
    #[error("the part before '@' is longer than 64 characters")]
    LocalPartTooLong,
    /// No `@`.
    #[error("the email address has no '@'")]
    MissingAt,
    /// More than one `@`.
    #[error("the email address has more than one '@'")]
    MultipleAt,
    /// Nothing before the `@`.
    #[error("the email address has nothing before '@'")]
    EmptyLocalPart,
    /// The domain is not a dotted name of valid labels.
    #[error("the email domain is not valid")]
    InvalidDomain,
    /// Whitespace or a control character inside the address.
    #[error("the email address contains whitespace or a control character")]
    InvalidCharacter,
}

impl EmailError {
    /// A stable, machine-readable code for API field violations: `REQUIRED`, `TOO_LONG` or
    /// `INVALID_FORMAT`. Clients may rely on these strings; the messages may change.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Required => "REQUIRED",
            Self::TooLong | Self::LocalPartTooLong => "TOO_LONG",
            Self::MissingAt
            | Self::MultipleAt
            | Self::EmptyLocalPart
            | Self::InvalidDomain
            | Self::InvalidCharacter => "INVALID_FORMAT",
        }
    }
}

/// A syntactically valid e-mail address with a lower-cased domain.
///
/// Invariant: exactly one `@`, at byte index `at`, with a valid local part before and a valid,
/// lower-case domain after it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Checks `input` (see the module documentation for the rules) and returns the address with
    /// surrounding whitespace removed and the domain lower-cased.
    ///
    /// # Errors
    /// The first rule the input breaks, checked in this order: [`EmailError::Required`],
    /// [`EmailError::TooLong`], [`EmailError::InvalidCharacter`], [`EmailError::MissingAt`],
    /// [`EmailError::MultipleAt`], [`EmailError::EmptyLocalPart`],
    /// [`EmailError::LocalPartTooLong`], [`EmailError::InvalidDomain`].
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Required);
        }
        if trimmed.len() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError::InvalidCharacter);
        }
        let Some((local, domain)) = trimmed.split_once('@') else {
            return Err(EmailError::MissingAt);
        };
        if domain.contains('@') {
            return Err(EmailError::MultipleAt);
        }
        if local.is_empty() {
            return Err(EmailError::EmptyLocalPart);
        }
        if local.len() > MAX_LOCAL_LEN {
            return Err(EmailError::LocalPartTooLong);
        }
        let domain = domain.to_lowercase();
        if !is_valid_domain(&domain) {
            return Err(EmailError::InvalidDomain);
        }
        Ok(Self(format!("{local}@{domain}")))
    }

    /// The address as stored and shown to its owner: local part as typed, domain lower-cased.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uniqueness key: the whole address lower-cased, so `Ann@Example.com` and
    /// `ann@example.com` cannot both register.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.0.to_lowercase()
    }

    /// The part before `@`, as typed.
    #[must_use]
    pub fn local_part(&self) -> &str {
        self.split().0
    }

    /// The part after `@`, lower-cased.
    #[must_use]
    pub fn domain(&self) -> &str {
        self.split().1
    }

    /// The form safe for logs: the first character of the local part, `***`, then `@domain`
    /// (`a***@example.com`). The same text `Debug` prints.
    #[must_use]
    pub fn redacted(&self) -> String {
        let (local, domain) = self.split();
        let first = local.chars().next().unwrap_or('*');
        format!("{first}***@{domain}")
    }

    fn split(&self) -> (&str, &str) {
        // The invariant guarantees an '@'; the fallback only keeps this free of panics.
        self.0.split_once('@').unwrap_or((self.0.as_str(), ""))
    }
}

/// At least two labels, each 1..=63 octets of letters, digits and `-`, not starting or ending
/// with `-`.
fn is_valid_domain(domain: &str) -> bool {
    if !domain.contains('.') {
        return false;
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    })
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Redacting: never prints the full address (see [`Email::redacted`]).
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.redacted())
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> EmailError {
        Email::parse(input).expect_err(input)
    }

    #[test]
    fn accepts_a_plain_address() {
        let email = Email::parse("ann.lee+bank@example.com").unwrap();
        assert_eq!(email.as_str(), "ann.lee+bank@example.com");
        assert_eq!(email.local_part(), "ann.lee+bank");
        assert_eq!(email.domain(), "example.com");
    }

    #[test]
    fn trims_surrounding_whitespace() {
        let email = Email::parse(" \t ann@example.com \n").unwrap();
        assert_eq!(email.as_str(), "ann@example.com");
    }

    #[test]
    fn lower_cases_the_domain_only() {
        let email = Email::parse("Ann.Lee@Mail.EXAMPLE.Com").unwrap();
        assert_eq!(email.as_str(), "Ann.Lee@mail.example.com");
        assert_eq!(email.to_string(), "Ann.Lee@mail.example.com");
        assert_eq!(email.canonical(), "ann.lee@mail.example.com");
    }

    #[test]
    fn canonical_form_makes_case_variants_equal() {
        let a = Email::parse("ANN@example.com").unwrap();
        let b = Email::parse("ann@EXAMPLE.COM").unwrap();
        assert_ne!(a, b, "the stored forms keep the local part as typed");
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn rejects_empty_and_blank_input_as_required() {
        assert_eq!(err(""), EmailError::Required);
        assert_eq!(err("   \t\n"), EmailError::Required);
        assert_eq!(EmailError::Required.code(), "REQUIRED");
    }

    #[test]
    fn length_limits_are_254_overall_and_64_for_the_local_part() {
        // 64 + 1 + 189 = 254: the longest acceptable address.
        let local = "a".repeat(64);
        let domain = format!("{}.{}.{}.com", "b".repeat(63), "c".repeat(63), "d".repeat(57));
        let longest = format!("{local}@{domain}");
        assert_eq!(longest.len(), 254);
        assert!(Email::parse(&longest).is_ok());

        let too_long = format!("{local}@e{domain}");
        assert_eq!(err(&too_long), EmailError::TooLong);
        assert_eq!(EmailError::TooLong.code(), "TOO_LONG");

        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(err(&long_local), EmailError::LocalPartTooLong);
        assert_eq!(EmailError::LocalPartTooLong.code(), "TOO_LONG");
    }

    #[test]
    fn rejects_missing_or_multiple_at() {
        assert_eq!(err("ann.example.com"), EmailError::MissingAt);
        assert_eq!(err("ann@lee@example.com"), EmailError::MultipleAt);
        assert_eq!(err("ann@@example.com"), EmailError::MultipleAt);
        assert_eq!(EmailError::MissingAt.code(), "INVALID_FORMAT");
        assert_eq!(EmailError::MultipleAt.code(), "INVALID_FORMAT");
    }

    #[test]
    fn rejects_an_empty_local_part() {
        assert_eq!(err("@example.com"), EmailError::EmptyLocalPart);
        assert_eq!(EmailError::EmptyLocalPart.code(), "INVALID_FORMAT");
    }

    #[test]
    fn rejects_bad_domains() {
        for bad in [
            "ann@",
            "ann@localhost",
            "ann@example.",
            "ann@.example.com",
            "ann@example..com",
            "ann@-example.com",
            "ann@example-.com",
            "ann@example.-com",
            "ann@exa_mple.com",
            "ann@[127.0.0.1]",
            "ann@example.com.",
        ] {
            assert_eq!(err(bad), EmailError::InvalidDomain, "{bad}");
        }
        let long_label = format!("ann@{}.com", "x".repeat(64));
        assert_eq!(err(&long_label), EmailError::InvalidDomain);
        assert_eq!(EmailError::InvalidDomain.code(), "INVALID_FORMAT");
    }

    #[test]
    fn accepts_hyphens_inside_labels_and_internationalised_domains() {
        assert!(Email::parse("ann@my-bank.example.co.uk").is_ok());
        let idn = Email::parse("jürgen@BÜCHER.example").unwrap();
        assert_eq!(idn.as_str(), "jürgen@bücher.example");
        assert!(Email::parse("ann@xn--bcher-kva.example").is_ok());
    }

    #[test]
    fn rejects_whitespace_and_control_characters_anywhere() {
        for bad in ["ann lee@example.com", "ann@exa mple.com", "ann\u{0}@example.com", "ann\t@example.com"] {
            assert_eq!(err(bad), EmailError::InvalidCharacter, "{bad:?}");
        }
        assert_eq!(err("ann@example.com\u{7f}"), EmailError::InvalidCharacter);
        assert_eq!(err("ann\u{a0}x@example.com"), EmailError::InvalidCharacter, "no-break space");
        assert_eq!(EmailError::InvalidCharacter.code(), "INVALID_FORMAT");
    }

    #[test]
    fn debug_and_redacted_hide_the_local_part() {
        let email = Email::parse("Alice.Secret@Example.com").unwrap();
        assert_eq!(email.redacted(), "A***@example.com");
        let debug = format!("{email:?}");
        assert_eq!(debug, "Email(A***@example.com)");
        assert!(!debug.contains("Secret"));
        assert!(!format!("{:?}", Some(&email)).contains("lice"));
    }

    #[test]
    fn redaction_keeps_a_whole_first_character() {
        let email = Email::parse("élodie@example.fr").unwrap();
        assert_eq!(email.redacted(), "é***@example.fr");
    }

    #[test]
    fn error_messages_never_echo_the_input() {
        let input = "secret.person@exa_mple.com";
        let message = err(input).to_string();
        assert!(!message.contains("secret"));
        assert_eq!(message, "the email domain is not valid");
    }
}
