//! Stripe-shaped JSON for the fake's objects (the shapes async-stripe's typed structs decode).
//!
//! Submodules: `invoice` (invoice lines and invoices), `checkout` (Checkout and portal sessions),
//! `payments` (payment intents, charges and refunds of one-time purchases).

mod checkout;
mod invoice;
mod payments;

use serde_json::{Map, Value, json};

pub(crate) use checkout::{CheckoutSession, portal_session};
pub(crate) use invoice::{InvoiceState, Line, invoice, money};
pub(crate) use payments::{Charge, PaymentIntent, Refund};

/// The API version the fake claims (async-stripe rc.10's `stripe_shared::version::VERSION`).
pub(crate) const API_VERSION: &str = "2026-09-30.endive";

/// A list envelope.
pub(crate) fn list(data: Vec<Value>, has_more: bool, url: &str) -> Value {
    json!({"object": "list", "data": data, "has_more": has_more, "url": url})
}

/// A Stripe error body.
pub(crate) fn error(kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> Value {
    let mut e = Map::new();
    e.insert("type".into(), json!(kind));
    if let Some(code) = code {
        e.insert("code".into(), json!(code));
        e.insert(
            "doc_url".into(),
            json!(format!("https://stripe.com/docs/error-codes/{code}")),
        );
    }
    e.insert("message".into(), json!(message));
    if let Some(param) = param {
        e.insert("param".into(), json!(param));
    }
    json!({ "error": e })
}

/// A product.
pub(crate) fn product(id: &str, name: &str, created: i64, metadata: &Value) -> Value {
    json!({
        "id": id, "object": "product", "active": true, "created": created, "default_price": null,
        "description": null, "images": [], "livemode": false, "marketing_features": [],
        "metadata": metadata, "name": name, "package_dimensions": null, "shippable": null,
        "statement_descriptor": null, "tax_code": null, "type": "service", "unit_label": null,
        "updated": created, "url": null,
    })
}

/// Recurring settings of a price.
#[derive(Debug, Clone)]
pub(crate) struct Recurring {
    /// `day`, `week`, `month`, `year`.
    pub(crate) interval: String,
    /// Intervals per period.
    pub(crate) interval_count: u64,
    /// `licensed` or `metered`.
    pub(crate) usage_type: String,
    /// Billing meter of a metered price.
    pub(crate) meter: Option<String>,
}

/// A price.
#[derive(Debug, Clone)]
pub(crate) struct Price {
    /// Id.
    pub(crate) id: String,
    /// Product id.
    pub(crate) product: String,
    /// Amount in the smallest unit.
    pub(crate) unit_amount: i64,
    /// Currency.
    pub(crate) currency: String,
    /// Recurring settings (none = one-time).
    pub(crate) recurring: Option<Recurring>,
    /// Lookup key.
    pub(crate) lookup_key: Option<String>,
    /// Nickname.
    pub(crate) nickname: Option<String>,
    /// Metadata.
    pub(crate) metadata: Value,
    /// Creation time.
    pub(crate) created: i64,
    /// Whether it can be used for new purchases (`POST /v1/prices/{id}` `active=false` archives it).
    pub(crate) active: bool,
    /// `billing_scheme=tiered`: the tiers mode (`volume` or `graduated`) and the tiers in order.
    pub(crate) tiers: Option<(String, Vec<Tier>)>,
}

/// One tier of a tiered price.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tier {
    /// The tier's last unit; `None` = `inf` (the last tier).
    pub(crate) up_to: Option<u64>,
    /// Per unit, in the smallest currency unit.
    pub(crate) unit_amount: i64,
    /// Added once when the tier is reached.
    pub(crate) flat_amount: i64,
}

