//! Metered usage to Stripe Billing Meters, exactly once per customer, meter and hour, late usage included.
//!
//! # Identifiers
//! Each customer-hour is billed by one or more *revisions*: revision 0 is the hour's first report,
//! with identifier `tenant:customer:meter:<hour>` (`<hour>` = the hour's start in unix seconds, as
//! before); revision `r ≥ 1` is a correction for usage that arrived after the hour was reported, with
//! identifier `tenant:customer:meter:<hour>:r<r>`. Identifiers over 100 characters are replaced by
//! `h:` and the first 64 hex digits of the SHA-256 of the long form. Every meter event's `timestamp`
//! is the hour's start. Each attempt carries a fresh Idempotency-Key: the identifier is what
//! deduplicates, and a key Stripe saved a 500 for would replay that 500 for a day.
//!
//! # Exactly once
//! A revision is written to the ledger (`billing_usage_revisions`, migration 0010) as *pending*, with
//! its value fixed, **before** it is sent; it becomes *sent* once Stripe accepted it or answered that
//! it already has it (Stripe's duplicate answer, "An event already exists with identifier"). A pending revision is re-sent as it is — same
//! identifier, same value — by every later run until it is ledgered, so a crash between Stripe's answer
//! and the ledger write, a lost answer, or 429/5xx beyond the retries never bill twice (Stripe
//! deduplicates the identifier) and never lose a unit (the revision stays until Stripe has it). A run
//! compares, per hour of the backfill window (≤ 35 days), the rollup with what the ledger covers and
//! plans a new revision for the difference. Stripe deduplicates identifiers for 24 hours only: a
//! revision pending for over 23 hours is not re-sent by the report but by the reconciliation, and
//! only once Stripe's summary shows that Stripe lacks it (when the summary shows it has it, it is
//! marked sent). Revision 0 is also written to `billing_usage_reports` (the
//! original ledger, which still holds the hours reported before migration 0010).
//!
//! # Whole numbers
//! Stripe takes whole meter event values only. A revision covers the rollup difference exactly
//! (`quantity`, maybe fractional) and sends `value` = ⌊carry + quantity⌋ whole units, where the carry is
//! what the customer and meter's ledger covers minus what it sent (always in `[0, 1)`); the rest is
//! carried to the customer and meter's next revision, never dropped. A revision with value 0 sends
//! nothing and only carries. With whole-number usage the carry is always 0.
//!
//! # Rejected usage
//! Stripe validates meter events asynchronously: it may accept one and drop it later, reporting it
//! in a meter error report (a `v1.billing.meter.error_report_triggered` thin event on the webhook).
//! The revisions it names become *rejected* (counted in `usage_rejected_total`, with Stripe's code
//! as the reason); they no longer cover their hour, so the next run re-sends the difference under a
//! new identifier, at most twice per hour ([`rejections`]).
//!
//! # Unbillable usage
//! Usage in an hour older than the window (`usage.backfill_days`, Stripe's 35 days) that the ledger does
//! not cover, and revisions Stripe refuses as `timestamp_too_far_in_past`, are recorded as *unbillable*
//! revisions with their reason (counted once in `usage_unbillable_total`), and listed by the
//! reconciliation. The rollup keeps the usage.
//!
//! # Layout
//! - [`ledger`]: revision states, the ledger of each hour, the carry, the batched ledger writer.
//! - [`corrections`]: the correction path: plan revisions, write them, send them (report and
//!   reconciliation both use it).
//! - [`report`]: the regular report run.
//! - [`reconcile`]: rollup vs ledger vs Stripe's summaries; heals through the correction path and
//!   cancels over-reports with meter event adjustments ([`cancel`]).
//! - [`rejections`]: meter events Stripe dropped after accepting them (its meter error reports):
//!   their revisions become rejected and the difference is re-sent.
//! - [`proof`]: the proof per customer-hour of a month (accepted events, rollup, ledger, Stripe,
//!   verdict; totals per customer) behind `billing-sync reconcile --month` and
//!   `GET /admin/usage/proof`.

pub mod cancel;
pub mod corrections;
pub mod ledger;
pub mod proof;
pub mod reconcile;
pub mod rejections;
pub mod report;

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use crate::billing::Billing;
use crate::{Error, Result};

pub use reconcile::{Difference, Reconciliation, reconcile};
pub use report::{ReportSummary, report};

/// (tenant, customer, meter, hour start in unix seconds) of one customer-hour.
pub type Cell = (String, String, String, i64);

fn shorten(id: String) -> String {
    if id.len() <= 100 {
        id
    } else {
        format!("h:{}", &hex::encode(Sha256::digest(id.as_bytes()))[..64])
    }
}

/// The meter event identifier of one hour's first report (revision 0).
pub fn identifier(tenant: &str, customer: &str, meter: &str, hour: u32) -> String {
    shorten(format!("{tenant}:{customer}:{meter}:{hour}"))
}

/// The meter event identifier of revision `revision` of one hour (0: [`identifier`]).
pub fn revision_identifier(
    tenant: &str,
    customer: &str,
    meter: &str,
    hour: u32,
    revision: u32,
) -> String {
    if revision == 0 {
        identifier(tenant, customer, meter, hour)
    } else {
        shorten(format!("{tenant}:{customer}:{meter}:{hour}:r{revision}"))
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

pub(crate) fn hour_start(t: i64) -> i64 {
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

/// (tenant, customer) → Stripe customer id.
pub(crate) async fn customers(billing: &Billing) -> Result<HashMap<(String, String), String>> {
    Ok(billing
        .store
        .customers()
        .await?
        .into_iter()
        .map(|(t, c, s)| ((t, c), s))
        .collect())
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
    fn revisions_have_their_own_identifiers() {
        assert_eq!(
            revision_identifier("acme", "c1", "api_call", 1_700_000_400, 0),
            "acme:c1:api_call:1700000400"
        );
        assert_eq!(
            revision_identifier("acme", "c1", "api_call", 1_700_000_400, 2),
            "acme:c1:api_call:1700000400:r2"
        );
        let long = revision_identifier("t", &"c".repeat(90), "m", 1_700_000_400, 1);
        assert!(long.starts_with("h:") && long.len() == 66, "{long}");
        assert_ne!(
            long,
            revision_identifier("t", &"c".repeat(90), "m", 1_700_000_400, 2)
        );
        assert_ne!(long, identifier("t", &"c".repeat(90), "m", 1_700_000_400));
    }

    #[test]
    fn hours_start_on_the_hour() {
        assert_eq!(hour_start(7_199), 3_600);
        assert_eq!(hour_start(7_200), 7_200);
    }
}
