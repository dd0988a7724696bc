//! Features and entitlements: the catalog's features of three kinds (boolean, metered, config
//! value), and what one version of a plan grants of each ([`Entitlement`]).
//!
//! Resolution takes the customer's effective [`PlanTerms`] (its pinned version, else the catalog's
//! current one) and, for metered features, the quota answer of the feature's meter. Per-customer
//! terms (an enterprise contract's own limits and features, add-on features) are meant to be
//! folded into those terms before resolution, so this file needs no change for them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::{Catalog, Plan};
use crate::plan_version::PlanTerms;

/// What kind of feature it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// On or off (`advanced_analysis`): a plan lists it in `features`.
    Boolean,
    /// A meter with a per-period limit (`api_call`): the plan's `limits` (absent = unlimited,
    /// 0 = not included).
    Metered,
    /// A configuration value (`support = "priority"`): the plan's `config`.
    Config,
}

/// One allowed value of a config feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigValue {
    /// The value (`priority`).
    pub value: String,
    /// How it is shown (`Priority support`).
    pub name: String,
}

/// A feature of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Stable key (`advanced_analysis`), used in the API.
    pub key: String,
    /// Human name (`Advanced analysis`).
    pub name: String,
    /// Boolean, metered or config.
    pub kind: FeatureKind,
    /// Metered: the meter key (default: the feature key).
    #[serde(default)]
    pub meter: Option<String>,
    /// Config: the allowed values, in ascending order of level.
    #[serde(default)]
    pub values: Vec<ConfigValue>,
}

impl Feature {
    /// The meter of a metered feature.
    pub fn meter_key(&self) -> &str {
        self.meter.as_deref().unwrap_or(&self.key)
    }

    /// The display name of a config value (the value itself when it has none).
    pub fn value_name<'a>(&'a self, value: &'a str) -> &'a str {
        self.values
            .iter()
            .find(|v| v.value == value)
            .map_or(value, |v| v.name.as_str())
    }

    /// Whether `terms` include this feature (a metered one: with a limit above 0 or unlimited).
    pub fn included_in(&self, terms: &PlanTerms) -> bool {
        match self.kind {
            FeatureKind::Boolean => terms.has_feature(&self.key),
            FeatureKind::Config => terms.config_value(&self.key).is_some(),
            FeatureKind::Metered => terms.limit(self.meter_key()) != Some(0),
        }
    }

    /// How `terms` show this feature (`Priority support`, `500 API calls / month`), if included.
    pub fn label(&self, terms: &PlanTerms, meter_name: &str) -> Option<String> {
        if !self.included_in(terms) {
            return None;
        }
        Some(match self.kind {
            FeatureKind::Boolean => self.name.clone(),
            FeatureKind::Config => self
                .value_name(terms.config_value(&self.key).unwrap_or_default())
                .to_string(),
            FeatureKind::Metered => match terms.limit(self.meter_key()) {
                None => format!("Unlimited {meter_name}"),
                Some(l) => format!("{} {meter_name} / month", thousands(l)),
            },
        })
    }
}

/// `5000` → `5,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The cheapest plan that has a feature, offered when a customer's plan lacks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpgradeHint {
    /// Plan key.
    pub plan: String,
    /// Human name.
    pub name: String,
    /// Price per period in the smallest currency unit.
    pub price_cents: u64,
    /// ISO currency code.
    pub currency: String,
    /// The plan's current version.
    pub version: String,
}

impl UpgradeHint {
    /// The hint for a catalog plan (its current version).
    pub fn of(plan: &Plan) -> Self {
        Self {
            plan: plan.key.clone(),
            name: plan.name.clone(),
            price_cents: plan.price_cents,
            currency: plan.currency.clone(),
            version: plan.terms().version.clone(),
        }
    }
}

