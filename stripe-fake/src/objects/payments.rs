//! Payment intent, charge and refund JSON: what a one-time purchase (a `payment`-mode Checkout
//! Session) creates and what refunding it changes, in the shapes of Stripe's API reference
//! (<https://docs.stripe.com/api/payment_intents/object>, <https://docs.stripe.com/api/charges/object>,
//! <https://docs.stripe.com/api/refunds/object>).

use serde_json::{Value, json};

/// A payment intent (the fake's are paid by card at once: `succeeded`).
#[derive(Debug, Clone)]
pub(crate) struct PaymentIntent {
    /// Id (`pi_…`).
    pub(crate) id: String,
    /// Amount in the smallest currency unit.
    pub(crate) amount: i64,
    /// Currency.
    pub(crate) currency: String,
    /// Customer id.
    pub(crate) customer: Option<String>,
    /// Description (`payment_intent_data[description]`).
    pub(crate) description: Option<String>,
    /// Metadata (`payment_intent_data[metadata]`).
    pub(crate) metadata: Value,
    /// The payment method that paid it (`pm_…`; the fake does not serve payment methods).
    pub(crate) payment_method: String,
    /// Its charge.
    pub(crate) latest_charge: Option<String>,
    /// Creation time.
    pub(crate) created: i64,
}

impl PaymentIntent {
    /// The payment intent object.
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "payment_intent", "amount": self.amount,
            "amount_capturable": 0, "amount_details": {"tip": {}}, "amount_received": self.amount,
            "application": null, "application_fee_amount": null, "automatic_payment_methods": null,
            "canceled_at": null, "cancellation_reason": null, "capture_method": "automatic_async",
            "client_secret": format!("{}_secret_fake", self.id), "confirmation_method": "automatic",
            "created": self.created, "currency": self.currency, "customer": self.customer,
            "description": self.description, "last_payment_error": null,
            "latest_charge": self.latest_charge, "livemode": false, "metadata": self.metadata,
            "next_action": null, "on_behalf_of": null, "payment_method": self.payment_method,
            "payment_method_configuration_details": null, "payment_method_options": null,
            "payment_method_types": ["card"], "processing": null, "receipt_email": null,
            "review": null, "setup_future_usage": null, "shipping": null, "source": null,
            "statement_descriptor": null, "statement_descriptor_suffix": null,
            "status": "succeeded", "transfer_data": null, "transfer_group": null,
        })
    }
}

/// A captured card charge of a payment intent.
#[derive(Debug, Clone)]
pub(crate) struct Charge {
    /// Id (`ch_…`).
    pub(crate) id: String,
    /// Amount charged (and captured).
    pub(crate) amount: i64,
    /// Amount refunded so far.
    pub(crate) amount_refunded: i64,
    /// Currency.
    pub(crate) currency: String,
    /// Customer id.
    pub(crate) customer: Option<String>,
    /// The customer's email, for `billing_details`.
    pub(crate) email: Option<String>,
    /// Description (the payment intent's).
    pub(crate) description: Option<String>,
    /// Metadata (the payment intent's at the charge).
    pub(crate) metadata: Value,
    /// The payment intent it belongs to.
    pub(crate) payment_intent: String,
    /// The payment method.
    pub(crate) payment_method: String,
    /// Creation time.
    pub(crate) created: i64,
}

impl Charge {
    /// What is left to refund.
    pub(crate) fn refundable(&self) -> i64 {
        self.amount - self.amount_refunded
    }

    /// The charge object. `refunded` is true once the whole amount is refunded; `refunds` is
    /// left out, as Stripe does since 2022-11-15 unless expanded
    /// (<https://docs.stripe.com/changelog/2022-11-15>).
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "charge", "amount": self.amount,
            "amount_captured": self.amount, "amount_refunded": self.amount_refunded,
            "application": null, "application_fee": null, "application_fee_amount": null,
            "balance_transaction": null,
            "billing_details": {
                "address": {"city": null, "country": null, "line1": null, "line2": null,
                            "postal_code": null, "state": null},
                "email": self.email, "name": null, "phone": null, "tax_id": null,
            },
            "calculated_statement_descriptor": "FAKE STRIPE", "captured": true,
            "created": self.created, "currency": self.currency, "customer": self.customer,
            "description": self.description, "disputed": false,
            "failure_balance_transaction": null, "failure_code": null, "failure_message": null,
            "fraud_details": {}, "livemode": false, "metadata": self.metadata,
            "on_behalf_of": null,
            "outcome": {
                "advice_code": null, "network_advice_code": null, "network_decline_code": null,
                "network_status": "approved_by_network", "reason": null, "risk_level": "normal",
                "risk_score": 20, "rule": null, "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": true, "payment_intent": self.payment_intent,
            "payment_method": self.payment_method, "payment_method_details": null,
            "receipt_email": null, "receipt_number": null, "receipt_url": null,
            "refunded": self.amount_refunded >= self.amount, "review": null, "shipping": null,
            "source": null, "source_transfer": null, "statement_descriptor": null,
            "statement_descriptor_suffix": null, "status": "succeeded", "transfer_data": null,
            "transfer_group": null,
        })
    }
}

/// A refund of (part of) a charge; the fake's card refunds succeed at once.
#[derive(Debug, Clone)]
pub(crate) struct Refund {
    /// Id (`re_…`).
    pub(crate) id: String,
    /// Amount refunded.
    pub(crate) amount: i64,
    /// The refunded charge.
    pub(crate) charge: String,
    /// Its payment intent.
    pub(crate) payment_intent: String,
    /// Currency.
    pub(crate) currency: String,
    /// Metadata.
    pub(crate) metadata: Value,
    /// `duplicate`, `fraudulent` or `requested_by_customer`.
    pub(crate) reason: Option<String>,
    /// Creation time.
    pub(crate) created: i64,
}

impl Refund {
    /// The refund object.
    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "refund", "amount": self.amount,
            "balance_transaction": null, "charge": self.charge, "created": self.created,
            "currency": self.currency, "destination_details": null, "metadata": self.metadata,
            "payment_intent": self.payment_intent, "reason": self.reason,
            "receipt_number": null, "source_transfer_reversal": null, "status": "succeeded",
            "transfer_reversal": null,
        })
    }
}
