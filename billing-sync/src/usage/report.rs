//! The regular report run: the correction path over the window (first reports, corrections for late
//! usage, pending revisions re-sent), then the hours that just left the window recorded as unbillable.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use super::corrections::ReportSummary;
use super::corrections::{mark_unbillable, outside_window, rollups, run};
use super::{Cell, hour_start, window};
use crate::Result;
use crate::billing::Billing;

/// How far before the window a report run looks for usage that became unbillable (the
/// reconciliation looks 35 days back).
const LOOKBACK_SECS: i64 = 2 * 86_400;

/// Reports every closed hour in the window whose rollup exceeds what the ledger covers (its first
/// meter event, or a correction for the difference) and re-sends pending revisions. Stops early
/// (leaving the rest for the next run) when `cancel` fires.
///
/// Up to `usage.concurrency` (customer, meter) pairs are reported at once, each one revision after
/// the other; the global pace keeps Stripe's rate limit. Answers go to the ledger in batches; the
/// run returns once every answer is in the ledger.
pub async fn report(billing: Arc<Billing>, cancel: CancellationToken) -> Result<ReportSummary> {
    let _run = billing.usage_runs.lock().await;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (from, to) = window(&billing, now);
    let (mut summary, _) = run(&billing, &cancel, from, to, None, false).await?;
    let reason = outside_window(&billing);
    let (hours, quantity) = mark_unbillable(&billing, from - LOOKBACK_SECS, from, &reason).await?;
    summary.unbillable += hours;
    summary.unbillable_quantity += quantity;
    if summary != ReportSummary::default() {
        tracing::info!(?summary, "usage report run");
    }
    Ok(summary)
}

/// Reports everything `customer` of `tenant` used up to now, the current hour included, before its
/// subscription is cancelled at once: Stripe's final invoice (`invoice_now`) bills the metered usage
/// it holds when the cancel arrives. Usage that still arrives in the current hour afterwards is
/// reported by later runs as a correction.
pub async fn flush_customer(
    billing: &Arc<Billing>,
    tenant: &str,
    customer: &str,
) -> Result<ReportSummary> {
    let _run = billing.usage_runs.lock().await;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (from, _) = window(billing, now);
    let to = hour_start(now) + 3_600;
    let cells: std::collections::BTreeSet<Cell> = rollups(billing, from, to)
        .await?
        .into_keys()
        .filter(|c| c.0 == tenant && c.1 == customer)
        .collect();
    if cells.is_empty() {
        return Ok(ReportSummary::default());
    }
    let (summary, _) = run(
        billing,
        &CancellationToken::new(),
        from,
        to,
        Some(&cells),
        false,
    )
    .await?;
    tracing::info!(
        tenant,
        customer,
        ?summary,
        "usage flushed before an immediate cancel"
    );
    Ok(summary)
}
