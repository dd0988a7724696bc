//! Purchasable add-ons: the catalog's `[[addons]]` (call packs and feature add-ons, sold once or
//! per month through Stripe Checkout) and a customer's bought add-ons as folded from
//! `subscription.events` (`Change::Addon`, `Change::AddonRemoved`).
//!
//! A bought add-on carries what it gives (the meter and quantity, the features and config values)
//! as the catalog said at the purchase, so the log alone rebuilds it when the catalog has moved on.
//! A one-time pack counts until the end of the billing period it was bought in; a recurring add-on
//! counts in every period until its Stripe subscription ends. A refund or the end of the
//! subscription removes it (`AddonRemoved`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::catalog::Catalog;
use crate::entitlements::FeatureKind;
use crate::error::{Error, Result};
use crate::plan_version::PlanTerms;

/// How an add-on is paid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddonBilling {
    /// Paid once (Checkout in `payment` mode); a call pack counts until the period's end.
    #[default]
    OneTime,
    /// Paid every month (Checkout in `subscription` mode); counts while the subscription lives.
    Recurring,
}

/// Extra quantity of one meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddonGrant {
    /// Meter key.
    pub meter: String,
    /// Extra quantity per unit bought (per period for a recurring add-on).
    pub quantity: u64,
}

/// An add-on of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogAddon {
    /// Stable key (`calls_1000`), used in the API.
    pub key: String,
    /// Human name (`1,000 extra API calls`).
    pub name: String,
    /// Price per unit in the smallest currency unit (per month for a recurring add-on).
    pub price_cents: u64,
    /// ISO currency code.
    #[serde(default = "usd")]
    pub currency: String,
    /// `one_time` (the default) or `recurring` (monthly).
    #[serde(default)]
    pub billing: AddonBilling,
    /// Extra calls: the meter and quantity per unit bought.
    #[serde(default)]
    pub grant: Option<AddonGrant>,
    /// Boolean features it adds.
    #[serde(default)]
    pub features: Vec<String>,
    /// Config feature values it sets (where the plan has none or a lower one).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The plans whose customers may buy it (empty: every plan).
    #[serde(default)]
    pub plans: Vec<String>,
    /// Most units in one purchase.
    #[serde(default = "one")]
    pub max_quantity: u32,
    /// Environment variable that holds its Stripe price id (one-time or monthly licensed).
    #[serde(default)]
    pub stripe_price_env: Option<String>,
}

fn usd() -> String {
    "usd".into()
}

fn one() -> u32 {
    1
}

impl CatalogAddon {
    /// Whether a customer on `plan` may buy it.
    pub fn available_to(&self, plan: &str) -> bool {
        self.plans.is_empty() || self.plans.iter().any(|p| p == plan)
    }

    /// Checks it against the catalog's meters, features and plans.
    pub(crate) fn validate(&self, catalog: &Catalog) -> Result<()> {
        let at = format!("addons[{}]", self.key);
        let invalid = |m: String| Err(Error::CatalogInvalid(format!("{at}: {m}")));
        if !crate::token::is_token(&self.key, 64) {
            return invalid("the key must be 1-64 of [A-Za-z0-9_.-]".into());
        }
        if self.grant.is_none() && self.features.is_empty() && self.config.is_empty() {
            return invalid("an add-on gives a grant, features or config values".into());
        }
        if self.max_quantity == 0 {
            return invalid("max_quantity must be at least 1".into());
        }
        if let Some(g) = &self.grant {
            if catalog.meter(&g.meter).is_none() {
                return invalid(format!("grant.meter: unknown meter {:?}", g.meter));
            }
            if g.quantity == 0 {
                return invalid("grant.quantity must be at least 1".into());
            }
        }
        for f in &self.features {
            match catalog.feature(f).map(|f| f.kind) {
                Some(FeatureKind::Boolean) => {}
                Some(_) => return invalid(format!("features: {f:?} is not a boolean feature")),
                None => return invalid(format!("features: unknown feature {f:?}")),
            }
        }
        for (key, value) in &self.config {
            let Some(f) = catalog
                .feature(key)
                .filter(|f| f.kind == FeatureKind::Config)
            else {
                return invalid(format!("config: {key:?} is not a config feature"));
            };
            if !f.values.iter().any(|v| &v.value == value) {
                return invalid(format!("config: {value:?} is not a value of {key:?}"));
            }
        }
        if let Some(p) = self.plans.iter().find(|p| catalog.plan(p).is_none()) {
            return invalid(format!("plans: unknown plan {p:?}"));
        }
        Ok(())
    }

    /// What `quantity` units give, bought at `at` for a period ending at `period_end`.
    pub fn bought(
        &self,
        purchase: &str,
        quantity: u32,
        at: OffsetDateTime,
        period_end: OffsetDateTime,
    ) -> BoughtAddon {
        BoughtAddon {
            purchase: purchase.into(),
            addon: self.key.clone(),
            name: self.name.clone(),
            billing: self.billing,
            quantity,
            grant: self.grant.as_ref().map(|g| AddonGrant {
                meter: g.meter.clone(),
                quantity: g.quantity.saturating_mul(u64::from(quantity)),
            }),
            features: self.features.clone(),
            config: self.config.clone(),
            bought_at: at,
            expires_at: match self.billing {
                AddonBilling::OneTime => Some(period_end),
                AddonBilling::Recurring => None,
            },
        }
    }
}

