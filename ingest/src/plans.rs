//! `GET /v1/plans`: the catalog's plans (current versions, with their ids) with price, the first
//! meter's limit, the limit behaviour and the features each includes, as the dashboard's upgrade
//! modal shows them (public).

use axum::Json;
use axum::extract::State;
use schemas::Catalog;
use schemas::catalog::Plan;
use schemas::entitlements::FeatureKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::shared::AppState;

/// The labels of a plan's boolean and config features (its current version), in catalog order.
pub fn labels(catalog: &Catalog, plan: &Plan) -> Vec<String> {
    catalog
        .features
        .iter()
        .filter(|f| f.kind != FeatureKind::Metered)
        .filter_map(|f| f.label(plan.terms(), &f.name))
        .collect()
}

/// A meter named in the plan catalog.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeterName {
    /// Meter key.
    pub key: String,
    /// Human name.
    pub name: String,
}

/// One plan of `GET /v1/plans`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanOffer {
    /// Plan key.
    pub key: String,
    /// Human name.
    pub name: String,
    /// Price per period in the smallest currency unit.
    pub price_cents: u64,
    /// ISO currency code.
    pub currency: String,
    /// Limit of the first meter per period; `null` = unlimited.
    #[schema(required = true)]
    pub limit: Option<u64>,
    /// What the plan's current version includes besides the limit, as shown (`Advanced analysis`,
    /// `Priority support`), in the catalog's feature order.
    pub features: Vec<String>,
    /// Whether it is the plan of new customers.
    pub default: bool,
    /// The current version's id (what new subscribers get; subscribers keep theirs until
    /// migrated).
    pub version: String,
    /// `block` (refused at the limit) or `overage` (usage runs over, billed per unit or in tiers).
    #[schema(value_type = String)]
    pub on_limit: schemas::pricing::OnLimit,
}

/// Answer of `GET /v1/plans`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlansBody {
    /// The meter the limits are for (the catalog's first).
    pub meter: MeterName,
    /// The dashboard warns above this percent.
    pub warn_percent: u8,
    /// The plan of new customers.
    pub default_plan: String,
    /// The plans in catalog order.
    pub plans: Vec<PlanOffer>,
}

/// The plan catalog: price, limits, features (public).
///
/// The plans of the catalog for the first meter, in catalog order; needs no key.
#[utoipa::path(
    get,
    path = "/v1/plans",
    tag = "dashboard",
    responses((status = 200, description = "The plans", body = PlansBody)),
)]
pub async fn plans(State(state): State<AppState>) -> Json<PlansBody> {
    let c = &state.catalog;
    let meter = &c.meters[0];
    let plans = c
        .plans
        .iter()
        .map(|p| PlanOffer {
            key: p.key.clone(),
            name: p.name.clone(),
            price_cents: p.price_cents,
            currency: p.currency.clone(),
            limit: p.limit(&meter.key),
            features: labels(c, p),
            default: p.key == c.default_plan,
            version: p.terms().version.clone(),
            on_limit: p.on_limit,
        })
        .collect();
    Json(PlansBody {
        meter: MeterName {
            key: meter.key.clone(),
            name: meter.name.clone(),
        },
        warn_percent: c.warn_percent,
        default_plan: c.default_plan.clone(),
        plans,
    })
}
