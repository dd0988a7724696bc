//! The start-up check that the Stripe prices billing-sync sells match the catalog: each plan's
//! price is its amount and currency, recurring; each plan's usage price has the catalog's tiers (mode, `up_to`, unit and flat amounts) on a metered
//! recurring price, and each add-on's price is its amount, currency and kind (one-time or
//! monthly). A mismatch would make Stripe's invoice differ from the projection and the dashboard,
//! so billing-sync refuses to start and names every difference.

use schemas::addon::AddonBilling;
use schemas::pricing::{TiersMode, UsagePrice};
use stripe_product::price::RetrievePrice;
use stripe_shared::{Price, PriceTiersMode, PriceType};

use super::Billing;
use crate::Result;

/// How `price` differs from the catalog's usage price `want`, if it does.
pub fn usage_price_difference(price: &Price, want: &UsagePrice) -> Option<String> {
    if price.type_ != PriceType::Recurring
        || price
            .recurring
            .as_ref()
            .is_none_or(|r| r.usage_type.as_str() != "metered")
    {
        return Some("not a metered recurring price".into());
    }
    let tiers = price.tiers.as_deref().unwrap_or_default();
    let per_unit =
        want.tiers.len() == 1 && want.tiers[0].up_to.is_none() && want.tiers[0].flat_cents == 0;
    if tiers.is_empty() {
        // A plain per-unit price is the catalog's single open tier without a flat amount.
        return match (per_unit, price.unit_amount) {
            (true, Some(a)) if a == want.tiers[0].unit_cents as i64 => None,
            _ => Some(format!(
                "unit_amount {:?} without tiers; the catalog has {}",
                price.unit_amount,
                want.canonical()
            )),
        };
    }
    let mode = match price.tiers_mode {
        Some(PriceTiersMode::Graduated) => Some(TiersMode::Graduated),
        Some(PriceTiersMode::Volume) => Some(TiersMode::Volume),
        _ => None,
    };
    // One open tier prices the same in either mode.
    if mode != Some(want.mode) && !per_unit {
        return Some(format!(
            "tiers_mode {:?}; the catalog has {:?}",
            price.tiers_mode, want.mode
        ));
    }
    let have: Vec<(Option<u64>, u64, u64)> = tiers
        .iter()
        .map(|t| {
            (
                t.up_to.map(|u| u.max(0) as u64),
                t.unit_amount.unwrap_or(0).max(0) as u64,
                t.flat_amount.unwrap_or(0).max(0) as u64,
            )
        })
        .collect();
    let wanted: Vec<(Option<u64>, u64, u64)> = want
        .tiers
        .iter()
        .map(|t| (t.up_to, t.unit_cents, t.flat_cents))
        .collect();
    (have != wanted)
        .then(|| format!("tiers {have:?}; the catalog has {wanted:?} (up_to, unit, flat)"))
}

