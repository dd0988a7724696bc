//! Meters and plans as configuration: what is counted, how, and how much each plan allows.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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

/// A plan: price and per-meter limits.
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
    /// Selling points shown in the upgrade modal.
    #[serde(default)]
    pub features: Vec<String>,
    /// Limit per billing period per meter key; a meter without an entry is unlimited.
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
}

fn default_currency() -> String {
    "usd".into()
}

impl Plan {
    /// The limit for `meter` in one billing period; `None` means unlimited.
    pub fn limit(&self, meter: &str) -> Option<u64> {
        self.limits.get(meter).copied()
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
    /// Plans.
    pub plans: Vec<Plan>,
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
        Ok(catalog)
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
}
