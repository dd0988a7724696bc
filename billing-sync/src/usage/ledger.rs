//! The usage ledger: revision states, what the ledger holds for each customer-hour, the fraction
//! carried per customer and meter, and the batched writer of the states Stripe's answers lead to.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use schemas::rows::{BillingUsageReportRow, BillingUsageRevisionRow};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::Cell;
use super::corrections::ReportSummary;
use crate::Result;
use crate::billing::Billing;

/// The state of one revision (`billing_usage_revisions.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Written with its value, not yet confirmed by Stripe: re-sent as is until it is.
    Pending = 0,
    /// Stripe accepted it or already had it (value 0: nothing to send, the quantity is carried).
    Sent = 1,
    /// A cancel adjustment for it is on its way.
    Cancelling = 2,
    /// Stripe cancelled it: it no longer counts.
    Cancelled = 3,
    /// Never billed (older than Stripe accepts); `reason` says why.
    Unbillable = 4,
    /// Stripe accepted the call, then its asynchronous validation dropped the event (a meter error
    /// report named its identifier); `reason` holds Stripe's code and message. It does not count:
    /// the hour is short again and the next run re-sends the difference as a new revision, up to
    /// [`MAX_REJECTIONS`] rejections per hour.
    Rejected = 5,
}

/// Rejections per customer-hour after which its difference is no longer re-sent by itself (the
/// cause, such as a deleted Stripe customer, needs a person): it stays in the reconciliation as
/// `rejected` with Stripe's reason.
pub const MAX_REJECTIONS: usize = 2;

impl State {
    /// The state of a stored value (unknown values count as pending: re-sent, never lost).
    pub fn of(v: u8) -> Self {
        match v {
            1 => Self::Sent,
            2 => Self::Cancelling,
            3 => Self::Cancelled,
            4 => Self::Unbillable,
            5 => Self::Rejected,
            _ => Self::Pending,
        }
    }

    /// Whether the revision is (or will be) in Stripe.
    pub fn billable(self) -> bool {
        matches!(self, Self::Pending | Self::Sent | Self::Cancelling)
    }
}

/// Tolerance of quantity comparisons (relative, at least absolute 1e-9).
pub fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// What the ledger holds for one customer-hour.
#[derive(Debug, Default, Clone)]
pub struct HourLedger {
    /// Current state of each revision, by revision.
    pub revisions: Vec<BillingUsageRevisionRow>,
    /// The hour's row in `billing_usage_reports` (revision 0 of hours reported before 0010).
    pub legacy: Option<BillingUsageReportRow>,
}

impl HourLedger {
    /// The legacy row when no revision 0 exists in the revision ledger.
    fn legacy_only(&self) -> Option<&BillingUsageReportRow> {
        self.legacy
            .as_ref()
            .filter(|_| !self.revisions.iter().any(|r| r.revision == 0))
    }

    fn sum(&self, states: &[State], f: impl Fn(&BillingUsageRevisionRow) -> f64) -> f64 {
        self.revisions
            .iter()
            .filter(|r| states.contains(&State::of(r.state)))
            .map(f)
            .sum()
    }

    /// Rollup quantity billed or being billed (pending, sent, cancelling).
    pub fn billable(&self) -> f64 {
        let legacy = self.legacy_only().map_or(0.0, |l| l.quantity);
        legacy
            + self.sum(&[State::Pending, State::Sent, State::Cancelling], |r| {
                r.quantity
            })
    }

    /// Rollup quantity recorded as unbillable.
    pub fn unbillable(&self) -> f64 {
        self.sum(&[State::Unbillable], |r| r.quantity)
    }

    /// Rollup quantity the ledger accounts for (billable and unbillable).
    pub fn covered(&self) -> f64 {
        self.billable() + self.unbillable()
    }

    /// Whole units Stripe accepted (sent and cancelling revisions, and the legacy report).
    pub fn sent(&self) -> f64 {
        let legacy = self.legacy_only().map_or(0.0, |l| l.quantity);
        legacy + self.sum(&[State::Sent, State::Cancelling], |r| r.value as f64)
    }

    /// Whole units written but not yet confirmed by Stripe.
    pub fn pending(&self) -> f64 {
        self.sum(&[State::Pending], |r| r.value as f64)
    }

    /// Revisions in `state`.
    pub fn in_state(&self, state: State) -> impl Iterator<Item = &BillingUsageRevisionRow> {
        self.revisions
            .iter()
            .filter(move |r| State::of(r.state) == state)
    }

    /// The reasons of the unbillable revisions, joined.
    pub fn unbillable_reasons(&self) -> String {
        self.reasons(State::Unbillable)
    }

    /// The reasons of the revisions in `state`, joined.
    pub fn reasons(&self, state: State) -> String {
        let mut reasons: Vec<&str> = self.in_state(state).map(|r| r.reason.as_str()).collect();
        reasons.dedup();
        reasons.join("; ")
    }

