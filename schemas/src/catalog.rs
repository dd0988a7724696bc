//! Meters, features and plans as configuration: what is counted, how, and what each plan allows
//! (its limits, boolean features and config values) at what price.
//!
//! Each plan's terms are also kept as [`PlanTerms`] with a content-hash version
//! ([`crate::plan_version`]): the version new subscribers get. The feature kinds and their
//! resolution are in [`crate::entitlements`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addon::CatalogAddon;
use crate::entitlements::{Feature, FeatureKind};
use crate::plan_version::PlanTerms;
use crate::pricing::{OnLimit, Tier, TiersMode, UsagePrice};
use crate::{Error, Result};

/// In a plan's `features`: every boolean feature of the catalog.
pub const ALL_FEATURES: &str = "*";

/// The built-in catalog (the seed's four plans and the `api_call` meter).
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../catalog.toml");

/// How a meter folds event values into a number.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of events.
    Count,
    /// Sum of the value property.
    Sum,
    /// Largest value of the value property.
    Max,
    /// Number of distinct values of the unique property.
    UniqueCount,
}

/// A meter: the CloudEvents `type` of the events it counts, and how it counts them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    /// The meter key, equal to the event `type`.
    pub key: String,
    /// Human name.
    pub name: String,
    /// How values are folded.
    pub aggregation: Aggregation,
    /// `data` property holding the value (sum, max).
    #[serde(default)]
    pub value_property: Option<String>,
    /// Value used when the property is absent (e.g. 1 call).
    #[serde(default)]
    pub default_value: Option<f64>,
    /// `data` property counted distinctly (unique_count).
    #[serde(default)]
    pub unique_property: Option<String>,
    /// `data` property used as the breakdown dimension (the rollups' `endpoint` column).
    #[serde(default)]
    pub dimension: Option<String>,
}

/// A plan: price, per-meter limits, boolean features and config values.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Plan key (`free`, `starter`, ...).
    pub key: String,
    /// Human name.
    pub name: String,
    /// Monthly price in the smallest currency unit.
    pub price_cents: u64,
    /// ISO currency code.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Environment variable that holds the Stripe price id of this plan.
    #[serde(default)]
    pub stripe_price_env: Option<String>,
    /// Boolean features included: keys of the catalog's `[[features]]`, or `"*"` for all.
    #[serde(default)]
    pub features: Vec<String>,
    /// Config feature values: feature key → one of its `values` (`support = "priority"`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Limit per billing period per meter key; a meter without an entry is unlimited.
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// At a limit: `block` (refuse, the default) or `overage` (pass; the units over it are billed
    /// by the meter's usage price, which the plan must then have).
    #[serde(default)]
    pub on_limit: OnLimit,
    /// Usage price per meter key: per unit or volume/graduated tiers over the period's usage,
    /// billed through the plan's Stripe metered price with the same tiers.
    #[serde(default)]
    pub usage_prices: BTreeMap<String, CatalogUsagePrice>,
    /// The terms above as the plan's current version (made when the catalog is loaded).
    #[serde(skip)]
    terms: Arc<PlanTerms>,
}

fn default_currency() -> String {
    "usd".into()
}

/// A plan's usage price for one meter, as the catalog writes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogUsagePrice {
    /// `volume` or `graduated` (tiers); absent with `unit_cents` for a plain per-unit price.
    #[serde(default)]
    pub mode: Option<TiersMode>,
    /// Tiers over the period's usage, `up_to` strictly increasing, the last one open.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    /// A plain per-unit price in cents (instead of tiers).
    #[serde(default)]
    pub unit_cents: Option<u64>,
    /// Environment variable holding the Stripe metered price with these tiers
    /// (`STRIPE_USAGE_PRICE_ID_PROFESSIONAL`).
    #[serde(default)]
    pub stripe_price_env: Option<String>,
}

impl CatalogUsagePrice {
    /// The price as tiers (a per-unit price is one open tier), checked.
    pub fn price(&self, at: &str) -> Result<UsagePrice> {
        let price = match (self.mode, self.unit_cents, self.tiers.is_empty()) {
            (Some(mode), None, _) => UsagePrice {
                mode,
                tiers: self.tiers.clone(),
            },
            (None, Some(unit_cents), true) => UsagePrice {
                mode: TiersMode::Volume,
                tiers: vec![Tier {
                    up_to: None,
                    unit_cents,
                    flat_cents: 0,
                }],
            },
            _ => {
                return Err(Error::CatalogInvalid(format!(
                    "{at}: give either mode with tiers, or unit_cents alone"
                )));
            }
        };
        price.validate(at)?;
        Ok(price)
    }
}

