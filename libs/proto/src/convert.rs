//! Conversions between the contracts' well-known types and Rust's: timestamps and money. One
//! implementation for every service (a second copy is a rule waiting to diverge).

use time::OffsetDateTime;

use crate::common::v1::Money;

/// An instant as a protobuf timestamp (nanosecond precision kept).
#[must_use]
pub fn timestamp(at: OffsetDateTime) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or_default(),
    }
}

/// A protobuf timestamp as an instant; `None` when it is not one (nanos outside `0..1e9`, or a
/// second count `time` cannot represent). Callers answer the field's violation.
#[must_use]
pub fn instant(t: &pbjson_types::Timestamp) -> Option<OffsetDateTime> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// `minor_units` of `currency` (an ISO 4217 code) as the contract's `Money`.
#[must_use]
pub fn money(currency: &str, minor_units: i64) -> Money {
    Money { currency: currency.to_owned(), minor_units }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn timestamps_round_trip_and_invalid_ones_are_refused() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(instant(&timestamp(at)), Some(at));
        assert_eq!(instant(&pbjson_types::Timestamp { seconds: 1, nanos: -1 }), None);
        assert_eq!(instant(&pbjson_types::Timestamp { seconds: 1, nanos: 1_000_000_000 }), None);
        assert_eq!(instant(&pbjson_types::Timestamp { seconds: i64::MAX, nanos: 0 }), None);
        assert_eq!(money("EUR", -5), Money { currency: "EUR".into(), minor_units: -5 });
    }
}