/// What a customer's plan grants of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Entitlement {
    /// Feature key.
    pub feature: String,
    /// Human name.
    pub name: String,
    /// Boolean, metered or config.
    pub kind: FeatureKind,
    /// Whether the customer may use it now (metered: one more unit fits the limit).
    pub has_access: bool,
    /// How the plan shows it (`Priority support`, `500 API calls / month`); null when not
    /// included.
    #[schema(required = true)]
    pub label: Option<String>,
    /// Config: the plan's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Metered: the meter key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// Metered: the limit (null = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Option<u64>>,
    /// Metered: usage in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<f64>,
    /// Metered: what is left (null = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Option<f64>>,
    /// Why not: `feature_not_in_plan` or (metered) `limit_reached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Without access: the cheapest plan of the catalog that includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeHint>,
}

/// A metered feature's quota: (limit, used, remaining, one more unit allowed).
pub type MeteredQuota = (Option<u64>, f64, Option<f64>, bool);

/// What `terms` grant of `feature`; `quota` is the meter's answer for metered features.
pub fn resolve(
    catalog: &Catalog,
    terms: &PlanTerms,
    feature: &Feature,
    quota: Option<MeteredQuota>,
) -> Entitlement {
    let meter_name = catalog
        .meter(feature.meter_key())
        .map_or(feature.name.as_str(), |m| m.name.as_str());
    let mut included = feature.included_in(terms);
    let mut e = Entitlement {
        feature: feature.key.clone(),
        name: feature.name.clone(),
        kind: feature.kind,
        has_access: included,
        label: feature.label(terms, meter_name),
        value: None,
        meter: None,
        limit: None,
        used: None,
        remaining: None,
        reason: None,
        upgrade: None,
    };
    match feature.kind {
        FeatureKind::Boolean => {}
        FeatureKind::Config => e.value = terms.config_value(&feature.key).map(str::to_string),
        FeatureKind::Metered => {
            e.meter = Some(feature.meter_key().to_string());
            if let Some((limit, used, remaining, allowed)) = quota {
                // The customer's limit (its overrides and grants included) decides.
                e.limit = Some(limit);
                e.used = Some(used);
                e.remaining = Some(remaining);
                included = limit != Some(0);
                e.has_access = included && allowed;
            } else {
                e.limit = Some(terms.limit(feature.meter_key()));
            }
        }
    }
    if !e.has_access {
        e.reason = Some(
            if included {
                "limit_reached"
            } else {
                "feature_not_in_plan"
            }
            .into(),
        );
        e.upgrade = catalog.cheapest_with(feature, terms).map(UpgradeHint::of);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(5000), "5,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_seed_plans_grant_the_seed_features() {
        let c = Catalog::default();
        let terms = |p: &str| c.plan(p).map(|p| p.terms().clone()).expect("plan");
        let feature = |k: &str| c.feature(k).expect("feature").clone();
        let free = terms("free");
        let starter = terms("starter");
        let analytics = feature("analytics");
        let e = resolve(&c, &free, &analytics, None);
        assert!(!e.has_access);
        assert_eq!(e.reason.as_deref(), Some("feature_not_in_plan"));
        assert_eq!(e.upgrade.map(|u| u.plan).as_deref(), Some("professional"));
        let e = resolve(&c, &starter, &feature("advanced_analysis"), None);
        assert!(e.has_access && e.reason.is_none() && e.upgrade.is_none());
        let e = resolve(&c, &starter, &feature("support"), None);
        assert_eq!(
            (e.value.as_deref(), e.label.as_deref()),
            (Some("priority"), Some("Priority support"))
        );
        let e = resolve(&c, &free, &feature("support"), None);
        assert_eq!(e.upgrade.map(|u| u.plan).as_deref(), Some("starter"));
        let calls = feature("api_call");
        let e = resolve(
            &c,
            &free,
            &calls,
            Some((Some(100), 100.0, Some(0.0), false)),
        );
        assert_eq!(e.reason.as_deref(), Some("limit_reached"));
        assert_eq!(e.label.as_deref(), Some("100 API calls / month"));
        let e = resolve(&c, &terms("enterprise"), &calls, None);
        assert_eq!(e.label.as_deref(), Some("Unlimited API calls"));
        assert_eq!(e.limit, Some(None));
    }
}
