//! Usage reconciliation that heals: per customer-hour, the rollup, the ledger and Stripe's hourly
//! meter event summaries are compared; what is missing goes through the correction path (so it is
//! exactly-once too), over-reports are cancelled where Stripe's adjustments apply ([`super::cancel`]),
//! usage older than the window is recorded and listed as unbillable, and every difference is listed
//! with a verdict. A difference that stays sets the `usage_differences` gauge and logs an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use schemas::rows::BillingUsageDifferenceRow;
use serde::Serialize;
use stripe_billing::billing_meter::ListBillingMeter;
use stripe_billing::billing_meter_event_summary::{
    ListIdBillingMeterEventSummary, ListIdBillingMeterEventSummaryValueGroupingWindow,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::cancel::over_report;
use super::corrections::{ReportSummary, mark_unbillable, outside_window, rollups, run};
use super::ledger::{self, HourLedger, Outcome, State, same};
use super::{Cell, customers, hour_start, meters, window};
use crate::Result;
use crate::billing::Billing;

/// How far before the window the reconciliation looks for unbillable usage.
const LOOKBACK_SECS: i64 = 35 * 86_400;

/// One customer-hour that disagreed, or holds unbillable usage.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Difference {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hour start (unix s).
    pub hour: i64,
    /// Quantity in the rollup.
    pub rollup: f64,
    /// Quantity the ledger bills (pending, sent and cancelling revisions; unbillable apart).
    pub reported: f64,
    /// Quantity in Stripe's summary, with what this check sent and cancelled.
    pub stripe: f64,
    /// Whole units Stripe accepted, per the ledger.
    pub sent: f64,
    /// Whole units written but not accepted yet.
    pub pending: f64,
    /// Quantity recorded as unbillable.
    pub unbillable: f64,
    /// Whole units this check sent (first reports, corrections, pending ones re-sent).
    pub corrected: f64,
    /// Whole units this check cancelled.
    pub cancelled: f64,
    /// `healed`, `unbillable`, `pending`, `settling` (Stripe's summary lags a recent send),
    /// `under_report`, `over_report`, `rejected` (Stripe dropped the hour's meter events twice) or
    /// `stripe_mismatch`.
    pub verdict: String,
    /// Why it stays (empty when healed).
    pub reason: String,
}

/// The result of a usage reconciliation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    /// Window start (unix s).
    pub from: i64,
    /// Window end (unix s, exclusive).
    pub to: i64,
    /// (customer, meter) pairs compared.
    pub checked: usize,
    /// Hours compared.
    pub hours: usize,
    /// Hours that disagreed (healed or not) or hold unbillable usage.
    pub differences: Vec<Difference>,
    /// Differences this check fixed.
    pub healed: usize,
    /// Differences that stay (not counting unbillable hours).
    pub unresolved: usize,
    /// Hours with unbillable usage, in the window and the 35 days before it.
    pub unbillable_hours: usize,
    /// Their unbillable quantity.
    pub unbillable_quantity: f64,
    /// What the healing sent.
    pub sent: ReportSummary,
}

/// Stripe's active meters: event name → meter id.
pub(crate) async fn meter_ids(billing: &Billing) -> Result<HashMap<String, String>> {
    let mut ids = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = ListBillingMeter::new().limit(100);
        if let Some(a) = &after {
            req = req.starting_after(a.as_str());
        }
        let page = billing.stripe.send("list_meters", &req, None).await?;
        for m in &page.data {
            if m.status.as_str() == "active" {
                ids.insert(m.event_name.clone(), m.id.as_str().to_string());
            }
        }
        match (page.has_more, page.data.last()) {
            (true, Some(last)) => after = Some(last.id.as_str().to_string()),
            _ => break,
        }
    }
    Ok(ids)
}

