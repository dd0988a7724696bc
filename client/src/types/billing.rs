//! billing-sync's bodies: subscription status, checkout, portal, cancel, invoice preview.

use serde::{Deserialize, Serialize};

/// Answer of billing-sync's `GET /subscription/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionStatus {
    /// The customer.
    pub customer: String,
    /// The plan in effect.
    pub plan: String,
    /// The plan of the subscription (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed_plan: Option<String>,
    /// Stripe's status, or `none`.
    pub status: String,
    /// Stripe subscription id.
    pub subscription_id: Option<String>,
    /// Stripe customer id.
    pub stripe_customer_id: Option<String>,
    /// Period start (RFC 3339).
    pub current_period_start: Option<String>,
    /// Period end (RFC 3339).
    pub current_period_end: Option<String>,
    /// Ends at the period end.
    pub cancel_at_period_end: bool,
    /// When the last payment failed, while unresolved.
    pub payment_failed_at: Option<String>,
    /// Moved to the fallback plan after the grace period.
    pub downgraded: bool,
}

/// Body of `POST /subscription/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// Plan key (`starter`, `professional`, `enterprise`).
    pub plan: String,
}

/// Answer of `POST /subscription/create` (201): where to send the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkout {
    /// The Checkout Session's URL.
    pub url: String,
    /// Checkout Session id.
    pub session_id: String,
    /// The plan bought.
    pub plan: String,
    /// Stripe customer id.
    pub stripe_customer_id: String,
    /// The enterprise contract bought (its price), when one is in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
}

/// An add-on of the catalog as a customer sees it (`GET /subscription/addons`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferedAddon {
    /// Add-on key.
    pub key: String,
    /// Human name.
    pub name: String,
    /// Price per unit in cents (per month when recurring).
    pub price_cents: u64,
    /// ISO currency code.
    pub currency: String,
    /// `one_time` or `recurring`.
    pub billing: String,
    /// Extra quantity of a meter per unit.
    pub grant: Option<super::AddonGrant>,
    /// Boolean features it adds.
    pub features: Vec<String>,
    /// Config values it sets.
    pub config: std::collections::BTreeMap<String, String>,
    /// Most units in one purchase.
    pub max_quantity: u32,
    /// Whether the customer can buy it now.
    pub purchasable: bool,
    /// Why not (`addon_not_in_plan`, `addon_active`, `addon_not_purchasable`).
    pub reason: Option<String>,
}

/// Answer of `GET /subscription/addons`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddonList {
    /// The customer.
    pub customer: String,
    /// Its plan.
    pub plan: String,
    /// The catalog's add-ons.
    pub available: Vec<OfferedAddon>,
    /// Its bought add-ons that count now.
    pub bought: Vec<super::AddonSummary>,
}

/// Answer of `POST /subscription/addons`: the Checkout Session for an add-on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddonCheckout {
    /// The Checkout Session's URL.
    pub url: String,
    /// Checkout Session id.
    pub session_id: String,
    /// The add-on.
    pub addon: String,
    /// Units.
    pub quantity: u32,
    /// Stripe customer id.
    pub stripe_customer_id: String,
}

/// Answer of `GET /subscription/portal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Portal {
    /// The billing portal's URL.
    pub url: String,
    /// Stripe customer id.
    pub stripe_customer_id: String,
}

/// Body of `POST /subscription/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Cancel now instead of at the period end.
    #[serde(default)]
    pub immediately: bool,
}

/// Answer of `POST /subscription/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancelled {
    /// Stripe subscription id.
    pub subscription_id: String,
    /// Stripe's status after the call.
    pub status: String,
    /// Ends at the period end.
    pub cancel_at_period_end: bool,
    /// Period end (RFC 3339).
    pub current_period_end: Option<String>,
    /// Cancelled now.
    pub canceled_now: bool,
}

/// One line of an invoice preview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewLine {
    /// `plan`, `usage` or `other`.
    pub kind: String,
    /// Stripe's description.
    pub description: Option<String>,
    /// Stripe price id.
    pub price: Option<String>,
    /// Plan key of a plan line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Meter key of a usage line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// Quantity.
    pub quantity: Option<u64>,
    /// Amount in cents.
    pub amount: i64,
    /// Line period start (RFC 3339).
    pub period_start: String,
    /// Line period end (RFC 3339).
    pub period_end: String,
}

/// Answer of `GET /v1/customers/{c}/invoice-preview` (billing-sync).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoicePreview {
    /// The customer.
    pub customer: String,
    /// Whether an invoice is coming.
    pub upcoming: bool,
    /// Why not (`no_subscription`, `ends_at_period_end`, `subscription_ended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The plan.
    pub plan: String,
    /// Stripe subscription id.
    pub subscription_id: Option<String>,
    /// Currency.
    pub currency: Option<String>,
    /// Amount due (cents).
    pub amount_due: Option<i64>,
    /// Subtotal (cents).
    pub subtotal: Option<i64>,
    /// Total (cents).
    pub total: Option<i64>,
    /// The period it closes: start.
    pub period_start: Option<String>,
    /// The period it closes: end.
    pub period_end: Option<String>,
    /// Next payment attempt.
    pub next_payment_attempt: Option<String>,
    /// The lines.
    pub lines: Vec<PreviewLine>,
}
