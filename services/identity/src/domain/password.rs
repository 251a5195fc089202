//! Passwords and the password policy (NIST SP 800-63B §5.1.1.2, OWASP ASVS V2.1).
//!
//! [`Password`] holds the secret, NFKC-normalised once at construction so that the same password
//! typed on different keyboards or operating systems is one value for the policy and for the
//! hash. [`check`] applies the policy and returns every [`Violation`] at once, so a client can show
//! them all; each has a stable [`Violation::code`].
//!
//! What the policy checks, in the order violations are reported (the declaration order of
//! [`Violation`]):
//!
//! - length in Unicode scalar values (characters) after NFKC: at least `min_length` (default 12),
//!   at most `max_length` (default 128). Nothing is ever truncated: a password longer than
//!   `max_length` is refused, never cut to fit;
//! - BREACHED: the password, lower-cased, is on the bundled list of common and breached passwords
//!   (`common-passwords.txt`: 10 000 entries of 8+ characters from zxcvbn's frequency list, MIT);
//! - TOO_WEAK: the zxcvbn score is below `min_strength` (default 3 of 0..=4). The user's e-mail
//!   local part and domain labels and their names are given to zxcvbn as user inputs. zxcvbn is
//!   costly on long input, so it sees at most the first 128 characters; a password whose first 128
//!   characters are strong is strong;
//! - SIMILAR_TO_EMAIL / SIMILAR_TO_NAME: see [`check`];
//! - REUSED exists for the caller, who compares the new password with the last `history` hashes
//!   (only the argon2 verifier can do that); [`check`] never reports it;
//! - MISSING_LOWERCASE / _UPPERCASE / _DIGIT / _SYMBOL: only with `composition = true` (the staff
//!   profile). NIST advises against composition rules for customers, hence off by default;
//! - INVALID_CHARACTERS: control characters (Unicode category Cc). Spaces, emoji and all other
//!   printable characters are allowed, as NIST asks.

use std::{collections::HashSet, fmt, sync::LazyLock};

use secrecy::{ExposeSecret, SecretString, zeroize::Zeroize};
use serde::Deserialize;
use unicode_normalization::UnicodeNormalization;

/// zxcvbn sees at most this many characters (it is super-linear in the input length).
const STRENGTH_INPUT_MAX_CHARS: usize = 128;

/// Terms (names, e-mail local parts) at least this long are refused anywhere inside a password;
/// shorter ones only as the whole password apart from trailing digits and symbols.
const SIMILARITY_MIN_CHARS: usize = 4;

/// The bundled list of common and breached passwords, lower-case, one per line.
static COMMON_PASSWORDS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_lowercase)
        .collect()
});

/// A password as the user typed it, NFKC-normalised. `Debug` never shows it.
#[derive(Clone)]
pub struct Password(SecretString);

impl Password {
    /// Wraps `raw` after NFKC normalisation (NIST SP 800-63B §5.1.1.2), and wipes `raw`.
    ///
    /// Any string is a `Password`, so that a login with an old, now non-conforming password still
    /// verifies; whether a new password is acceptable is [`check`]'s job.
    #[must_use]
    pub fn new(mut raw: String) -> Self {
        let normalised: String = raw.nfkc().collect();
        raw.zeroize();
        Self(SecretString::from(normalised))
    }

    /// The normalised password. Hand it only to the hasher or the policy.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

/// The password policy settings (the `password` config section).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Fewest characters (Unicode scalar values after NFKC). At least 8 (NIST); default 12.
    pub min_length: usize,
    /// Most characters. 64..=1024 (NIST: allow at least 64); default 128.
    pub max_length: usize,
    /// Lowest acceptable zxcvbn score, 0..=4; default 3 ("safely unguessable").
    pub min_strength: u8,
    /// Require a lower-case letter, an upper-case letter, a digit and a symbol (the staff
    /// profile). Default false: NIST advises against composition rules.
    pub composition: bool,
    /// How many previous passwords may not be reused; 0 disables the check. Enforced by the
    /// caller against stored hashes. Default 5.
    pub history: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { min_length: 12, max_length: 128, min_strength: 3, composition: false, history: 5 }
    }
}

