//! Plan versions: the terms of a plan (price, limits, features, config values) as one value whose
//! identity is a hash of its content, so changing any of them in the catalog makes a new version.
//!
//! A customer's plan-version event (`Change::PlanVersion` on `subscription.events`) carries the
//! whole [`PlanTerms`], so a customer keeps its version when the catalog file has moved on: the
//! log, not the file, holds what each customer bought. The catalog's current terms of each plan
//! are what new subscribers get and what an admin migration moves customers to.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pricing::{OnLimit, UsagePrice};

/// Hex digits of the SHA-256 kept as a version id (48 bits: distinct versions of one plan
/// collide with probability about n²/2⁴⁹).
pub const VERSION_LEN: usize = 12;

/// What a customer on one version of a plan gets and pays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanTerms {
    /// Plan key.
    pub plan: String,
    /// The version: the first 12 hex digits of the SHA-256 of the terms below (name excluded).
    pub version: String,
    /// The plan's human name when this version was made.
    pub name: String,
    /// Price per period in the smallest currency unit.
    pub price_cents: u64,
    /// ISO currency code.
    pub currency: String,
    /// Limit per period per meter key; a meter without an entry is unlimited.
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// Boolean features included (keys, sorted; `*` expanded).
    #[serde(default)]
    pub features: Vec<String>,
    /// Config feature values (`support = "priority"`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// What happens at a limit: `block` (the default) or `overage` (billed by `usage_prices`).
    #[serde(default, skip_serializing_if = "OnLimit::is_block")]
    pub on_limit: OnLimit,
    /// Usage price per meter key (per unit or tiered), billed on top of `price_cents`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage_prices: BTreeMap<String, UsagePrice>,
}

impl PlanTerms {
    /// Terms with their version computed from the content.
    pub fn new(
        plan: &str,
        name: &str,
        price_cents: u64,
        currency: &str,
        limits: BTreeMap<String, u64>,
        mut features: Vec<String>,
        config: BTreeMap<String, String>,
    ) -> Self {
        features.sort();
        features.dedup();
        let mut terms = Self {
            plan: plan.into(),
            version: String::new(),
            name: name.into(),
            price_cents,
            currency: currency.into(),
            limits,
            features,
            config,
            on_limit: OnLimit::Block,
            usage_prices: BTreeMap::new(),
        };
        terms.version = terms.content_version();
        terms
    }

    /// The terms with a limit behaviour and usage prices, their version recomputed.
    pub fn with_usage(
        mut self,
        on_limit: OnLimit,
        usage_prices: BTreeMap<String, UsagePrice>,
    ) -> Self {
        self.on_limit = on_limit;
        self.usage_prices = usage_prices;
        self.version = self.content_version();
        self
    }

    /// What the period costs with `usage` per meter: the price plus each meter's usage price, in
    /// cents (a meter without a usage price adds nothing).
    pub fn cost_cents(&self, usage: impl Fn(&str) -> u64) -> u64 {
        self.usage_prices
            .iter()
            .map(|(meter, price)| price.amount_cents(usage(meter)))
            .fold(self.price_cents, u64::saturating_add)
    }

    /// Whether usage of `meter` past its limit passes (and is billed) instead of being refused.
    pub fn overage_allowed(&self, meter: &str) -> bool {
        self.on_limit == OnLimit::Overage && self.usage_prices.contains_key(meter)
    }

    /// The version id of the content: SHA-256 over a canonical text of plan key, price, currency,
    /// limits, features and config (maps and lists sorted), first [`VERSION_LEN`] hex digits.
    pub fn content_version(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |name: &str, value: &str| {
            // Length-prefixed, so no two different contents give the same text.
            h.update(format!("{name}:{}:{value};", value.len()).as_bytes());
        };
        field("plan", &self.plan);
        field("price_cents", &self.price_cents.to_string());
        field("currency", &self.currency);
        for (meter, limit) in &self.limits {
            field("limit", &format!("{meter}={limit}"));
        }
        for f in &self.features {
            field("feature", f);
        }
        for (k, v) in &self.config {
            field("config", &format!("{k}={v}"));
        }
        // Added after the first versions: hashed only when set, so those keep their ids.
        if !self.on_limit.is_block() {
            field("on_limit", "overage");
        }
        for (meter, price) in &self.usage_prices {
            field("usage_price", &format!("{meter}={}", price.canonical()));
        }
        let mut hex = hex::encode(h.finalize());
        hex.truncate(VERSION_LEN);
        hex
    }

    /// The limit for `meter` in one period; `None` = unlimited.
    pub fn limit(&self, meter: &str) -> Option<u64> {
        self.limits.get(meter).copied()
    }

    /// Whether the boolean feature `key` is included.
    pub fn has_feature(&self, key: &str) -> bool {
        self.features
            .binary_search_by(|f| f.as_str().cmp(key))
            .is_ok()
    }

    /// The value of the config feature `key`, if the plan sets one.
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }
}

/// Serde for `Arc<PlanTerms>` (as the plain terms).
pub mod arc_terms {
    use super::*;

    /// Serializes the terms.
    pub fn serialize<S: serde::Serializer>(t: &Arc<PlanTerms>, s: S) -> Result<S::Ok, S::Error> {
        t.as_ref().serialize(s)
    }

