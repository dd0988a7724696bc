//! Plan ↔ Stripe price mapping from configuration: `stripe.prices.<plan>`, else the environment
//! variable the catalog names in the plan's `stripe_price_env` (`STRIPE_PRICE_ID_STARTER`, ...);
//! and each meter's metered price: `stripe.meter_prices.<meter>`, else `STRIPE_METER_PRICE_ID_<METER>`.

use std::collections::{BTreeMap, HashMap};

use schemas::Catalog;

use crate::{Error, Result};

/// The price of each purchasable plan and the plan of each price.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    price_of: BTreeMap<String, String>,
    plan_of: HashMap<String, String>,
}

impl Plans {
    /// Resolves prices: `configured` first, then each plan's `stripe_price_env` read with `env`.
    /// A configured plan that is not in the catalog, or a price used by two plans, is an error.
    pub fn resolve(
        catalog: &Catalog,
        configured: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        if let Some(unknown) = configured.keys().find(|k| catalog.plan(k).is_none()) {
            return Err(Error::Config(format!(
                "stripe.prices names plan {unknown:?}, which is not in the catalog"
            )));
        }
        let mut plans = Self::default();
        for plan in &catalog.plans {
            let price = configured
                .get(&plan.key)
                .cloned()
                .or_else(|| plan.stripe_price_env.as_deref().and_then(&env))
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty());
            if let Some(price) = price {
                if let Some(other) = plans.plan_of.insert(price.clone(), plan.key.clone()) {
                    return Err(Error::Config(format!(
                        "price {price} is configured for both {other:?} and {:?}",
                        plan.key
                    )));
                }
                plans.price_of.insert(plan.key.clone(), price);
            }
        }
        Ok(plans)
    }

    /// Resolves prices from the process environment.
    pub fn from_env(catalog: &Catalog, configured: &BTreeMap<String, String>) -> Result<Self> {
        Self::resolve(catalog, configured, |name| std::env::var(name).ok())
    }

    /// The Stripe price of `plan`.
    pub fn price(&self, plan: &str) -> Option<&str> {
        self.price_of.get(plan).map(String::as_str)
    }

    /// The plan of a Stripe price.
    pub fn plan(&self, price: &str) -> Option<&str> {
        self.plan_of.get(price).map(String::as_str)
    }

    /// Every (plan, price).
    pub fn all(&self) -> &BTreeMap<String, String> {
        &self.price_of
    }
}

/// The environment variable of a meter's metered price (`STRIPE_METER_PRICE_ID_API_CALL`).
pub fn meter_price_env(meter: &str) -> String {
    format!("STRIPE_METER_PRICE_ID_{}", meter.to_uppercase())
}

/// Catalog meter key → its Stripe metered price: `configured` first, then
/// [`meter_price_env`] read with `env`; empty means none. Keys that are not catalog meters are
/// ignored.
pub fn meter_prices(
    catalog: &Catalog,
    configured: &BTreeMap<String, String>,
    env: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    catalog
        .meters
        .iter()
        .filter_map(|m| {
            let price = configured
                .get(&m.key)
                .cloned()
                .or_else(|| env(&meter_price_env(&m.key)))
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())?;
            Some((m.key.clone(), price))
        })
        .collect()
}

/// Plan key → meter key → the plan's own Stripe metered price for that meter (one with the same
/// tiers as the catalog's usage price): `configured` (`stripe.usage_prices.<plan>.<meter>`) first,
/// then the environment variable the catalog names in the usage price's `stripe_price_env`.
/// Only meters the plan gives a usage price are kept.
pub fn usage_prices(
    catalog: &Catalog,
    configured: &BTreeMap<String, BTreeMap<String, String>>,
    env: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for plan in &catalog.plans {
        let own: BTreeMap<String, String> = plan
            .usage_prices
            .iter()
            .filter_map(|(meter, u)| {
                let price = configured
                    .get(&plan.key)
                    .and_then(|m| m.get(meter))
                    .cloned()
                    .or_else(|| u.stripe_price_env.as_deref().and_then(&env))
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())?;
                Some((meter.clone(), price))
            })
            .collect();
        if !own.is_empty() {
            out.insert(plan.key.clone(), own);
        }
    }
    out
}

/// [`meter_prices`] from the process environment.
pub fn meter_prices_from_env(
    catalog: &Catalog,
    configured: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    meter_prices(catalog, configured, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_prices_come_from_configuration_then_the_environment() {
        let catalog = Catalog::default();
        let env = |name: &str| {
            (name == "STRIPE_METER_PRICE_ID_API_CALL").then(|| "price_env_usage".to_string())
        };
        assert_eq!(
            meter_prices(&catalog, &BTreeMap::new(), env),
            BTreeMap::from([("api_call".to_string(), "price_env_usage".to_string())])
        );
        let configured = BTreeMap::from([
            ("api_call".to_string(), "price_conf_usage".to_string()),
            ("no_such_meter".to_string(), "price_x".to_string()),
        ]);
        assert_eq!(
            meter_prices(&catalog, &configured, env),
            BTreeMap::from([("api_call".to_string(), "price_conf_usage".to_string())])
        );
        let empty = BTreeMap::from([("api_call".to_string(), " ".to_string())]);
        assert!(meter_prices(&catalog, &empty, |_| None).is_empty());
    }

    #[test]
    fn configuration_wins_over_the_environment_and_empty_means_unset() {
        let catalog = Catalog::default();
        let configured = BTreeMap::from([("starter".to_string(), "price_conf".to_string())]);
        let env = |name: &str| match name {
            "STRIPE_PRICE_ID_STARTER" => Some("price_env_starter".to_string()),
            "STRIPE_PRICE_ID_PROFESSIONAL" => Some("price_pro".to_string()),
            "STRIPE_PRICE_ID_ENTERPRISE" => Some(" ".to_string()),
            _ => None,
        };
        let plans = Plans::resolve(&catalog, &configured, env).expect("plans");
        assert_eq!(plans.price("starter"), Some("price_conf"));
        assert_eq!(plans.price("professional"), Some("price_pro"));
        assert_eq!(plans.price("enterprise"), None);
        assert_eq!(plans.price("free"), None);
        assert_eq!(plans.plan("price_pro"), Some("professional"));
        assert_eq!(plans.plan("price_env_starter"), None);
    }

    #[test]
    fn unknown_plans_and_shared_prices_are_refused() {
        let catalog = Catalog::default();
        let bad = BTreeMap::from([("gold".to_string(), "price_x".to_string())]);
        assert!(Plans::resolve(&catalog, &bad, |_| None).is_err());
        let shared = BTreeMap::from([
            ("starter".to_string(), "price_x".to_string()),
            ("professional".to_string(), "price_x".to_string()),
        ]);
        assert!(Plans::resolve(&catalog, &shared, |_| None).is_err());
    }
}