impl PolicyConfig {
    /// Checks the settings hang together.
    ///
    /// # Errors
    /// A one-line message naming the first bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_length < 8 {
            return Err(format!("min_length must be at least 8, got {}", self.min_length));
        }
        if self.max_length < 64 {
            return Err(format!("max_length must be at least 64, got {}", self.max_length));
        }
        if self.max_length > 1024 {
            return Err(format!("max_length must be at most 1024, got {}", self.max_length));
        }
        if self.max_length < self.min_length {
            return Err(format!(
                "max_length ({}) must not be below min_length ({})",
                self.max_length, self.min_length
            ));
        }
        if self.min_strength > 4 {
            return Err(format!("min_strength must be 0..=4, got {}", self.min_strength));
        }
        Ok(())
    }
}

/// What the policy compares a password with. `Debug` shows none of it.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The account's e-mail address (as stored).
    pub email: &'a str,
    /// The user's given name; may be empty.
    pub given_name: &'a str,
    /// The user's family name; may be empty.
    pub family_name: &'a str,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// One way a password breaks the policy. Ordered as [`check`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// Fewer than `min_length` characters.
    TooShort,
    /// More than `max_length` characters.
    TooLong,
    /// On the list of common or breached passwords.
    Breached,
    /// Easy to guess (zxcvbn score below `min_strength`).
    TooWeak,
    /// Contains the e-mail address or its local part.
    SimilarToEmail,
    /// Contains the given or family name.
    SimilarToName,
    /// One of the last `history` passwords (reported by the caller, never by [`check`]).
    Reused,
    /// Composition: no lower-case letter.
    MissingLowercase,
    /// Composition: no upper-case letter.
    MissingUppercase,
    /// Composition: no digit.
    MissingDigit,
    /// Composition: no symbol.
    MissingSymbol,
    /// Contains a control character.
    InvalidCharacters,
}

