//! The correction path, shared by the report run and the reconciliation: per customer-hour, the
//! rollup minus what the ledger covers becomes a new revision (written as pending with its whole
//! value before anything is sent), and every pending revision is sent — same identifier, same
//! value — until Stripe has it. Hours older than the window become unbillable revisions instead.
//!
//! Calls are paced globally (`stripe.max_requests_per_sec`), each customer and meter has at most
//! one call in flight (its revisions go one after the other, in hour order), and 429/5xx/timeouts
//! back off and retry; a revision that still fails stops its customer and meter until the next run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use schemas::rows::BillingUsageRevisionRow;
use serde::Serialize;
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::ledger::{self, Answered, HourLedger, Outcome, State, same};
use super::{Cell, customers, meters, revision_identifier};
use crate::Result;
use crate::billing::Billing;

/// What one run of the correction path did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ReportSummary {
    /// Hours whose first meter event (revision 0) Stripe accepted now.
    pub reported: usize,
    /// Correction meter events (revision ≥ 1, late usage) Stripe accepted now.
    pub corrections: usize,
    /// Meter events Stripe already had (a previous answer was lost).
    pub already_reported: usize,
    /// Meter events left pending for a later run (retries exhausted, refused, or stopped).
    pub failed: usize,
    /// Hours skipped: no Stripe customer for the customer.
    pub no_customer: usize,
    /// Revisions below one whole unit: nothing sent, the fraction carried.
    pub carried: usize,
    /// Customer-hours newly recorded as unbillable (older than Stripe accepts).
    pub unbillable: usize,
    /// Their quantity.
    pub unbillable_quantity: f64,
}

impl ReportSummary {
    /// Adds `o`'s counts.
    pub fn add(&mut self, o: &Self) {
        self.reported += o.reported;
        self.corrections += o.corrections;
        self.already_reported += o.already_reported;
        self.failed += o.failed;
        self.no_customer += o.no_customer;
        self.carried += o.carried;
        self.unbillable += o.unbillable;
        self.unbillable_quantity += o.unbillable_quantity;
    }
}

/// Whole units to send for a rollup difference `delta` with `carry` carried in, and the carry
/// after: ⌊carry + delta⌋ (never negative), the rest carried.
pub fn whole_units(carry: f64, delta: f64) -> (i64, f64) {
    let v = (carry + delta + 1e-9).floor().max(0.0);
    (v as i64, carry + delta - v)
}

/// Why an hour older than the window is unbillable.
pub fn outside_window(billing: &Billing) -> String {
    format!(
        "outside_window: the hour is older than usage.backfill_days = {} (Stripe accepts meter events up to 35 days back)",
        billing.config.usage.backfill_days
    )
}

/// (tenant, customer, meter) of a cell.
type Group = (String, String, String);

fn group(c: &Cell) -> Group {
    (c.0.clone(), c.1.clone(), c.2.clone())
}

/// The rollup of every customer-hour with `from <= hour < to`, for the configured meters.
pub(crate) async fn rollups(billing: &Billing, from: i64, to: i64) -> Result<BTreeMap<Cell, f64>> {
    let keys: Vec<String> = meters(billing).keys().cloned().collect();
    let mut cells = BTreeMap::new();
    for h in billing.store.hour_totals(&keys, from, to).await? {
        *cells
            .entry((h.tenant, h.customer, h.meter, i64::from(h.hour)))
            .or_default() += h.quantity;
    }
    Ok(cells)
}

/// A new revision of `cell`.
#[allow(clippy::too_many_arguments)]
fn revision(
    billing: &Billing,
    cell: &Cell,
    revision: u32,
    stripe_customer: &str,
    event_name: &str,
    quantity: f64,
    value: i64,
    state: State,
    reason: &str,
) -> BillingUsageRevisionRow {
    let (tenant, customer, meter, hour) = cell;
    let identifier = if state == State::Pending {
        revision_identifier(tenant, customer, meter, *hour as u32, revision)
    } else {
        String::new()
    };
    BillingUsageRevisionRow {
        tenant: tenant.clone(),
        customer: customer.clone(),
        meter: meter.clone(),
        hour: OffsetDateTime::from_unix_timestamp(*hour).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        revision,
        identifier,
        stripe_customer_id: stripe_customer.into(),
        event_name: event_name.into(),
        quantity,
        value,
        state: state as u8,
        reason: reason.into(),
        written_at: OffsetDateTime::now_utc(),
        version: billing.next_version(),
    }
}