impl Plan {
    /// The limit for `meter` in one billing period; `None` means unlimited.
    pub fn limit(&self, meter: &str) -> Option<u64> {
        self.limits.get(meter).copied()
    }

    /// The plan's current version: what new subscribers get.
    pub fn terms(&self) -> &Arc<PlanTerms> {
        &self.terms
    }
}

/// The catalog of meters and plans.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Alert thresholds in percent, ascending.
    pub alert_thresholds: Vec<u8>,
    /// The dashboard warns above this percent.
    pub warn_percent: u8,
    /// Plan of a customer seen for the first time.
    #[serde(default = "default_plan")]
    pub default_plan: String,
    /// Meters, by event type.
    pub meters: Vec<Meter>,
    /// Features (boolean, metered, config), in display order.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// Plans.
    pub plans: Vec<Plan>,
    /// Purchasable add-ons (call packs, feature add-ons), in display order.
    #[serde(default)]
    pub addons: Vec<CatalogAddon>,
    #[serde(skip)]
    meter_index: HashMap<String, usize>,
}

fn default_plan() -> String {
    "free".into()
}

impl Default for Catalog {
    fn default() -> Self {
        // The embedded catalog is checked by a unit test; failing here is a build defect.
        #[allow(clippy::expect_used)]
        Self::from_toml(DEFAULT_CATALOG_TOML).expect("embedded catalog.toml is valid")
    }
}

