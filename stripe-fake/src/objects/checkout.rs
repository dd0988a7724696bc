//! Checkout Session and billing portal session JSON.

use serde_json::{Value, json};

/// A Checkout Session.
#[derive(Debug, Clone)]
pub(crate) struct CheckoutSession {
    /// Id.
    pub(crate) id: String,
    /// Customer id.
    pub(crate) customer: String,
    /// Line items: (price id, quantity).
    pub(crate) line_items: Vec<(String, Option<u64>)>,
    /// `subscription` or `payment` (one-time prices only).
    pub(crate) mode: String,
    /// Where the customer goes after paying.
    pub(crate) success_url: Option<String>,
    /// Where the customer goes after giving up.
    pub(crate) cancel_url: Option<String>,
    /// Caller's reference.
    pub(crate) client_reference_id: Option<String>,
    /// Session metadata.
    pub(crate) metadata: Value,
    /// Metadata for the subscription it creates (`subscription_data[metadata]`).
    pub(crate) subscription_metadata: Value,
    /// Metadata for the payment intent it creates in `payment` mode
    /// (`payment_intent_data[metadata]`).
    pub(crate) payment_intent_metadata: Value,
    /// The payment intent's description (`payment_intent_data[description]`).
    pub(crate) payment_intent_description: Option<String>,
    /// `open`, `complete`, `expired`.
    pub(crate) status: String,
    /// The subscription it created.
    pub(crate) subscription: Option<String>,
    /// The first invoice.
    pub(crate) invoice: Option<String>,
    /// The payment intent a completed `payment`-mode session created.
    pub(crate) payment_intent: Option<String>,
    /// Total of the line items (no discounts, shipping or tax: also the subtotal).
    pub(crate) amount_total: i64,
    /// Currency.
    pub(crate) currency: String,
    /// Creation time.
    pub(crate) created: i64,
    /// When it expires unless completed (24 hours after creation by default).
    pub(crate) expires_at: i64,
    /// The page that completes it.
    pub(crate) url: String,
}

impl CheckoutSession {
    /// The session object.
    pub(crate) fn json(&self) -> Value {
        let complete = self.status == "complete";
        json!({
            "id": self.id, "object": "checkout.session", "adaptive_pricing": null,
            "after_expiration": null, "allow_promotion_codes": null,
            "amount_subtotal": self.amount_total, "amount_total": self.amount_total,
            "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
            "billing_address_collection": null, "cancel_url": self.cancel_url,
            "client_reference_id": self.client_reference_id, "consent": null,
            "consent_collection": null, "created": self.created, "currency": self.currency,
            "custom_fields": [], "custom_text": {"after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null},
            "customer": self.customer, "customer_creation": null, "customer_details": null,
            "customer_email": null, "expires_at": self.expires_at,
            "invoice": self.invoice, "livemode": false, "locale": null, "metadata": self.metadata,
            "mode": self.mode, "payment_intent": self.payment_intent, "payment_link": null,
            "payment_method_collection": "always", "payment_method_types": ["card"],
            "payment_status": if complete { "paid" } else { "unpaid" },
            "phone_number_collection": {"enabled": false}, "recovered_from": null,
            "setup_intent": null, "shipping_address_collection": null, "shipping_cost": null,
            "shipping_options": [], "status": self.status, "submit_type": null,
            "subscription": self.subscription, "success_url": self.success_url,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted", "url": if self.status == "open" { json!(self.url) } else { Value::Null },
        })
    }
}

/// A billing portal session.
pub(crate) fn portal_session(
    id: &str,
    customer: &str,
    created: i64,
    return_url: Option<&str>,
    url: &str,
) -> Value {
    json!({
        "id": id, "object": "billing_portal.session", "configuration": "bpc_fake_default",
        "created": created, "customer": customer, "flow": null, "livemode": false,
        "locale": null, "on_behalf_of": null, "return_url": return_url, "url": url,
    })
}
