//! Customer emails from billing events (issue 22, crate `mailer`): after a verified webhook is
//! handled, a receipt (`invoice.paid`), a payment failure notice (`invoice.payment_failed`), a
//! plan change or a cancellation (`customer.subscription.updated|deleted`) is queued in the
//! mailer's ledger, keyed so that a redelivery queues the same email (sent once). The dispatcher
//! (started by [`crate::app`]) sends them; the renewal reminders are in [`crate::reminders`].

use mailer::{Email, Kind, Mailer};
use schemas::rows::BillingSubscriptionRow;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::billing::Billing;
use crate::{Error, Result};

/// A mailer error as billing-sync's (ClickHouse stays ClickHouse: a 503 to Stripe).
pub fn mail_err(e: mailer::Error) -> Error {
    match e {
        mailer::Error::ClickHouse(c) => Error::ClickHouse(c),
        mailer::Error::Io(i) => Error::Io(i),
        other => Error::Config(other.to_string()),
    }
}

/// The stored state of the subscription an event is about, read before the event is handled.
#[derive(Debug, Default)]
pub struct Before {
    row: Option<BillingSubscriptionRow>,
}

/// The parsed payload of a v1 event (None for anything else).
fn parse(payload: &str) -> Option<Value> {
    serde_json::from_str::<Value>(payload)
        .ok()
        .filter(|v| v["object"] == "event")
}

/// Reads what a subscription event changes, before it is handled.
pub async fn before(billing: &Billing, payload: &str) -> Result<Before> {
    let Some(event) = parse(payload) else {
        return Ok(Before::default());
    };
    let kind = event["type"].as_str().unwrap_or_default();
    if !kind.starts_with("customer.subscription.") {
        return Ok(Before::default());
    }
    let Some(id) = event["data"]["object"]["id"].as_str() else {
        return Ok(Before::default());
    };
    Ok(Before {
        row: billing.store.subscription(id).await?,
    })
}

fn day(t: OffsetDateTime) -> String {
    t.date().to_string()
}

fn minute(t: OffsetDateTime) -> String {
    format!(
        "{} {:02}:{:02} UTC",
        t.date(),
        t.time().hour(),
        t.time().minute()
    )
}