    /// Whether the hour's difference may be sent again: fewer than [`MAX_REJECTIONS`] of its
    /// revisions were rejected by Stripe.
    pub fn resendable(&self) -> bool {
        self.in_state(State::Rejected).count() < MAX_REJECTIONS
    }

    /// The next revision number (after every stored one, the legacy report counting as 0).
    pub fn next_revision(&self) -> u32 {
        let stored = self.revisions.iter().map(|r| r.revision + 1).max();
        let legacy = self.legacy.as_ref().map(|_| 1);
        stored.max(legacy).unwrap_or(0)
    }

    /// Replaces (or adds) the state of one revision.
    pub fn apply(&mut self, row: BillingUsageRevisionRow) {
        match self
            .revisions
            .iter_mut()
            .find(|r| r.revision == row.revision)
        {
            Some(r) => *r = row,
            None => {
                self.revisions.push(row);
                self.revisions.sort_by_key(|r| r.revision);
            }
        }
    }
}

fn hour_of(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// The ledger of every customer-hour with `from <= hour < to`.
pub async fn read(billing: &Billing, from: i64, to: i64) -> Result<BTreeMap<Cell, HourLedger>> {
    let mut cells: BTreeMap<Cell, HourLedger> = BTreeMap::new();
    for r in billing.store.revisions(from, to).await? {
        let key = (
            r.tenant.clone(),
            r.customer.clone(),
            r.meter.clone(),
            hour_of(r.hour),
        );
        cells.entry(key).or_default().apply(r);
    }
    for r in billing.store.report_rows(from, to).await? {
        let key = (
            r.tenant.clone(),
            r.customer.clone(),
            r.meter.clone(),
            hour_of(r.hour),
        );
        cells.entry(key).or_default().legacy = Some(r);
    }
    Ok(cells)
}

/// The fraction each (tenant, customer, meter) carries: the quantity its billable revisions cover
/// minus the whole units they send, over the whole ledger.
pub async fn carries(billing: &Billing) -> Result<HashMap<(String, String, String), f64>> {
    let mut carry: HashMap<(String, String, String), f64> = HashMap::new();
    for t in billing.store.state_totals().await? {
        if State::of(t.state).billable() {
            *carry.entry((t.tenant, t.customer, t.meter)).or_default() +=
                t.quantity - t.value as f64;
        }
    }
    Ok(carry)
}

/// `row` in `state` now, with `reason`, under a fresh version.
pub fn restate(
    billing: &Billing,
    row: &BillingUsageRevisionRow,
    state: State,
    reason: &str,
) -> BillingUsageRevisionRow {
    BillingUsageRevisionRow {
        state: state as u8,
        reason: reason.into(),
        written_at: OffsetDateTime::now_utc(),
        version: billing.next_version(),
        ..row.clone()
    }
}

/// How long after it was written a pending revision is re-sent blindly: Stripe deduplicates
/// identifiers "within a rolling period of at least 24 hours" (one hour of margin). An older one is
/// re-sent only once Stripe's summary shows it lacks it (the reconciliation decides).
pub const RESEND_WITHIN_SECS: i64 = 23 * 3_600;

/// Whether a pending revision is too old to be re-sent without checking Stripe's summary.
pub fn stale(row: &BillingUsageRevisionRow, now: i64) -> bool {
    row.written_at.unix_timestamp() < now - RESEND_WITHIN_SECS
}

/// Rows per insert at most.
pub const BATCH: usize = 1_000;
/// How long the first row of a batch waits for more before the insert.
const LINGER: Duration = Duration::from_millis(200);
/// Attempts of one insert.
const ATTEMPTS: u32 = 3;

/// Writes revision states (in inserts of up to 10,000 rows, each retried). An error leaves the
/// rows not yet written for the next run.
pub async fn save(billing: &Billing, rows: &[BillingUsageRevisionRow]) -> Result<()> {
    for chunk in rows.chunks(10_000) {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match billing.store.save_revisions(chunk).await {
                Ok(()) => break,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(rows = chunk.len(), attempt, error = %e, "ledger insert failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// How Stripe answered a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted now.
    Reported,
    /// Stripe already had it (a previous answer was lost).
    Already,
    /// Refused as older than Stripe accepts: now unbillable.
    Refused,
}

/// A revision's new state after Stripe's answer, waiting for the ledger.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The row in its new state.
    pub row: BillingUsageRevisionRow,
    /// Stripe's answer.
    pub outcome: Outcome,
}

/// Writes a batch of answered revisions (and revision 0 to `billing_usage_reports` too) and counts
/// them. Revisions whose row cannot be written stay pending: the next run sends them again with
/// the same identifier and Stripe answers that it has them.
async fn write_batch(billing: &Billing, batch: &mut Vec<Answered>, s: &mut ReportSummary) -> bool {
    let rows: Vec<BillingUsageRevisionRow> = batch.iter().map(|a| a.row.clone()).collect();
    if let Err(e) = save(billing, &rows).await {
        tracing::warn!(rows = rows.len(), error = %e, "ledger insert failed; the next run sends these meter events again");
        s.failed += rows.len();
        billing
            .metrics
            .meter_events_failed
            .inc_by(rows.len() as u64);
        batch.clear();
        return false;
    }
    let legacy: Vec<BillingUsageReportRow> = batch
        .iter()
        .filter(|a| a.row.revision == 0 && a.outcome != Outcome::Refused)
        .map(|a| BillingUsageReportRow {
            tenant: a.row.tenant.clone(),
            customer: a.row.customer.clone(),
            meter: a.row.meter.clone(),
            hour: a.row.hour,
            identifier: a.row.identifier.clone(),
            stripe_customer_id: a.row.stripe_customer_id.clone(),
            event_name: a.row.event_name.clone(),
            quantity: a.row.value as f64,
            reported_at: a.row.written_at,
        })
        .collect();
    if let Err(e) = billing.store.save_reports(&legacy).await {
        // The revision ledger is the record; the report table is its revision-0 view.
        tracing::warn!(rows = legacy.len(), error = %e, "billing_usage_reports insert failed");
    }
    for a in batch.iter() {
        match a.outcome {
            Outcome::Reported if a.row.revision == 0 => s.reported += 1,
            Outcome::Reported => s.corrections += 1,
            Outcome::Already => s.already_reported += 1,
            Outcome::Refused => {
                s.unbillable += 1;
                s.unbillable_quantity += a.row.quantity;
                billing.metrics.usage_unbillable.inc_by(a.row.quantity);
            }
        }
        if a.outcome != Outcome::Refused {
            billing.metrics.meter_events_reported.inc();
            if a.row.revision > 0 {
                billing.metrics.usage_corrections.inc();
            }
        }
    }
    batch.clear();
    true
}

/// Receives answered revisions until every sender is gone and writes them in batches of up to
/// [`BATCH`], each waiting at most [`LINGER`] for more: one insert per batch, not per hour. With
/// `keep`, returns the rows written too.
pub async fn writer(
    billing: &Billing,
    mut rx: mpsc::Receiver<Answered>,
    keep: bool,
) -> (ReportSummary, Vec<Answered>) {
    let mut s = ReportSummary::default();
    let mut kept = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            break;
        }
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        let mut closed = false;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        closed = true;
                        break;
                    }
                }
                () = &mut linger => break,
            }
        }
        let copy = if keep { batch.clone() } else { Vec::new() };
        if write_batch(billing, &mut batch, &mut s).await {
            kept.extend(copy);
        }
        if closed {
            break;
        }
    }
    (s, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(revision: u32, state: State, quantity: f64, value: i64) -> BillingUsageRevisionRow {
        BillingUsageRevisionRow {
            tenant: "t".into(),
            customer: "c".into(),
            meter: "m".into(),
            hour: OffsetDateTime::UNIX_EPOCH,
            revision,
            identifier: format!("t:c:m:0:r{revision}"),
            stripe_customer_id: "cus_1".into(),
            event_name: "m".into(),
            quantity,
            value,
            state: state as u8,
            reason: String::new(),
            written_at: OffsetDateTime::UNIX_EPOCH,
            version: u64::from(revision),
        }
    }

    #[test]
    fn an_hour_counts_each_state_once() {
        let mut h = HourLedger::default();
        h.apply(row(0, State::Sent, 5.0, 5));
        h.apply(row(1, State::Pending, 3.0, 3));
        h.apply(row(2, State::Cancelled, 4.0, 4));
        h.apply(row(3, State::Unbillable, 2.0, 0));
        assert_eq!(
            (h.billable(), h.unbillable(), h.covered()),
            (8.0, 2.0, 10.0)
        );
        assert_eq!((h.sent(), h.pending()), (5.0, 3.0));
        assert_eq!(h.next_revision(), 4);
        h.apply(row(1, State::Sent, 3.0, 3));
        assert_eq!((h.sent(), h.pending()), (8.0, 0.0));
    }

    #[test]
    fn a_legacy_report_is_revision_zero() {
        let mut h = HourLedger {
            legacy: Some(BillingUsageReportRow {
                tenant: "t".into(),
                customer: "c".into(),
                meter: "m".into(),
                hour: OffsetDateTime::UNIX_EPOCH,
                identifier: "t:c:m:0".into(),
                stripe_customer_id: "cus_1".into(),
                event_name: "m".into(),
                quantity: 5.0,
                reported_at: OffsetDateTime::UNIX_EPOCH,
            }),
            ..HourLedger::default()
        };
        assert_eq!((h.covered(), h.sent(), h.next_revision()), (5.0, 5.0, 1));
        // Written again as revision 0 of the revision ledger, it counts once.
        h.apply(row(0, State::Sent, 5.0, 5));
        assert_eq!((h.covered(), h.sent(), h.next_revision()), (5.0, 5.0, 1));
    }
}
