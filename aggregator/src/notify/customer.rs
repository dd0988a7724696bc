//! Usage warnings to the customer (issue 22): an alert at one of `customer_emails.thresholds`
//! is queued in the mailer's ledger as a `usage_warning` of (meter, period, threshold) — once per
//! key however often the alert is read — and billing-sync's dispatcher sends it.

use std::time::Duration;

use mailer::{Email, Kind};
use schemas::quota::Alert;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::notifier::Notifier;

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.2}")
    }
}

/// The usage warning an alert amounts to (its template's data is in `mailer/templates/`).
pub(crate) fn warning(alert: &Alert, catalog: &schemas::Catalog) -> Email {
    let meter = catalog
        .meter(&alert.meter)
        .map_or(alert.meter.as_str(), |m| m.name.as_str());
    let plan = catalog
        .plan(&alert.plan)
        .map_or(alert.plan.as_str(), |p| p.name.as_str());
    let last_day = alert.period_end.previous_day().unwrap_or(alert.period_end);
    Email {
        tenant: alert.tenant.clone(),
        customer: alert.customer.clone(),
        kind: Kind::UsageWarning,
        scope: format!("{}:{}:{}", alert.meter, alert.period_start, alert.threshold),
        recipient: String::new(),
        data: json!({
            "meter": meter,
            "threshold": alert.threshold,
            "used": number(alert.used),
            "limit": alert.limit.to_string(),
            "plan": plan,
            "period": {"start": alert.period_start.to_string(), "end": last_day.to_string()},
            "blocked": alert.threshold >= 100,
        }),
    }
}

impl Notifier {
    /// Queues the customer's usage warning when its threshold is one that mails the customer;
    /// retries ClickHouse until it answers. False when cancelled meanwhile (not committed: the
    /// alert is read again, and queuing it twice sends it once).
    pub(super) async fn queue_customer_warning(
        &self,
        alert: &Alert,
        cancel: &CancellationToken,
    ) -> bool {
        let c = &self.config.customer_emails;
        if !c.enabled || !c.thresholds.contains(&alert.threshold) {
            return true;
        }
        let email = warning(alert, &self.catalog);
        let mut wait = Duration::from_millis(100);
        loop {
            match self.emails.enqueue(&email).await {
                Ok(()) => {
                    tracing::info!(alert = %alert.id, key = %email.key(), "customer usage warning queued");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "queuing the customer's usage warning failed; retrying")
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::{date, datetime};

    use super::*;

    #[test]
    fn a_warning_names_meter_plan_period_and_threshold() {
        let alert = Alert {
            id: "a".into(),
            tenant: "acme".into(),
            customer: "cust_1".into(),
            meter: "api_call".into(),
            threshold: 90,
            used: 90.0,
            limit: 100,
            plan: "free".into(),
            period_start: date!(2026 - 03 - 01),
            period_end: date!(2026 - 04 - 01),
            fired_at: datetime!(2026-03-20 10:00 UTC),
        };
        let e = warning(&alert, &schemas::Catalog::default());
        assert_eq!(e.key(), "acme:cust_1:usage_warning:api_call:2026-03-01:90");
        assert_eq!(e.data["period"]["end"], "2026-03-31");
        assert_eq!(e.data["used"], "90");
        assert_eq!(e.data["blocked"], false);
    }
}
