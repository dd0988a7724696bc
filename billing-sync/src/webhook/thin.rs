//! v2 thin events (`"object": "v2.core.event"`): signed like v1 events, carrying only an id, a type
//! and the related object; the data is fetched from Stripe
//! (<https://docs.stripe.com/event-destinations#events-overview>). billing-sync handles the meter
//! error report ([`crate::usage::rejections`]).

use serde_json::{Value, json};

use super::{Refusal, signature};
use crate::Result;
use crate::billing::Billing;
use crate::usage::rejections;

/// A verified thin event: its id and type.
#[derive(Debug, Clone)]
pub struct ThinEvent {
    /// Event id.
    pub id: String,
    /// Event type (`v1.billing.meter.error_report_triggered`).
    pub kind: String,
}

/// Whether `payload` is a v2 thin event rather than a v1 snapshot event.
pub fn is_thin(payload: &str) -> bool {
    serde_json::from_str::<Value>(payload).is_ok_and(|v| v["object"] == "v2.core.event")
}

/// Verifies a thin event's `Stripe-Signature` and reads its id and type.
pub fn verify_thin(
    payload: &str,
    sig: Option<&str>,
    secret: &str,
    now: i64,
) -> Result<ThinEvent, Refusal> {
    signature::check(payload, sig, secret, now)?;
    let malformed = |message: String| Refusal {
        status: axum::http::StatusCode::BAD_REQUEST,
        code: "malformed_event",
        message,
    };
    let v: Value =
        serde_json::from_str(payload).map_err(|e| malformed(format!("not JSON: {e}")))?;
    match (v["id"].as_str(), v["type"].as_str()) {
        (Some(id), Some(kind)) => Ok(ThinEvent {
            id: id.into(),
            kind: kind.into(),
        }),
        _ => Err(malformed("a thin event needs an id and a type".into())),
    }
}

/// Handles a verified thin event: a meter error report marks the meter events Stripe dropped as
/// rejected; other types are acknowledged and ignored. Handling it twice has no further effect (a
/// rejected revision stays rejected).
pub async fn handle_thin(billing: &Billing, event: ThinEvent) -> Result<Value> {
    if billing.store.webhook_seen(&event.id).await? {
        billing.metrics.webhook(&event.kind, "duplicate");
        return Ok(json!({"received": true, "id": event.id, "duplicate": true}));
    }
    let (outcome, detail) = if event.kind == rejections::ERROR_REPORT {
        let r = rejections::apply(billing, &event.id).await?;
        (
            "usage_rejected",
            json!({"errors": r.errors, "revisions": r.revisions, "units": r.units}),
        )
    } else {
        ("ignored", Value::Null)
    };
    billing
        .mark_event(&event.id, &event.kind, None, outcome)
        .await?;
    billing.metrics.webhook(&event.kind, outcome);
    tracing::info!(event = %event.id, kind = %event.kind, outcome, "thin event handled");
    Ok(json!({"received": true, "id": event.id, "outcome": outcome, "rejected": detail}))
}
