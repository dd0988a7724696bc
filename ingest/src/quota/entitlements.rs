//! Entitlements from the view: what a customer's plan version grants of each feature, with the
//! metered features' usage, answered under the customer's lock like a quota check; the
//! subscribers of a plan (for migrations); and the shared plan terms (one allocation per version).

use std::borrow::Cow;
use std::sync::Arc;

use schemas::entitlements::{Entitlement, Feature, FeatureKind, resolve};
use schemas::plan_version::PlanTerms;
use schemas::quota::PlanState;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::QuotaView;
use super::customer::Customer;
use super::shard::name_of;

/// A customer's entitlements: its plan version and what it grants of each feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntitlementsAnswer {
    /// Customer.
    pub customer: String,
    /// The plan in effect (a canceled plan: the default plan).
    pub plan: String,
    /// Its human name.
    pub plan_name: String,
    /// The version of the plan the customer is on.
    pub plan_version: String,
    /// The catalog's current version of that plan (what a migration moves the customer to).
    pub current_version: String,
    /// Subscription status.
    pub status: String,
    /// One entry per feature of the catalog (or the one asked for), in catalog order.
    pub entitlements: Vec<Entitlement>,
}

/// A customer on a plan, as a migration sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// Customer.
    pub customer: String,
    /// Its pinned version; `None` = the plan's floating current version.
    pub version: Option<String>,
}

impl QuotaView {
    /// The one shared copy of `terms` (by version), so a million customers on a version hold one.
    pub(super) fn shared_terms(&self, terms: &Arc<PlanTerms>) -> Arc<PlanTerms> {
        let mut known = self.terms.lock().unwrap_or_else(|e| e.into_inner());
        known
            .entry(terms.version.clone())
            .or_insert_with(|| terms.clone())
            .clone()
    }

    /// What the customer's plan grants: every feature, or only `feature` (which must be in the
    /// catalog). Metered features carry the quota of one more unit.
    pub fn entitlements(
        &self,
        tenant: &str,
        customer: &str,
        feature: Option<&Feature>,
        now: OffsetDateTime,
    ) -> EntitlementsAnswer {
        let tenant_id = self.symbols.get(tenant);
        let features: Vec<&Feature> = match feature {
            Some(f) => vec![f],
            None => self.catalog.features.iter().collect(),
        };
        let meter_ids: Vec<Option<u32>> = features
            .iter()
            .map(|f| match f.kind {
                FeatureKind::Metered => self.symbols.get(f.meter_key()),
                _ => None,
            })
            .collect();
        self.with_known(tenant_id, customer, |c| {
            let c = c.as_deref();
            let plan = self.plan_of(c);
            let catalog = &*self.catalog;
            let fallback = catalog.plan(&catalog.default_plan).map(|p| p.terms());
            // The plan's (or contract's) terms with the features of active add-ons.
            let default_terms = PlanTerms::default();
            let terms: Cow<'_, PlanTerms> = match (plan.terms_with_addons(catalog, now), fallback) {
                (Some(t), _) => t,
                (None, Some(t)) => Cow::Borrowed(&**t),
                (None, None) => Cow::Borrowed(&default_terms),
            };
            let terms = &*terms;
            let entitlements = features
                .iter()
                .zip(&meter_ids)
                .map(|(f, id)| {
                    let quota = (f.kind == FeatureKind::Metered).then(|| {
                        let a = self.answer(customer, c, *id, f.meter_key(), 1.0, now);
                        (a.limit, a.used, a.remaining, a.allowed)
                    });
                    resolve(catalog, terms, f, quota)
                })
                .collect();
            let current = catalog
                .plan(&terms.plan)
                .map_or_else(|| terms.version.clone(), |p| p.terms().version.clone());
            EntitlementsAnswer {
                customer: customer.into(),
                plan: terms.plan.clone(),
                plan_name: catalog
                    .plan(&terms.plan)
                    .map_or_else(|| terms.name.clone(), |p| p.name.clone()),
                plan_version: terms.version.clone(),
                current_version: current,
                status: plan.status.clone(),
                entitlements,
            }
        })
    }

    /// Whether the customer's plan grants `feature` now (a metered one: one more unit fits), and
    /// the full entitlement.
    pub fn entitlement(
        &self,
        tenant: &str,
        customer: &str,
        feature: &Feature,
        now: OffsetDateTime,
    ) -> Entitlement {
        let mut answer = self.entitlements(tenant, customer, Some(feature), now);
        answer
            .entitlements
            .pop()
            .unwrap_or_else(|| resolve(&self.catalog, &PlanTerms::default(), feature, None))
    }

    /// The customer's plan with this instance's pending changes (the default plan when unknown).
    fn plan_of<'a>(&'a self, c: Option<&'a Customer>) -> Cow<'a, PlanState> {
        match c {
            Some(c) => c.effective_plan(&self.default_plan),
            None => Cow::Borrowed(&self.default_plan),
        }
    }

    /// Every customer of `tenant` with a plan record on `plan` (pending changes included) and the
    /// version each is pinned to. Customers without a record are on the default plan's current
    /// version and need no migration.
    pub fn subscribers(&self, tenant: &str, plan: &str) -> Vec<Subscriber> {
        let Some(tenant) = self.symbols.get(tenant) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (i, c) in shard.customers.iter().enumerate() {
                if c.tenant != tenant {
                    continue;
                }
                let p = c.effective_plan(&self.default_plan);
                // `version` counts the changes folded in: 0 = no plan record, nothing pending.
                if p.version > 0 && p.plan == plan {
                    out.push(Subscriber {
                        customer: name_of(&shard.names, &shard.customers, i as u32).to_string(),
                        version: p
                            .terms
                            .as_ref()
                            .filter(|t| t.plan == plan)
                            .map(|t| t.version.clone()),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.customer.cmp(&b.customer));
        out
    }
}
