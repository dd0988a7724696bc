//! Metered usage to Stripe Billing Meters: one meter event per customer, meter and closed hour,
//! summed from the `usage_hourly` rollup, with identifier `tenant:customer:meter:<hour>` where
//! `<hour>` is the hour's start in unix seconds (identifiers over 100 characters are replaced by
//! `h:` + the first 64 hex digits of their SHA-256). The event's `timestamp` is the hour's start.
//!
//! Exactly once: an hour is written to the ledger (`billing_usage_reports`) only after Stripe
//! accepted it (in batches: one insert per up to 1,000 accepted hours or 200 ms, not one per hour),
//! and a retried or restarted report sends the same identifier with the identifier as
//! Idempotency-Key, so Stripe either replays its answer or refuses the duplicate
//! (`resource_already_exists`, taken as "already reported"). Unreported hours are backfilled up to
//! `backfill_days` (≤ 35) back. Calls are paced globally (`stripe.max_requests_per_sec`), each
//! customer and meter has at most one call in flight, and 429/5xx/timeouts back off and retry;
//! what still fails waits for the next run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use schemas::rows::{BillingUsageDifferenceRow, BillingUsageReportRow};
use serde::Serialize;
use sha2::{Digest, Sha256};
use stripe_billing::billing_meter::ListBillingMeter;
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::billing_meter_event_summary::{
    ListIdBillingMeterEventSummary, ListIdBillingMeterEventSummaryValueGroupingWindow,
};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::billing::Billing;
use crate::store::HourTotal;
use crate::{Error, Result};

/// The meter event identifier of one hour.
pub fn identifier(tenant: &str, customer: &str, meter: &str, hour: u32) -> String {
    let id = format!("{tenant}:{customer}:{meter}:{hour}");
    if id.len() <= 100 {
        id
    } else {
        format!("h:{}", &hex::encode(Sha256::digest(id.as_bytes()))[..64])
    }
}

/// A quantity as Stripe's `value` string (integers without a decimal point).
pub fn value_text(q: f64) -> String {
    if q.fract() == 0.0 && q.abs() < 9.0e15 {
        format!("{}", q as i64)
    } else {
        format!("{q}")
    }
}

/// What one report run did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ReportSummary {
    /// Hours accepted by Stripe now.
    pub reported: usize,
    /// Hours Stripe already had (a previous run's answer was lost).
    pub already_reported: usize,
    /// Hours left for a later run (retries exhausted, refused, or stopped).
    pub failed: usize,
    /// Hours skipped: no Stripe customer for the customer.
    pub no_customer: usize,
}

fn hour_start(t: i64) -> i64 {
    t - t.rem_euclid(3_600)
}

/// The report window `[from, to)`: closed hours within the backfill period.
pub fn window(billing: &Billing, now: i64) -> (i64, i64) {
    let u = &billing.config.usage;
    let to = hour_start(now - u.settle_secs as i64);
    // One hour of margin inside Stripe's 35 days, so a long run stays in the window.
    let from = hour_start(now - i64::from(u.backfill_days) * 86_400) + 3_600;
    (from, to.max(from))
}

/// Catalog meter key → Stripe event name.
pub fn meters(billing: &Billing) -> BTreeMap<String, String> {
    if billing.config.usage.meters.is_empty() {
        billing
            .catalog
            .meters
            .iter()
            .map(|m| (m.key.clone(), m.key.clone()))
            .collect()
    } else {
        billing.config.usage.meters.clone()
    }
}

/// Ledger rows per insert at most.
const LEDGER_BATCH: usize = 1_000;
/// How long the first accepted hour of a batch waits for more before the insert.
const LEDGER_LINGER: Duration = Duration::from_millis(200);
/// Attempts of one ledger insert.
const LEDGER_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy)]
enum Sent {
    Reported,
    Already,
}

/// An hour Stripe accepted, waiting for its ledger row.
#[derive(Debug)]
struct Accepted {
    row: BillingUsageReportRow,
    sent: Sent,
}

