//! An admin's migration of a Stripe subscriber to its plan's current version: the subscription's
//! plan item moves to the plan's current Stripe price (no proration: the new price bills from the
//! next invoice) when the price changed, then the customer is pinned to the current terms with a
//! `plan_version` event. The event id is the ingest's migration id
//! (`migrate:{plan}:{version}:{customer}`), so migrating through either service, or twice, pins
//! once; the Stripe update carries an idempotency key of the subscription and the version.

use schemas::quota::Change;
use serde_json::{Value, json};
use stripe_billing::subscription::{
    RetrieveSubscription, UpdateSubscription, UpdateSubscriptionItems,
    UpdateSubscriptionProrationBehavior,
};

use super::Billing;
use crate::Result;

/// Why a migration is refused: (HTTP status, code, message).
pub type MigrateRefusal = (u16, &'static str, String);

impl Billing {
    /// Migrates (tenant, customer)'s live subscription to its plan's current version.
    pub async fn migrate_subscriber(
        &self,
        tenant: &str,
        customer: &str,
    ) -> Result<std::result::Result<Value, MigrateRefusal>> {
        let Some(row) = self.live_subscription(tenant, customer).await? else {
            return Ok(Err((
                404,
                "no_subscription",
                format!(
                    "customer {customer:?} has no live Stripe subscription; \
                     the ingest's POST /v1/customers/{{c}}/plan/migrate pins others"
                ),
            )));
        };
        let Some(plan) = self.catalog.plan(&row.plan) else {
            return Ok(Err((
                409,
                "unknown_plan",
                format!(
                    "the subscription's plan {:?} is not in the catalog",
                    row.plan
                ),
            )));
        };
        let terms = plan.terms().clone();
        let state = self.plan_state(tenant, customer).await?;
        let from_version = state
            .terms
            .as_ref()
            .filter(|t| t.plan == plan.key)
            .map(|t| t.version.clone());
        let to_price = self.plans.price(&plan.key).map(String::from);
        let mut moved = false;
        if let Some(to) = to_price.as_deref().filter(|to| *to != row.price_id) {
            let sub = self
                .stripe
                .send(
                    "retrieve_subscription",
                    &RetrieveSubscription::new(row.subscription_id.as_str()),
                    None,
                )
                .await?;
            let Some(item) = sub
                .items
                .data
                .iter()
                .find(|i| i.price.id.as_str() == row.price_id)
            else {
                return Ok(Err((
                    409,
                    "subscription_changed",
                    format!(
                        "subscription {} no longer has price {}; reconcile and retry",
                        row.subscription_id, row.price_id
                    ),
                )));
            };
            let mut change = UpdateSubscriptionItems::new();
            change.id = Some(item.id.as_str().to_string());
            change.price = Some(to.to_string());
            let updated = self
                .stripe
                .send(
                    "update_subscription",
                    &UpdateSubscription::new(row.subscription_id.as_str())
                        .items(vec![change])
                        .proration_behavior(UpdateSubscriptionProrationBehavior::None),
                    Some(&format!(
                        "migrate:{}:{}",
                        row.subscription_id, terms.version
                    )),
                )
                .await?;
            let obs = super::observe(&updated, &self.plans, &self.catalog);
            self.apply(obs, super::Source::Fetched { kind: "api" })
                .await?;
            moved = true;
        }
        let migrated = from_version.as_deref() != Some(terms.version.as_str());
        if migrated {
            self.produce(
                tenant,
                customer,
                format!("migrate:{}:{}:{customer}", plan.key, terms.version),
                "admin",
                Change::PlanVersion {
                    plan: plan.key.clone(),
                    terms: terms.clone(),
                    from_version: from_version.clone(),
                },
            )
            .await?;
        }
        Ok(Ok(json!({
            "customer": customer, "plan": plan.key, "from_version": from_version,
            "to_version": terms.version, "migrated": migrated,
            "subscription_id": row.subscription_id, "stripe_price_from": row.price_id,
            "stripe_price_to": to_price, "price_moved": moved,
        })))
    }
}
