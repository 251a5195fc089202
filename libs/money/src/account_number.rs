//! Account numbers.
//!
//! # Scheme
//!
//! An account number is 16 decimal digits:
//!
//! ```text
//!   4210 1234567890 NN
//!   |    |          +-- check digits: ISO 7064 MOD 97-10 over the first 14 digits
//!   |    +------------- serial: 10 random digits, unique, never reused
//!   +------------------ bank code (this bank's prefix, `BANK_CODE`)
//! ```
//!
//! The check digits are computed like an IBAN's: `NN = 98 - (first_14_digits * 100 mod 97)`, so the
//! whole 16-digit value taken as an integer is `1 mod 97`. A number is valid exactly when it has 16
//! digits, starts with the bank code and is `1 mod 97`. MOD 97-10 detects every single-digit
//! error, every transposition of two adjacent digits and all but about 1% of other errors.
//!
//! Serials are random (not sequential) so numbers do not reveal how many accounts exist or which
//! number comes next. Spaces (as in the grouped form `4210 1234 5678 9012`) are accepted on input
//! and removed; the canonical form has none.
//!
//! Every place that accepts a number parses it with [`AccountNumber::parse`] (a full number) or
//! [`NumberPrefix::parse`] (a search prefix), so a number with a wrong check digit never reaches a
//! query.

use std::fmt;

use rand::Rng as _;

/// This bank's prefix of every account number.
pub const BANK_CODE: &str = "4210";

/// Digits in a complete account number.
pub const LENGTH: usize = 16;

/// Digits of the random serial.
const SERIAL_DIGITS: usize = 10;
/// The number of distinct serials (`10^SERIAL_DIGITS`).
const SERIALS: u64 = 10_000_000_000;

/// Why an account number (or prefix) is refused; `code()` is the stable field-violation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Nothing given.
    #[error("account number is required")]
    Empty,
    /// Something other than digits (and grouping spaces).
    #[error("account number must contain digits only")]
    NotDigits,
    /// Not 16 digits (or, for a prefix, fewer than 4 or more than 16).
    #[error("account number must have 16 digits")]
    Length,
    /// Another bank's prefix.
    #[error("account number is not one of this bank's")]
    UnknownBank,
    /// The check digits do not match.
    #[error("account number check digits do not match")]
    CheckDigits,
}

impl Error {
    /// The stable code for field violations.
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::Empty => "REQUIRED",
            Self::NotDigits => "INVALID_FORMAT",
            Self::Length => "INVALID_LENGTH",
            Self::UnknownBank => "UNKNOWN_BANK",
            Self::CheckDigits => "INVALID_CHECK_DIGITS",
        }
    }
}

/// A valid account number of this bank (canonical: 16 digits, no spaces).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AccountNumber(String);

impl AccountNumber {
    /// The number with serial `serial` (taken modulo `10^10`) and its check digits.
    #[must_use]
    pub fn from_serial(serial: u64) -> Self {
        let body = format!("{BANK_CODE}{:0width$}", serial % SERIALS, width = SERIAL_DIGITS);
        let check = 98 - mod97(&body, 2);
        Self(format!("{body}{check:02}"))
    }

    /// A number with a random serial (the caller retries on the rare collision).
    #[must_use]
    pub fn random() -> Self {
        Self::from_serial(rand::thread_rng().gen_range(0..SERIALS))
    }

    /// Parses and validates a complete number (spaces are removed first).
    ///
    /// # Errors
    /// Empty, not digits, not 16 digits, another bank's prefix, or wrong check digits.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let digits = digits_of(input)?;
        if digits.len() != LENGTH {
            return Err(Error::Length);
        }
        if !digits.starts_with(BANK_CODE) {
            return Err(Error::UnknownBank);
        }
        if mod97(&digits, 0) != 1 {
            return Err(Error::CheckDigits);
        }
        Ok(Self(digits))
    }

    /// The canonical 16 digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last four digits (what events and statements show).
    #[must_use]
    pub fn last_four(&self) -> &str {
        &self.0[LENGTH - 4..]
    }
}

impl fmt::Debug for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Account numbers are not secrets, but logs only need the last four digits.
        write!(f, "AccountNumber(…{})", self.last_four())
    }
}

impl fmt::Display for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an account-number search matches: a complete (validated) number, or a prefix of 4 to 15
/// digits (which cannot carry check digits yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberPrefix {
    /// Exactly this number.
    Exact(AccountNumber),
    /// Numbers starting with these digits.
    Prefix(String),
}

impl NumberPrefix {
    /// Fewest digits of a prefix search.
    pub const MIN_DIGITS: usize = 4;