async fn send_hour(
    billing: &Billing,
    h: &HourTotal,
    stripe_customer: &str,
    event_name: &str,
) -> Result<Accepted> {
    let id = identifier(&h.tenant, &h.customer, &h.meter, h.hour);
    let req = CreateBillingMeterEvent::new(
        event_name,
        HashMap::from([
            (
                "stripe_customer_id".to_string(),
                stripe_customer.to_string(),
            ),
            ("value".to_string(), value_text(h.quantity)),
        ]),
    )
    .identifier(id.as_str())
    .timestamp(i64::from(h.hour));
    let sent = match billing
        .stripe
        .send("create_meter_event", &req, Some(&id))
        .await
    {
        Ok(_) => Sent::Reported,
        Err(e)
            if e.stripe_code()
                .is_some_and(|(c, _)| c == "resource_already_exists") =>
        {
            Sent::Already
        }
        Err(e) => return Err(e),
    };
    Ok(Accepted {
        row: BillingUsageReportRow {
            tenant: h.tenant.clone(),
            customer: h.customer.clone(),
            meter: h.meter.clone(),
            hour: OffsetDateTime::from_unix_timestamp(i64::from(h.hour))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            identifier: id,
            stripe_customer_id: stripe_customer.into(),
            event_name: event_name.into(),
            quantity: h.quantity,
            reported_at: OffsetDateTime::now_utc(),
        },
        sent,
    })
}