/// A customer's bought add-on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BoughtAddon {
    /// The purchase: Stripe's payment intent (one-time) or subscription (recurring) id.
    pub purchase: String,
    /// Add-on key.
    pub addon: String,
    /// Its name at the purchase.
    pub name: String,
    /// One-time or recurring.
    pub billing: AddonBilling,
    /// Units bought.
    pub quantity: u32,
    /// Extra quantity of a meter (all units together; per period when recurring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<AddonGrant>,
    /// Boolean features it adds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Config values it sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// When it was bought.
    #[serde(with = "time::serde::rfc3339")]
    pub bought_at: OffsetDateTime,
    /// When it stops counting (a one-time pack: its period's end); null = while it lives.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl BoughtAddon {
    /// Whether it counts at `now`.
    pub fn active(&self, now: OffsetDateTime) -> bool {
        self.bought_at <= now && self.expires_at.is_none_or(|e| now < e)
    }
}

/// `terms` with the features and config values of the add-ons active at `now` added (borrowed
/// when none adds anything). A config value of an add-on replaces the plan's only when it is of a
/// higher level (later in the feature's `values`).
pub fn with_addons<'a>(
    catalog: &Catalog,
    terms: &'a PlanTerms,
    addons: &[BoughtAddon],
    now: OffsetDateTime,
) -> Cow<'a, PlanTerms> {
    let mut out = Cow::Borrowed(terms);
    for a in addons.iter().filter(|a| a.active(now)) {
        for f in &a.features {
            if !out.has_feature(f) {
                let t = out.to_mut();
                t.features.push(f.clone());
                t.features.sort();
            }
        }
        for (key, value) in &a.config {
            let level = |v: Option<&str>| {
                catalog
                    .feature(key)
                    .and_then(|f| v.and_then(|v| f.values.iter().position(|x| x.value == v)))
            };
            if level(Some(value)) > level(out.config_value(key)) {
                out.to_mut().config.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn catalog_with(addons: &str) -> Result<Catalog> {
        let base = crate::catalog::DEFAULT_CATALOG_TOML;
        Catalog::from_toml(&format!("{base}\n{addons}"))
    }

    #[test]
    fn addons_are_checked_against_the_catalog() {
        let ok = catalog_with(
            "[[addons]]\nkey = \"pack\"\nname = \"Pack\"\nprice_cents = 900\n\
             grant = { meter = \"api_call\", quantity = 1000 }\nmax_quantity = 5\n",
        )
        .expect("valid");
        assert!(ok.addon("pack").is_some());
        for (bad, why) in [
            (
                "grant = { meter = \"nope\", quantity = 1 }",
                "unknown meter \"nope\"",
            ),
            ("features = [\"api_call\"]", "not a boolean feature"),
            ("features = [\"teleport\"]", "unknown feature \"teleport\""),
            ("config = { support = \"gold\" }", "\"gold\" is not a value"),
            (
                "features = [\"analytics\"]\nplans = [\"gold\"]",
                "unknown plan \"gold\"",
            ),
            ("", "gives a grant, features or config"),
            (
                "features = [\"analytics\"]\nmax_quantity = 0",
                "max_quantity",
            ),
        ] {
            let text = format!("[[addons]]\nkey = \"x\"\nname = \"X\"\nprice_cents = 1\n{bad}\n");
            let e = catalog_with(&text).expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains("addons[x]"), "{bad}: {e}");
        }
        let twice =
            "[[addons]]\nkey = \"x\"\nname = \"X\"\nprice_cents = 1\nfeatures = [\"analytics\"]\n";
        let e = catalog_with(&format!("{twice}{twice}")).expect_err("twice");
        assert!(e.to_string().contains("defined twice"), "{e}");
    }

    #[test]
    fn active_addons_add_features_and_higher_config_values_only() {
        let catalog = Catalog::default();
        let starter = catalog.plan("starter").expect("starter").terms();
        let at = datetime!(2026-12-03 00:00 UTC);
        let end = datetime!(2027-01-01 00:00 UTC);
        let mut feature = CatalogAddon {
            key: "analytics".into(),
            name: "Analytics".into(),
            price_cents: 1000,
            currency: "usd".into(),
            billing: AddonBilling::Recurring,
            grant: None,
            features: vec!["analytics".into()],
            config: BTreeMap::from([("support".into(), "dedicated".into())]),
            plans: vec![],
            max_quantity: 1,
            stripe_price_env: None,
        };
        let bought = feature.bought("sub_1", 1, at, end);
        assert_eq!(bought.expires_at, None, "recurring: while it lives");
        let t = with_addons(&catalog, starter, std::slice::from_ref(&bought), at);
        assert!(t.has_feature("analytics") && t.has_feature("advanced_analysis"));
        assert_eq!(t.config_value("support"), Some("dedicated"));
        // Not yet bought: nothing added, borrowed.
        let before = with_addons(
            &catalog,
            starter,
            std::slice::from_ref(&bought),
            at - time::Duration::SECOND,
        );
        assert!(matches!(before, Cow::Borrowed(_)));
        // A lower config value does not replace the plan's.
        feature.config = BTreeMap::from([("support".into(), "priority".into())]);
        let enterprise = catalog.plan("enterprise").expect("enterprise").terms();
        let lower = feature.bought("sub_2", 1, at, end);
        let t = with_addons(&catalog, enterprise, &[lower], at);
        assert_eq!(t.config_value("support"), Some("dedicated"));
        // A one-time pack: quantity times units, until the period's end.
        feature.billing = AddonBilling::OneTime;
        feature.grant = Some(AddonGrant {
            meter: "api_call".into(),
            quantity: 1000,
        });
        let pack = feature.bought("pi_1", 3, at, end);
        assert_eq!(pack.grant.as_ref().map(|g| g.quantity), Some(3000));
        assert!(pack.active(end - time::Duration::SECOND) && !pack.active(end));
    }
}
