//! Meter events Stripe accepted and then dropped: its asynchronous validation reports them in
//! `v1.billing.meter.error_report_triggered` thin events (<https://docs.stripe.com/api/v2/core/events/event-types>).
//!
//! The thin event names only the meter; its data (fetched with `GET /v2/core/events/{id}`) holds,
//! per error code, a count and sample errors, each with the meter event's `identifier`
//! (<https://docs.stripe.com/api/v2/core/events/object>). Every sampled identifier that is a
//! revision in the ledger becomes *rejected* with Stripe's code and message: it no longer counts, so
//! the hour is short again and the next report run re-sends the difference as a new revision (up to
//! [`ledger::MAX_REJECTIONS`] per hour; after that the reconciliation lists the hour as
//! `rejected`). Errors beyond the samples cannot be told apart; they are logged with their count,
//! and the reconciliation, which compares the ledger with Stripe's summaries, shows those hours as
//! `stripe_mismatch`.

use serde::Deserialize;

use super::ledger::{self, State};
use crate::billing::Billing;
use crate::{Error, Result};

/// The thin event type of a meter error report.
pub const ERROR_REPORT: &str = "v1.billing.meter.error_report_triggered";

#[derive(Debug, Deserialize)]
struct V2Event {
    #[serde(rename = "type")]
    kind: String,
    data: Option<ReportData>,
}

#[derive(Debug, Deserialize)]
struct ReportData {
    reason: Reason,
    #[serde(default)]
    developer_message_summary: String,
}

#[derive(Debug, Deserialize)]
struct Reason {
    error_count: u64,
    #[serde(default)]
    error_types: Vec<ErrorType>,
}

#[derive(Debug, Deserialize)]
struct ErrorType {
    code: String,
    #[serde(default)]
    sample_errors: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    #[serde(default)]
    error_message: String,
    request: SampleRequest,
}

#[derive(Debug, Deserialize)]
struct SampleRequest {
    #[serde(default)]
    identifier: Option<String>,
}

/// What one error report changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rejected {
    /// Invalid meter events Stripe counted.
    pub errors: u64,
    /// Revisions of the ledger marked rejected.
    pub revisions: usize,
    /// Their whole units.
    pub units: i64,
}

/// Handles the error report `event_id`: fetches its data and marks the sampled revisions rejected.
pub async fn apply(billing: &Billing, event_id: &str) -> Result<Rejected> {
    let raw = billing
        .stripe
        .get_v2("retrieve_v2_event", &format!("v2/core/events/{event_id}"))
        .await?;
    let event: V2Event = serde_json::from_value(raw)
        .map_err(|e| Error::StripeData(format!("v2 event {event_id}: {e}")))?;
    if event.kind != ERROR_REPORT {
        return Err(Error::StripeData(format!(
            "v2 event {event_id} is a {}, not a meter error report",
            event.kind
        )));
    }
    let Some(data) = event.data else {
        return Ok(Rejected::default());
    };
    billing.metrics.meter_error_reports.inc();
    let mut reasons = std::collections::HashMap::new();
    for t in &data.reason.error_types {
        for s in &t.sample_errors {
            if let Some(id) = &s.request.identifier {
                reasons.insert(
                    id.clone(),
                    format!("stripe_rejected: {}: {}", t.code, s.error_message),
                );
            }
        }
    }
    let identifiers: Vec<String> = reasons.keys().cloned().collect();
    let rows: Vec<_> = billing
        .store
        .revisions_by_identifier(&identifiers)
        .await?
        .into_iter()
        .filter(|r| State::of(r.state) != State::Rejected)
        .map(|r| {
            let reason = reasons.get(&r.identifier).cloned().unwrap_or_default();
            ledger::restate(billing, &r, State::Rejected, &reason)
        })
        .collect();
    ledger::save(billing, &rows).await?;
    let out = Rejected {
        errors: data.reason.error_count,
        revisions: rows.len(),
        units: rows.iter().map(|r| r.value).sum(),
    };
    let quantity: f64 = rows.iter().map(|r| r.quantity).sum();
    billing.metrics.usage_rejected.inc_by(quantity);
    for r in &rows {
        tracing::error!(tenant = %r.tenant, customer = %r.customer, meter = %r.meter, hour = r.hour.unix_timestamp(), identifier = %r.identifier, value = r.value, reason = %r.reason, "Stripe dropped a meter event after accepting it; the next run re-sends the difference");
    }
    let unknown = data.reason.error_count.saturating_sub(rows.len() as u64);
    if unknown > 0 {
        tracing::error!(
            event = event_id,
            errors = data.reason.error_count,
            identified = rows.len(),
            summary = %data.developer_message_summary,
            "meter error report: invalid meter events not named in its samples; the reconciliation shows their hours"
        );
    }
    Ok(out)
}