/// Writes a batch of accepted hours to the ledger (retrying the insert) and counts them. Hours
/// whose ledger row cannot be written count as failed: the next run sends them again with the
/// same identifier and Stripe answers "already reported".
async fn write_ledger(billing: &Billing, batch: &mut Vec<Accepted>, s: &mut ReportSummary) {
    if batch.is_empty() {
        return;
    }
    let rows: Vec<BillingUsageReportRow> = batch.iter().map(|a| a.row.clone()).collect();
    let mut attempt = 0;
    let written = loop {
        attempt += 1;
        match billing.store.save_reports(&rows).await {
            Ok(()) => break true,
            Err(e) if attempt < LEDGER_ATTEMPTS => {
                tracing::warn!(rows = rows.len(), attempt, error = %e, "ledger insert failed; retrying");
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
            Err(e) => {
                tracing::warn!(rows = rows.len(), error = %e, "ledger insert failed; the next run sends these hours again");
                break false;
            }
        }
    };
    if written {
        for a in batch.iter() {
            match a.sent {
                Sent::Reported => s.reported += 1,
                Sent::Already => s.already_reported += 1,
            }
        }
        billing
            .metrics
            .meter_events_reported
            .inc_by(rows.len() as u64);
    } else {
        s.failed += rows.len();
        billing
            .metrics
            .meter_events_failed
            .inc_by(rows.len() as u64);
    }
    batch.clear();
}

/// Receives accepted hours until every sender is gone and writes them to the ledger in batches of
/// up to [`LEDGER_BATCH`], each waiting at most [`LEDGER_LINGER`] for more: one insert per
/// batch instead of one per hour.
async fn ledger(billing: &Billing, mut rx: mpsc::Receiver<Accepted>) -> ReportSummary {
    let mut s = ReportSummary::default();
    let mut batch = Vec::with_capacity(LEDGER_BATCH);
    loop {
        if rx.recv_many(&mut batch, LEDGER_BATCH).await == 0 {
            break;
        }
        let linger = tokio::time::sleep(LEDGER_LINGER);
        tokio::pin!(linger);
        let mut closed = false;
        while batch.len() < LEDGER_BATCH {
            let room = LEDGER_BATCH - batch.len();
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
        write_ledger(billing, &mut batch, &mut s).await;
        if closed {
            break;
        }
    }
    s
}

/// Reports every closed, unreported hour in the window. Stops early (leaving the rest for the next
/// run) when `cancel` fires.
///
/// Up to `usage.concurrency` (customer, meter) pairs are reported at once, each one hour after the
/// other; the global pace keeps Stripe's rate limit. Accepted hours go to the ledger in batches
/// (see [`ledger`]); the run returns once every accepted hour is in the ledger.
pub async fn report(billing: Arc<Billing>, cancel: CancellationToken) -> Result<ReportSummary> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (from, to) = window(&billing, now);
    let meters = meters(&billing);
    let keys: Vec<String> = meters.keys().cloned().collect();
    let totals = billing.store.hour_totals(&keys, from, to).await?;
    let done = billing.store.reported(from, to).await?;
    let mut customers: HashMap<(String, String), String> = billing
        .store
        .customers()
        .await?
        .into_iter()
        .map(|(t, c, s)| ((t, c), s))
        .collect();
    let mut summary = ReportSummary::default();
    // Pending hours grouped per (tenant, customer, meter): each group runs sequentially.
    let mut groups: BTreeMap<(String, String, String), Vec<HourTotal>> = BTreeMap::new();
    for h in totals {
        let key = (
            h.tenant.clone(),
            h.customer.clone(),
            h.meter.clone(),
            h.hour,
        );
        if done.contains(&key) {
            continue;
        }
        groups
            .entry((h.tenant.clone(), h.customer.clone(), h.meter.clone()))
            .or_default()
            .push(h);
    }
    if billing.config.usage.create_customers {
        for (tenant, customer, _) in groups.keys() {
            let k = (tenant.clone(), customer.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = customers.entry(k) {
                match billing.ensure_customer(tenant, customer).await {
                    Ok(id) => {
                        slot.insert(id);
                    }
                    Err(e) => {
                        tracing::warn!(tenant, customer, error = %e, "cannot create a Stripe customer for usage")
                    }
                }
            }
        }
    }
    let permits = Arc::new(Semaphore::new(billing.config.usage.concurrency));
    let (accepted, rx) = mpsc::channel::<Accepted>(4 * LEDGER_BATCH);
    let mut tasks: JoinSet<ReportSummary> = JoinSet::new();
    for ((tenant, customer, meter), hours) in groups {
        let Some(stripe_customer) = customers.get(&(tenant.clone(), customer.clone())).cloned()
        else {
            summary.no_customer += hours.len();
            continue;
        };
        let Some(event_name) = meters.get(&meter).cloned() else {
            continue;
        };
        let (billing, permits, cancel, accepted) = (
            billing.clone(),
            permits.clone(),
            cancel.clone(),
            accepted.clone(),
        );
        tasks.spawn(async move {
            let mut s = ReportSummary::default();
            let Ok(_permit) = permits.acquire_owned().await else { return s };
            for (i, h) in hours.iter().enumerate() {
                if cancel.is_cancelled() {
                    s.failed += hours.len() - i;
                    break;
                }
                match send_hour(&billing, h, &stripe_customer, &event_name).await {
                    Ok(a) => {
                        // The ledger writer lives until every sender is gone.
                        let _ = accepted.send(a).await;
                    }
                    Err(e) => {
                        // Later hours of this customer and meter wait too (keeps order simple).
                        tracing::warn!(tenant = %h.tenant, customer = %h.customer, meter = %h.meter, hour = h.hour, error = %e, "meter event not reported; next run retries");
                        billing.metrics.meter_events_failed.inc_by((hours.len() - i) as u64);
                        s.failed += hours.len() - i;
                        break;
                    }
                }
            }
            s
        });
    }
    drop(accepted);
    let senders = async {
        let mut s = ReportSummary::default();
        while let Some(r) = tasks.join_next().await {
            if let Ok(t) = r {
                s.failed += t.failed;
            }
        }
        s
    };
    let (sent, written) = tokio::join!(senders, ledger(&billing, rx));
    summary.reported += written.reported;
    summary.already_reported += written.already_reported;
    summary.failed += sent.failed + written.failed;
    if summary != ReportSummary::default() {
        tracing::info!(?summary, "usage report run");
    }
    Ok(summary)
}

/// One hour that disagrees.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
    /// Quantity in the ledger.
    pub reported: f64,
    /// Quantity in Stripe's summary.
    pub stripe: f64,
}

/// The result of a usage reconciliation.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// Window start (unix s).
    pub from: i64,
    /// Window end (unix s, exclusive).
    pub to: i64,
    /// (customer, meter) pairs compared.
    pub checked: usize,
    /// Hours compared.
    pub hours: usize,
    /// Hours that disagree.
    pub differences: Vec<Difference>,
}

/// (tenant, customer, meter, hour) of a reconciled hour.
type Cell = (String, String, String, i64);

