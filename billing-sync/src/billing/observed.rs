//! A Stripe subscription as billing-sync sees it ([`Observed`]), where the observation came from,
//! and the helpers that read one.

use schemas::Catalog;
use schemas::rows::BillingSubscriptionRow;
use serde_json::Value;
use sha2::{Digest, Sha256};
use stripe_shared::Subscription;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::plans::Plans;

/// A subscription as Stripe shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `sub_...`.
    pub subscription_id: String,
    /// `cus_...`.
    pub stripe_customer_id: String,
    /// Price of the plan's item (the first item whose price a plan maps to, else the first).
    pub price_id: String,
    /// Its plan (from the price mapping, else `metadata.plan`), when known.
    pub plan: Option<String>,
    /// Stripe status.
    pub status: String,
    /// Current period start (unix s).
    pub period_start: i64,
    /// Current period end (unix s).
    pub period_end: i64,
    /// Ends at the period end.
    pub cancel_at_period_end: bool,
    /// Creation (unix s).
    pub created: i64,
    /// `metadata.tenant` and `metadata.customer`, when set.
    pub owner: Option<(String, String)>,
}

/// Where an observed state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A webhook event: `id` and Stripe `created` time; subject to the ordering rules.
    Event {
        /// Stripe event id.
        id: String,
        /// Stripe `created` (unix s).
        time: i64,
    },
    /// Fetched from Stripe just now (reconciliation, an API answer): current by definition.
    Fetched {
        /// `reconcile` or `api`.
        kind: &'static str,
    },
}

/// Whether a Stripe status is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "canceled" | "incomplete_expired")
}

pub(super) fn ts(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(super) fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map(Value::String).unwrap_or(Value::Null)
}

pub(super) fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

/// Reads what billing-sync needs from a Stripe subscription.
pub fn observe(sub: &Subscription, plans: &Plans, catalog: &Catalog) -> Observed {
    // A subscription may carry a meter's metered price next to the plan's: the plan is the item
    // whose price a plan maps to, whatever the order Stripe lists them in.
    let item = sub
        .items
        .data
        .iter()
        .find(|i| plans.plan(i.price.id.as_str()).is_some())
        .or_else(|| sub.items.data.first());
    let price_id = item
        .map(|i| i.price.id.as_str().to_string())
        .unwrap_or_default();
    let plan = plans.plan(&price_id).map(String::from).or_else(|| {
        sub.metadata
            .get("plan")
            .filter(|p| catalog.plan(p).is_some())
            .cloned()
    });
    let owner = match (sub.metadata.get("tenant"), sub.metadata.get("customer")) {
        (Some(t), Some(c)) if !t.is_empty() && !c.is_empty() => Some((t.clone(), c.clone())),
        _ => None,
    };
    Observed {
        subscription_id: sub.id.as_str().to_string(),
        stripe_customer_id: sub.customer.id().as_str().to_string(),
        price_id,
        plan,
        status: sub.status.as_str().to_string(),
        period_start: item.map_or(sub.start_date, |i| i.current_period_start),
        period_end: item.map_or(sub.start_date, |i| i.current_period_end),
        cancel_at_period_end: sub.cancel_at_period_end,
        created: sub.created,
        owner,
    }
}

/// The subscription that decides a customer's plan: the newest live one, else the newest.
pub fn current(rows: &[BillingSubscriptionRow]) -> Option<&BillingSubscriptionRow> {
    let key = |r: &&BillingSubscriptionRow| (r.created, r.subscription_id.clone());
    rows.iter()
        .filter(|r| !is_terminal(&r.status))
        .max_by_key(key)
        .or_else(|| rows.iter().max_by_key(key))
}
