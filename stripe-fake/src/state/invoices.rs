//! Invoices: the lines of a subscription's cycle (licensed items in advance, metered items in
//! arrears from the meter's usage), `POST /v1/invoices/create_preview` and `GET /v1/invoices/{id}`.

use serde_json::Value;

use super::State;
use super::params::{page, str_param};
use super::subscriptions::PERIOD_SECS;
use crate::error::{ApiErr, ApiResult};
use crate::objects::{self, InvoiceState, Item, Line, Subscription};

/// The parameters `create_preview` takes here; Stripe refuses any it does not know
/// ("Received unknown parameter"), and the fake refuses the ones it does not implement.
const PREVIEW_PARAMS: &[&str] = &["customer", "subscription", "preview_mode", "expand"];

impl State {
    /// What a metered item's meter counted for the subscription's customer with
    /// `start <= timestamp < end` (cancelled meter events excluded), in the meter's formula: the
    /// quantity Stripe bills for a metered price
    /// (<https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api>).
    fn metered_usage(&self, item: &Item, customer: &str, start: i64, end: i64) -> u64 {
        let Some(meter) = item
            .price
            .recurring
            .as_ref()
            .and_then(|r| r.meter.as_ref())
            .and_then(|m| self.meters.get(m))
        else {
            return 0;
        };
        let mut value = 0.0_f64;
        for e in self
            .meter_events
            .iter()
            .filter(|e| e.event_name == meter.event_name && e.customer == customer)
            .filter(|e| e.cancelled.is_none() && e.invalid.is_none())
            .filter(|e| e.timestamp >= start && e.timestamp < end)
        {
            match meter.formula.as_str() {
                "count" => value += 1.0,
                "last" => value = e.value,
                _ => value += e.value,
            }
        }
        // Meter event values are whole numbers (the fake refuses others).
        value.max(0.0).round() as u64
    }

    fn product_name(&self, product: &str) -> String {
        self.products
            .get(product)
            .and_then(|p| p["name"].as_str())
            .unwrap_or(product)
            .to_string()
    }

    /// The lines of the invoice that closes `sub`'s current period (Stripe's renewal invoice):
    /// each licensed item for the next period (billed in advance, `unit_amount × quantity`, unless
    /// the subscription ends at the period end), each metered item for the current period (billed
    /// in arrears: the meter's usage × `unit_amount`). One line per subscription item.
    pub(crate) fn cycle_lines(&self, sub: &Subscription) -> Vec<Line> {
        let (start, end) = (sub.period_start, sub.period_end);
        sub.items()
            .iter()
            .filter(|i| i.metered() || !sub.cancel_at_period_end)
            .map(|i| {
                let (quantity, from, to) = if i.metered() {
                    (self.metered_usage(i, &sub.customer, start, end), start, end)
                } else {
                    (i.quantity.unwrap_or(1), end, end + PERIOD_SECS)
                };
                Line {
                    item_id: i.id.clone(),
                    price: i.price.clone(),
                    product_name: self.product_name(&i.price.product),
                    quantity,
                    start: from,
                    end: to,
                }
            })
            .collect()
    }

    /// The metered items' usage over `[start, end)`, one line each (a final invoice).
    pub(crate) fn usage_lines(&self, sub: &Subscription, start: i64, end: i64) -> Vec<Line> {
        sub.items()
            .iter()
            .filter(|i| i.metered())
            .map(|i| Line {
                item_id: i.id.clone(),
                price: i.price.clone(),
                product_name: self.product_name(&i.price.product),
                quantity: self.metered_usage(i, &sub.customer, start, end),
                start,
                end,
            })
            .collect()
    }

    /// The lines of an invoice for the licensed items over the current period (the first
    /// invoice, and the admin's payment outcomes).
    pub(crate) fn licensed_lines(&self, sub: &Subscription) -> Vec<Line> {
        sub.items()
            .iter()
            .filter(|i| !i.metered())
            .map(|i| Line {
                item_id: i.id.clone(),
                price: i.price.clone(),
                product_name: self.product_name(&i.price.product),
                quantity: i.quantity.unwrap_or(1),
                start: sub.period_start,
                end: sub.period_end,
            })
            .collect()
    }

