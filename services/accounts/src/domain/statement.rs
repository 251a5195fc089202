//! Statement periods and ids (docs/adr/0013): a statement covers one calendar month in UTC,
//! `[first day 00:00, first day of the next month 00:00)`. Statements are computed on demand from
//! the ledger's journal, so they are never stored and never go stale; their id is derived from the
//! account and the month, so the same statement always has the same id.

use sha2::{Digest as _, Sha256};
use time::{Date, Month, OffsetDateTime, Time};
use uuid::Uuid;

/// One calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    year: i32,
    month: Month,
}

impl Period {
    /// The month containing `at` (in UTC).
    #[must_use]
    pub fn containing(at: OffsetDateTime) -> Self {
        let at = at.to_offset(time::UtcOffset::UTC);
        Self { year: at.year(), month: at.month() }
    }

    /// The month of `year`/`month` (1-12), if valid.
    #[must_use]
    pub fn new(year: i32, month: u8) -> Option<Self> {
        let month = Month::try_from(month).ok()?;
        (1970..=9998).contains(&year).then_some(Self { year, month })
    }

    /// A dense index (months since year 0), used as the page position.
    #[must_use]
    pub fn index(self) -> i64 {
        i64::from(self.year) * 12 + i64::from(u8::from(self.month)) - 1
    }

    /// The month of a dense index.
    #[must_use]
    pub fn from_index(index: i64) -> Option<Self> {
        let year = i32::try_from(index.div_euclid(12)).ok()?;
        let month = u8::try_from(index.rem_euclid(12) + 1).ok()?;
        Self::new(year, month)
    }

    /// The month before.
    #[must_use]
    pub fn previous(self) -> Option<Self> {
        Self::from_index(self.index() - 1)
    }

    /// The month after.
    #[must_use]
    pub fn next(self) -> Option<Self> {
        Self::from_index(self.index() + 1)
    }

    /// Inclusive start: the first day at 00:00 UTC.
    #[must_use]
    pub fn start(self) -> OffsetDateTime {
        Date::from_calendar_date(self.year, self.month, 1)
            .map_or(OffsetDateTime::UNIX_EPOCH, |d| d.with_time(Time::MIDNIGHT).assume_utc())
    }

    /// Exclusive end: the start of the next month.
    #[must_use]
    pub fn end(self) -> OffsetDateTime {
        self.next().map_or(OffsetDateTime::UNIX_EPOCH, Self::start)
    }

    /// `YYYY-MM`.
    #[must_use]
    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, u8::from(self.month))
    }

    /// The statement id of this month for `account_id`: a version-8 UUID whose last three bytes
    /// carry the month and whose other bits are a SHA-256 of account and month.
    #[must_use]
    pub fn statement_id(self, account_id: Uuid) -> Uuid {
        let digest = Sha256::digest(format!("bankmesh-statement|{account_id}|{}", self.label()));
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let [_, _, hi, lo] = self.year.to_be_bytes();
        bytes[13] = hi;
        bytes[14] = lo;
        bytes[15] = u8::from(self.month);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// The month of a statement id of `account_id`, if it is one (ids of other accounts or made-up
    /// ids answer `None`).
    #[must_use]
    pub fn of_statement(account_id: Uuid, statement_id: Uuid) -> Option<Self> {
        let bytes = statement_id.as_bytes();
        let year = i32::from(u16::from_be_bytes([bytes[13], bytes[14]]));
        let period = Self::new(year, bytes[15])?;
        (period.statement_id(account_id) == statement_id).then_some(period)
    }
}

/// The months an account has statements for, newest first: from the month it opened to the
/// current month (or the month it closed), starting at `before` (exclusive) when paging.
#[must_use]
pub fn periods(
    opened_at: OffsetDateTime,
    closed_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
    before: Option<Period>,
    limit: usize,
) -> Vec<Period> {
    let first = Period::containing(opened_at);
    let mut last = Period::containing(closed_at.unwrap_or(now).min(now));
    if let Some(before) = before {
        match before.previous() {
            Some(p) if p < last => last = p,
            Some(_) => {}
            None => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    let mut current = Some(last);
    while let Some(period) = current {
        if period < first || out.len() >= limit {
            break;
        }
        out.push(period);
        current = period.previous();
    }
    out
}

/// Whether `period` is one of the account's statement months.
#[must_use]
pub fn has_statement(
    period: Period,
    opened_at: OffsetDateTime,
    closed_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> bool {
    period >= Period::containing(opened_at) && period <= Period::containing(closed_at.unwrap_or(now).min(now))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn months_are_utc_calendar_months() {
        let p = Period::containing(datetime!(2026-10-31 23:30 -02:00));
        assert_eq!(p.label(), "2026-11", "01:30 UTC on the 1st of November");
        assert_eq!(p.start(), datetime!(2026-11-01 0:00 UTC));
        assert_eq!(p.end(), datetime!(2026-12-01 0:00 UTC));
        let december = Period::new(2026, 12).unwrap();
        assert_eq!(december.end(), datetime!(2027-01-01 0:00 UTC));
        assert_eq!(Period::from_index(december.index()), Some(december));
    }

    #[test]
    fn statement_ids_round_trip_only_for_their_account() {
        let account = Uuid::now_v7();
        let period = Period::new(2026, 3).unwrap();
        let id = period.statement_id(account);
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(Period::of_statement(account, id), Some(period));
        assert_eq!(Period::of_statement(Uuid::now_v7(), id), None, "another account's id");
        assert_eq!(Period::of_statement(account, Uuid::now_v7()), None);
    }

    #[test]
    fn periods_run_from_opening_to_now_newest_first_and_page() {
        let opened = datetime!(2026-01-15 10:00 UTC);
        let now = datetime!(2026-04-02 8:00 UTC);
        let all: Vec<String> = periods(opened, None, now, None, 24).iter().map(|p| p.label()).collect();
        assert_eq!(all, ["2026-04", "2026-03", "2026-02", "2026-01"]);
        let first = periods(opened, None, now, None, 2);
        let rest = periods(opened, None, now, first.last().copied(), 2);
        assert_eq!(rest.iter().map(|p| p.label()).collect::<Vec<_>>(), ["2026-02", "2026-01"]);
        let closed = periods(opened, Some(datetime!(2026-02-10 0:00 UTC)), now, None, 24);
        assert_eq!(closed.len(), 2);
        assert!(!has_statement(Period::new(2025, 12).unwrap(), opened, None, now));
        assert!(has_statement(Period::new(2026, 4).unwrap(), opened, None, now));
        assert!(!has_statement(Period::new(2026, 5).unwrap(), opened, None, now));
    }
}