async fn meter_ids(billing: &Billing) -> Result<HashMap<String, String>> {
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

/// Compares, per closed hour in `[from, to)`, the rollup, the ledger and Stripe's hourly meter
/// event summaries for every customer with a Stripe customer; stores and returns the differences.
pub async fn reconcile(
    billing: &Billing,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Reconciliation> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (wf, wt) = window(billing, now);
    let from = hour_start(from.unwrap_or(wf).max(wf));
    let to = hour_start(to.unwrap_or(wt).min(wt));
    let meters = meters(billing);
    let ids = meter_ids(billing).await?;
    let keys: Vec<String> = meters.keys().cloned().collect();
    let mut cells: BTreeMap<Cell, (f64, f64, f64)> = BTreeMap::new();
    for h in billing.store.hour_totals(&keys, from, to).await? {
        cells
            .entry((h.tenant, h.customer, h.meter, i64::from(h.hour)))
            .or_default()
            .0 += h.quantity;
    }
    for r in billing.store.report_rows(from, to).await? {
        cells
            .entry((r.tenant, r.customer, r.meter, r.hour.unix_timestamp()))
            .or_default()
            .1 += r.quantity;
    }
    let customers: HashMap<(String, String), String> = billing
        .store
        .customers()
        .await?
        .into_iter()
        .map(|(t, c, s)| ((t, c), s))
        .collect();
    let pairs: Vec<(String, String, String)> = {
        let mut p: Vec<(String, String, String)> = cells
            .keys()
            .map(|(t, c, m, _)| (t.clone(), c.clone(), m.clone()))
            .collect();
        p.dedup();
        p
    };
    let mut checked = 0;
    if to > from {
        for (tenant, customer, meter) in &pairs {
            let (Some(stripe_customer), Some(meter_id)) = (
                customers.get(&(tenant.clone(), customer.clone())),
                meters.get(meter).and_then(|e| ids.get(e)),
            ) else {
                continue;
            };
            checked += 1;
            let mut after: Option<String> = None;
            loop {
                let mut req = ListIdBillingMeterEventSummary::new(
                    meter_id.as_str(),
                    stripe_customer.as_str(),
                    to,
                    from,
                )
                .value_grouping_window(ListIdBillingMeterEventSummaryValueGroupingWindow::Hour)
                .limit(100);
                if let Some(a) = &after {
                    req = req.starting_after(a.as_str());
                }
                let page = billing
                    .stripe
                    .send("list_meter_event_summaries", &req, None)
                    .await?;
                for s in &page.data {
                    if s.aggregated_value != 0.0 {
                        cells
                            .entry((
                                tenant.clone(),
                                customer.clone(),
                                meter.clone(),
                                s.start_time,
                            ))
                            .or_default()
                            .2 += s.aggregated_value;
                    }
                }
                match (page.has_more, page.data.last()) {
                    (true, Some(last)) => after = Some(last.id.as_str().to_string()),
                    _ => break,
                }
            }
        }
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    let differences: Vec<Difference> = cells
        .iter()
        .filter(|((t, c, _, _), _)| customers.contains_key(&(t.clone(), c.clone())))
        .filter(|(_, (r, l, s))| !(close(*r, *l) && close(*l, *s)))
        .map(|((t, c, m, h), (r, l, s))| Difference {
            tenant: t.clone(),
            customer: c.clone(),
            meter: m.clone(),
            hour: *h,
            rollup: *r,
            reported: *l,
            stripe: *s,
        })
        .collect();
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
        })
        .collect();
    billing.store.save_differences(&rows).await?;
    billing
        .metrics
        .usage_differences
        .set(differences.len() as i64);
    if !differences.is_empty() {
        tracing::warn!(
            count = differences.len(),
            "usage differs between rollups, the ledger and Stripe"
        );
    }
    Ok(Reconciliation {
        from,
        to,
        checked,
        hours: cells.len(),
        differences,
    })
}

/// Turns an error of a usage job into a log line (jobs keep running).
pub fn log_error(job: &str, e: &Error) {
    tracing::warn!(job, error = %e, "background job failed; it runs again at its next interval");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_values() {
        assert_eq!(
            identifier("acme", "c1", "api_call", 1_700_000_400),
            "acme:c1:api_call:1700000400"
        );
        let long = identifier("t", &"c".repeat(120), "m", 1);
        assert!(long.starts_with("h:") && long.len() == 66, "{long}");
        assert_eq!(identifier("t", &"c".repeat(120), "m", 1), long);
        assert_eq!(value_text(42.0), "42");
        assert_eq!(value_text(2.5), "2.5");
    }

    #[test]
    fn hours_start_on_the_hour() {
        assert_eq!(hour_start(7_199), 3_600);
        assert_eq!(hour_start(7_200), 7_200);
    }
}