impl Price {
    /// What `quantity` units cost, as Stripe prices them
    /// (<https://docs.stripe.com/products-prices/pricing-models#volume-tiers>,
    /// <https://docs.stripe.com/products-prices/pricing-models#graduated-tiers>): per unit, the
    /// quantity times `unit_amount`; volume tiers, every unit at the tier the total falls in, plus
    /// that tier's flat amount; graduated tiers, each unit at the tier it falls in, plus the flat
    /// amount of every tier reached. Nothing is charged for 0 units.
    pub(crate) fn charge(&self, quantity: u64) -> i64 {
        let q = i64::try_from(quantity).unwrap_or(i64::MAX);
        let Some((mode, tiers)) = &self.tiers else {
            return self.unit_amount.saturating_mul(q);
        };
        if quantity == 0 {
            return 0;
        }
        if mode == "volume" {
            let tier = tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|u| quantity <= u))
                .or(tiers.last());
            return tier.map_or(0, |t| t.flat_amount + t.unit_amount.saturating_mul(q));
        }
        let mut total = 0_i64;
        let mut below = 0_u64;
        for t in tiers {
            if quantity <= below {
                break;
            }
            let top = t.up_to.unwrap_or(u64::MAX).min(quantity);
            let units = i64::try_from(top - below).unwrap_or(i64::MAX);
            total = total
                .saturating_add(t.flat_amount)
                .saturating_add(t.unit_amount.saturating_mul(units));
            below = top;
        }
        total
    }

    /// Whether it is a metered (usage-based) recurring price.
    pub(crate) fn metered(&self) -> bool {
        self.recurring
            .as_ref()
            .is_some_and(|r| r.usage_type == "metered")
    }

    /// The price object.
    pub(crate) fn json(&self) -> Value {
        let recurring = self.recurring.as_ref().map(|r| {
            json!({
                "interval": r.interval, "interval_count": r.interval_count,
                "meter": r.meter, "trial_period_days": null, "usage_type": r.usage_type,
            })
        });
        let mut v = json!({
            "id": self.id, "object": "price", "active": self.active, "billing_scheme": "per_unit",
            "created": self.created, "currency": self.currency, "custom_unit_amount": null,
            "livemode": false, "lookup_key": self.lookup_key, "metadata": self.metadata,
            "nickname": self.nickname, "product": self.product, "recurring": recurring,
            "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null,
            "type": if self.recurring.is_some() { "recurring" } else { "one_time" },
            "unit_amount": self.unit_amount, "unit_amount_decimal": self.unit_amount.to_string(),
        });
        if let Some((mode, tiers)) = &self.tiers {
            v["billing_scheme"] = json!("tiered");
            v["tiers_mode"] = json!(mode);
            v["unit_amount"] = Value::Null;
            v["unit_amount_decimal"] = Value::Null;
            v["tiers"] = tiers
                .iter()
                .map(|t| {
                    json!({
                        "flat_amount": t.flat_amount, "flat_amount_decimal": t.flat_amount.to_string(),
                        "unit_amount": t.unit_amount, "unit_amount_decimal": t.unit_amount.to_string(),
                        "up_to": t.up_to,
                    })
                })
                .collect();
        }
        v
    }

    /// The legacy plan object that subscription items carry next to the price.
    pub(crate) fn plan_json(&self) -> Value {
        let r = self.recurring.clone().unwrap_or(Recurring {
            interval: "month".into(),
            interval_count: 1,
            usage_type: "licensed".into(),
            meter: None,
        });
        json!({
            "id": self.id, "object": "plan", "active": true, "amount": self.unit_amount,
            "amount_decimal": self.unit_amount.to_string(), "billing_scheme": "per_unit",
            "created": self.created, "currency": self.currency, "interval": r.interval,
            "interval_count": r.interval_count, "livemode": false, "metadata": self.metadata,
            "meter": r.meter, "nickname": self.nickname, "product": self.product,
            "tiers_mode": null, "transform_usage": null, "trial_period_days": null,
            "usage_type": r.usage_type,
        })
    }
}

/// A customer.
pub(crate) fn customer(
    id: &str,
    created: i64,
    email: Option<&str>,
    name: Option<&str>,
    metadata: &Value,
) -> Value {
    json!({
        "id": id, "object": "customer", "address": null, "balance": 0, "created": created,
        "currency": null, "default_source": null, "delinquent": false, "description": null,
        "email": email, "invoice_prefix": id.trim_start_matches("cus_").chars().take(8).collect::<String>().to_uppercase(),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null},
        "livemode": false, "metadata": metadata, "name": name, "next_invoice_sequence": 1,
        "phone": null, "preferred_locales": [], "shipping": null, "tax_exempt": "none",
        "test_clock": null,
    })
}

/// A billing meter.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    /// Id.
    pub(crate) id: String,
    /// Display name.
    pub(crate) display_name: String,
    /// Event name the meter counts.
    pub(crate) event_name: String,
    /// `sum`, `count` or `last`.
    pub(crate) formula: String,
    /// Payload key of the customer id.
    pub(crate) customer_key: String,
    /// Payload key of the value.
    pub(crate) value_key: String,
    /// `active` or `inactive`.
    pub(crate) status: String,
    /// Creation time.
    pub(crate) created: i64,
}

impl Meter {
    /// The meter object.
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "billing.meter", "created": self.created,
            "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": self.formula},
            "display_name": self.display_name, "event_name": self.event_name,
            "event_time_window": null, "livemode": false, "status": self.status,
            "status_transitions": {"deactivated_at": null}, "updated": self.created,
            "value_settings": {"event_payload_key": self.value_key},
        })
    }
}