impl Violation {
    /// The stable, machine-readable code clients may rely on.
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::TooShort => "TOO_SHORT",
            Self::TooLong => "TOO_LONG",
            Self::Breached => "BREACHED",
            Self::TooWeak => "TOO_WEAK",
            Self::SimilarToEmail => "SIMILAR_TO_EMAIL",
            Self::SimilarToName => "SIMILAR_TO_NAME",
            Self::Reused => "REUSED",
            Self::MissingLowercase => "MISSING_LOWERCASE",
            Self::MissingUppercase => "MISSING_UPPERCASE",
            Self::MissingDigit => "MISSING_DIGIT",
            Self::MissingSymbol => "MISSING_SYMBOL",
            Self::InvalidCharacters => "INVALID_CHARACTERS",
        }
    }

    /// A short human explanation; never contains the password or the user's data.
    #[must_use]
    pub const fn description(self) -> &'static str {
        match self {
            Self::TooShort => "the password is shorter than the minimum length",
            Self::TooLong => "the password is longer than the maximum length",
            Self::Breached => "the password is on a list of common or breached passwords",
            Self::TooWeak => "the password is too easy to guess",
            Self::SimilarToEmail => "the password contains the email address",
            Self::SimilarToName => "the password contains the user's name",
            Self::Reused => "the password was used recently",
            Self::MissingLowercase => "the password needs a lower-case letter",
            Self::MissingUppercase => "the password needs an upper-case letter",
            Self::MissingDigit => "the password needs a digit",
            Self::MissingSymbol => "the password needs a symbol",
            Self::InvalidCharacters => "the password contains a control character",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Every way `password` breaks the policy, in [`Violation`] declaration order; empty when the
/// password is acceptable. Never reports [`Violation::Reused`].
///
/// Similarity (both sides lower-cased and NFKC-normalised):
/// - SIMILAR_TO_EMAIL: the password contains the whole address, or the local part if that has
///   at least 4 characters, or is the local part followed only by digits and symbols
///   (`bob` → `bob!2024!2024`);
/// - SIMILAR_TO_NAME: the same for the given name, the family name and each of their words
///   (split at spaces, hyphens, apostrophes and dots); single letters (initials) are ignored.
#[must_use]
pub fn check(config: &PolicyConfig, password: &Password, context: &Context<'_>) -> Vec<Violation> {
    let password = password.expose();
    let lower = password.to_lowercase();
    let length = password.chars().count();
    let (email_local, email_domain) = split_email(context.email);
    let names = name_terms(context.given_name).chain(name_terms(context.family_name)).collect::<Vec<_>>();

    let mut violations = Vec::new();
    if length < config.min_length {
        violations.push(Violation::TooShort);
    }
    if length > config.max_length {
        violations.push(Violation::TooLong);
    }
    if COMMON_PASSWORDS.contains(&lower) {
        violations.push(Violation::Breached);
    }
    if strength(password, &email_local, &email_domain, &names) < config.min_strength {
        violations.push(Violation::TooWeak);
    }
    let whole_email = normalise(context.email.trim());
    if similar(&lower, &whole_email) || similar(&lower, &email_local) {
        violations.push(Violation::SimilarToEmail);
    }
    if names.iter().any(|name| similar(&lower, name)) {
        violations.push(Violation::SimilarToName);
    }
    if config.composition {
        if !password.chars().any(char::is_lowercase) {
            violations.push(Violation::MissingLowercase);
        }
        if !password.chars().any(char::is_uppercase) {
            violations.push(Violation::MissingUppercase);
        }
        if !password.chars().any(char::is_numeric) {
            violations.push(Violation::MissingDigit);
        }
        // A symbol is anything that is neither a letter nor a digit: punctuation, space, emoji.
        if !password.chars().any(|c| !c.is_alphanumeric()) {
            violations.push(Violation::MissingSymbol);
        }
    }
    if password.chars().any(char::is_control) {
        violations.push(Violation::InvalidCharacters);
    }
    debug_assert!(violations.is_sorted(), "violations are pushed in declaration order");
    violations
}

/// The zxcvbn score (0..=4) of at most the first [`STRENGTH_INPUT_MAX_CHARS`] characters, with
/// the user's own data as user inputs.
fn strength(password: &str, email_local: &str, email_domain: &str, names: &[String]) -> u8 {
    let end = password.char_indices().nth(STRENGTH_INPUT_MAX_CHARS).map_or(password.len(), |(i, _)| i);
    let estimated = password.get(..end).unwrap_or(password);
    let mut user_inputs: Vec<&str> = Vec::with_capacity(4 + names.len());
    if !email_local.is_empty() {
        user_inputs.push(email_local);
    }
    user_inputs.extend(email_domain.split('.').filter(|label| !label.is_empty()));
    user_inputs.extend(names.iter().map(String::as_str));
    u8::from(zxcvbn::zxcvbn(estimated, &user_inputs).score())
}

/// `password` (lower-case) contains `term` (at least [`SIMILARITY_MIN_CHARS`] long), or is
/// `term` followed by nothing but digits and symbols.
fn similar(password: &str, term: &str) -> bool {
    if term.is_empty() {
        return false;
    }
    if term.chars().count() >= SIMILARITY_MIN_CHARS && password.contains(term) {
        return true;
    }
    password.strip_prefix(term).is_some_and(|rest| rest.chars().all(|c| !c.is_alphabetic()))
}

/// NFKC then lower case, the form every comparison uses.
fn normalise(text: &str) -> String {
    text.nfkc().collect::<String>().to_lowercase()
}

/// The normalised local part and domain of `email` (split at the last `@`; no `@`: all local).
fn split_email(email: &str) -> (String, String) {
    let email = normalise(email.trim());
    match email.rsplit_once('@') {
        Some((local, domain)) => (local.to_owned(), domain.to_owned()),
        None => (email, String::new()),
    }
}

/// The normalised name with inner whitespace removed and each of its words, skipping single
/// characters.
fn name_terms(name: &str) -> impl Iterator<Item = String> + use<> {
    let name = normalise(name.trim());
    let whole: String = name.chars().filter(|c| !c.is_whitespace()).collect();
    let words: Vec<String> = name
        .split(|c: char| c.is_whitespace() || matches!(c, '-' | '\'' | '’' | '.'))
        .map(str::to_owned)
        .collect();
    std::iter::once(whole).chain(words).filter(|term| term.chars().count() >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "violet-Tractor-lagoon-58";

    fn ctx() -> Context<'static> {
        Context { email: "Ann.Lee@example.com", given_name: "Annabel", family_name: "Lee-Worthington" }
    }

    fn check_default(password: &str) -> Vec<Violation> {
        check(&PolicyConfig::default(), &Password::new(password.to_owned()), &ctx())
    }

    fn staff() -> PolicyConfig {
        PolicyConfig { composition: true, ..PolicyConfig::default() }
    }

    #[test]
    fn a_strong_password_has_no_violations() {
        assert_eq!(check_default(STRONG), vec![]);
    }

    #[test]
    fn codes_are_stable() {
        let all = [
            (Violation::TooShort, "TOO_SHORT"),
            (Violation::TooLong, "TOO_LONG"),
            (Violation::Breached, "BREACHED"),
            (Violation::TooWeak, "TOO_WEAK"),
            (Violation::SimilarToEmail, "SIMILAR_TO_EMAIL"),
            (Violation::SimilarToName, "SIMILAR_TO_NAME"),
            (Violation::Reused, "REUSED"),
            (Violation::MissingLowercase, "MISSING_LOWERCASE"),
            (Violation::MissingUppercase, "MISSING_UPPERCASE"),
            (Violation::MissingDigit, "MISSING_DIGIT"),
            (Violation::MissingSymbol, "MISSING_SYMBOL"),
            (Violation::InvalidCharacters, "INVALID_CHARACTERS"),
        ];
        for (violation, code) in all {
            assert_eq!(violation.code(), code);
            let description = violation.description();
            assert!(!description.is_empty());
            assert_eq!(description, description.to_lowercase(), "{code}");
            assert_eq!(violation.to_string(), description);
        }
    }

    #[test]
    fn too_short_counts_characters() {
        assert!(check_default("Tr4ctor-lag").contains(&Violation::TooShort), "11 characters");
        assert!(!check_default("Tr4ctor-lago").contains(&Violation::TooShort), "12 characters");
    }

    #[test]
    fn unicode_is_counted_in_characters_not_bytes() {
        // 11 emoji are 44 bytes but 11 characters: too short.
        let eleven = "🦀🐍🐘🦊🐙🦉🐢🦜🐝🦋🐳";
        assert_eq!(eleven.len(), 44);
        assert!(check_default(eleven).contains(&Violation::TooShort));
        let twelve = format!("{eleven}🦒");
        assert!(!check_default(&twelve).contains(&Violation::TooShort));
        // 128 two-byte characters (256 bytes) are not too long.
        let accents = "é".repeat(128);
        assert!(!check_default(&accents).contains(&Violation::TooLong));
        assert!(check_default(&format!("{accents}é")).contains(&Violation::TooLong));
    }

    #[test]
    fn length_is_counted_after_nfkc() {
        // U+FB01 (ﬁ ligature) normalises to "fi": 6 ligatures are 12 characters.
        let ligatures = "\u{FB01}".repeat(6);
        let password = Password::new(ligatures);
        assert_eq!(password.expose(), "fi".repeat(6));
        let violations = check(&PolicyConfig::default(), &password, &ctx());
        assert!(!violations.contains(&Violation::TooShort));
        // A decomposed "é" (e + U+0301) becomes one character.
        assert_eq!(Password::new("e\u{301}".to_owned()).expose(), "é");
    }

    #[test]
    fn accepts_unicode_passphrases() {
        assert_eq!(check_default("correct-horse-battery-stäple-Ω"), vec![]);
        assert_eq!(check_default("мой пароль — длинный и странный"), vec![]);
        assert_eq!(check_default("🦀 crabs 🦀 dance 🦀 at dawn 🦀"), vec![]);
    }

    #[test]
    fn accepts_a_64_character_passphrase() {
        let passphrase = "the quiet orange lighthouse hums over seventeen tidal marshlands";
        assert_eq!(passphrase.chars().count(), 64);
        assert_eq!(check_default(passphrase), vec![]);
    }

    #[test]
    fn refuses_129_characters_and_never_truncates() {
        let base = "Zq8!vR2#mK5$wL9^";
        let long = base.repeat(9); // 144 characters
        let at_limit: String = long.chars().take(128).collect();
        assert_eq!(check_default(&at_limit), vec![]);

        let over: String = long.chars().take(129).collect();
        assert_eq!(check_default(&over), vec![Violation::TooLong]);

        // 200 characters whose 128-character prefix is acceptable: still refused, because the
        // password is checked (and would be hashed) whole.
        let two_hundred: String = base.repeat(13).chars().take(200).collect();
        assert_eq!(two_hundred.chars().take(128).collect::<String>(), at_limit);
        assert_eq!(check_default(&two_hundred), vec![Violation::TooLong]);
        assert_eq!(Password::new(two_hundred.clone()).expose(), two_hundred);
    }

    #[test]
    fn long_passwords_are_still_rated_on_their_first_128_characters() {
        let config = PolicyConfig { max_length: 1024, ..PolicyConfig::default() };
        let password = Password::new("a".repeat(600));
        let violations = check(&config, &password, &ctx());
        assert_eq!(violations, vec![Violation::TooWeak]);
    }

    #[test]
    fn common_passwords_are_breached_case_insensitively() {
        assert!(check_default("password1234").contains(&Violation::Breached));
        assert!(check_default("PassWord1234").contains(&Violation::Breached));
        assert!(check_default("Qwerty123456").contains(&Violation::Breached));
        // Full-width letters normalise (NFKC) to ASCII.
        assert!(check_default("ｐａｓｓｗｏｒｄ１２３４").contains(&Violation::Breached));
        assert!(!check_default(STRONG).contains(&Violation::Breached));
    }

    #[test]
    fn the_bundled_list_is_loaded() {
        assert_eq!(COMMON_PASSWORDS.len(), 10_000);
        assert!(COMMON_PASSWORDS.contains("password"));
        assert!(!COMMON_PASSWORDS.iter().any(|entry| entry.starts_with('#')));
    }

    #[test]
    fn repeats_and_sequences_are_too_weak() {
        for weak in ["aaaaaaaaaaaa", "zzzzzzzzzzzzzzzz", "123456789012", "abcdefghijkl", "qwertyuiopasdf"] {
            assert!(check_default(weak).contains(&Violation::TooWeak), "{weak}");
        }
    }

    #[test]
    fn min_strength_zero_disables_the_strength_check() {
        let config = PolicyConfig { min_strength: 0, ..PolicyConfig::default() };
        let violations = check(&config, &Password::new("aaaaaaaaaaaa".to_owned()), &ctx());
        assert!(!violations.contains(&Violation::TooWeak));
    }

    #[test]
    fn the_users_own_data_makes_a_password_weaker() {
        let context = Context { email: "zorbatheg@example.com", given_name: "", family_name: "" };
        let config = PolicyConfig::default();
        let plain = check(
            &config,
            &Password::new("Zorbatheg!Zorbatheg!".to_owned()),
            &Context { email: "someone@example.com", ..context },
        );
        let with_inputs = check(&config, &Password::new("Zorbatheg!Zorbatheg!".to_owned()), &context);
        assert!(!plain.contains(&Violation::TooWeak), "{plain:?}");
        assert!(with_inputs.contains(&Violation::TooWeak), "{with_inputs:?}");
    }

    #[test]
    fn similar_to_email() {
        assert!(check_default("my-ann.lee-is-great!").contains(&Violation::SimilarToEmail));
        assert!(check_default("ANN.LEE@EXAMPLE.COM").contains(&Violation::SimilarToEmail));
        // A short local part is only refused as the whole password plus digits and symbols.
        let bob = Context { email: "bob@example.com", given_name: "", family_name: "" };
        let config = PolicyConfig::default();
        let similar = check(&config, &Password::new("bob!2024!2024".to_owned()), &bob);
        assert!(similar.contains(&Violation::SimilarToEmail));
        let unrelated = check(&config, &Password::new("kebob-umbrella-garden".to_owned()), &bob);
        assert!(!unrelated.contains(&Violation::SimilarToEmail), "{unrelated:?}");
    }

    #[test]
    fn similar_to_name() {
        assert!(check_default("i-am-ANNABEL-and-proud").contains(&Violation::SimilarToName));
        assert!(check_default("worthington-rocks-4-ever").contains(&Violation::SimilarToName));
        assert!(check_default("lee-worthington-2024").contains(&Violation::SimilarToName));
        // "Lee" is short: only "lee" + digits/symbols is refused, not a word containing it.
        assert!(check_default("Lee!!2024!!2024").contains(&Violation::SimilarToName));
        assert!(!check_default("sleepy-violet-tractor").contains(&Violation::SimilarToName));
    }

    #[test]
    fn empty_context_is_harmless() {
        let context = Context { email: "", given_name: "", family_name: "" };
        let violations = check(&PolicyConfig::default(), &Password::new(STRONG.to_owned()), &context);
        assert_eq!(violations, vec![]);
    }

    #[test]
    fn composition_is_off_by_default() {
        assert_eq!(check_default("violet tractor lagoon quietly"), vec![]);
    }

    #[test]
    fn composition_reports_each_missing_class() {
        let check_staff = |p: &str| check(&staff(), &Password::new(p.to_owned()), &ctx());
        assert_eq!(check_staff(STRONG), vec![]);
        assert_eq!(check_staff("VIOLET-TRACTOR-LAGOON-58"), vec![Violation::MissingLowercase]);
        assert_eq!(check_staff("violet-tractor-lagoon-58"), vec![Violation::MissingUppercase]);
        assert_eq!(check_staff("violet-Tractor-lagoon-xy"), vec![Violation::MissingDigit]);
        assert_eq!(check_staff("violetTractorlagoon58q"), vec![Violation::MissingSymbol]);
    }

    #[test]
    fn control_characters_are_invalid() {
        assert_eq!(check_default("violet-Tractor\u{7}lagoon-58"), vec![Violation::InvalidCharacters]);
        assert_eq!(check_default("violet-Tractor\nlagoon-58"), vec![Violation::InvalidCharacters]);
        // Spaces and other printable characters are fine.
        assert_eq!(check_default("violet Tractor lagoon 58"), vec![]);
    }

    #[test]
    fn reports_all_violations_together_in_a_fixed_order() {
        let context = Context { email: "annabel@example.com", given_name: "Annabel", family_name: "" };
        let violations = check(&staff(), &Password::new("annabel\u{7}".to_owned()), &context);
        assert_eq!(
            violations,
            vec![
                Violation::TooShort,
                Violation::TooWeak,
                Violation::SimilarToEmail,
                Violation::SimilarToName,
                Violation::MissingUppercase,
                Violation::MissingDigit,
                Violation::InvalidCharacters,
            ]
        );
        let breached = check_default("password1234");
        assert_eq!(breached, vec![Violation::Breached, Violation::TooWeak]);
    }

    #[test]
    fn reused_exists_but_is_never_reported_by_check() {
        assert_eq!(Violation::Reused.code(), "REUSED");
        assert!(!check_default("password1234").contains(&Violation::Reused));
    }

    #[test]
    fn debug_never_shows_the_password_or_the_context() {
        let password = Password::new("hunter2-Correct-Horse".to_owned());
        let debug = format!("{password:?}");
        assert!(!debug.contains("hunter2"));
        assert_eq!(debug, "Password([REDACTED])");
        let context = format!("{:?}", ctx());
        assert!(!context.contains("Ann") && !context.contains("Lee"), "{context}");
    }

    #[test]
    fn config_defaults_follow_nist() {
        let config = PolicyConfig::default();
        assert_eq!(
            config,
            PolicyConfig { min_length: 12, max_length: 128, min_strength: 3, composition: false, history: 5 }
        );
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn config_validation_names_the_setting() {
        let bad = |config: PolicyConfig| config.validate().expect_err("invalid");
        let base = PolicyConfig::default();
        assert!(bad(PolicyConfig { min_length: 7, ..base.clone() }).starts_with("min_length"));
        assert!(bad(PolicyConfig { max_length: 63, ..base.clone() }).starts_with("max_length"));
        assert!(bad(PolicyConfig { max_length: 1025, ..base.clone() }).starts_with("max_length"));
        let crossed = bad(PolicyConfig { min_length: 100, max_length: 80, ..base.clone() });
        assert!(crossed.starts_with("max_length") && crossed.contains("min_length"), "{crossed}");
        assert!(bad(PolicyConfig { min_strength: 5, ..base.clone() }).starts_with("min_strength"));
        let edges = PolicyConfig { min_length: 8, max_length: 1024, min_strength: 4, ..base };
        assert_eq!(edges.validate(), Ok(()));
    }

    #[test]
    fn config_deserialises_with_defaults_and_refuses_unknown_fields() {
        let config: PolicyConfig =
            serde_json::from_str(r#"{"min_length": 14, "composition": true}"#).unwrap();
        assert_eq!(config, PolicyConfig { min_length: 14, composition: true, ..PolicyConfig::default() });
        let empty: PolicyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, PolicyConfig::default());
        let unknown = serde_json::from_str::<PolicyConfig>(r#"{"min_lenght": 14}"#).unwrap_err();
        assert!(unknown.to_string().contains("min_lenght"), "{unknown}");
    }
}
