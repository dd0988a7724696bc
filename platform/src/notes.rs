//! The `usage-notes` header of a batch message: what the quota view counts of each of its events
//! (tenant, customer, id, meter, quantity, day, arrival), written by the producing ingest from the
//! events it checked, so that the other instances' tails count a batch without parsing and checking
//! its JSON again.
//!
//! Every instance reads every other instance's batches (that is what bounds the overshoot across
//! instances), so the tail's cost per event is paid once per other instance. Reading the JSON was
//! most of it: the split, the parse and the checks were about seven tenths of the tail's samples.
//!
//! Format (all integers little-endian): version `1`; the number of notes (`u32`); per note the
//! tenant, customer, id and meter (each a `u16` length and UTF-8 bytes), the quantity (a byte `0`
//! for none, or `1` and an `f64`), the day (`i32` Julian day) and the arrival (`i64` Unix
//! nanoseconds). A header that does not read back exactly (another version, a short or long
//! value, invalid UTF-8, an impossible date) is ignored and the batch is read from its JSON, as a
//! batch without the header (from an older ingest) is.

use schemas::Catalog;
use schemas::catalog::Aggregation;
use time::{Date, OffsetDateTime};

/// An accepted event as the quota view counts it.
#[derive(Debug, Clone, Copy)]
pub struct Noted<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Customer.
    pub customer: &'a str,
    /// Event id (a retry with the same id counts once).
    pub id: &'a str,
    /// Meter key.
    pub meter: &'a str,
    /// What it adds to the meter's quota usage (`None`: nothing, e.g. unique counts).
    pub quantity: Option<f64>,
    /// Day of the event time.
    pub day: Date,
    /// When the ingest accepted it.
    pub received_at: OffsetDateTime,
}

impl<'a> Noted<'a> {
    /// An owned event's parts.
    pub fn of_event(e: &'a schemas::UsageEvent, catalog: &Catalog) -> Self {
        Self {
            tenant: &e.tenant,
            customer: &e.customer,
            id: &e.id,
            meter: &e.meter,
            quantity: catalog.quantity_of(&e.meter, &e.data),
            day: e.time.date(),
            received_at: e.receivedat,
        }
    }

    /// A fast-path event's parts (the same quantity as [`Catalog::quantity_of`]: the measured
    /// value, none for unique counts).
    pub fn of_checked(e: &'a schemas::wire::Checked<'_>) -> Self {
        let counted = e.measure.aggregation != Aggregation::UniqueCount;
        Self {
            tenant: e.tenant,
            customer: e.customer,
            id: e.id,
            meter: e.meter,
            quantity: counted.then_some(e.measure.quantity),
            day: e.time.date(),
            received_at: e.receivedat,
        }
    }
}

/// The header's name.
pub const NOTES_HEADER: &str = "usage-notes";

const VERSION: u8 = 1;

/// Appends the notes of `notes` (each event of one batch message, in order) to `out`. Appends
/// nothing if a field does not fit its 16-bit length (the intake's limits keep every one far
/// below): the batch is then read from its JSON.
pub fn encode<'a>(notes: impl ExactSizeIterator<Item = Noted<'a>>, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(VERSION);
    out.extend_from_slice(&(notes.len() as u32).to_le_bytes());
    for n in notes {
        for s in [n.tenant, n.customer, n.id, n.meter] {
            let Ok(len) = u16::try_from(s.len()) else {
                out.truncate(start);
                return;
            };
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        match n.quantity {
            None => out.push(0),
            Some(q) => {
                out.push(1);
                out.extend_from_slice(&q.to_le_bytes());
            }
        }
        out.extend_from_slice(&n.day.to_julian_day().to_le_bytes());
        let nanos = i64::try_from(n.received_at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        out.extend_from_slice(&nanos.to_le_bytes());
    }
}

/// The notes of a header, or `None` if it does not read back exactly.
pub fn decode(bytes: &[u8]) -> Option<Vec<Noted<'_>>> {
    let mut r = Reader(bytes);
    if r.take(1)?[0] != VERSION {
        return None;
    }
    let count = u32::from_le_bytes(r.array()?) as usize;
    // Each note takes at least 21 bytes: no count can claim more notes than the header holds.
    if count > bytes.len() / 21 {
        return None;
    }
    let mut notes = Vec::with_capacity(count);
    for _ in 0..count {
        let tenant = r.str()?;
        let customer = r.str()?;
        let id = r.str()?;
        let meter = r.str()?;
        let quantity = match r.take(1)?[0] {
            0 => None,
            1 => Some(f64::from_le_bytes(r.array()?)),
            _ => return None,
        };
        let day = Date::from_julian_day(i32::from_le_bytes(r.array()?)).ok()?;
        let nanos = i64::from_le_bytes(r.array()?);
        let received_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).ok()?;
        notes.push(Noted {
            tenant,
            customer,
            id,
            meter,
            quantity,
            day,
            received_at,
        });
    }
    r.0.is_empty().then_some(notes)
}

/// The unread rest of a header.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_le_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn noted<'a>(customer: &'a str, id: &'a str, quantity: Option<f64>) -> Noted<'a> {
        let at = datetime!(2026-03-10 12:00:00.123456789 UTC);
        Noted {
            tenant: "t",
            customer,
            id,
            meter: "api_call",
            quantity,
            day: at.date().previous_day().expect("a day"),
            received_at: at,
        }
    }

    fn same(a: &Noted<'_>, b: &Noted<'_>) -> bool {
        (a.tenant, a.customer, a.id, a.meter, a.day, a.received_at)
            == (b.tenant, b.customer, b.id, b.meter, b.day, b.received_at)
            && a.quantity.map(f64::to_bits) == b.quantity.map(f64::to_bits)
    }

    #[test]
    fn notes_read_back_as_written() {
        let notes = [
            noted("cust_1", "e1", Some(1.0)),
            noted("ünïcode \"quoted\"", "e\\2", Some(0.25)),
            noted("cust_3", "", None),
        ];
        let mut out = Vec::new();
        encode(notes.iter().copied(), &mut out);
        let back = decode(&out).expect("reads back");
        assert_eq!(back.len(), notes.len());
        for (a, b) in notes.iter().zip(&back) {
            assert!(same(a, b), "{a:?} came back as {b:?}");
        }
    }

    #[test]
    fn a_field_too_long_for_its_length_leaves_no_header() {
        let long = "x".repeat(usize::from(u16::MAX) + 1);
        let mut out = vec![7];
        encode(
            [noted("c", "e1", None), noted("c", &long, None)].into_iter(),
            &mut out,
        );
        assert_eq!(out, [7], "nothing appended");
    }

    #[test]
    fn a_header_that_does_not_read_back_exactly_is_refused() {
        let mut out = Vec::new();
        encode([noted("c", "e1", Some(2.0))].into_iter(), &mut out);
        assert!(decode(&out).is_some());
        // Every truncation, an extra byte, another version, a claimed count it does not hold.
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        let mut other = out.clone();
        other[0] = 2;
        assert!(decode(&other).is_none());
        let mut claims = out.clone();
        claims[1..5].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(decode(&claims).is_none());
        // Invalid UTF-8 in the customer (its length is at 1 + 4 + 2 + 1 ("t"), its byte after).
        let mut bad = out;
        bad[1 + 4 + 2 + 1 + 2] = 0xff;
        assert!(decode(&bad).is_none());
    }
}