impl Catalog {
    /// Parses and validates a catalog from TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut catalog: Catalog =
            toml::from_str(text).map_err(|e| Error::CatalogParse(e.to_string()))?;
        catalog.meter_index = catalog
            .meters
            .iter()
            .enumerate()
            .map(|(i, m)| (m.key.clone(), i))
            .collect();
        catalog.validate()?;
        catalog.validate_features()?;
        catalog.validate_usage_prices()?;
        catalog.validate_addons()?;
        for i in 0..catalog.plans.len() {
            let terms = catalog.current_terms(&catalog.plans[i]);
            catalog.plans[i].terms = Arc::new(terms);
        }
        Ok(catalog)
    }

    /// The terms a plan's entries make (its `*` expanded), with their version.
    fn current_terms(&self, p: &Plan) -> PlanTerms {
        let features: Vec<String> = if p.features.iter().any(|f| f == ALL_FEATURES) {
            self.features
                .iter()
                .filter(|f| f.kind == FeatureKind::Boolean)
                .map(|f| f.key.clone())
                .collect()
        } else {
            p.features.clone()
        };
        // Checked by `validate_usage_prices` before the terms are made.
        let usage_prices = p
            .usage_prices
            .iter()
            .filter_map(|(m, u)| Some((m.clone(), u.price("").ok()?)))
            .collect();
        PlanTerms::new(
            &p.key,
            &p.name,
            p.price_cents,
            &p.currency,
            p.limits.clone(),
            features,
            p.config.clone(),
        )
        .with_usage(p.on_limit, usage_prices)
    }

    fn validate_usage_prices(&self) -> Result<()> {
        for p in &self.plans {
            for (meter, price) in &p.usage_prices {
                let at = format!("plans[{}].usage_prices.{meter}", p.key);
                if self.meter(meter).is_none() {
                    return Err(Error::CatalogInvalid(format!(
                        "{at}: unknown meter {meter:?}"
                    )));
                }
                price.price(&at)?;
            }
            if p.on_limit == OnLimit::Overage
                && let Some(meter) = p.limits.keys().find(|m| !p.usage_prices.contains_key(*m))
            {
                return Err(Error::CatalogInvalid(format!(
                    "plans[{}].on_limit = \"overage\": the limited meter {meter:?} needs a \
                         usage price (usage_prices.{meter}), or the units over the limit would be free",
                    p.key
                )));
            }
        }
        Ok(())
    }

    fn validate_addons(&self) -> Result<()> {
        let mut keys = HashSet::new();
        for a in &self.addons {
            a.validate(self)?;
            if !keys.insert(a.key.as_str()) {
                return Err(Error::CatalogInvalid(format!(
                    "addons[{}]: the add-on is defined twice",
                    a.key
                )));
            }
        }
        Ok(())
    }

    /// The add-on with `key`.
    pub fn addon(&self, key: &str) -> Option<&CatalogAddon> {
        self.addons.iter().find(|a| a.key == key)
    }

    /// The feature with `key`.
    pub fn feature(&self, key: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.key == key)
    }

    /// The cheapest plan (then the first in catalog order) whose current version includes
    /// `feature`, for a customer on `current`: for a metered feature, one with a higher limit.
    pub fn cheapest_with(&self, feature: &Feature, current: &PlanTerms) -> Option<&Plan> {
        self.plans
            .iter()
            .filter(|p| match feature.kind {
                FeatureKind::Metered => {
                    let meter = feature.meter_key();
                    match (p.terms.limit(meter), current.limit(meter)) {
                        (_, None) => false,
                        (None, Some(_)) => true,
                        (Some(a), Some(b)) => a > b,
                    }
                }
                _ => feature.included_in(&p.terms),
            })
            .min_by_key(|p| p.price_cents)
    }

    fn validate_features(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::CatalogInvalid(m));
        let mut keys = HashSet::new();
        for f in &self.features {
            if !crate::token::is_token(&f.key, 64) || f.key == ALL_FEATURES {
                return invalid(format!(
                    "feature key {:?} must be 1-64 of [A-Za-z0-9_.-]",
                    f.key
                ));
            }
            if !keys.insert(f.key.as_str()) {
                return invalid(format!("feature {:?} is defined twice", f.key));
            }
            match f.kind {
                FeatureKind::Metered if self.meter(f.meter_key()).is_none() => {
                    return invalid(format!(
                        "metered feature {:?} names unknown meter {:?}",
                        f.key,
                        f.meter_key()
                    ));
                }
                FeatureKind::Config if f.values.is_empty() => {
                    return invalid(format!("config feature {:?} needs values", f.key));
                }
                FeatureKind::Boolean | FeatureKind::Metered if !f.values.is_empty() => {
                    return invalid(format!("only config features have values ({:?})", f.key));
                }
                FeatureKind::Boolean | FeatureKind::Config if f.meter.is_some() => {
                    return invalid(format!("only metered features have a meter ({:?})", f.key));
                }
                _ => {}
            }
            let mut values = HashSet::new();
            if let Some(v) = f.values.iter().find(|v| !values.insert(v.value.as_str())) {
                return invalid(format!(
                    "config feature {:?} lists value {:?} twice",
                    f.key, v.value
                ));
            }
        }
        for p in &self.plans {
            let mut listed = HashSet::new();
            for key in &p.features {
                if key == ALL_FEATURES {
                    continue;
                }
                match self.feature(key).map(|f| f.kind) {
                    None => {
                        return invalid(format!(
                            "plan {:?} lists unknown feature {key:?}; declare it under [[features]]",
                            p.key
                        ));
                    }
                    Some(FeatureKind::Boolean) => {}
                    Some(_) => {
                        return invalid(format!(
                            "plan {:?} lists {key:?} in features, which holds boolean features; \
                             metered features take limits, config features config",
                            p.key
                        ));
                    }
                }
                if !listed.insert(key.as_str()) {
                    return invalid(format!("plan {:?} lists feature {key:?} twice", p.key));
                }
            }
            for (key, value) in &p.config {
                let Some(f) = self.feature(key).filter(|f| f.kind == FeatureKind::Config) else {
                    return invalid(format!(
                        "plan {:?} sets config {key:?}, which is not a config feature",
                        p.key
                    ));
                };
                if !f.values.iter().any(|v| &v.value == value) {
                    let known: Vec<&str> = f.values.iter().map(|v| v.value.as_str()).collect();
                    return invalid(format!(
                        "plan {:?} sets {key:?} to {value:?}; one of {known:?}",
                        p.key
                    ));
                }
            }
        }
        Ok(())
    }

    /// The catalog in `path`, or the built-in one when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Self::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::CatalogRead {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::from_toml(&text)
            }
        }
    }

    /// The meter counting events of `event_type`.
    pub fn meter(&self, event_type: &str) -> Option<&Meter> {
        self.meter_position(event_type).map(|i| &self.meters[i])
    }

    /// The position of the meter `event_type` in [`Self::meters`]. Asked once per event: a
    /// short list is scanned (cheaper than hashing the key), a long one is looked up.
    pub fn meter_position(&self, event_type: &str) -> Option<usize> {
        if self.meters.len() <= 8 {
            self.meters.iter().position(|m| m.key == event_type)
        } else {
            self.meter_index.get(event_type).copied()
        }
    }

    /// What an accepted event adds to its meter's quota usage (`None` for unknown meters and for
    /// unique-count meters, which have no limits).
    pub fn quantity_of(
        &self,
        meter: &str,
        data: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<f64> {
        let meter = self.meter(meter)?;
        match meter.aggregation {
            Aggregation::Count => Some(1.0),
            Aggregation::UniqueCount => None,
            Aggregation::Sum | Aggregation::Max => Some(
                meter
                    .value_property
                    .as_deref()
                    .and_then(|p| data.get(p))
                    .and_then(serde_json::Value::as_f64)
                    .or(meter.default_value)
                    .unwrap_or(0.0),
            ),
        }
    }

    /// The plan with `key`.
    pub fn plan(&self, key: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.key == key)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::CatalogInvalid(m));
        if self.meters.is_empty() {
            return invalid("at least one meter is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.meters {
            if !crate::token::is_token(&m.key, 64) {
                return invalid(format!(
                    "meter key {:?} must be 1-64 of [A-Za-z0-9_.-]",
                    m.key
                ));
            }
            if !seen.insert(m.key.as_str()) {
                return invalid(format!("meter {:?} is defined twice", m.key));
            }
            match m.aggregation {
                Aggregation::Sum | Aggregation::Max if m.value_property.is_none() => {
                    return invalid(format!("meter {:?} needs value_property", m.key));
                }
                Aggregation::UniqueCount if m.unique_property.is_none() => {
                    return invalid(format!("meter {:?} needs unique_property", m.key));
                }
                _ => {}
            }
        }
        let mut plans = std::collections::HashSet::new();
        for p in &self.plans {
            if !plans.insert(p.key.as_str()) {
                return invalid(format!("plan {:?} is defined twice", p.key));
            }
            if let Some(meter) = p.limits.keys().find(|k| !seen.contains(k.as_str())) {
                return invalid(format!("plan {:?} limits unknown meter {meter:?}", p.key));
            }
            // Quota state is kept per day; distinct counts do not add up across days.
            if let Some(meter) = p.limits.keys().find(|k| {
                self.meter(k)
                    .is_some_and(|m| m.aggregation == Aggregation::UniqueCount)
            }) {
                return invalid(format!(
                    "plan {:?} limits unique_count meter {meter:?}; limits apply to count, sum and max meters",
                    p.key
                ));
            }
        }
        if !plans.contains(self.default_plan.as_str()) {
            return invalid(format!(
                "default_plan {:?} is not a plan",
                self.default_plan
            ));
        }
        let t = &self.alert_thresholds;
        if t.iter().any(|&x| x == 0 || x > 100) || t.windows(2).any(|w| w[0] >= w[1]) {
            return invalid("alert_thresholds must be ascending percentages in 1..=100".into());
        }
        if self.warn_percent == 0 || self.warn_percent > 100 {
            return invalid("warn_percent must be in 1..=100".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_has_the_seed_plans() {
        let c = Catalog::default();
        let limit = |p: &str| c.plan(p).map(|p| p.limit("api_call"));
        assert_eq!(limit("free"), Some(Some(100)));
        assert_eq!(limit("starter"), Some(Some(500)));
        assert_eq!(limit("professional"), Some(Some(5000)));
        assert_eq!(limit("enterprise"), Some(None));
        assert_eq!(c.plan("starter").map(|p| p.price_cents), Some(2900));
        assert_eq!(
            c.meter("api_call").map(|m| m.aggregation),
            Some(Aggregation::Sum)
        );
        assert_eq!(c.alert_thresholds, vec![75, 80, 90, 100]);
    }

    #[test]
    fn inconsistent_catalogs_are_rejected() {
        let base = DEFAULT_CATALOG_TOML;
        let cases = [
            base.replace("api_call = 500", "tokens = 500"),
            base.replace("[75, 80, 90, 100]", "[80, 75]"),
            base.replace("aggregation = \"sum\"", "aggregation = \"median\""),
            base.replace("value_property = \"quantity\"", ""),
            format!("unknown_field = 1\n{base}"),
        ];
        for case in cases {
            assert!(Catalog::from_toml(&case).is_err(), "accepted: {case}");
        }
    }

    /// `base` with `from` replaced by `to` (which must occur), and the catalog's error message.
    fn refused(from: &str, to: &str) -> String {
        let text = DEFAULT_CATALOG_TOML;
        assert!(text.contains(from), "{from:?} is not in the catalog");
        match Catalog::from_toml(&text.replacen(from, to, 1)) {
            Ok(_) => panic!("accepted with {from:?} → {to:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_seed_features_are_in_the_default_catalog() {
        let c = Catalog::default();
        let has = |p: &str, f: &str| c.plan(p).is_some_and(|p| p.terms().has_feature(f));
        for f in [
            "basic_threat_analysis",
            "document_redaction",
            "report_generation",
        ] {
            assert!(
                ["free", "starter", "professional", "enterprise"]
                    .iter()
                    .all(|p| has(p, f))
            );
        }
        assert!(!has("free", "advanced_analysis") && has("starter", "advanced_analysis"));
        assert!(has("starter", "custom_reports") && !has("starter", "analytics"));
        for f in ["analytics", "team_collaboration", "api_access"] {
            assert!(has("professional", f) && has("enterprise", f), "{f}");
        }
        assert!(has("enterprise", "custom_sla") && !has("professional", "custom_sla"));
        let support = |p: &str| c.plan(p).and_then(|p| p.terms().config_value("support"));
        assert_eq!(support("free"), None);
        assert_eq!(support("starter"), Some("priority"));
        assert_eq!(support("enterprise"), Some("dedicated"));
        assert_eq!(
            c.feature("api_call").map(|f| (f.kind, f.meter_key())),
            Some((FeatureKind::Metered, "api_call"))
        );
        // "*" is every boolean feature, sorted, in the terms.
        let all: Vec<&str> = c
            .features
            .iter()
            .filter(|f| f.kind == FeatureKind::Boolean)
            .map(|f| f.key.as_str())
            .collect();
        let enterprise = c.plan("enterprise").expect("enterprise").terms();
        assert_eq!(enterprise.features.len(), all.len());
        // Every plan has its own version id.
        let versions: HashSet<&str> = c.plans.iter().map(|p| p.terms().version.as_str()).collect();
        assert_eq!(versions.len(), c.plans.len());
    }

    #[test]
    fn the_cheapest_plan_with_a_feature() {
        let c = Catalog::default();
        let free = c.plan("free").expect("free").terms().clone();
        let cheapest = |f: &str| {
            let f = c.feature(f).expect("feature");
            c.cheapest_with(f, &free).map(|p| p.key.as_str())
        };
        assert_eq!(cheapest("advanced_analysis"), Some("starter"));
        assert_eq!(cheapest("analytics"), Some("professional"));
        assert_eq!(cheapest("custom_sla"), Some("enterprise"));
        assert_eq!(cheapest("api_call"), Some("starter"));
        let enterprise = c.plan("enterprise").expect("e").terms().clone();
        let calls = c.feature("api_call").expect("calls");
        assert!(c.cheapest_with(calls, &enterprise).is_none());
    }

    #[test]
    fn changing_a_plans_terms_changes_its_version_and_nothing_else() {
        let base = Catalog::default();
        let version = |c: &Catalog, p: &str| c.plan(p).expect("plan").terms().version.clone();
        let edits = [
            ("price_cents = 2900", "price_cents = 3900"),
            ("api_call = 500", "api_call = 600"),
            (
                "\"advanced_analysis\", \"custom_reports\"]",
                "\"advanced_analysis\"]",
            ),
            (
                "config = { support = \"priority\" }\n[plans.limits]\napi_call = 500",
                "config = { support = \"dedicated\" }\n[plans.limits]\napi_call = 500",
            ),
        ];
        for (from, to) in edits {
            assert!(DEFAULT_CATALOG_TOML.contains(from), "{from}");
            let c = Catalog::from_toml(&DEFAULT_CATALOG_TOML.replacen(from, to, 1)).expect("valid");
            assert_ne!(version(&c, "starter"), version(&base, "starter"), "{to}");
            assert_eq!(version(&c, "free"), version(&base, "free"));
        }
        let renamed = DEFAULT_CATALOG_TOML.replacen("name = \"Starter\"", "name = \"Start\"", 1);
        let c = Catalog::from_toml(&renamed).expect("valid");
        assert_eq!(version(&c, "starter"), version(&base, "starter"));
    }

    #[test]
    fn bad_features_are_refused_with_the_reason() {
        let cases = [
            (
                "\"basic_threat_analysis\", \"document_redaction\", \"report_generation\"]\n[plans.limits]\napi_call = 100",
                "\"basic_threat_analysis\", \"telepathy\", \"report_generation\"]\n[plans.limits]\napi_call = 100",
                "unknown feature \"telepathy\"",
            ),
            (
                "config = { support = \"priority\" }",
                "config = { support = \"gold\" }",
                "one of",
            ),
            (
                "config = { support = \"priority\" }",
                "config = { analytics = \"yes\" }",
                "not a config feature",
            ),
            (
                "features = [\"*\"]",
                "features = [\"support\"]",
                "holds boolean features",
            ),
            (
                "key = \"analytics\"",
                "key = \"advanced_analysis\"",
                "defined twice",
            ),
            (
                "kind = \"metered\" ",
                "kind = \"metered\"\nmeter = \"tokens\" ",
                "unknown meter",
            ),
            ("kind = \"boolean\"", "kind = \"switch\"", "kind"),
            (
                "  { value = \"dedicated\", name = \"Dedicated support\" },\n",
                "",
                "support",
            ),
            (
                "key = \"custom_sla\"\nname = \"Custom SLA\"\nkind = \"boolean\"",
                "key = \"custom_sla\"\nname = \"Custom SLA\"\nkind = \"boolean\"\nvalues = [{ value = \"a\", name = \"A\" }]",
                "only config features have values",
            ),
            ("key = \"analytics\"", "key = \"no spaces\"", "must be 1-64"),
        ];
        for (from, to, why) in cases {
            let e = refused(from, to);
            assert!(e.contains(why), "{to:?}: {e}");
        }
    }

    #[test]
    fn usage_prices_are_checked_and_priced_and_make_a_new_version() {
        let starter = "config = { support = \"priority\" }\n[plans.limits]\napi_call = 500\n";
        let with = |extra: &str, on_limit: &str| {
            DEFAULT_CATALOG_TOML.replacen(
                starter,
                &format!("config = {{ support = \"priority\" }}\n{on_limit}[plans.limits]\napi_call = 500\n{extra}"),
                1,
            )
        };
        let graduated = "[plans.usage_prices.api_call]\nmode = \"graduated\"\n\
                         tiers = [{ up_to = 500, unit_cents = 0 }, { unit_cents = 2 }]\n";
        let c = Catalog::from_toml(&with(graduated, "on_limit = \"overage\"\n")).expect("valid");
        let terms = c.plan("starter").expect("starter").terms();
        assert!(terms.overage_allowed("api_call"));
        assert_eq!(terms.cost_cents(|_| 510), 2900 + 20);
        let default = Catalog::default();
        assert_ne!(
            terms.version,
            default.plan("starter").expect("s").terms().version
        );
        // The plans without usage prices keep their versions (the new fields hash only when set).
        assert_eq!(
            c.plan("free").expect("f").terms().version,
            default.plan("free").expect("f").terms().version
        );
        let refused = |text: String| Catalog::from_toml(&text).expect_err("invalid").to_string();
        let e = refused(with("", "on_limit = \"overage\"\n"));
        assert!(e.contains("needs a usage price"), "{e}");
        let e = refused(with(
            "[plans.usage_prices.api_call]\nmode = \"volume\"\n\
             tiers = [{ up_to = 500, unit_cents = 0 }, { up_to = 100, unit_cents = 2 }, { unit_cents = 1 }]\n",
            "",
        ));
        assert!(
            e.contains("plans[starter].usage_prices.api_call: tiers[1].up_to = 100")
                && e.contains("out of order"),
            "{e}"
        );
        let e = refused(with("[plans.usage_prices.tokens]\nunit_cents = 1\n", ""));
        assert!(e.contains("unknown meter \"tokens\""), "{e}");
        let e = refused(with(
            "[plans.usage_prices.api_call]\nunit_cents = 1\nmode = \"volume\"\n",
            "",
        ));
        assert!(
            e.contains("either mode with tiers, or unit_cents alone"),
            "{e}"
        );
    }
}
