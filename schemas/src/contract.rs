//! Enterprise contracts: a customer's own terms (price, limits, features, usage prices) for a
//! time span, set by an admin and kept as an event on `subscription.events`, so the quota view
//! and the history rebuild them from the log like plan changes.
//!
//! While a contract is in effect its terms replace the plan's (limit overrides and grants still
//! apply on top); before its start and after its end the customer is on its plan again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::plan_version::PlanTerms;

/// One contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    /// Contract id (`ct_...`), unique per customer; setting the same id again replaces it.
    pub id: String,
    /// The contract's terms; `terms.plan` is the catalog plan it is sold as (its features and
    /// name on the dashboard, the plan Stripe's subscription maps to).
    #[serde(with = "crate::plan_version::arc_terms")]
    pub terms: Arc<PlanTerms>,
    /// The Stripe price of the contract's flat amount (created for it, or an existing one).
    #[serde(default)]
    pub stripe_price: Option<String>,
    /// The Stripe metered prices of its usage prices, per meter key.
    #[serde(default)]
    pub stripe_usage_prices: std::collections::BTreeMap<String, String>,
    /// In effect from.
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// In effect until (exclusive); none = open-ended.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ends_at: Option<OffsetDateTime>,
}

impl Contract {
    /// Whether the contract is in effect at `now`.
    pub fn in_effect(&self, now: OffsetDateTime) -> bool {
        self.starts_at <= now && self.ends_at.is_none_or(|e| now < e)
    }

    /// Whether it is in effect at some time at or after `now` (in effect or scheduled).
    pub fn current_or_future(&self, now: OffsetDateTime) -> bool {
        self.ends_at.is_none_or(|e| now < e)
    }

    /// Whether the two time spans share an instant.
    pub fn overlaps(&self, other: &Contract) -> bool {
        let before =
            |end: Option<OffsetDateTime>, start: OffsetDateTime| end.is_some_and(|e| e <= start);
        !(before(self.ends_at, other.starts_at) || before(other.ends_at, self.starts_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn contract(id: &str, start: OffsetDateTime, end: Option<OffsetDateTime>) -> Contract {
        Contract {
            id: id.into(),
            terms: Arc::new(PlanTerms::default()),
            stripe_price: None,
            stripe_usage_prices: Default::default(),
            starts_at: start,
            ends_at: end,
        }
    }

    #[test]
    fn spans_are_half_open_and_overlap_when_they_share_an_instant() {
        let jan = datetime!(2027-01-01 0:00 UTC);
        let feb = datetime!(2027-02-01 0:00 UTC);
        let mar = datetime!(2027-03-01 0:00 UTC);
        let a = contract("a", jan, Some(feb));
        assert!(a.in_effect(jan) && !a.in_effect(feb));
        assert!(!a.overlaps(&contract("b", feb, Some(mar))), "back to back");
        assert!(a.overlaps(&contract("c", datetime!(2027-01-31 0:00 UTC), None)));
        assert!(contract("d", jan, None).overlaps(&contract("e", mar, None)));
        assert!(!contract("f", mar, None).overlaps(&a));
    }
}