impl Billing {
    /// Every difference between the configured Stripe prices and the catalog (empty: they
    /// agree). A price Stripe does not answer for is a difference; Stripe being unreachable is an
    /// error (the caller decides whether to start anyway).
    pub async fn price_differences(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (plan, meters) in self.usage_prices() {
            let Some(p) = self.catalog.plan(&plan) else {
                continue;
            };
            for (meter, id) in meters {
                let Some(want) = p.terms().usage_prices.get(&meter) else {
                    continue;
                };
                let at = format!("plans[{plan}].usage_prices.{meter} (Stripe price {id})");
                match self.retrieve_price(&id).await? {
                    None => out.push(format!("{at}: no such price in Stripe")),
                    Some(price) => {
                        if let Some(d) = usage_price_difference(&price, want) {
                            out.push(format!("{at}: {d}"));
                        }
                    }
                }
            }
        }
        for (plan, id) in self.plans.all() {
            let Some(p) = self.catalog.plan(plan) else {
                continue;
            };
            let at = format!("plans[{plan}] (Stripe price {id})");
            let Some(price) = self.retrieve_price(id).await? else {
                out.push(format!("{at}: no such price in Stripe"));
                continue;
            };
            let currency = price.currency.to_string();
            if price.type_ != PriceType::Recurring
                || price.unit_amount != Some(p.price_cents as i64)
                || currency != p.currency
            {
                out.push(format!(
                    "{at}: {} {:?} {currency}; the catalog has a recurring {} {}",
                    price.type_.as_str(),
                    price.unit_amount,
                    p.price_cents,
                    p.currency
                ));
            }
        }
        for a in &self.catalog.addons {
            let Some(id) = self.addon_price(a) else {
                continue;
            };
            let at = format!("addons[{}] (Stripe price {id})", a.key);
            let Some(price) = self.retrieve_price(&id).await? else {
                out.push(format!("{at}: no such price in Stripe"));
                continue;
            };
            let kind = match a.billing {
                AddonBilling::OneTime => PriceType::OneTime,
                AddonBilling::Recurring => PriceType::Recurring,
            };
            if price.type_ != kind {
                let sold = match a.billing {
                    AddonBilling::OneTime => "one_time",
                    AddonBilling::Recurring => "recurring",
                };
                out.push(format!(
                    "{at}: a {} price; the catalog sells it {sold}",
                    price.type_.as_str()
                ));
            }
            let currency = price.currency.to_string();
            if price.unit_amount != Some(a.price_cents as i64) || currency != a.currency {
                out.push(format!(
                    "{at}: {:?} {}; the catalog has {} {}",
                    price.unit_amount, currency, a.price_cents, a.currency
                ));
            }
        }
        Ok(out)
    }

    async fn retrieve_price(&self, id: &str) -> Result<Option<Price>> {
        match self
            .stripe
            .send(
                "retrieve_price",
                &RetrievePrice::new(id).expand(vec!["tiers".to_string()]),
                None,
            )
            .await
        {
            Ok(p) => Ok(Some(p)),
            Err(e)
                if e.stripe_code()
                    .is_some_and(|(c, _)| c == "resource_missing") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::pricing::Tier;

    fn price(json: serde_json::Value) -> Price {
        let text = json.to_string();
        miniserde::json::from_str(&text).expect("a Price")
    }

    fn tiered(mode: &str, tiers: serde_json::Value) -> Price {
        price(serde_json::json!({
            "id": "price_1", "object": "price", "active": true, "billing_scheme": "tiered",
            "created": 1, "currency": "usd", "livemode": false, "metadata": {}, "product": "prod_1",
            "recurring": {"interval": "month", "interval_count": 1, "usage_type": "metered", "meter": "mtr_1"},
            "tax_behavior": "unspecified", "tiers_mode": mode, "tiers": tiers, "type": "recurring",
            "unit_amount": null, "unit_amount_decimal": null
        }))
    }

    #[test]
    fn a_usage_price_must_have_the_catalogs_tiers() {
        let want = UsagePrice {
            mode: TiersMode::Graduated,
            tiers: vec![
                Tier {
                    up_to: Some(10),
                    unit_cents: 0,
                    flat_cents: 0,
                },
                Tier {
                    up_to: None,
                    unit_cents: 25,
                    flat_cents: 100,
                },
            ],
        };
        let tier = |up_to: Option<i64>, unit: i64, flat: i64| {
            serde_json::json!({"up_to": up_to, "unit_amount": unit, "flat_amount": flat,
                "unit_amount_decimal": unit.to_string(), "flat_amount_decimal": flat.to_string()})
        };
        let same = tiered(
            "graduated",
            serde_json::json!([tier(Some(10), 0, 0), tier(None, 25, 100)]),
        );
        assert_eq!(usage_price_difference(&same, &want), None);
        let volume = tiered(
            "volume",
            serde_json::json!([tier(Some(10), 0, 0), tier(None, 25, 100)]),
        );
        assert!(
            usage_price_difference(&volume, &want)
                .expect("mode")
                .contains("tiers_mode")
        );
        let cheaper = tiered(
            "graduated",
            serde_json::json!([tier(Some(10), 0, 0), tier(None, 24, 100)]),
        );
        assert!(
            usage_price_difference(&cheaper, &want)
                .expect("amount")
                .contains("tiers")
        );
        let shifted = tiered(
            "graduated",
            serde_json::json!([tier(Some(11), 0, 0), tier(None, 25, 100)]),
        );
        assert!(usage_price_difference(&shifted, &want).is_some());
    }
}
