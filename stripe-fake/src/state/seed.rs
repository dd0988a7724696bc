//! The catalog's seed: a product and a price for every paid plan, every plan's usage prices with
//! their tiers, every meter's meter and metered price, and every add-on's product and price
//! (one-time or monthly), with fixed ids.

use serde_json::json;

use schemas::addon::AddonBilling;

use super::State;
use crate::objects::{self, Price, Recurring};

impl State {
    /// See [`FakeStripe::seed_catalog`](crate::FakeStripe::seed_catalog).
    pub(crate) fn seed_catalog(&mut self, catalog: &schemas::Catalog) -> Vec<(String, String)> {
        let now = self.now();
        let mut out = Vec::new();
        for plan in catalog.plans.iter().filter(|p| p.price_cents > 0) {
            let product = format!("prod_{}", plan.key);
            let price = format!("price_{}", plan.key);
            self.products.insert(
                product.clone(),
                objects::product(&product, &plan.name, now, &json!({"plan": plan.key})),
            );
            self.prices.insert(
                price.clone(),
                Price {
                    id: price.clone(),
                    product,
                    unit_amount: plan.price_cents as i64,
                    currency: plan.currency.clone(),
                    recurring: Some(monthly("licensed", None)),
                    lookup_key: Some(plan.key.clone()),
                    nickname: Some(plan.name.clone()),
                    metadata: json!({"plan": plan.key}),
                    created: now,
                    active: true,
                    tiers: None,
                },
            );
            if let Some(env) = &plan.stripe_price_env {
                out.push((env.clone(), price));
            }
        }
        // A plan's own metered price per meter with the catalog's tiers (overage, volume or
        // graduated pricing), on the meter's Stripe meter.
        for plan in &catalog.plans {
            for (meter, usage) in &plan.usage_prices {
                let Ok(priced) = usage.price("") else {
                    continue;
                };
                let price = format!("price_{}_{meter}_usage", plan.key);
                let tiers = priced
                    .tiers
                    .iter()
                    .map(|t| objects::Tier {
                        up_to: t.up_to,
                        unit_amount: t.unit_cents as i64,
                        flat_amount: t.flat_cents as i64,
                    })
                    .collect();
                self.prices.insert(
                    price.clone(),
                    Price {
                        id: price.clone(),
                        product: format!("prod_{meter}"),
                        unit_amount: 0,
                        currency: plan.currency.clone(),
                        recurring: Some(monthly("metered", Some(format!("mtr_{meter}")))),
                        lookup_key: Some(format!("{}_{meter}_usage", plan.key)),
                        nickname: Some(format!("{} usage", plan.name)),
                        metadata: json!({"plan": plan.key, "meter": meter}),
                        created: now,
                        active: true,
                        tiers: Some((priced.mode.as_str().to_string(), tiers)),
                    },
                );
                if let Some(env) = &usage.stripe_price_env {
                    out.push((env.clone(), price));
                }
            }
        }
        for meter in &catalog.meters {
            let id = format!("mtr_{}", meter.key);
            // The meter's metered price at 0: the plans include their usage, and the invoice
            // shows it (a line per subscription item, quantity = the meter's usage).
            let product = format!("prod_{}", meter.key);
            let price = format!("price_{}_usage", meter.key);
            self.products.insert(
                product.clone(),
                objects::product(&product, &meter.name, now, &json!({"meter": meter.key})),
            );
            self.prices.insert(
                price.clone(),
                Price {
                    id: price.clone(),
                    product,
                    unit_amount: 0,
                    currency: "usd".into(),
                    recurring: Some(monthly("metered", Some(id.clone()))),
                    lookup_key: Some(format!("{}_usage", meter.key)),
                    nickname: Some(format!("{} (included)", meter.name)),
                    metadata: json!({"meter": meter.key}),
                    created: now,
                    active: true,
                    tiers: None,
                },
            );
            out.push((
                format!("STRIPE_METER_PRICE_ID_{}", meter.key.to_uppercase()),
                price,
            ));
            self.meters.insert(
                id.clone(),
                objects::Meter {
                    id,
                    display_name: meter.name.clone(),
                    event_name: meter.key.clone(),
                    formula: "sum".into(),
                    customer_key: "stripe_customer_id".into(),
                    value_key: "value".into(),
                    status: "active".into(),
                    created: now,
                },
            );
        }
        // Every add-on: its product and price, one-time (no `recurring`: `type: one_time`) or
        // monthly licensed.
        for addon in &catalog.addons {
            let product = format!("prod_addon_{}", addon.key);
            let price = format!("price_addon_{}", addon.key);
            let meta = json!({"addon": addon.key});
            self.products.insert(
                product.clone(),
                objects::product(&product, &addon.name, now, &meta),
            );
            let recurring = match addon.billing {
                AddonBilling::OneTime => None,
                AddonBilling::Recurring => Some(monthly("licensed", None)),
            };
            self.prices.insert(
                price.clone(),
                Price {
                    id: price.clone(),
                    product,
                    unit_amount: addon.price_cents as i64,
                    currency: addon.currency.clone(),
                    recurring,
                    lookup_key: Some(format!("addon_{}", addon.key)),
                    nickname: Some(addon.name.clone()),
                    metadata: meta,
                    created: now,
                    active: true,
                    tiers: None,
                },
            );
            if let Some(env) = &addon.stripe_price_env {
                out.push((env.clone(), price));
            }
        }
        out
    }
}

/// Monthly recurring settings of `usage_type` on `meter`.
fn monthly(usage_type: &str, meter: Option<String>) -> Recurring {
    Recurring {
        interval: "month".into(),
        interval_count: 1,
        usage_type: usage_type.into(),
        meter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addons_are_seeded_one_time_or_monthly() {
        let mut st = State::default();
        let env = st.seed_catalog(&schemas::Catalog::default());
        let pack = st.prices["price_addon_calls_1000"].json();
        assert_eq!(pack["type"], "one_time");
        assert!(pack["recurring"].is_null());
        assert_eq!(pack["unit_amount"], 1_900);
        assert_eq!(pack["lookup_key"], "addon_calls_1000");
        assert_eq!(pack["metadata"], json!({"addon": "calls_1000"}));
        assert_eq!(pack["product"], "prod_addon_calls_1000");
        let analytics = st.prices["price_addon_analytics"].json();
        assert_eq!(analytics["type"], "recurring");
        assert_eq!(analytics["recurring"]["interval"], "month");
        assert_eq!(analytics["recurring"]["usage_type"], "licensed");
        assert!(st.products.contains_key("prod_addon_analytics"));
        assert!(env.contains(&(
            "STRIPE_PRICE_ID_ADDON_CALLS_1000".into(),
            "price_addon_calls_1000".into()
        )));
        assert!(env.contains(&(
            "STRIPE_PRICE_ID_ADDON_ANALYTICS".into(),
            "price_addon_analytics".into()
        )));
        // Every plan price stays recurring.
        assert_eq!(st.prices["price_starter"].json()["type"], "recurring");
    }
}