/// Records, for every customer-hour in `[from, to)` of a customer with a Stripe customer, the
/// rollup the ledger does not cover as an unbillable revision with `reason` (once: the ledger then
/// covers it). Returns the hours and the quantity recorded now.
pub async fn mark_unbillable(
    billing: &Billing,
    from: i64,
    to: i64,
    reason: &str,
) -> Result<(usize, f64)> {
    if to <= from {
        return Ok((0, 0.0));
    }
    let rollup = rollups(billing, from, to).await?;
    let book = ledger::read(billing, from, to).await?;
    let customers = customers(billing).await?;
    let meters = meters(billing);
    // Only the customers this instance owns (see `run`).
    let fence = billing.ownership.fence();
    let mut rows = Vec::new();
    for (cell, r) in &rollup {
        if !fence.holds(&cell.0, &cell.1) {
            continue;
        }
        let Some(stripe_customer) = customers.get(&(cell.0.clone(), cell.1.clone())) else {
            continue;
        };
        let h = book.get(cell).cloned().unwrap_or_default();
        let delta = r - h.covered();
        if delta > 0.0 && !same(*r, h.covered()) {
            let event_name = meters.get(&cell.2).cloned().unwrap_or_default();
            rows.push(revision(
                billing,
                cell,
                h.next_revision(),
                stripe_customer,
                &event_name,
                delta,
                0,
                State::Unbillable,
                reason,
            ));
        }
    }
    ledger::save(billing, &rows).await?;
    let quantity: f64 = rows.iter().map(|r| r.quantity).sum();
    if !rows.is_empty() {
        billing.metrics.usage_unbillable.inc_by(quantity);
        tracing::warn!(
            hours = rows.len(),
            quantity,
            reason,
            "usage recorded as unbillable"
        );
    }
    Ok((rows.len(), quantity))
}

/// Sends one revision. Stripe's "already exists" counts as accepted; "too far in the past" makes
/// it unbillable.
async fn send(billing: &Billing, row: &BillingUsageRevisionRow) -> Result<Answered> {
    let req = CreateBillingMeterEvent::new(
        row.event_name.as_str(),
        HashMap::from([
            (
                "stripe_customer_id".to_string(),
                row.stripe_customer_id.clone(),
            ),
            ("value".to_string(), row.value.to_string()),
        ]),
    )
    .identifier(row.identifier.as_str())
    .timestamp(row.hour.unix_timestamp());
    // A fresh Idempotency-Key per attempt: the identifier is what deduplicates (for 24 hours), and
    // a key Stripe saved a 500 for would replay that 500 to every retry with it.
    let result = billing.stripe.send_fresh("create_meter_event", &req).await;
    let (state, outcome, reason) = match result {
        Ok(_) => (State::Sent, Outcome::Reported, String::new()),
        Err(e) if e.is_duplicate_identifier() => (State::Sent, Outcome::Already, String::new()),
        Err(e) => match e.stripe_code() {
            Some((c, _)) if c == "timestamp_too_far_in_past" => (
                State::Unbillable,
                Outcome::Refused,
                format!("stripe_refused: {c}: Stripe accepts meter events up to 35 days back"),
            ),
            _ => return Err(e),
        },
    };
    Ok(Answered {
        row: ledger::restate(billing, row, state, &reason),
        outcome,
    })
}

