//! billing-sync's rows: customer mapping, subscription states, handled webhooks, the usage report
//! ledger, the usage revisions (migration 0010) and the differences found by usage reconciliation.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Table;

/// The Stripe customer of a metering customer (`billing_customers`).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct BillingCustomerRow {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Stripe customer id (`cus_...`).
    pub stripe_customer_id: String,
    /// When it was stored (the oldest row per customer wins).
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub created_at: OffsetDateTime,
}

impl Table for BillingCustomerRow {
    const TABLE: &'static str = "billing_customers";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("tenant", "String"),
        ("customer", "String"),
        ("stripe_customer_id", "String"),
        ("created_at", "DateTime('UTC')"),
    ];
}

/// An applied state of a Stripe subscription (`billing_subscriptions`, newest `version` wins).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct BillingSubscriptionRow {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Stripe subscription id (`sub_...`).
    pub subscription_id: String,
    /// Stripe customer id.
    pub stripe_customer_id: String,
    /// Stripe price of the plan item.
    pub price_id: String,
    /// Catalog plan of that price.
    pub plan: String,
    /// Stripe status (`active`, `past_due`, `canceled`, ...).
    pub status: String,
    /// Current period start.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub period_start: OffsetDateTime,
    /// Current period end.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub period_end: OffsetDateTime,
    /// 1 when it ends at the period end.
    pub cancel_at_period_end: u8,
    /// When Stripe created the subscription.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub created: OffsetDateTime,
    /// Stripe time of the event this state came from.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub event_time: OffsetDateTime,
    /// Stripe event id (or `reconcile:...`).
    pub event_id: String,
    /// First failed payment not yet followed by a paid invoice (epoch = none).
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub payment_failed_at: OffsetDateTime,
    /// 1 once the payment grace period expired and the fallback plan applies.
    pub downgraded: u8,
    /// Row version (strictly increasing per subscription).
    pub version: u64,
    /// When the row was written.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub updated_at: OffsetDateTime,
}

impl Table for BillingSubscriptionRow {
    const TABLE: &'static str = "billing_subscriptions";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("tenant", "String"),
        ("customer", "String"),
        ("subscription_id", "String"),
        ("stripe_customer_id", "String"),
        ("price_id", "String"),
        ("plan", "String"),
        ("status", "String"),
        ("period_start", "DateTime('UTC')"),
        ("period_end", "DateTime('UTC')"),
        ("cancel_at_period_end", "UInt8"),
        ("created", "DateTime('UTC')"),
        ("event_time", "DateTime('UTC')"),
        ("event_id", "String"),
        ("payment_failed_at", "DateTime('UTC')"),
        ("downgraded", "UInt8"),
        ("version", "UInt64"),
        ("updated_at", "DateTime('UTC')"),
    ];
}

/// A Stripe webhook event already handled (`billing_webhook_events`).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct BillingWebhookEventRow {
    /// Stripe event id (`evt_...`).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Tenant it concerned ("" when unknown).
    pub tenant: String,
    /// Customer it concerned ("" when unknown).
    pub customer: String,
    /// `applied`, `unchanged`, `stale`, `ignored`, ...
    pub outcome: String,
    /// When it was handled.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub received_at: OffsetDateTime,
}

impl Table for BillingWebhookEventRow {
    const TABLE: &'static str = "billing_webhook_events";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("event_id", "String"),
        ("event_type", "String"),
        ("tenant", "String"),
        ("customer", "String"),
        ("outcome", "String"),
        ("received_at", "DateTime('UTC')"),
    ];
}

/// One hour of one customer's meter reported to Stripe (`billing_usage_reports`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct BillingUsageReportRow {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hour start.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub hour: OffsetDateTime,
    /// Meter event identifier sent.
    pub identifier: String,
    /// Stripe customer id.
    pub stripe_customer_id: String,
    /// Stripe meter event name.
    pub event_name: String,
    /// Quantity reported.
    pub quantity: f64,
    /// When Stripe accepted it.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub reported_at: OffsetDateTime,
}

impl Table for BillingUsageReportRow {
    const TABLE: &'static str = "billing_usage_reports";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("tenant", "String"),
        ("customer", "String"),
        ("meter", "String"),
        ("hour", "DateTime('UTC')"),
        ("identifier", "String"),
        ("stripe_customer_id", "String"),
        ("event_name", "String"),
        ("quantity", "Float64"),
        ("reported_at", "DateTime('UTC')"),
    ];
}

/// An hour where the rollup, the report ledger and Stripe disagree (`billing_usage_differences`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct BillingUsageDifferenceRow {
    /// When the check ran.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub checked_at: OffsetDateTime,
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hour start.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub hour: OffsetDateTime,
    /// Quantity in `usage_hourly`.
    pub rollup: f64,
    /// Quantity in the report ledger.
    pub reported: f64,
    /// Quantity in Stripe's meter event summary.
    pub stripe: f64,
    /// What the reconciliation did: `healed`, `unbillable`, `over_report`, `under_report`,
    /// `stripe_mismatch`, `pending` (migration 0010).
    pub verdict: String,
    /// Why the difference stays (empty when healed).
    pub reason: String,
}

impl Table for BillingUsageDifferenceRow {
    const TABLE: &'static str = "billing_usage_differences";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("checked_at", "DateTime('UTC')"),
        ("tenant", "String"),
        ("customer", "String"),
        ("meter", "String"),
        ("hour", "DateTime('UTC')"),
        ("rollup", "Float64"),
        ("reported", "Float64"),
        ("stripe", "Float64"),
        ("verdict", "String"),
        ("reason", "String"),
    ];
}

/// One revision of a customer-hour's meter events (`billing_usage_revisions`, newest `version`
/// wins): written as pending before it is sent, then sent, cancelling, cancelled or unbillable.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct BillingUsageRevisionRow {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hour start.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub hour: OffsetDateTime,
    /// 0 for the hour's first report, then 1, 2, ... per correction.
    pub revision: u32,
    /// Meter event identifier (empty when nothing is sent: value 0 or unbillable).
    pub identifier: String,
    /// Stripe customer id.
    pub stripe_customer_id: String,
    /// Stripe meter event name.
    pub event_name: String,
    /// Rollup quantity this revision covers (may be fractional).
    pub quantity: f64,
    /// Whole units sent to Stripe for it (the quantity plus the carried fraction, rounded down).
    pub value: i64,
    /// 0 pending, 1 sent, 2 cancelling, 3 cancelled, 4 unbillable.
    pub state: u8,
    /// Why it is unbillable (or what a cancellation answered).
    pub reason: String,
    /// When this state was written.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub written_at: OffsetDateTime,
    /// Row version (strictly increasing per writer; the newest state wins).
    pub version: u64,
}

impl Table for BillingUsageRevisionRow {
    const TABLE: &'static str = "billing_usage_revisions";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("tenant", "String"),
        ("customer", "String"),
        ("meter", "String"),
        ("hour", "DateTime('UTC')"),
        ("revision", "UInt32"),
        ("identifier", "String"),
        ("stripe_customer_id", "String"),
        ("event_name", "String"),
        ("quantity", "Float64"),
        ("value", "Int64"),
        ("state", "UInt8"),
        ("reason", "String"),
        ("written_at", "DateTime('UTC')"),
        ("version", "UInt64"),
    ];
}