/// A meter event as accepted.
#[derive(Debug, Clone)]
pub(crate) struct MeterEvent {
    /// Event name.
    pub(crate) event_name: String,
    /// Unique identifier.
    pub(crate) identifier: String,
    /// The payload as sent.
    pub(crate) payload: Map<String, Value>,
    /// Customer (from the meter's customer key).
    pub(crate) customer: String,
    /// Value (from the meter's value key).
    pub(crate) value: f64,
    /// Event time.
    pub(crate) timestamp: i64,
    /// When it was accepted.
    pub(crate) created: i64,
    /// When a meter event adjustment cancelled it (it no longer counts in summaries).
    pub(crate) cancelled: Option<i64>,
    /// Why asynchronous validation refused it (code, message): it never counts.
    pub(crate) invalid: Option<(String, String)>,
}

impl MeterEvent {
    /// The meter event object.
    pub(crate) fn json(&self) -> Value {
        json!({
            "object": "billing.meter_event", "created": self.created,
            "event_name": self.event_name, "identifier": self.identifier, "livemode": false,
            "payload": self.payload, "timestamp": self.timestamp,
        })
    }
}

/// A meter event adjustment of type `cancel` (Stripe answers `pending`: it is processed
/// asynchronously; the fake applies it at once).
pub(crate) fn meter_event_adjustment(event_name: &str, identifier: &str) -> Value {
    json!({
        "object": "billing.meter_event_adjustment", "livemode": false, "status": "pending",
        "event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier},
    })
}

/// A meter event summary.
pub(crate) fn summary(id: &str, meter: &str, start: i64, end: i64, value: f64) -> Value {
    json!({
        "id": id, "object": "billing.meter_event_summary", "aggregated_value": value,
        "end_time": end, "livemode": false, "meter": meter, "start_time": start,
    })
}

/// A subscription item after the first: the meter's price next to the plan's (Stripe bills a
/// metered item in arrears from the meter's usage,
/// <https://docs.stripe.com/billing/subscriptions/usage-based/pricing-models>).
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Id (`si_...`).
    pub(crate) id: String,
    /// Its price.
    pub(crate) price: Price,
    /// Quantity of a licensed price; none for a metered one (Stripe omits it).
    pub(crate) quantity: Option<u64>,
}

impl Item {
    /// Whether its price is metered (usage-based).
    pub(crate) fn metered(&self) -> bool {
        self.price.metered()
    }
}

/// A subscription.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    /// Id.
    pub(crate) id: String,
    /// Its first item's id (the plan's price).
    pub(crate) item_id: String,
    /// Customer id.
    pub(crate) customer: String,
    /// Price of the first item.
    pub(crate) price: Price,
    /// Quantity of the first item.
    pub(crate) quantity: u64,
    /// The other items (a meter's price), in the order they were given.
    pub(crate) extra_items: Vec<Item>,
    /// `active`, `past_due`, `canceled`, ...
    pub(crate) status: String,
    /// Creation time.
    pub(crate) created: i64,
    /// Current period start.
    pub(crate) period_start: i64,
    /// Current period end.
    pub(crate) period_end: i64,
    /// Ends at the period end.
    pub(crate) cancel_at_period_end: bool,
    /// When it was canceled (or asked to be).
    pub(crate) canceled_at: Option<i64>,
    /// When it ended.
    pub(crate) ended_at: Option<i64>,
    /// Metadata.
    pub(crate) metadata: Value,
    /// Latest invoice id.
    pub(crate) latest_invoice: Option<String>,
    /// The next renewal's payment fails (admin switch).
    pub(crate) fail_next_payment: bool,
}

impl Subscription {
    /// Every item: the first (the plan's price), then the others.
    pub(crate) fn items(&self) -> Vec<Item> {
        let first = Item {
            id: self.item_id.clone(),
            price: self.price.clone(),
            quantity: (!self.price.metered()).then_some(self.quantity),
        };
        std::iter::once(first)
            .chain(self.extra_items.iter().cloned())
            .collect()
    }

