//! Page requests (`bank.common.v1.PageRequest`) parsed once, the same way in every service.
//!
//! Page tokens are opaque to clients: base64url of `"<kind>:<position>"`, where `kind` names what
//! the position means (an offset, a keyset sequence). A token of another kind, or one that does not
//! decode, answers `VALIDATION_FAILED` on `page.page_token`.

use base64::Engine as _;

use crate::{FieldViolation, ServiceError};

/// A parsed page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Where to start (meaning depends on the token kind; 0 for the first page).
    pub position: i64,
    /// How many items.
    pub size: i64,
}

impl Page {
    /// Parses `page_size` (0 = `default`, above `max` clamped, negative refused) and `page_token`
    /// of `kind`.
    ///
    /// # Errors
    /// A negative size or a malformed, foreign or tampered token.
    pub fn parse(
        page_size: i32,
        page_token: &str,
        kind: &str,
        default: i64,
        max: i64,
    ) -> Result<Self, ServiceError> {
        let size = match page_size {
            0 => default,
            n if n < 0 => {
                return Err(ServiceError::invalid(vec![FieldViolation::new(
                    "page.page_size",
                    "NEGATIVE",
                    "page_size must not be negative",
                )]));
            }
            n => i64::from(n).min(max),
        };
        let position = if page_token.is_empty() { 0 } else { decode(page_token, kind)? };
        Ok(Self { position, size })
    }

    /// The token for the page after this one, given where it starts; empty when `fetched` is short
    /// of a full page.
    #[must_use]
    pub fn next_token(&self, kind: &str, fetched: usize, next_position: i64) -> String {
        if i64::try_from(fetched).unwrap_or(i64::MAX) < self.size {
            String::new()
        } else {
            encode(kind, next_position)
        }
    }
}

/// A page token of `kind` at `position`.
#[must_use]
pub fn encode(kind: &str, position: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{position}"))
}

fn decode(token: &str, kind: &str) -> Result<i64, ServiceError> {
    let invalid = || {
        ServiceError::invalid(vec![FieldViolation::new(
            "page.page_token",
            "INVALID",
            "page_token is not valid here",
        )])
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let (found, position) = text.split_once(':').ok_or_else(invalid)?;
    if found != kind {
        return Err(invalid());
    }
    position.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(Page::parse(0, "", "o", 50, 200).unwrap(), Page { position: 0, size: 50 });
        assert_eq!(Page::parse(1000, "", "o", 50, 200).unwrap().size, 200);
        assert!(Page::parse(-1, "", "o", 50, 200).is_err());
    }

    #[test]
    fn tokens_round_trip_and_foreign_or_tampered_ones_are_refused() {
        let page = Page::parse(10, "", "o", 50, 200).unwrap();
        let next = page.next_token("o", 10, 10);
        assert_eq!(Page::parse(10, &next, "o", 50, 200).unwrap().position, 10);
        assert_eq!(page.next_token("o", 9, 9), "", "a short page is the last");
        assert!(Page::parse(10, &next, "seq", 50, 200).is_err(), "another kind");
        assert!(Page::parse(10, "not-a-token!", "o", 50, 200).is_err());
        assert!(Page::parse(10, &encode("o", -5), "o", 50, 200).is_err());
    }
}