/// Stripe's hourly summaries of one (customer, meter) over `[from, to)`, non-zero ones.
pub(crate) async fn summaries(
    billing: &Billing,
    meter_id: &str,
    stripe_customer: &str,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, f64)>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = ListIdBillingMeterEventSummary::new(meter_id, stripe_customer, to, from)
            .value_grouping_window(ListIdBillingMeterEventSummaryValueGroupingWindow::Hour)
            .limit(100);
        if let Some(a) = &after {
            req = req.starting_after(a.as_str());
        }
        let page = billing
            .stripe
            .send("list_meter_event_summaries", &req, None)
            .await?;
        out.extend(
            page.data
                .iter()
                .filter(|s| s.aggregated_value != 0.0)
                .map(|s| (s.start_time, s.aggregated_value)),
        );
        match (page.has_more, page.data.last()) {
            (true, Some(last)) => after = Some(last.id.as_str().to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// Whether an hour agrees: the ledger covers the rollup, Stripe holds what it accepted, and
/// nothing is pending.
pub(crate) fn agrees(rollup: f64, h: &HourLedger, stripe: f64) -> bool {
    same(rollup, h.covered()) && same(stripe, h.sent()) && h.pending() == 0.0
}

/// Whether Stripe's summary may still catch up with what was sent: it holds less than the ledger's
/// sent units, nothing else is off, and the hour's latest accepted revision is younger than
/// `settle_secs` (Stripe's summaries lag recent meter events).
pub(crate) fn settling(
    rollup: f64,
    h: &HourLedger,
    stripe: f64,
    now: i64,
    settle_secs: u64,
) -> bool {
    let newest = h
        .in_state(State::Sent)
        .map(|r| r.written_at.unix_timestamp())
        .max();
    stripe < h.sent()
        && !same(stripe, h.sent())
        && same(rollup, h.covered())
        && h.pending() == 0.0
        && newest.is_some_and(|t| t > now - settle_secs as i64)
}

/// The reason of a `settling` hour.
pub(crate) fn settling_reason(h: &HourLedger, stripe: f64, settle_secs: u64) -> String {
    format!(
        "Stripe's summary holds {} of the {} units it accepted less than usage.summary_settle_secs = {settle_secs} s ago: it processes meter events asynchronously; checked again by the next reconciliation",
        stripe,
        h.sent()
    )
}

/// The verdict and reason of an hour whose difference stays.
pub(crate) fn unresolved(
    rollup: f64,
    h: &HourLedger,
    stripe: f64,
    cancel_reason: &str,
) -> (String, String) {
    let (verdict, reason) = if h.pending() > 0.0 {
        (
            "pending",
            "meter events not accepted by Stripe yet (see the log); the next run re-sends them"
                .into(),
        )
    } else if rollup > h.covered() && !same(rollup, h.covered()) && !h.resendable() {
        (
            "rejected",
            format!(
                "Stripe dropped this hour's meter events {} times (not re-sent again by itself): {}",
                h.in_state(State::Rejected).count(),
                h.reasons(State::Rejected)
            ),
        )
    } else if rollup > h.covered() && !same(rollup, h.covered()) {
        (
            "under_report",
            "the difference could not be planned (see the log); the next run tries again".into(),
        )
    } else if h.billable() > rollup && !same(h.billable(), rollup) {
        ("over_report", cancel_reason.to_string())
    } else if stripe > h.sent() {
        (
            "over_report",
            format!(
                "Stripe holds {} more than billing-sync sent: meter events it did not send cannot be cancelled by identifier",
                stripe - h.sent()
            ),
        )
    } else {
        (
            "stripe_mismatch",
            format!(
                "Stripe's summary holds {} less than the meter events it accepted (processing lag, or events cancelled outside billing-sync)",
                h.sent() - stripe
            ),
        )
    };
    (verdict.to_string(), reason)
}

/// Reconciles, per closed hour in `[from, to)` (within the window), the rollup, the ledger and
/// Stripe's hourly meter event summaries for every customer with a Stripe customer; heals what it
/// can, records unbillable usage of the 35 days before the window, stores and returns the
/// differences.
pub async fn reconcile(
    billing: &Arc<Billing>,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Reconciliation> {
    let _run = billing.usage_runs.lock().await;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (wf, wt) = window(billing, now);
    let (asked_from, asked_to) = (from.unwrap_or(wf - LOOKBACK_SECS), to.unwrap_or(wt));
    let from = hour_start(asked_from.max(wf));
    let to = hour_start(asked_to.min(wt));
    let (old_from, old_to) = (
        hour_start(asked_from.max(wf - LOOKBACK_SECS)),
        hour_start(asked_to.min(wf)),
    );
    mark_unbillable(billing, old_from, old_to, &outside_window(billing)).await?;
    let meters = meters(billing);
    let ids = meter_ids(billing).await?;
    let customers = customers(billing).await?;
    let rollup = rollups(billing, from, to).await?;
    let mut book = ledger::read(billing, from, to).await?;
    let mut stripe: BTreeMap<Cell, f64> = BTreeMap::new();
    // Only the customers this instance owns (crate::ownership; see corrections::run for why).
    let fence = billing.ownership.fence();
    let mapped =
        |c: &Cell| customers.contains_key(&(c.0.clone(), c.1.clone())) && fence.holds(&c.0, &c.1);
    let pairs: BTreeSet<(String, String, String)> = rollup
        .keys()
        .chain(book.keys())
        .map(|(t, c, m, _)| (t.clone(), c.clone(), m.clone()))
        .collect();
    let mut checked = 0;
    if to > from {
        for (tenant, customer, meter) in &pairs {
            if !fence.holds(tenant, customer) {
                continue;
            }
            let (Some(stripe_customer), Some(meter_id)) = (
                customers.get(&(tenant.clone(), customer.clone())),
                meters.get(meter).and_then(|e| ids.get(e)),
            ) else {
                continue;
            };
            checked += 1;
            for (hour, v) in summaries(billing, meter_id, stripe_customer, from, to).await? {
                *stripe
                    .entry((tenant.clone(), customer.clone(), meter.clone(), hour))
                    .or_default() += v;
            }
        }
    }
    let cells: BTreeSet<Cell> = rollup
        .keys()
        .chain(book.keys())
        .chain(stripe.keys())
        .cloned()
        .collect();
    let hours = cells.len();
    let value = |m: &BTreeMap<Cell, f64>, c: &Cell| m.get(c).copied().unwrap_or(0.0);
    let before: BTreeSet<Cell> = cells
        .iter()
        .filter(|c| mapped(c))
        .filter(|c| {
            let h = book.get(*c).cloned().unwrap_or_default();
            !agrees(value(&rollup, c), &h, value(&stripe, c))
        })
        .cloned()
        .collect();
    // Pending revisions too old for Stripe's identifier dedup: the summary tells whether Stripe
    // has them (then they are sent) or lacks them all (then re-sending is safe); else they wait.
    let mut unsure: BTreeSet<Cell> = BTreeSet::new();
    for cell in &before {
        let Some(h) = book.get_mut(cell) else {
            continue;
        };
        let old: Vec<_> = h
            .in_state(State::Pending)
            .filter(|r| ledger::stale(r, now))
            .cloned()
            .collect();
        if old.is_empty() {
            continue;
        }
        let s = value(&stripe, cell);
        let all = h.sent() + h.pending();
        if s >= all || same(s, all) {
            let rows: Vec<_> = old
                .iter()
                .map(|r| ledger::restate(billing, r, State::Sent, ""))
                .collect();
            ledger::save(billing, &rows).await?;
            rows.into_iter().for_each(|r| h.apply(r));
        } else if !same(s, h.sent()) {
            unsure.insert(cell.clone());
        }
    }
    // Heal what is missing through the correction path.
    let heal: BTreeSet<Cell> = before
        .iter()
        .filter(|c| !unsure.contains(*c))
        .filter(|c| {
            let h = book.get(*c).cloned().unwrap_or_default();
            let r = value(&rollup, c);
            (r > h.covered() && !same(r, h.covered())) || h.pending() > 0.0
        })
        .cloned()
        .collect();
    let mut corrected: BTreeMap<Cell, f64> = BTreeMap::new();
    let mut sent = ReportSummary::default();
    if !heal.is_empty() {
        let (summary, answered) = run(
            billing,
            &CancellationToken::new(),
            from,
            to,
            Some(&heal),
            true,
        )
        .await?;
        sent = summary;
        for a in answered.iter().filter(|a| a.outcome == Outcome::Reported) {
            let c = (
                a.row.tenant.clone(),
                a.row.customer.clone(),
                a.row.meter.clone(),
                a.row.hour.unix_timestamp(),
            );
            *stripe.entry(c.clone()).or_default() += a.row.value as f64;
            *corrected.entry(c).or_default() += a.row.value as f64;
        }
        book = ledger::read(billing, from, to).await?;
    }
    let mut differences = Vec::new();
    let (mut healed, mut open) = (0, 0);
    for cell in cells.iter().filter(|c| mapped(c)) {
        let r = value(&rollup, cell);
        let mut h = book.get(cell).cloned().unwrap_or_default();
        let mut s = value(&stripe, cell);
        let mut cancel = super::cancel::Cancelled::default();
        let over = h.billable() > r && !same(h.billable(), r);
        // Fencing: cancels are Stripe calls too.
        if (over || h.in_state(State::Cancelling).next().is_some()) && fence.holds(&cell.0, &cell.1)
        {
            cancel = over_report(billing, &mut h, r, &mut s).await;
        }
        let was_off = before.contains(cell);
        let ok = agrees(r, &h, s);
        if !was_off && ok && h.unbillable() == 0.0 {
            continue;
        }
        let (verdict, reason) = if ok && was_off {
            healed += 1;
            ("healed".to_string(), String::new())
        } else if ok {
            ("unbillable".to_string(), h.unbillable_reasons())
        } else if settling(r, &h, s, now, billing.config.usage.summary_settle_secs) {
            (
                "settling".to_string(),
                settling_reason(&h, s, billing.config.usage.summary_settle_secs),
            )
        } else if unsure.contains(cell) && h.pending() > 0.0 {
            open += 1;
            let why = "pending for more than 23 hours and Stripe's summary holds part of it: which meter events Stripe has cannot be told, so none is re-sent";
            ("pending".to_string(), why.to_string())
        } else {
            open += 1;
            unresolved(r, &h, s, &cancel.reason)
        };
        differences.push(Difference {
            tenant: cell.0.clone(),
            customer: cell.1.clone(),
            meter: cell.2.clone(),
            hour: cell.3,
            rollup: r,
            reported: h.billable(),
            stripe: s,
            sent: h.sent(),
            pending: h.pending(),
            unbillable: h.unbillable(),
            corrected: value(&corrected, cell),
            cancelled: cancel.units as f64,
            verdict,
            reason,
        });
    }
    // Before the window: unbillable usage (recorded above), and revisions left pending.
    let old_rollup = rollups(billing, old_from, old_to).await?;
    for (cell, h) in ledger::read(billing, old_from, old_to).await? {
        if !mapped(&cell) || (h.unbillable() == 0.0 && h.pending() == 0.0) {
            continue;
        }
        let stripe_customer = &customers[&(cell.0.clone(), cell.1.clone())];
        let s = match meters.get(&cell.2).and_then(|e| ids.get(e)) {
            Some(meter_id) => summaries(billing, meter_id, stripe_customer, cell.3, cell.3 + 3_600)
                .await?
                .iter()
                .map(|(_, v)| v)
                .sum(),
            None => 0.0,
        };
        let (verdict, reason) = if h.pending() > 0.0 {
            open += 1;
            (
                "pending",
                "the hour left the window before Stripe confirmed its meter event".to_string(),
            )
        } else {
            ("unbillable", h.unbillable_reasons())
        };
        differences.push(Difference {
            rollup: value(&old_rollup, &cell),
            reported: h.billable(),
            stripe: s,
            sent: h.sent(),
            pending: h.pending(),
            unbillable: h.unbillable(),
            corrected: 0.0,
            cancelled: 0.0,
            verdict: verdict.into(),
            reason,
            tenant: cell.0,
            customer: cell.1,
            meter: cell.2,
            hour: cell.3,
        });
    }
    differences.sort_by(|a, b| {
        (&a.tenant, &a.customer, &a.meter, a.hour).cmp(&(&b.tenant, &b.customer, &b.meter, b.hour))
    });
    let unbillable: Vec<&Difference> = differences.iter().filter(|d| d.unbillable > 0.0).collect();
    let unbillable_quantity: f64 = unbillable.iter().map(|d| d.unbillable).sum();
    let checked_at = OffsetDateTime::now_utc();
    let rows: Vec<BillingUsageDifferenceRow> = differences
        .iter()
        .map(|d| BillingUsageDifferenceRow {
            checked_at,
            tenant: d.tenant.clone(),
            customer: d.customer.clone(),
            meter: d.meter.clone(),
            hour: OffsetDateTime::from_unix_timestamp(d.hour).unwrap_or(OffsetDateTime::UNIX_EPOCH),
            rollup: d.rollup,
            reported: d.reported,
            stripe: d.stripe,
            verdict: d.verdict.clone(),
            reason: d.reason.clone(),
        })
        .collect();
    billing.store.save_differences(&rows).await?;
    billing.metrics.usage_differences.set(open as i64);
    billing
        .metrics
        .usage_unbillable_quantity
        .set(unbillable_quantity);
    let stays = differences
        .iter()
        .filter(|d| !matches!(d.verdict.as_str(), "healed" | "unbillable" | "settling"));
    for d in stays.take(20) {
        tracing::error!(tenant = %d.tenant, customer = %d.customer, meter = %d.meter, hour = d.hour, rollup = d.rollup, reported = d.reported, stripe = d.stripe, verdict = %d.verdict, reason = %d.reason, "usage difference stays");
    }
    if open > 0 || healed > 0 {
        tracing::warn!(
            healed,
            unresolved = open,
            unbillable = unbillable.len(),
            "usage reconciliation"
        );
    }
    Ok(Reconciliation {
        from,
        to,
        checked,
        hours,
        healed,
        unresolved: open,
        unbillable_hours: unbillable.len(),
        unbillable_quantity,
        differences,
        sent,
    })
}
