//! Request and answer bodies of the public API. The error body and the event come from
//! `schemas::api` itself; the rest mirror the services' types field for field, and the e2e
//! `client::drift` test decodes every real answer into them and encodes it back unchanged, so a
//! field added, renamed or retyped on either side fails the build's tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod billing;

pub use billing::*;
pub use schemas::api::{Accepted, ErrorBody, ErrorDetail, EventBatch, IncomingEvent};
pub use schemas::entitlements::{Entitlement, FeatureKind, UpgradeHint};
pub use schemas::event::FieldError;

/// `GET /v1/customers/{c}/quota`: may this customer use `quantity` more of `meter`?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaAnswer {
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Whether the requested quantity fits.
    pub allowed: bool,
    /// Usage in the current period.
    pub used: f64,
    /// The limit; `None` = unlimited.
    pub limit: Option<u64>,
    /// What is left; `None` = unlimited.
    pub remaining: Option<f64>,
    /// Usage in percent of the limit; `None` = unlimited.
    pub percent: Option<f64>,
    /// Usage is above the catalog's warning threshold (80 %).
    pub warning: bool,
    /// Current period start (RFC 3339).
    pub period_start: String,
    /// Current period end, exclusive (RFC 3339).
    pub period_end: String,
    /// The plan that sets the limit.
    pub plan: String,
    /// Subscription status.
    pub status: String,
    /// Why not allowed: `limit_reached` or `unknown_customer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Units over the limit after this request, billed by the plan's usage price (plans with
    /// `on_limit = "overage"`, once over the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overage: Option<f64>,
}

/// One check of `POST /v1/check`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckItem {
    /// Customer.
    pub customer: String,
    /// Meter (default: the catalog's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// Quantity (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<f64>,
    /// Endpoint recorded with the tracked event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Event id of the tracked event: a retry with the same id counts once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Extra `data` properties of the tracked event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// A feature the call needs: refused with `feature_not_in_plan` without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
}

/// Body of `POST /v1/check`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Check-and-track: record each allowed item as a usage event.
    #[serde(default)]
    pub track: bool,
    /// 1 to 1,000 checks.
    pub checks: Vec<CheckItem>,
}

/// One result of `POST /v1/check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The quota answer (after the reservation when tracked).
    #[serde(flatten)]
    pub quota: QuotaAnswer,
    /// Whether a usage event was recorded.
    pub tracked: bool,
    /// Id of the recorded event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The feature the check required (when it named one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// Refused for a feature: the cheapest plan that includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeHint>,
}

/// Answer of `POST /v1/check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResponse {
    /// One result per check, in order.
    pub results: Vec<CheckResult>,
}

/// Usage and cost at the period end at the current pace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Usage expected at the period end.
    pub projected_used: f64,
    /// In percent of the limit (`None` = unlimited).
    pub projected_percent: Option<f64>,
    /// The period's cost at the projected usage (cents): price plus this meter's usage price.
    pub projected_cost_cents: u64,
    /// What this meter's usage so far costs by the plan's usage price (cents).
    pub usage_cost_cents: u64,
    /// Currency.
    pub currency: String,
    /// The cheapest plan covering the projection, when the current one does not.
    pub recommended_plan: Option<String>,
}

/// The customer's plan in a usage answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// Plan key.
    pub key: Option<String>,
    /// Human name.
    pub name: Option<String>,
    /// Price per period in cents.
    pub price_cents: Option<u64>,
    /// ISO currency code.
    pub currency: Option<String>,
    /// Subscription status.
    pub status: String,
    /// Whether the subscription ends at the period end.
    pub cancel_at_period_end: bool,
    /// `block` (refused at the limit) or `overage` (usage runs over, billed).
    pub on_limit: String,
    /// The period so far: price plus usage priced by the usage prices (cents).
    pub cost_to_date_cents: u64,
    /// The enterprise contract in effect, if any.
    pub contract: Option<ContractSummary>,
    /// The bought add-ons that count now.
    #[serde(default)]
    pub addons: Vec<AddonSummary>,
}

/// A bought add-on in a usage answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddonSummary {
    /// The purchase (Stripe payment intent or subscription id).
    pub purchase: String,
    /// Add-on key.
    pub addon: String,
    /// Its name.
    pub name: String,
    /// `one_time` or `recurring`.
    pub billing: String,
    /// Units bought.
    pub quantity: u32,
    /// Extra quantity of a meter (all units together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<AddonGrant>,
    /// Boolean features it adds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Config values it sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// When it was bought (RFC 3339).
    pub bought_at: String,
    /// When it stops counting (RFC 3339); `None` = while it lives.
    pub expires_at: Option<String>,
}

