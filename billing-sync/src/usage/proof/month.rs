//! A calendar month (UTC) as the proof takes it: `YYYY-MM`, and its range of unix seconds.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

/// A calendar month (UTC), written `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    year: i32,
    month: time::Month,
}

impl Month {
    /// The month `t` (unix seconds) falls in.
    pub fn of(t: i64) -> Self {
        let d = OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self {
            year: d.year(),
            month: d.month(),
        }
    }

    /// The current month.
    pub fn current() -> Self {
        Self::of(OffsetDateTime::now_utc().unix_timestamp())
    }

    /// `[first second, first second of the next month)` in unix seconds.
    pub fn range(self) -> (i64, i64) {
        let start = |y: i32, m: time::Month| {
            time::Date::from_calendar_date(y, m, 1)
                .map(|d| d.midnight().assume_utc().unix_timestamp())
                .unwrap_or(0)
        };
        let next_year = self.year + i32::from(self.month == time::Month::December);
        (
            start(self.year, self.month),
            start(next_year, self.month.next()),
        )
    }
}

impl FromStr for Month {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a month: write YYYY-MM (e.g. 2026-05)");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        let month = time::Month::try_from(month).map_err(|_| bad())?;
        Ok(Self { year, month })
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::super::utc;
    use super::*;

    #[test]
    fn months_parse_and_span_their_days() {
        let m: Month = "2026-02".parse().expect("month");
        assert_eq!(m.to_string(), "2026-02");
        let (from, to) = m.range();
        assert_eq!((to - from) / 86_400, 28);
        assert_eq!(utc(from, "T", ":00Z"), "2026-02-01T00:00Z");
        let (from, to) = "2025-12".parse::<Month>().expect("december").range();
        assert_eq!(utc(to, " ", ":00"), "2026-01-01 00:00");
        assert_eq!((to - from) / 86_400, 31);
        assert_eq!(Month::of(from + 5), "2025-12".parse().expect("month"));
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "", "2026-00"] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
    }
}