    /// Parses a search value: 16 digits must be a valid number; 4 to 15 digits are a prefix.
    ///
    /// # Errors
    /// Empty, not digits, too short or too long, or a complete number with wrong check digits.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let digits = digits_of(input)?;
        match digits.len() {
            LENGTH => AccountNumber::parse(&digits).map(Self::Exact),
            n if (Self::MIN_DIGITS..LENGTH).contains(&n) => Ok(Self::Prefix(digits)),
            _ => Err(Error::Length),
        }
    }

    /// The digits every match starts with.
    #[must_use]
    pub fn digits(&self) -> &str {
        match self {
            Self::Exact(number) => number.as_str(),
            Self::Prefix(digits) => digits,
        }
    }
}

/// `input` without spaces, if it is digits only.
fn digits_of(input: &str) -> Result<String, Error> {
    let digits: String = input.chars().filter(|c| *c != ' ').collect();
    if digits.is_empty() {
        return Err(Error::Empty);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::NotDigits);
    }
    Ok(digits)
}

/// `(digits * 10^zeros) mod 97`, digit by digit (no big integers needed). `digits` are ASCII digits.
fn mod97(digits: &str, zeros: usize) -> u32 {
    let padded = digits.bytes().map(|b| u32::from(b - b'0')).chain(std::iter::repeat_n(0, zeros));
    padded.fold(0, |remainder, digit| (remainder * 10 + digit) % 97)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn numbers_carry_iso_7064_mod_97_10_check_digits() {
        let number = AccountNumber::from_serial(1_234_567_890);
        assert_eq!(number.as_str().len(), LENGTH);
        assert!(number.as_str().starts_with("42101234567890"));
        // 4210123456789000 mod 97 = 16, so the check digits are 98 - 16 = 82.
        assert_eq!(number.as_str(), "4210123456789082");
        assert_eq!(AccountNumber::parse("4210123456789082").unwrap(), number);
        assert_eq!(AccountNumber::parse("4210 1234 5678 9082").unwrap(), number, "grouped input");
        assert_eq!(number.last_four(), "9082");
        assert_eq!(format!("{number:?}"), "AccountNumber(…9082)");
    }

    #[test]
    fn malformed_numbers_are_refused_with_a_reason() {
        assert_eq!(AccountNumber::parse(""), Err(Error::Empty));
        assert_eq!(AccountNumber::parse("4210-1234"), Err(Error::NotDigits));
        assert_eq!(AccountNumber::parse("421012345678902"), Err(Error::Length));
        assert_eq!(AccountNumber::parse("4210123456789083"), Err(Error::CheckDigits));
        assert_eq!(AccountNumber::parse("9999123456789082"), Err(Error::UnknownBank));
        assert_eq!(AccountNumber::parse("４２１０123456789082"), Err(Error::NotDigits), "only ASCII digits");
    }

    #[test]
    fn search_values_are_complete_numbers_or_prefixes() {
        assert_eq!(NumberPrefix::parse("4210 12").unwrap(), NumberPrefix::Prefix("421012".into()));
        assert!(matches!(NumberPrefix::parse("4210123456789082").unwrap(), NumberPrefix::Exact(_)));
        assert_eq!(NumberPrefix::parse("421"), Err(Error::Length));
        assert_eq!(NumberPrefix::parse("42101234567890821"), Err(Error::Length));
        assert_eq!(NumberPrefix::parse("4210123456789083"), Err(Error::CheckDigits));
    }

    proptest! {
        #[test]
        fn every_generated_number_is_valid(serial in 0u64..SERIALS) {
            let number = AccountNumber::from_serial(serial);
            prop_assert_eq!(AccountNumber::parse(number.as_str()), Ok(number));
        }

        #[test]
        fn any_single_digit_error_is_detected(serial in 0u64..SERIALS, position in 4usize..LENGTH, delta in 1u8..10) {
            let number = AccountNumber::from_serial(serial);
            let mut bytes = number.as_str().as_bytes().to_vec();
            bytes[position] = b'0' + (bytes[position] - b'0' + delta) % 10;
            let typo = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(AccountNumber::parse(&typo), Err(Error::CheckDigits));
        }

        #[test]
        fn any_adjacent_transposition_is_detected(serial in 0u64..SERIALS, position in 4usize..LENGTH - 1) {
            let number = AccountNumber::from_serial(serial);
            let mut bytes = number.as_str().as_bytes().to_vec();
            prop_assume!(bytes[position] != bytes[position + 1]);
            bytes.swap(position, position + 1);
            let typo = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(AccountNumber::parse(&typo), Err(Error::CheckDigits));
        }
    }
}
