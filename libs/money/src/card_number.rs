//! Card numbers (PANs) in free text: the Luhn check, and the one masking every service applies
//! to what people type before it is stored, put in an event, mailed or logged (PCI DSS 3.5.1:
//! a PAN is unreadable wherever it is stored).
//!
//! What counts as a card number: 13 to 19 digits that pass the Luhn check, written contiguously
//! or in groups separated by single spaces or dashes (`4111111111111111`, `4111 1111 1111 1111`,
//! `3782-822463-10005`). Inside a longer run of groups (`pay 100 4111 1111 1111 1111`) every
//! window that starts and ends on a group boundary is tried, so a number typed next to another
//! one is still found. A single unbroken run of more than 19 digits is not a card number (no
//! PAN is that long).
//!
//! [`mask_card_numbers`] keeps the last four digits and the separators and replaces every other
//! digit of a card number with `*`: `**** **** **** 1111`. It errs on the side of masking: one
//! random 16-digit number in ten passes Luhn, and a reference number masked by mistake costs far
//! less than a PAN kept. Where masking would change what a field means (a merchant id, an
//! acquirer reference) refuse the field instead, with [`contains_card_number`] and the
//! [`VIOLATION_CODE`] field-violation code.

use std::borrow::Cow;
use std::ops::Range;

/// The field-violation code for a field refused because it holds a card number.
pub const VIOLATION_CODE: &str = "CONTAINS_CARD_NUMBER";

/// The shortest and longest card numbers (ISO/IEC 7812).
const PAN_DIGITS: Range<usize> = 13..20;

/// The character a masked digit becomes.
pub const MASK: char = '*';

/// The Luhn check digit that completes `payload` (digit values 0-9, without the check digit).
#[must_use]
pub fn luhn_check_digit(payload: &[u8]) -> u8 {
    let sum: u32 = payload
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    u8::try_from((10 - sum % 10) % 10).unwrap_or(0)
}

/// Whether a string of ASCII digits passes the Luhn check (false for anything but digits).
#[must_use]
pub fn luhn_valid(digits: &str) -> bool {
    let values: Vec<u8> = digits.bytes().map(|b| b.wrapping_sub(b'0')).collect();
    luhn_valid_values(&values)
}

fn luhn_valid_values(values: &[u8]) -> bool {
    if values.len() < 2 || values.iter().any(|d| *d > 9) {
        return false;
    }
    let (payload, check) = values.split_at(values.len() - 1);
    luhn_check_digit(payload) == check[0]
}

/// Whether `text` holds a card number anywhere.
#[must_use]
pub fn contains_card_number(text: &str) -> bool {
    !card_numbers(text).is_empty()
}

/// `text` with every card number masked to its last four digits (separators kept); borrowed,
/// untouched, when it holds none.
#[must_use]
pub fn mask_card_numbers(text: &str) -> Cow<'_, str> {
    let found = card_numbers(text);
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut masked = String::with_capacity(text.len());
    let mut last = 0;
    for number in found {
        masked.push_str(&text[last..number.start]);
        let span = &text[number.clone()];
        let digits = span.bytes().filter(u8::is_ascii_digit).count();
        let mut seen = 0;
        for c in span.chars() {
            if c.is_ascii_digit() {
                seen += 1;
                masked.push(if seen > digits - 4 { c } else { MASK });
            } else {
                masked.push(c);
            }
        }
        last = number.end;
    }
    masked.push_str(&text[last..]);
    Cow::Owned(masked)
}

/// [`mask_card_numbers`] of an owned string, without a copy when there is nothing to mask.
#[must_use]
pub fn masked(text: String) -> String {
    match mask_card_numbers(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(masked) => masked,
    }
}

/// The byte ranges of the card numbers in `text`, in order, not overlapping.
fn card_numbers(text: &str) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    for run in digit_runs(text.as_bytes()) {
        let mut i = 0;
        while i < run.len() {
            // The longest Luhn-valid window of whole groups starting at group i.
            let mut values: Vec<u8> = Vec::with_capacity(PAN_DIGITS.end);
            let mut best = None;
            for (j, group) in run.iter().enumerate().skip(i) {
                values.extend(text.as_bytes()[group.clone()].iter().map(|b| b - b'0'));
                if values.len() >= PAN_DIGITS.end {
                    break;
                }
                if PAN_DIGITS.contains(&values.len()) && luhn_valid_values(&values) {
                    best = Some(j);
                }
            }
            match best {
                Some(j) => {
                    found.push(run[i].start..run[j].end);
                    i = j + 1;
                }
                None => i += 1,
            }
        }
    }
    found
}

/// Groups of ASCII digits, grouped into runs: the groups of a run are joined by exactly one
/// space or dash.
fn digit_runs(bytes: &[u8]) -> Vec<Vec<Range<usize>>> {
    let mut runs: Vec<Vec<Range<usize>>> = Vec::new();
    let mut current: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let joined = current
            .last()
            .is_some_and(|previous| previous.end + 1 == start && matches!(bytes[previous.end], b' ' | b'-'));
        if !joined && !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
        current.push(start..i);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_matches_known_numbers() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("41111111x1111111"));
        assert!(!luhn_valid(""));
    }

    #[test]
    fn plain_spaced_and_dashed_numbers_are_masked_to_the_last_four() {
        assert_eq!(mask_card_numbers("4111111111111111"), "************1111");
        assert_eq!(mask_card_numbers("card 4111 1111 1111 1111 thanks"), "card **** **** **** 1111 thanks");
        assert_eq!(mask_card_numbers("4111-1111-1111-1111."), "****-****-****-1111.");
        // Amex 4-6-5, a 19-digit number, one glued to letters.
        assert_eq!(mask_card_numbers("3782 822463 10005"), "**** ****** *0005");
        assert_eq!(mask_card_numbers("6011000990139424"), "************9424");
        assert_eq!(mask_card_numbers("ref4111111111111111x"), "ref************1111x");
    }

    #[test]
    fn a_number_beside_other_digits_is_still_found() {
        assert_eq!(mask_card_numbers("pay 100 4111 1111 1111 1111"), "pay 100 **** **** **** 1111");
        assert_eq!(
            mask_card_numbers("4111111111111111 and 5500-0000-0000-0004"),
            "************1111 and ****-****-****-0004"
        );
    }

    #[test]
    fn text_without_card_numbers_is_untouched_and_borrowed() {
        for text in [
            "rent for March",
            "4111111111111112",
            "invoice 2026-12-04 #12345",
            "12345678901234567890123",
            "DE89 3704 0044 0532 0130 00",
            "",
        ] {
            assert!(matches!(mask_card_numbers(text), Cow::Borrowed(_)), "{text}");
            assert!(!contains_card_number(text), "{text}");
        }
    }

    #[test]
    fn unicode_around_a_number_survives() {
        assert_eq!(mask_card_numbers("für 4111 1111 1111 1111 ✓"), "für **** **** **** 1111 ✓");
        assert_eq!(masked("Miete".to_owned()), "Miete");
        assert!(contains_card_number("€ 4111111111111111"));
    }

    #[test]
    fn double_separators_split_a_number() {
        // Two spaces are not a group separator: neither half is a card number.
        assert_eq!(mask_card_numbers("4111 1111  1111 1111"), "4111 1111  1111 1111");
    }
}