    /// The subscription object.
    pub(crate) fn json(&self) -> Value {
        let cancel_at = self.cancel_at_period_end.then_some(self.period_end);
        let items: Vec<Value> = self
            .items()
            .iter()
            .map(|i| {
                let mut item = json!({
                    "id": i.id, "object": "subscription_item", "billing_thresholds": null,
                    "created": self.created, "current_period_end": self.period_end,
                    "current_period_start": self.period_start, "discounts": [], "metadata": {},
                    "plan": i.price.plan_json(), "price": i.price.json(),
                    "subscription": self.id, "tax_rates": [],
                });
                if let Some(q) = i.quantity {
                    item["quantity"] = json!(q);
                }
                item
            })
            .collect();
        json!({
            "id": self.id, "object": "subscription", "application": null,
            "application_fee_percent": null, "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
            "billing_cycle_anchor": self.created, "billing_cycle_anchor_config": null,
            "billing_mode": {"type": "classic"}, "billing_schedules": [],
            "billing_thresholds": null, "cancel_at": cancel_at,
            "cancel_at_period_end": self.cancel_at_period_end, "canceled_at": self.canceled_at,
            "cancellation_details": {"comment": null, "feedback": null, "reason": self.canceled_at.map(|_| "cancellation_requested")},
            "collection_method": "charge_automatically", "created": self.created,
            "currency": self.price.currency, "customer": self.customer,
            "days_until_due": null, "default_payment_method": null, "default_source": null,
            "default_tax_rates": [], "description": null, "discounts": [],
            "ended_at": self.ended_at,
            "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
            "items": list(items, false, &format!("/v1/subscription_items?subscription={}", self.id)),
            "latest_invoice": self.latest_invoice, "livemode": false, "metadata": self.metadata,
            "next_pending_invoice_item_invoice": null, "on_behalf_of": null,
            "pause_collection": null, "payment_settings": null, "pending_invoice_item_interval": null,
            "pending_setup_intent": null, "pending_update": null, "schedule": null,
            "start_date": self.created, "status": self.status, "test_clock": null,
            "transfer_data": null, "trial_end": null, "trial_settings": null, "trial_start": null,
        })
    }

    /// Whether the subscription is over.
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "canceled" | "incomplete_expired")
    }
}

/// An event envelope.
pub(crate) fn event(
    id: &str,
    kind: &str,
    created: i64,
    object: Value,
    previous: Option<Value>,
) -> Value {
    let mut data = Map::new();
    data.insert("object".into(), object);
    if let Some(p) = previous {
        data.insert("previous_attributes".into(), p);
    }
    json!({
        "id": id, "object": "event", "api_version": API_VERSION, "created": created,
        "data": data, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": kind,
    })
}

/// A v2 `v1.billing.meter.error_report_triggered` event with its data: one invalid meter event of
/// `meter` with `code` and `message`, validated in the 10 seconds from `start`.
pub(crate) fn v2_error_report(
    id: &str,
    created: i64,
    meter: &str,
    code: &str,
    message: &str,
    identifier: &str,
    start: i64,
) -> Value {
    let rfc = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    json!({
        "id": id, "object": "v2.core.event", "context": null, "created": rfc(created),
        "livemode": false, "reason": null, "type": "v1.billing.meter.error_report_triggered",
        "related_object": {
            "id": meter, "type": "billing.meter", "url": format!("/v1/billing/meters/{meter}"),
        },
        "data": {
            "developer_message_summary": "There is 1 invalid event",
            "reason": {
                "error_count": 1,
                "error_types": [{
                    "code": code, "error_count": 1,
                    "sample_errors": [{
                        "error_message": message, "request": {"identifier": identifier},
                    }],
                }],
            },
            "validation_start": rfc(start), "validation_end": rfc(start + 10),
        },
    })
}

/// `event` as an endpoint on API version `version` receives it: "webhook events are structured
/// according to the API version set on the endpoint" (<https://docs.stripe.com/webhooks/versioning>).
/// The fake models the change billing-sync would meet, 2025-03-31.basil
/// (<https://docs.stripe.com/changelog/basil/2025-03-31/deprecate-subscription-current-period-start-and-end>,
/// <https://docs.stripe.com/changelog/basil/2025-03-31/adds-new-parent-field-to-invoicing-objects>):
/// before it, a subscription's period is on the subscription and not on its items, and an invoice
/// names its subscription at the top instead of under `parent`.
pub(crate) fn in_version(event: &Value, version: &str) -> Value {
    let mut e = event.clone();
    e["api_version"] = json!(version);
    if version >= "2025-03-31" {
        return e;
    }
    let object = &mut e["data"]["object"];
    match object["object"].as_str() {
        Some("subscription") => {
            let first = object["items"]["data"][0].clone();
            object["current_period_start"] = first["current_period_start"].clone();
            object["current_period_end"] = first["current_period_end"].clone();
            if let Some(items) = object["items"]["data"].as_array_mut() {
                for item in items {
                    if let Some(m) = item.as_object_mut() {
                        m.remove("current_period_start");
                        m.remove("current_period_end");
                    }
                }
            }
        }
        Some("invoice") => {
            let sub = object["parent"]["subscription_details"]["subscription"].clone();
            object["subscription"] = sub;
            if let Some(m) = object.as_object_mut() {
                m.remove("parent");
            }
        }
        _ => {}
    }
    e
}
