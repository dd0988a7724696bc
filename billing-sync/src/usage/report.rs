//! The regular report run: the correction path over the window (first reports, corrections for late
//! usage, pending revisions re-sent), then the hours that just left the window recorded as unbillable.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use super::corrections::ReportSummary;
use super::corrections::{mark_unbillable, outside_window, run};
use super::window;
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
