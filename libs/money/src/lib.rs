//! bank-money: money is an integer number of minor units of an ISO 4217 currency, never a float.
//!
//! [`Currency`] parses a code against the table the bank supports (with its exponent), [`Amount`]
//! is a strictly positive number of minor units, and balance arithmetic is checked: an overflow is
//! an error, never a wrap. [`account_number`] parses and makes the bank's account numbers (check
//! digits), for every service that accepts one; [`card_number`] finds and masks card numbers
//! typed into free text (and holds the Luhn check). Pure: no I/O, no protobuf, no database.

pub mod account_number;
pub mod card_number;

use std::fmt;

/// A problem with money input; `code()` is the stable field-violation code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No currency given.
    #[error("currency is required")]
    CurrencyRequired,
    /// Not an ISO 4217 code we support.
    #[error("currency is not supported")]
    CurrencyNotSupported,
    /// Zero or negative where a positive amount is required.
    #[error("amount must be positive")]
    NotPositive,
    /// Arithmetic left the range of 64-bit minor units.
    #[error("amount out of range")]
    Overflow,
}

impl Error {
    /// The stable code for field violations.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::CurrencyRequired => "REQUIRED",
            Self::CurrencyNotSupported => "CURRENCY_NOT_SUPPORTED",
            Self::NotPositive => "MUST_BE_POSITIVE",
            Self::Overflow => "OUT_OF_RANGE",
        }
    }
}

/// ISO 4217 currencies the bank supports, with their minor-unit exponents.
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("INR", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("RON", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("TRY", 2),
    ("USD", 2),
    ("ZAR", 2),
];

/// A supported ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

impl Currency {
    /// Parses an upper-case ISO 4217 code.
    ///
    /// # Errors
    /// Empty, or not in the supported table (lower case is not accepted: codes are canonical).
    pub fn parse(code: &str) -> Result<Self, Error> {
        if code.is_empty() {
            return Err(Error::CurrencyRequired);
        }
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(code, exponent)| Self { code, exponent: *exponent })
            .ok_or(Error::CurrencyNotSupported)
    }

    /// The code, e.g. `EUR`.
    #[must_use]
    pub const fn code(self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point (EUR 2, JPY 0, BHD 3).
    #[must_use]
    pub const fn exponent(self) -> u8 {
        self.exponent
    }

    /// `minor` formatted in major units, e.g. `1234.50` for EUR 123450.
    #[must_use]
    pub fn format(self, minor: i64) -> String {
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        if self.exponent == 0 {
            return format!("{sign}{abs}");
        }
        let scale = 10u64.pow(u32::from(self.exponent));
        format!("{sign}{}.{:0width$}", abs / scale, abs % scale, width = usize::from(self.exponent))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// A strictly positive number of minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    /// A positive amount.
    ///
    /// # Errors
    /// Zero or negative.
    pub const fn new(minor_units: i64) -> Result<Self, Error> {
        if minor_units > 0 { Ok(Self(minor_units)) } else { Err(Error::NotPositive) }
    }

    /// The minor units.
    #[must_use]
    pub const fn minor_units(self) -> i64 {
        self.0
    }
}

/// `balance + delta`, checked.
///
/// # Errors
/// Overflow.
pub fn add(balance: i64, delta: i64) -> Result<i64, Error> {
    balance.checked_add(delta).ok_or(Error::Overflow)
}

/// `balance - delta`, checked.
///
/// # Errors
/// Overflow.
pub fn sub(balance: i64, delta: i64) -> Result<i64, Error> {
    balance.checked_sub(delta).ok_or(Error::Overflow)
}

/// Whether a debit of `amount` is allowed: `posted - held - amount >= -overdraft_limit`.
///
/// # Errors
/// Overflow of the intermediate values.
pub fn can_debit(posted: i64, held: i64, overdraft_limit: i64, amount: Amount) -> Result<bool, Error> {
    let available = sub(posted, held)?;
    let after = sub(available, amount.minor_units())?;
    Ok(after >= overdraft_limit.checked_neg().ok_or(Error::Overflow)?)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn currencies_parse_with_their_exponents() {
        assert_eq!(Currency::parse("EUR").unwrap().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("BHD").unwrap().exponent(), 3);
        assert_eq!(Currency::parse("").unwrap_err(), Error::CurrencyRequired);
        assert_eq!(Currency::parse("eur").unwrap_err(), Error::CurrencyNotSupported);
        assert_eq!(Currency::parse("XXX").unwrap_err(), Error::CurrencyNotSupported);
    }

    #[test]
    fn amounts_are_positive() {
        assert!(Amount::new(1).is_ok());
        assert_eq!(Amount::new(0).unwrap_err(), Error::NotPositive);
        assert_eq!(Amount::new(-5).unwrap_err(), Error::NotPositive);
    }

    #[test]
    fn formatting_uses_the_exponent() {
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(eur.format(100_000), "1000.00");
        assert_eq!(eur.format(-5), "-0.05");
        assert_eq!(Currency::parse("JPY").unwrap().format(500), "500");
        assert_eq!(Currency::parse("BHD").unwrap().format(1500), "1.500");
    }

    #[test]
    fn debits_respect_holds_and_the_overdraft_limit() {
        let twenty = Amount::new(20).unwrap();
        assert!(can_debit(100, 0, 0, twenty).unwrap());
        assert!(!can_debit(100, 90, 0, twenty).unwrap());
        assert!(can_debit(100, 90, 10, twenty).unwrap());
        assert!(
            can_debit(i64::MIN + 10, 0, 0, twenty).is_err()
                || !can_debit(i64::MIN + 10, 0, 0, twenty).unwrap()
        );
    }

    proptest! {
        #[test]
        fn checked_arithmetic_never_wraps(a in any::<i64>(), b in any::<i64>()) {
            match add(a, b) {
                Ok(sum) => prop_assert_eq!(i128::from(sum), i128::from(a) + i128::from(b)),
                Err(e) => prop_assert!(i128::from(a) + i128::from(b) > i128::from(i64::MAX)
                    || i128::from(a) + i128::from(b) < i128::from(i64::MIN), "{e}"),
            }
        }

        #[test]
        fn a_debit_never_leaves_available_below_the_overdraft(
            posted in -1_000_000i64..1_000_000, held in 0i64..1_000_000, limit in 0i64..1_000_000, amount in 1i64..1_000_000,
        ) {
            let ok = can_debit(posted, held, limit, Amount::new(amount).unwrap()).unwrap();
            prop_assert_eq!(ok, posted - held - amount >= -limit);
        }
    }
}