    /// `POST /v1/invoices/create_preview`, as Stripe documents it
    /// (<https://docs.stripe.com/api/invoices/create_preview>): the invoice a subscription will
    /// generate at its next renewal, not stored and not listed. Since API version 2025-03-31 a
    /// preview needs `subscription` (a customer alone no longer previews "the next invoice across
    /// its subscriptions":
    /// <https://docs.stripe.com/changelog/basil/2025-03-31/invoice-preview-api-deprecations>);
    /// `customer`, when given, must be the subscription's. The answer is an invoice object with an
    /// id prefixed `upcoming_in`, `status: "draft"`, `billing_reason: "upcoming"`, amounts in the
    /// smallest currency unit, one line per subscription item (see [`State::cycle_lines`]), the
    /// current period as `period_start`/`period_end`, and `next_payment_attempt` an hour after the
    /// period end. A canceled subscription, or one that ends at the period end, has no upcoming
    /// invoice (`invoice_upcoming_none`; the fake does not bill a final usage invoice).
    pub(crate) fn create_preview(&mut self, p: &Value) -> ApiResult {
        if let Value::Object(m) = p
            && let Some(unknown) = m.keys().find(|k| !PREVIEW_PARAMS.contains(&k.as_str()))
        {
            return Err(ApiErr::invalid(
                "parameter_unknown",
                format!("Received unknown parameter: {unknown}"),
                Some(unknown),
            ));
        }
        match str_param(p, "preview_mode") {
            None | Some("next" | "recurring") => {}
            Some(other) => {
                return Err(ApiErr::invalid(
                    "parameter_invalid_string",
                    format!("Invalid preview_mode: must be one of next or recurring (got {other})"),
                    Some("preview_mode"),
                ));
            }
        }
        let customer = str_param(p, "customer");
        if let Some(c) = customer
            && !self.customers.contains_key(c)
        {
            return Err(ApiErr::missing("customer", c, Some("customer")));
        }
        let Some(sub_id) = str_param(p, "subscription") else {
            return Err(ApiErr::invalid(
                "parameter_missing",
                "Missing required param: subscription. A preview needs the subscription (or \
                 subscription_details.items, schedule, or invoice_items) to preview.",
                Some("subscription"),
            ));
        };
        let sub = self
            .subscriptions
            .get(sub_id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("subscription", sub_id, Some("subscription")))?;
        if let Some(c) = customer
            && c != sub.customer
        {
            return Err(ApiErr::invalid(
                "parameter_invalid_string",
                format!("The subscription {sub_id} does not belong to customer {c}."),
                Some("customer"),
            ));
        }
        if sub.is_terminal() || sub.cancel_at_period_end {
            return Err(ApiErr::invalid(
                "invoice_upcoming_none",
                format!(
                    "No upcoming invoices for subscription {sub_id}: it is canceled or ends at \
                     the period end."
                ),
                Some("subscription"),
            ));
        }
        let lines = self.cycle_lines(&sub);
        let id = format!("upcoming_{}", self.id("in"));
        Ok(objects::invoice(
            &id,
            &sub,
            self.now(),
            sub.period_start,
            sub.period_end,
            &lines,
            InvoiceState::Draft,
            0,
            "upcoming",
        ))
    }

    /// `GET /v1/invoices?subscription=…`: the subscription's invoices, newest first.
    pub(crate) fn list_invoices(&self, p: &Value) -> ApiResult {
        let sub = str_param(p, "subscription");
        let mut items: Vec<Value> = self
            .invoices
            .values()
            .filter(|i| {
                sub.is_none_or(|s| i["parent"]["subscription_details"]["subscription"] == s)
            })
            .cloned()
            .collect();
        items.sort_by(|a, b| {
            b["created"]
                .as_i64()
                .cmp(&a["created"].as_i64())
                .then(b["id"].as_str().cmp(&a["id"].as_str()))
        });
        page(items, p, "/v1/invoices")
    }

    /// `GET /v1/invoices/{id}`.
    pub(crate) fn invoice(&self, id: &str) -> ApiResult {
        self.invoices
            .get(id)
            .cloned()
            .ok_or_else(|| ApiErr::missing("invoice", id, Some("invoice")))
    }
}