/// Plans and sends the corrections of every customer-hour in `[from, to)` (only the cells in
/// `only` when given), stopping early when `cancel` fires. Pending revisions older than
/// [`ledger::RESEND_WITHIN_SECS`] are re-sent only for the cells in `only`. Returns what it did, and with `keep` the
/// revisions Stripe answered.
pub async fn run(
    billing: &Arc<Billing>,
    cancel: &CancellationToken,
    from: i64,
    to: i64,
    only: Option<&BTreeSet<Cell>>,
    keep: bool,
) -> Result<(ReportSummary, Vec<Answered>)> {
    let mut summary = ReportSummary::default();
    if to <= from {
        return Ok((summary, Vec::new()));
    }
    let meters = meters(billing);
    let rollup = rollups(billing, from, to).await?;
    let book = ledger::read(billing, from, to).await?;
    let mut customers = customers(billing).await?;
    // Only the customers this instance owns, while it owns them (crate::ownership): identifiers are
    // deterministic, but a revision's value is what this run read. Two instances planning the same
    // revision of one hour from different rollups would send one identifier with two values:
    // Stripe keeps the first and refuses the second as a duplicate, while the second's ledger entry
    // claims its (larger) value. The fence is checked here and again before each send.
    let fence = billing.ownership.fence();
    let wanted = |c: &Cell| {
        only.is_none_or(|o| o.contains(c)) && meters.contains_key(&c.2) && fence.holds(&c.0, &c.1)
    };
    let cells: BTreeSet<Cell> = rollup
        .keys()
        .chain(book.keys())
        .filter(|c| wanted(c))
        .cloned()
        .collect();
    let short = |c: &Cell| {
        let h = book.get(c);
        let covered = h.map_or(0.0, HourLedger::covered);
        let r = rollup.get(c).copied().unwrap_or(0.0);
        r > covered && !same(r, covered) && h.is_none_or(HourLedger::resendable)
    };
    if billing.config.usage.create_customers {
        for c in cells.iter().filter(|c| short(c)) {
            let k = (c.0.clone(), c.1.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = customers.entry(k) {
                match billing.ensure_customer(&c.0, &c.1).await {
                    Ok(id) => {
                        slot.insert(id);
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %c.0, customer = %c.1, error = %e, "cannot create a Stripe customer for usage")
                    }
                }
            }
        }
    }
    let mut carries = if cells.iter().any(&short) {
        ledger::carries(billing).await?
    } else {
        HashMap::new()
    };
    let mut new_rows = Vec::new();
    let mut to_send: BTreeMap<Group, Vec<BillingUsageRevisionRow>> = BTreeMap::new();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for cell in &cells {
        let h = book.get(cell).cloned().unwrap_or_default();
        let sends = to_send.entry(group(cell)).or_default();
        for row in h.in_state(State::Pending) {
            // The reconciliation passes only cells whose old pending revisions Stripe lacks.
            if only.is_none() && ledger::stale(row, now) {
                tracing::warn!(identifier = %row.identifier, "pending for more than 23 hours: left for the reconciliation to check against Stripe's summary");
                summary.failed += 1;
            } else {
                sends.push(row.clone());
            }
        }
        if !short(cell) {
            continue;
        }
        let Some(stripe_customer) = customers.get(&(cell.0.clone(), cell.1.clone())) else {
            summary.no_customer += 1;
            continue;
        };
        let delta = rollup.get(cell).copied().unwrap_or(0.0) - h.covered();
        let carry = carries.entry(group(cell)).or_default();
        let (value, after) = whole_units(*carry, delta);
        *carry = after;
        let state = if value > 0 {
            State::Pending
        } else {
            State::Sent
        };
        let reason = if value > 0 {
            ""
        } else {
            "carried: below one whole unit"
        };
        let row = revision(
            billing,
            cell,
            h.next_revision(),
            stripe_customer,
            &meters[&cell.2],
            delta,
            value,
            state,
            reason,
        );
        if value > 0 {
            sends.push(row.clone());
        } else {
            summary.carried += 1;
        }
        new_rows.push(row);
    }
    // Every new revision is in the ledger with its value before any is sent.
    ledger::save(billing, &new_rows).await?;
    let permits = Arc::new(Semaphore::new(billing.config.usage.concurrency));
    let (answered, rx) = mpsc::channel::<Answered>(4 * ledger::BATCH);
    let mut tasks: JoinSet<usize> = JoinSet::new();
    for (_, mut rows) in to_send.into_iter().filter(|(_, r)| !r.is_empty()) {
        rows.sort_by_key(|r| (r.hour, r.revision));
        let (billing, permits, cancel, answered) = (
            billing.clone(),
            permits.clone(),
            cancel.clone(),
            answered.clone(),
        );
        let fence = fence.clone();
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return rows.len();
            };
            for (i, row) in rows.iter().enumerate() {
                // Fencing: no send once this instance lost the customer; the next owner re-sends
                // the pending revisions as they are.
                if cancel.is_cancelled() || !fence.holds(&row.tenant, &row.customer) {
                    return rows.len() - i;
                }
                match send(&billing, row).await {
                    // The ledger writer lives until every sender is gone.
                    Ok(a) => drop(answered.send(a).await),
                    Err(e) => {
                        // Later revisions of this customer and meter wait too (keeps order simple).
                        tracing::warn!(identifier = %row.identifier, value = row.value, error = %e, "meter event not accepted; it stays pending and the next run re-sends it");
                        billing
                            .metrics
                            .meter_events_failed
                            .inc_by((rows.len() - i) as u64);
                        return rows.len() - i;
                    }
                }
            }
            0
        });
    }
    drop(answered);
    let senders = async {
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            failed += r.unwrap_or(0);
        }
        failed
    };
    let (failed, (written, kept)) = tokio::join!(senders, ledger::writer(billing, rx, keep));
    summary.add(&written);
    summary.failed += failed;
    Ok((summary, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_carry_the_fraction_forward() {
        assert_eq!(whole_units(0.0, 5.0), (5, 0.0));
        let (v, c) = whole_units(0.0, 2.5);
        assert_eq!((v, c), (2, 0.5));
        let (v, c) = whole_units(c, 2.5);
        assert_eq!((v, c), (3, 0.0));
        let (v, c) = whole_units(0.0, 0.4);
        assert_eq!((v, c), (0, 0.4));
        // Float sums just under a whole number still make it.
        let (v, c) = whole_units(0.1 + 0.2, 0.7);
        assert_eq!(v, 1);
        assert!(c.abs() < 1e-9, "{c}");
        // Never negative: a negative carry waits for more usage.
        assert_eq!(whole_units(-0.5, 0.2).0, 0);
    }

    #[test]
    fn the_units_sent_never_exceed_nor_lose_the_quantity() {
        let deltas = [0.3, 1.7, 2.25, 0.05, 4.0, 0.7, 3.3];
        let mut carry = 0.0;
        let mut sent = 0;
        for d in deltas {
            let (v, c) = whole_units(carry, d);
            sent += v;
            carry = c;
            assert!((0.0..1.0).contains(&(carry + 1e-9)), "{carry}");
        }
        let total: f64 = deltas.iter().sum();
        assert_eq!(sent, total.floor() as i64);
        assert!((total - sent as f64 - carry).abs() < 1e-9);
    }
}
