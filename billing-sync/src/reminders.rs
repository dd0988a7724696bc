//! Renewal reminders (issue 22): every `emails.reminder_interval_secs` the live subscriptions
//! whose period ends within `emails.renewal_reminder_days` (and that are not cancelled at the
//! period end) get a `renewal_reminder` queued, one per (subscription, period end). Each instance
//! looks only at the customers it owns ([`crate::ownership`]); the ledger keeps the email once
//! either way.

use mailer::{Email, Kind, Mailer};
use serde_json::json;
use time::OffsetDateTime;

use crate::Result;
use crate::billing::{Billing, current, is_terminal};
use crate::emails::{mail_err, money, plan_name};

/// Queues the reminders due now. Returns how many were queued (queued again: sent once).
pub async fn run(billing: &Billing, mailer: &Mailer) -> Result<usize> {
    run_at(billing, mailer, OffsetDateTime::now_utc()).await
}

/// Queues the reminders due at `now`: the periods that end after `now` and within
/// `renewal_reminder_days` of it. The hourly job passes the wall clock; the admin trigger may pass
/// Stripe's time instead (a test clock advanced towards a renewal, as the demo does).
pub async fn run_at(billing: &Billing, mailer: &Mailer, now: OffsetDateTime) -> Result<usize> {
    let days = i64::from(mailer.config().renewal_reminder_days);
    let horizon = now + time::Duration::days(days);
    let rows = billing.store.all_subscriptions().await?;
    let mut customers: std::collections::BTreeMap<(String, String), Vec<_>> = Default::default();
    for r in rows {
        customers
            .entry((r.tenant.clone(), r.customer.clone()))
            .or_default()
            .push(r);
    }
    let mut queued = 0;
    for ((tenant, customer), rows) in customers {
        if !billing.ownership.owns(&tenant, &customer) {
            continue;
        }
        let Some(r) = current(&rows) else { continue };
        let live = matches!(r.status.as_str(), "active" | "trialing") && !is_terminal(&r.status);
        if !live || r.cancel_at_period_end == 1 || r.period_end <= now || r.period_end > horizon {
            continue;
        }
        let left = ((r.period_end - now).whole_hours() + 23) / 24;
        let amount = billing
            .catalog
            .plan(&r.plan)
            .map(|p| (money(p.price_cents as i64), p.currency.to_uppercase()));
        let email = Email {
            tenant: tenant.clone(),
            customer: customer.clone(),
            kind: Kind::RenewalReminder,
            scope: format!("{}:{}", r.subscription_id, r.period_end.unix_timestamp()),
            recipient: String::new(),
            data: json!({
                "plan": plan_name(billing, &r.plan),
                "renews_on": r.period_end.date().to_string(),
                "days": left.max(1),
                "amount": amount.as_ref().map(|a| a.0.clone()),
                "currency": amount.as_ref().map(|a| a.1.clone()),
                "period": {"start": r.period_start.date().to_string(), "end": r.period_end.date().to_string()},
            }),
        };
        mailer.enqueue(&email).await.map_err(mail_err)?;
        queued += 1;
    }
    Ok(queued)
}

/// Starts the dispatcher and the reminder job (with `emails.enabled`) until `cancel`.
pub fn start(
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &tokio_util::sync::CancellationToken,
    billing: &std::sync::Arc<Billing>,
    mailer: &std::sync::Arc<Mailer>,
) {
    let (m, c) = (mailer.clone(), cancel.clone());
    tasks.spawn(async move { m.run(c).await });
    let (b, m, c) = (billing.clone(), mailer.clone(), cancel.clone());
    let every = std::time::Duration::from_secs(mailer.config().reminder_interval_secs);
    tasks.spawn(async move {
        loop {
            match run(&b, &m).await {
                Ok(n) if n > 0 => tracing::info!(queued = n, "renewal reminders queued"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the renewal reminder job failed"),
            }
            tokio::select! {
                () = c.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
    });
}