    /// Deserializes the terms into a new `Arc`.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<PlanTerms>, D::Error> {
        PlanTerms::deserialize(d).map(Arc::new)
    }
}

/// Serde for `Option<Arc<PlanTerms>>` (as the plain terms or null).
pub mod option_arc_terms {
    use super::*;

    /// Serializes the terms or null.
    pub fn serialize<S: serde::Serializer>(
        t: &Option<Arc<PlanTerms>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        t.as_deref().serialize(s)
    }

    /// Deserializes the terms or null.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<PlanTerms>>, D::Error> {
        Option::<PlanTerms>::deserialize(d).map(|t| t.map(Arc::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(price: u64, limit: u64, features: &[&str]) -> PlanTerms {
        PlanTerms::new(
            "starter",
            "Starter",
            price,
            "usd",
            BTreeMap::from([("api_call".to_string(), limit)]),
            features.iter().map(|f| f.to_string()).collect(),
            BTreeMap::from([("support".to_string(), "priority".to_string())]),
        )
    }

    #[test]
    fn the_version_changes_with_price_limits_features_and_config_only() {
        let base = terms(2900, 500, &["a", "b"]);
        assert_eq!(base.version.len(), VERSION_LEN);
        assert_eq!(base.version, base.content_version());
        // Same content in another order, another name: the same version.
        let mut same = terms(2900, 500, &["b", "a", "a"]);
        same.name = "Starter (renamed)".into();
        same.version = same.content_version();
        assert_eq!(same.version, base.version);
        assert_ne!(terms(3900, 500, &["a", "b"]).version, base.version);
        assert_ne!(terms(2900, 600, &["a", "b"]).version, base.version);
        assert_ne!(terms(2900, 500, &["a"]).version, base.version);
        let mut config = base.clone();
        config.config.insert("support".into(), "dedicated".into());
        assert_ne!(config.content_version(), base.version);
    }

    #[test]
    fn terms_answer_features_and_round_trip() {
        let t = terms(2900, 500, &["b", "a"]);
        assert!(t.has_feature("a") && t.has_feature("b") && !t.has_feature("c"));
        assert_eq!(t.config_value("support"), Some("priority"));
        assert_eq!(t.limit("api_call"), Some(500));
        assert_eq!(t.limit("tokens"), None);
        let json = serde_json::to_string(&t).expect("json");
        assert_eq!(serde_json::from_str::<PlanTerms>(&json).expect("back"), t);
    }

    #[test]
    fn a_pinned_version_sets_limits_until_migrated_or_the_plan_changes() {
        use crate::Catalog;
        use crate::quota::{Change, PlanState, SubscriptionEvent};
        let now = time::macros::datetime!(2026-03-10 00:00 UTC);
        let catalog = Catalog::default();
        let newer = Catalog::from_toml(&crate::catalog::DEFAULT_CATALOG_TOML.replacen(
            "api_call = 500",
            "api_call = 800",
            1,
        ))
        .expect("valid");
        let event = |id: &str, change: Change| SubscriptionEvent {
            id: id.into(),
            tenant: "t".into(),
            customer: "c".into(),
            time: now,
            source: "admin".into(),
            change,
        };
        let plan = |p: &str, status: &str| Change::Plan {
            plan: p.into(),
            status: status.into(),
            period_start: None,
            period_end: None,
            cancel_at_period_end: false,
        };
        let pin = |c: &Catalog, p: &str| Change::PlanVersion {
            plan: p.into(),
            terms: c.plan(p).expect("plan").terms().clone(),
            from_version: None,
        };
        let mut s = PlanState::initial("t", "c", &catalog);
        s.apply(&event("1", plan("starter", "active")));
        s.apply(&event("2", pin(&catalog, "starter")));
        // The catalog moved to 800: the customer keeps 500 and its version.
        assert_eq!(s.limit(&newer, "api_call", now), Some(500));
        let v1 = catalog.plan("starter").expect("s").terms().version.clone();
        assert_eq!(s.plan_version(&newer, now), Some(v1.as_str()));
        // A status change of the same plan keeps the version; the JSON keeps it too.
        s.apply(&event("3", plan("starter", "past_due")));
        assert_eq!(s.limit(&newer, "api_call", now), Some(500));
        let back: PlanState =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("back");
        assert_eq!(back, s);
        // Migrated: the new version's limit.
        s.apply(&event("4", pin(&newer, "starter")));
        assert_eq!(s.limit(&newer, "api_call", now), Some(800));
        assert_eq!(s.limit(&catalog, "api_call", now), Some(800));
        // A migration for another plan than the customer's does nothing.
        s.apply(&event("5", pin(&newer, "professional")));
        assert_eq!(s.limit(&newer, "api_call", now), Some(800));
        // Another plan: the catalog's current version of it; canceled: the default plan's.
        s.apply(&event("6", plan("professional", "active")));
        assert!(s.terms.is_none());
        assert_eq!(s.limit(&newer, "api_call", now), Some(5000));
        s.apply(&event("7", pin(&catalog, "professional")));
        s.apply(&event("8", plan("professional", "canceled")));
        assert_eq!(s.limit(&newer, "api_call", now), Some(100));
    }
}
