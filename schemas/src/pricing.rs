//! Usage prices: what a period's usage of one meter costs, per unit or in volume or graduated
//! tiers, priced exactly as Stripe prices a tiered metered price, in whole cents.
//!
//! A plan's usage price is the catalog's source of truth for three figures that must agree to the
//! cent: the projection on `/v1/customers/{c}/usage`, the dashboard's cost, and Stripe's invoice
//! (the plan's Stripe metered price carries the same tiers; billing-sync checks that it does).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a plan does when a meter's usage reaches its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// The call is refused (`limit_reached`): the seed's behaviour and the default.
    #[default]
    Block,
    /// The call passes and the units over the limit are billed by the plan's usage price.
    Overage,
}

impl OnLimit {
    /// Whether this is the default (kept out of a version's hash, so older versions keep their id).
    pub fn is_block(&self) -> bool {
        *self == Self::Block
    }
}

/// How tiers price a quantity (Stripe's `tiers_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TiersMode {
    /// Every unit at the price of the tier the total falls in, plus that tier's flat amount.
    Volume,
    /// Each unit at the price of the tier it falls in, plus the flat amount of every tier reached.
    Graduated,
}

impl TiersMode {
    /// Stripe's name of the mode.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Graduated => "graduated",
        }
    }
}

/// One tier: the units up to `up_to` (inclusive; none = every unit above the previous tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The tier's last unit; absent on the last tier (Stripe's `up_to=inf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<u64>,
    /// Price per unit in cents.
    #[serde(default)]
    pub unit_cents: u64,
    /// Added once when the tier is reached, in cents.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flat_cents: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A meter's usage price in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsagePrice {
    /// Volume or graduated.
    pub mode: TiersMode,
    /// The tiers, `up_to` strictly increasing, the last one open.
    pub tiers: Vec<Tier>,
}

impl UsagePrice {
    /// Checks the tiers as Stripe does on `POST /v1/prices`: at least one, `up_to` strictly
    /// increasing, only the last one open. `at` names the field in the error.
    pub fn validate(&self, at: &str) -> Result<()> {
        let bad = |m: String| Err(Error::CatalogInvalid(format!("{at}: {m}")));
        if self.tiers.is_empty() {
            return bad("tiers: at least one tier is needed".into());
        }
        let last = self.tiers.len() - 1;
        let mut below = 0_u64;
        for (i, t) in self.tiers.iter().enumerate() {
            match t.up_to {
                None if i != last => {
                    return bad(format!(
                        "tiers[{i}]: only the last tier may be open (no up_to)"
                    ));
                }
                Some(_) if i == last => {
                    return bad(format!(
                        "tiers[{i}]: the last tier must be open (no up_to), so every unit has a price"
                    ));
                }
                Some(u) if u <= below && (i > 0 || u == 0) => {
                    return bad(format!(
                        "tiers[{i}].up_to = {u}: tiers out of order; up_to must be greater than \
                         the previous tier's ({below})"
                    ));
                }
                Some(u) => below = u,
                None => {}
            }
        }
        Ok(())
    }

    /// What `quantity` units cost, in cents, as Stripe prices a tiered price
    /// (<https://docs.stripe.com/products-prices/pricing-models#volume-tiers>,
    /// <https://docs.stripe.com/products-prices/pricing-models#graduated-tiers>). Nothing is
    /// charged for 0 units.
    pub fn amount_cents(&self, quantity: u64) -> u64 {
        if quantity == 0 {
            return 0;
        }
        match self.mode {
            TiersMode::Volume => self
                .tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|u| quantity <= u))
                .or(self.tiers.last())
                .map_or(0, |t| {
                    t.flat_cents
                        .saturating_add(t.unit_cents.saturating_mul(quantity))
                }),
            TiersMode::Graduated => {
                let mut total = 0_u64;
                let mut below = 0_u64;
                for t in &self.tiers {
                    if quantity <= below {
                        break;
                    }
                    let top = t.up_to.unwrap_or(u64::MAX).min(quantity);
                    total = total
                        .saturating_add(t.flat_cents)
                        .saturating_add(t.unit_cents.saturating_mul(top - below));
                    below = top;
                }
                total
            }
        }
    }

    /// A canonical text of the price for a version hash.
    pub fn canonical(&self) -> String {
        let tiers: Vec<String> = self
            .tiers
            .iter()
            .map(|t| {
                let up = t.up_to.map_or_else(|| "inf".to_string(), |u| u.to_string());
                format!("{up}/{}/{}", t.unit_cents, t.flat_cents)
            })
            .collect();
        format!("{}[{}]", self.mode.as_str(), tiers.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(up_to: Option<u64>, unit_cents: u64, flat_cents: u64) -> Tier {
        Tier {
            up_to,
            unit_cents,
            flat_cents,
        }
    }

    fn price(mode: TiersMode) -> UsagePrice {
        UsagePrice {
            mode,
            tiers: vec![
                tier(Some(5), 700, 0),
                tier(Some(10), 650, 0),
                tier(None, 600, 0),
            ],
        }
    }

    #[test]
    fn volume_and_graduated_tiers_price_as_stripe_documents() {
        // Stripe's worked examples: 5 units at $7, then $6.50 to 10, then $6.
        let volume = price(TiersMode::Volume);
        assert_eq!(volume.amount_cents(0), 0);
        assert_eq!(volume.amount_cents(5), 3_500);
        assert_eq!(volume.amount_cents(6), 3_900);
        assert_eq!(volume.amount_cents(11), 6_600);
        let graduated = price(TiersMode::Graduated);
        assert_eq!(graduated.amount_cents(5), 3_500);
        assert_eq!(graduated.amount_cents(6), 3_500 + 650);
        assert_eq!(graduated.amount_cents(11), 3_500 + 3_250 + 600);
        // Flat amounts: once per tier reached (graduated), the final tier's (volume).
        let flat = UsagePrice {
            mode: TiersMode::Graduated,
            tiers: vec![tier(Some(2), 0, 100), tier(None, 10, 50)],
        };
        assert_eq!(flat.amount_cents(1), 100);
        assert_eq!(flat.amount_cents(3), 100 + 50 + 10);
        let flat_volume = UsagePrice {
            mode: TiersMode::Volume,
            ..flat
        };
        assert_eq!(flat_volume.amount_cents(3), 50 + 30);
    }

    #[test]
    fn tiers_out_of_order_or_not_closed_are_refused_with_the_tier() {
        let err = |tiers: Vec<Tier>| {
            UsagePrice {
                mode: TiersMode::Graduated,
                tiers,
            }
            .validate("plans[pro].usage_prices.api_call")
            .expect_err("invalid")
            .to_string()
        };
        assert!(err(vec![]).contains("at least one tier"));
        let e = err(vec![
            tier(Some(10), 0, 0),
            tier(Some(5), 1, 0),
            tier(None, 1, 0),
        ]);
        assert!(
            e.contains("tiers[1].up_to = 5") && e.contains("out of order"),
            "{e}"
        );
        assert!(err(vec![tier(None, 0, 0), tier(None, 1, 0)]).contains("tiers[0]"));
        assert!(err(vec![tier(Some(10), 0, 0)]).contains("last tier must be open"));
        assert!(err(vec![tier(Some(0), 0, 0), tier(None, 1, 0)]).contains("tiers[0].up_to = 0"));
        let ok = UsagePrice {
            mode: TiersMode::Volume,
            tiers: vec![tier(Some(1), 0, 0), tier(None, 1, 0)],
        };
        assert!(ok.validate("x").is_ok());
    }
}