/// Extra quantity of one meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddonGrant {
    /// Meter key.
    pub meter: String,
    /// Quantity.
    pub quantity: u64,
}

/// An enterprise contract in a usage answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractSummary {
    /// Contract id.
    pub id: String,
    /// Start (RFC 3339).
    pub starts_at: String,
    /// End, exclusive (RFC 3339); `None` = open-ended.
    pub ends_at: Option<String>,
}

/// One meter of a usage answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterUsage {
    /// The quota answer for one more unit.
    #[serde(flatten)]
    pub quota: QuotaAnswer,
    /// Usage in the period by endpoint.
    pub by_endpoint: BTreeMap<String, f64>,
    /// The projection to the period end.
    pub projection: Projection,
}

/// Answer of `GET /v1/customers/{c}/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageBody {
    /// The customer.
    pub customer: String,
    /// Whether the customer has a plan record or usage.
    pub known: bool,
    /// The effective plan.
    pub plan: PlanSummary,
    /// Current period start (RFC 3339).
    pub period_start: String,
    /// Current period end (RFC 3339).
    pub period_end: String,
    /// The dashboard warns above this percent.
    pub warn_percent: u8,
    /// Every meter of the catalog.
    pub meters: Vec<MeterUsage>,
}

/// Query of `GET /v1/customers/{c}/history`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Start (RFC 3339 or YYYY-MM-DD), inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `hour`, `day` (default) or `month`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
    /// `endpoint` for one series per endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// Meter (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
}

/// One point of a history series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Bucket start (RFC 3339).
    pub bucket: String,
    /// Endpoint (only with `group_by=endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Events.
    pub events: u64,
    /// Quantity.
    pub quantity: f64,
}

/// Answer of `GET /v1/customers/{c}/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryBody {
    /// The customer.
    pub customer: String,
    /// `hour`, `day` or `month`.
    pub granularity: String,
    /// Start of the series.
    pub from: String,
    /// End of the series.
    pub to: String,
    /// The buckets with usage, in time order.
    pub points: Vec<Point>,
}

/// Body of `POST /v1/customers/{c}/plan` (admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Plan key.
    pub plan: String,
    /// Subscription status (default `active`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Billing period start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    /// Billing period end (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// Whether the subscription ends at the period end.
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// Idempotency id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Body of `PUT /v1/customers/{c}/limits/{meter}` (admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitRequest {
    /// The limit; `None` = unlimited.
    pub limit: Option<u64>,
    /// Idempotency id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Body of `POST /v1/customers/{c}/grants` (admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrantRequest {
    /// Meter (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// Extra quantity (>= 1).
    pub quantity: u64,
    /// When it stops counting (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Idempotency id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Answer of the admin changes (202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeAccepted {
    /// Id of the subscription event.
    pub event_id: String,
    /// Every meter's quota after the change.
    pub quota: Vec<QuotaAnswer>,
}

/// A meter named in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterName {
    /// Meter key.
    pub key: String,
    /// Human name.
    pub name: String,
}

/// One plan of `GET /v1/plans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOffer {
    /// Plan key.
    pub key: String,
    /// Human name.
    pub name: String,
    /// Price per period in cents.
    pub price_cents: u64,
    /// ISO currency code.
    pub currency: String,
    /// Limit of the first meter; `None` = unlimited.
    pub limit: Option<u64>,
    /// Selling points.
    pub features: Vec<String>,
    /// Whether new customers get it.
    pub default: bool,
    /// The current version's id.
    pub version: String,
    /// `block` or `overage`.
    pub on_limit: String,
}

/// Answer of `GET /v1/plans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlansBody {
    /// The meter the limits are for.
    pub meter: MeterName,
    /// The warning threshold in percent.
    pub warn_percent: u8,
    /// The plan of new customers.
    pub default_plan: String,
    /// The plans in catalog order.
    pub plans: Vec<PlanOffer>,
}

/// Answer of `POST /v1/customers/{c}/dashboard-link` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardLink {
    /// The customer.
    pub customer: String,
    /// The link token (`mdl_...`), valid once.
    pub link: String,
    /// `/dashboard/#link=...`.
    pub path: String,
    /// The full URL when the request's host is a plain host name.
    pub url: Option<String>,
    /// Expiry (RFC 3339).
    pub expires_at: String,
}

