//! Over-reports: whole meter events billing-sync sent are cancelled with Stripe's meter event
//! adjustments (`POST /v1/billing/meter_event_adjustments`, `type=cancel`, `cancel[identifier]`;
//! <https://docs.stripe.com/api/billing/meter-event-adjustment/create>) where that applies: the event
//! was received less than 24 hours ago (Stripe cancels only then), the ledger still covers the rollup
//! without it (so the next report does not send it again), and Stripe still holds at least the
//! rollup's whole units without it (no under-billing). The rest stays and is reported.
//!
//! A cancel is written to the ledger as *cancelling* before it is sent (Idempotency-Key
//! `cancel:<identifier>`), then *cancelled*; a refused cancel puts the revision back to *sent*. A
//! cancelling revision left by a crash is sent again by the next reconciliation.

use schemas::rows::BillingUsageRevisionRow;
use stripe_billing::BillingMeterEventAdjustmentType;
use stripe_billing::billing_meter_event_adjustment::{
    CreateBillingMeterEventAdjustment, CreateBillingMeterEventAdjustmentCancel,
};
use time::OffsetDateTime;

use super::ledger::{self, HourLedger, State, same};
use crate::billing::Billing;

/// How long after Stripe received a meter event billing-sync still tries to cancel it (Stripe: 24
/// hours; one hour of margin).
const CANCEL_WITHIN_SECS: i64 = 23 * 3_600;

/// What the over-report handling of one hour did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Cancelled {
    /// Whole units cancelled now.
    pub units: i64,
    /// Why an over-report stays (empty when none does).
    pub reason: String,
}

/// Cancels one revision; the revision's new state is applied to `h`. Returns Stripe's refusal.
async fn cancel_one(
    billing: &Billing,
    h: &mut HourLedger,
    row: &BillingUsageRevisionRow,
) -> Result<(), String> {
    let cancelling = ledger::restate(billing, row, State::Cancelling, "");
    ledger::save(billing, std::slice::from_ref(&cancelling))
        .await
        .map_err(|e| format!("ledger: {e}"))?;
    let mut which = CreateBillingMeterEventAdjustmentCancel::new();
    which.identifier = Some(row.identifier.clone());
    let req = CreateBillingMeterEventAdjustment::new(
        row.event_name.as_str(),
        BillingMeterEventAdjustmentType::Cancel,
    )
    .cancel(which);
    let key = format!("cancel:{}", row.identifier);
    match billing
        .stripe
        .send("cancel_meter_event", &req, Some(&key))
        .await
    {
        Ok(_) => {
            billing.metrics.usage_cancellations.inc();
            let done = ledger::restate(billing, row, State::Cancelled, "cancelled: over-report");
            if let Err(e) = ledger::save(billing, std::slice::from_ref(&done)).await {
                // It stays cancelling: the next reconciliation sends the cancel again (replayed).
                tracing::warn!(identifier = %row.identifier, error = %e, "cancelled meter event not ledgered");
            }
            h.apply(done);
            tracing::info!(identifier = %row.identifier, value = row.value, "meter event cancelled (over-report)");
            Ok(())
        }
        Err(e) => {
            let reason = format!("stripe refused to cancel {}: {e}", row.identifier);
            let back = ledger::restate(billing, row, State::Sent, &reason);
            if let Err(e) = ledger::save(billing, std::slice::from_ref(&back)).await {
                tracing::warn!(identifier = %row.identifier, error = %e, "revision left cancelling");
            }
            h.apply(back);
            Err(reason)
        }
    }
}

/// Handles the over-report of one hour whose ledger `h` covers more than `rollup`: finishes the
/// cancels a crash left, then cancels whole meter events where that applies (see the module docs).
/// `stripe` (the hour's summary) is lowered by what is cancelled now.
pub async fn over_report(
    billing: &Billing,
    h: &mut HourLedger,
    rollup: f64,
    stripe: &mut f64,
) -> Cancelled {
    let mut out = Cancelled::default();
    let mut refusals = Vec::new();
    // Cancels a previous check decided on: Stripe may have applied them already (its summary then
    // excludes them), so the summary is not lowered for these.
    let left: Vec<BillingUsageRevisionRow> = h.in_state(State::Cancelling).cloned().collect();
    for row in &left {
        match cancel_one(billing, h, row).await {
            Ok(()) => out.units += row.value,
            Err(r) => refusals.push(r),
        }
    }
    let over = |h: &HourLedger| h.billable() > rollup && !same(h.billable(), rollup);
    if !over(h) {
        return out;
    }
    let since = OffsetDateTime::now_utc().unix_timestamp() - CANCEL_WITHIN_SECS;
    let mut candidates: Vec<BillingUsageRevisionRow> = h
        .in_state(State::Sent)
        .filter(|r| r.value > 0 && !r.identifier.is_empty())
        .cloned()
        .collect();
    candidates.sort_by_key(|r| std::cmp::Reverse(r.value));
    let recent = candidates
        .iter()
        .filter(|r| r.written_at.unix_timestamp() >= since)
        .count();
    let whole = rollup.floor();
    let mut smallest_refused: Option<i64> = None;
    for row in candidates
        .iter()
        .filter(|r| r.written_at.unix_timestamp() >= since)
    {
        let excess = h.billable() - rollup;
        let keeps_ledger = row.quantity <= excess || same(row.quantity, excess);
        let keeps_bill = *stripe - row.value as f64 >= whole - 1e-9;
        if !(keeps_ledger && keeps_bill) {
            smallest_refused = Some(smallest_refused.map_or(row.value, |v| v.min(row.value)));
            continue;
        }
        match cancel_one(billing, h, row).await {
            Ok(()) => {
                out.units += row.value;
                *stripe -= row.value as f64;
            }
            Err(r) => refusals.push(r),
        }
        if !over(h) {
            break;
        }
    }
    if over(h) {
        let excess = h.billable() - rollup;
        let why = if candidates.is_empty() {
            "no meter event billing-sync sent for this hour can be cancelled".to_string()
        } else if recent == 0 {
            "its meter events were received more than 24 hours ago: Stripe cancels only within 24 hours"
                .to_string()
        } else if let Some(v) = smallest_refused {
            format!(
                "cancelling a whole meter event would under-bill: the smallest left is {v} units for an over-report of {excess}"
            )
        } else {
            "no cancellable meter event left".to_string()
        };
        refusals.insert(
            0,
            format!("over_report: the ledger covers {excess} more than the rollup; {why}"),
        );
    }
    out.reason = refusals.join("; ");
    out
}