fn ts(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Cents as `29.00`.
pub fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

/// A plan's display name.
pub fn plan_name(billing: &Billing, plan: &str) -> String {
    billing
        .catalog
        .plan(plan)
        .map_or(plan.to_string(), |p| p.name.clone())
}

/// A plan's monthly limit of its first limited meter, as text (`unlimited` without one).
pub fn plan_limit(billing: &Billing, plan: &str) -> String {
    billing
        .catalog
        .plan(plan)
        .and_then(|p| {
            p.limits
                .get("api_call")
                .or_else(|| p.limits.values().next())
                .copied()
        })
        .map_or("unlimited".into(), |l| l.to_string())
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct MeterUsage {
    meter: String,
    quantity: f64,
}

/// The customer's usage per meter in [start, end) from the hourly rollup.
async fn usage(
    billing: &Billing,
    tenant: &str,
    customer: &str,
    start: i64,
    end: i64,
) -> Result<Value> {
    let rows: Vec<MeterUsage> = billing
        .config
        .clickhouse
        .client()
        .query(
            "SELECT meter, sum(quantity) AS quantity FROM usage_hourly WHERE tenant = ? \
             AND customer = ? AND hour >= toDateTime(?) AND hour < toDateTime(?) GROUP BY meter \
             ORDER BY meter",
        )
        .bind(tenant)
        .bind(customer)
        .bind(start)
        .bind(end.max(start + 1))
        .fetch_all()
        .await?;
    Ok(Value::Array(
        rows.into_iter()
            .map(|r| {
                let name = billing
                    .catalog
                    .meter(&r.meter)
                    .map_or(r.meter.clone(), |m| m.name.clone());
                json!({"meter": name, "used": format!("{}", r.quantity.round() as i64)})
            })
            .collect(),
    ))
}

/// The subscription an invoice belongs to.
fn invoice_subscription(invoice: &Value) -> Option<&str> {
    invoice["parent"]["subscription_details"]["subscription"]
        .as_str()
        .or_else(|| invoice["subscription"].as_str())
}

/// The subscription's row, or its state fetched from Stripe when the row is not stored yet.
async fn subscription_row(
    billing: &Billing,
    id: &str,
) -> Result<Option<(String, String, String, i64, i64)>> {
    if let Some(r) = billing.store.subscription(id).await? {
        return Ok(Some((
            r.tenant,
            r.customer,
            r.plan,
            r.period_start.unix_timestamp(),
            r.period_end.unix_timestamp(),
        )));
    }
    let obs = billing.fetch(id).await?;
    let Some((tenant, customer)) = billing.owner(&obs).await? else {
        return Ok(None);
    };
    Ok(Some((
        tenant,
        customer,
        obs.plan.unwrap_or_default(),
        obs.period_start,
        obs.period_end,
    )))
}

/// Queues the emails a handled webhook calls for. Idempotent: the keys come from the event's
/// objects, so a redelivery queues the same emails (sent once).
pub async fn after(
    billing: &Billing,
    mailer: &Mailer,
    payload: &str,
    before: Before,
) -> Result<usize> {
    let Some(event) = parse(payload) else {
        return Ok(0);
    };
    let kind = event["type"].as_str().unwrap_or_default();
    let id = event["id"].as_str().unwrap_or_default();
    let created = event["created"].as_i64().unwrap_or_default();
    let object = &event["data"]["object"];
    let mut emails = Vec::new();
    match kind {
        "invoice.paid" | "invoice.payment_failed" => {
            let Some(sub) = invoice_subscription(object) else {
                return Ok(0);
            };
            let Some((tenant, customer, plan, p_start, p_end)) =
                subscription_row(billing, sub).await?
            else {
                return Ok(0);
            };
            let invoice = object["id"].as_str().unwrap_or_default();
            let currency = object["currency"].as_str().unwrap_or("usd").to_uppercase();
            let recipient = object["customer_email"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !recipient.is_empty() {
                mailer
                    .ledger()
                    .set_contact(&tenant, &customer, "stripe", &recipient)
                    .await
                    .map_err(mail_err)?;
            }
            let (email_kind, data) = if kind == "invoice.paid" {
                let line = &object["lines"]["data"][0]["period"];
                let start = line["start"].as_i64().unwrap_or(p_start);
                let end = line["end"].as_i64().unwrap_or(p_end);
                let (start, end) = if end > start {
                    (start, end)
                } else {
                    (p_start, p_end)
                };
                (
                    Kind::Receipt,
                    json!({
                        "amount": money(object["amount_paid"].as_i64().unwrap_or_default()),
                        "currency": currency,
                        "invoice": invoice,
                        "number": object["number"],
                        "plan": plan_name(billing, &plan),
                        "period": {"start": day(ts(start)), "end": day(ts(end))},
                        "usage": usage(billing, &tenant, &customer, start, end).await?,
                        "invoice_url": object["hosted_invoice_url"],
                    }),
                )
            } else {
                let grace = billing.config.payment_failure.grace_period_secs as i64;
                let fallback = billing.fallback_plan().to_string();
                (
                    Kind::PaymentFailed,
                    json!({
                        "plan": plan_name(billing, &plan),
                        "amount": money(object["amount_due"].as_i64().unwrap_or_default()),
                        "currency": currency,
                        "invoice": invoice,
                        "grace_until": minute(ts(created + grace)),
                        "fallback_plan": plan_name(billing, &fallback),
                        "fallback_limit": plan_limit(billing, &fallback),
                        "next_attempt": object["next_payment_attempt"].as_i64().map(|t| minute(ts(t))),
                    }),
                )
            };
            emails.push(Email {
                tenant,
                customer,
                kind: email_kind,
                scope: invoice.to_string(),
                recipient,
                data,
            });
        }
        "customer.subscription.updated" | "customer.subscription.deleted" => {
            let Some(sub) = object["id"].as_str() else {
                return Ok(0);
            };
            let Some(after) = billing.store.subscription(sub).await? else {
                return Ok(0);
            };
            let fallback = billing.fallback_plan().to_string();
            let ended = kind == "customer.subscription.deleted" || after.status == "canceled";
            let was = before.row.as_ref();
            // Stripe's `previous_attributes` say what the event changed, even when the stored
            // state already had it (a cancel through the API stores Stripe's answer first).
            let previous = &event["data"]["previous_attributes"];
            let scheduled_now = object["cancel_at_period_end"] == true
                && (previous["cancel_at_period_end"] == false
                    || was.is_some_and(|w| w.cancel_at_period_end == 0));
            let old_plan = previous["items"]["data"][0]["price"]["id"]
                .as_str()
                .and_then(|price| billing.plans.plan(price))
                .map(String::from)
                .or_else(|| was.map(|w| w.plan.clone()))
                .filter(|p| *p != after.plan);
            let cancel_data = |at_period_end: bool| {
                json!({
                    "plan": plan_name(billing, &after.plan),
                    "at_period_end": at_period_end,
                    "ends_on": day(after.period_end),
                    "fallback_plan": plan_name(billing, &fallback),
                    "fallback_limit": plan_limit(billing, &fallback),
                })
            };
            let mut push = |kind: Kind, scope: String, data: Value| {
                emails.push(Email {
                    tenant: after.tenant.clone(),
                    customer: after.customer.clone(),
                    kind,
                    scope,
                    recipient: String::new(),
                    data,
                })
            };
            if ended {
                push(Kind::Cancelled, format!("{sub}:ended"), cancel_data(false));
            } else if !ended && after.cancel_at_period_end == 1 && scheduled_now {
                let scope = format!("{sub}:at_period_end:{}", after.period_end.unix_timestamp());
                push(Kind::Cancelled, scope, cancel_data(true));
            }
            if let Some(old) = old_plan
                && !ended
            {
                push(
                    Kind::PlanChanged,
                    format!("{sub}:{id}"),
                    json!({
                        "old_plan": plan_name(billing, &old),
                        "new_plan": plan_name(billing, &after.plan),
                        "new_limit": plan_limit(billing, &after.plan),
                        "effective": day(ts(created)),
                    }),
                );
            }
        }
        _ => {}
    }
    for e in &emails {
        mailer.enqueue(e).await.map_err(mail_err)?;
        tracing::info!(key = %e.key(), event = %id, "customer email queued");
    }
    Ok(emails.len())
}

/// `2026-12-03T10:00:00Z` of a time (the admin listing).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(2900), "29.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(0), "0.00");
    }
}
