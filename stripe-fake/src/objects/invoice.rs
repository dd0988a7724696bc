//! Invoice JSON: the lines of a subscription's invoice (one per subscription item and service
//! period) and the invoice object in its three states (paid, open, draft).

use serde_json::{Value, json};

use super::{Price, Subscription, list};

/// One line of an invoice: a subscription item's charge for a service period.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The subscription item.
    pub(crate) item_id: String,
    /// Its price.
    pub(crate) price: Price,
    /// The product's name (for the description).
    pub(crate) product_name: String,
    /// Units billed: the item's quantity, or a metered item's usage over the period.
    pub(crate) quantity: u64,
    /// Service period start.
    pub(crate) start: i64,
    /// Service period end.
    pub(crate) end: i64,
}

impl Line {
    /// `quantity × unit_amount`, in the smallest currency unit.
    pub(crate) fn amount(&self) -> i64 {
        self.price.charge(self.quantity)
    }

    fn json(&self, n: usize, invoice: &str, sub: &Subscription) -> Value {
        let amount = self.amount();
        let per = self
            .price
            .recurring
            .as_ref()
            .map_or("unit".to_string(), |r| r.interval.clone());
        let description = format!(
            "{} × {} (at {} / {per})",
            self.quantity,
            self.product_name,
            money(self.price.unit_amount, &self.price.currency)
        );
        json!({
            "id": format!("il_{}_{n}", invoice.trim_start_matches("in_")), "object": "line_item",
            "amount": amount, "currency": self.price.currency, "description": description,
            "discount_amounts": [], "discountable": true, "discounts": [], "invoice": invoice,
            "livemode": false, "metadata": {},
            "parent": {"type": "subscription_item_details", "invoice_item_details": null,
                       "subscription_item_details": {"invoice_item": null, "proration": false,
                           "proration_details": {"credited_items": null},
                           "subscription": sub.id, "subscription_item": self.item_id}},
            "period": {"end": self.end, "start": self.start},
            "pretax_credit_amounts": [],
            "pricing": {"type": "price_details",
                        "price_details": {"price": self.price.id, "product": self.price.product},
                        "unit_amount_decimal": self.price.unit_amount.to_string()},
            "quantity": self.quantity, "quantity_decimal": self.quantity.to_string(),
            "subtotal": amount, "taxes": [],
        })
    }
}

/// An amount as people read it (`$29.00`, `12.50 EUR`).
pub(crate) fn money(cents: i64, currency: &str) -> String {
    let text = format!("{}.{:02}", cents / 100, (cents % 100).abs());
    if currency.eq_ignore_ascii_case("usd") {
        format!("${text}")
    } else {
        format!("{text} {}", currency.to_uppercase())
    }
}

/// Where an invoice is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InvoiceState {
    /// Paid at once (the fake's successful payment).
    Paid,
    /// Finalized, payment failed: open, retried later.
    Open,
    /// Not finalized yet: a preview of the next invoice.
    Draft,
}

/// An invoice of a subscription with `lines`; `period_start`/`period_end` are the invoice's
/// period (Stripe: the period whose usage it bills; each line has its own service period).
#[allow(clippy::too_many_arguments)]
pub(crate) fn invoice(
    id: &str,
    sub: &Subscription,
    created: i64,
    period_start: i64,
    period_end: i64,
    lines: &[Line],
    state: InvoiceState,
    attempt_count: u64,
    billing_reason: &str,
) -> Value {
    let amount: i64 = lines.iter().map(Line::amount).sum();
    let paid = state == InvoiceState::Paid;
    let data: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(n, l)| l.json(n, id, sub))
        .collect();
    let next_attempt = match state {
        InvoiceState::Paid => Value::Null,
        InvoiceState::Open => json!(created + 3 * 86_400),
        // Stripe finalizes a subscription's draft invoice about an hour after creating it, then
        // charges it (https://docs.stripe.com/billing/subscriptions/webhooks#understand): the
        // preview of the next renewal is attempted an hour after the period ends.
        InvoiceState::Draft => json!(period_end + 3_600),
    };
    let finalized = (state != InvoiceState::Draft).then_some(created);
    let status = match state {
        InvoiceState::Paid => "paid",
        InvoiceState::Open => "open",
        InvoiceState::Draft => "draft",
    };
    json!({
        "id": id, "object": "invoice", "account_country": "US", "account_name": "Fake Stripe",
        "amount_due": amount, "amount_overpaid": 0, "amount_paid": if paid { amount } else { 0 },
        "amount_remaining": if paid { 0 } else { amount }, "amount_shipping": 0,
        "attempt_count": attempt_count, "attempted": attempt_count > 0,
        "auto_advance": !paid, "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null, "provider": null, "status": null},
        "billing_reason": billing_reason, "collection_method": "charge_automatically",
        "created": created, "currency": sub.price.currency, "customer": sub.customer,
        "default_tax_rates": [], "description": null, "discounts": [],
        "hosted_invoice_url": null, "issuer": {"type": "self"},
        "lines": list(data, false, &format!("/v1/invoices/{id}/lines")),
        "livemode": false, "metadata": {},
        "next_payment_attempt": next_attempt,
        "number": null,
        "parent": {"quote_details": null, "type": "subscription_details",
                   "subscription_details": {"metadata": sub.metadata, "subscription": sub.id}},
        "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
        "period_end": period_end, "period_start": period_start,
        "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
        "starting_balance": 0, "status": status,
        "status_transitions": {"finalized_at": finalized, "marked_uncollectible_at": null,
                               "paid_at": if paid { json!(created) } else { Value::Null }, "voided_at": null},
        "subtotal": amount, "total": amount,
    })
}