/// `GET /usage`: the seed application's flat usage summary of the first meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedUsage {
    /// The customer.
    pub customer: String,
    /// Plan key.
    pub plan: Option<String>,
    /// The plan's human name.
    pub plan_name: Option<String>,
    /// Subscription status.
    pub status: String,
    /// Whether the subscription ends at the period end.
    pub cancel_at_period_end: bool,
    /// Usage in the current period.
    pub used: f64,
    /// The limit; `None` = unlimited.
    pub limit: Option<u64>,
    /// What is left; `None` = unlimited.
    pub remaining: Option<f64>,
    /// Percent of the limit; `None` = unlimited.
    pub percent: Option<f64>,
    /// Above the warning threshold.
    pub warning: bool,
    /// One more call would be refused.
    pub blocked: bool,
    /// Period start (RFC 3339).
    pub period_start: String,
    /// Period end (RFC 3339).
    pub period_end: String,
    /// Usage by endpoint.
    pub by_endpoint: BTreeMap<String, f64>,
    /// The projection to the period end.
    pub projection: Projection,
    /// What the plan version grants of each feature of the catalog.
    pub features: Vec<Entitlement>,
}

/// Body of `POST /usage/track`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackRequest {
    /// The endpoint called: 1-128 of `[A-Za-z0-9_.-]`.
    pub endpoint: String,
    /// Calls to record (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<f64>,
    /// Idempotency id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The usage in a `POST /usage/track` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackUsage {
    /// The customer.
    pub customer: String,
    /// The plan that sets the limit.
    pub plan: String,
    /// Usage, this call included when tracked.
    pub used: f64,
    /// The limit; `None` = unlimited.
    pub limit: Option<u64>,
    /// What is left.
    pub remaining: Option<f64>,
    /// Percent of the limit.
    pub percent: Option<f64>,
    /// Above the warning threshold.
    pub warning: bool,
    /// The next call would be refused.
    pub blocked: bool,
    /// Period start (RFC 3339).
    pub period_start: String,
    /// Period end (RFC 3339).
    pub period_end: String,
}

/// Answer of a recorded `POST /usage/track` (200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    /// `true`.
    pub tracked: bool,
    /// The endpoint recorded.
    pub endpoint: String,
    /// Id of the recorded event.
    pub event_id: Option<String>,
    /// The usage after this call.
    pub usage: TrackUsage,
}

/// Answer of a refused `POST /usage/track` (429): kept in [`crate::Error::Api`]'s detail, and
/// decodable on its own for callers that want the usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitReached {
    /// `false`.
    pub tracked: bool,
    /// `limit_reached`.
    pub error: ErrorDetail,
    /// The usage (nothing was recorded).
    pub usage: TrackUsage,
}

/// One day of `GET /usage/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Calls that day.
    pub total: f64,
    /// Calls by endpoint.
    pub by_endpoint: BTreeMap<String, f64>,
}

/// Answer of `GET /usage/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedHistory {
    /// The customer.
    pub customer: String,
    /// Days in the answer.
    pub days: u32,
    /// One entry per day, oldest first.
    pub history: Vec<DayUsage>,
}

/// Answer of `GET /v1/customers/{c}/entitlements`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitlementsAnswer {
    /// Customer.
    pub customer: String,
    /// The plan in effect.
    pub plan: String,
    /// Its human name.
    pub plan_name: String,
    /// The version of the plan the customer is on.
    pub plan_version: String,
    /// The catalog's current version of that plan.
    pub current_version: String,
    /// Subscription status.
    pub status: String,
    /// One entry per feature of the catalog, in catalog order.
    pub entitlements: Vec<Entitlement>,
}

/// Answer of `POST /v1/customers/{c}/plan/migrate` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migrated {
    /// Customer.
    pub customer: String,
    /// Its plan.
    pub plan: String,
    /// The version it was pinned to (`None`: the floating current version).
    pub from_version: Option<String>,
    /// The current version, which it is on now.
    pub to_version: String,
    /// Whether an event was produced.
    pub migrated: bool,
    /// Id of the `plan_version` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Every meter's quota after the migration.
    pub quota: Vec<QuotaAnswer>,
}

/// Body of `POST /v1/plans/{plan}/migrate` (admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigratePlanRequest {
    /// Only customers on this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// List who would move without producing anything.
    #[serde(default)]
    pub dry_run: bool,
}

/// One customer of a plan migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigratedCustomer {
    /// Customer.
    pub customer: String,
    /// The version it was on.
    pub from_version: Option<String>,
}

/// Answer of `POST /v1/plans/{plan}/migrate` (admin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanMigrated {
    /// Plan key.
    pub plan: String,
    /// The current version.
    pub to_version: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Customers moved (or to move).
    pub migrated: Vec<MigratedCustomer>,
    /// Subscribers already on the current version.
    pub unchanged: usize,
}
