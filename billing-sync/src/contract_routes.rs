//! The admin routes of plans as products: set (create or replace), list and end a customer's
//! enterprise contract, and migrate a Stripe subscriber to its plan's current version (a
//! tenant-wide key with the `admin` scope).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use platform::error::{ApiError, invalid};
use schemas::api::ErrorBody;
use schemas::contract::Contract;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::billing::contracts::{ContractSpec, Refusal};
use crate::http::{
    ADMIN_FORBIDDEN, AppState, DEPENDENCY_FAILED, STRIPE_FAILED, UNAUTHORIZED, admin, failure,
};

/// The contract routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(put_contract))
        .routes(routes!(list_contracts))
        .routes(routes!(end_contract))
        .routes(routes!(migrate_subscriber))
}

/// A contract as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContractBody {
    /// Contract id.
    pub id: String,
    /// The plan it is sold as.
    pub plan: String,
    /// Its terms (price, limits, features, config, usage prices) with their version.
    #[schema(value_type = Object)]
    pub terms: serde_json::Value,
    /// Its Stripe price.
    #[schema(required = true)]
    pub stripe_price: Option<String>,
    /// Stripe metered prices of its usage prices, per meter.
    pub stripe_usage_prices: std::collections::BTreeMap<String, String>,
    /// Start (RFC 3339).
    pub starts_at: String,
    /// End, exclusive (RFC 3339); `null` = open-ended.
    #[schema(required = true)]
    pub ends_at: Option<String>,
    /// Whether it is in effect now.
    pub in_effect: bool,
}

impl ContractBody {
    fn of(c: &Contract, now: time::OffsetDateTime) -> Self {
        let rfc = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        Self {
            id: c.id.clone(),
            plan: c.terms.plan.clone(),
            terms: serde_json::to_value(&*c.terms).unwrap_or_default(),
            stripe_price: c.stripe_price.clone(),
            stripe_usage_prices: c.stripe_usage_prices.clone(),
            starts_at: rfc(c.starts_at),
            ends_at: c.ends_at.map(rfc),
            in_effect: c.in_effect(now),
        }
    }
}

/// What `GET /admin/customers/{customer}/contracts` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContractList {
    /// The customer.
    pub customer: String,
    /// Its contracts, by start (ended ones included).
    pub contracts: Vec<ContractBody>,
}

fn refused(r: Refusal) -> ApiError {
    let mut e = invalid(&r.field, r.message);
    if r.code == "contract_not_found" {
        e.status = StatusCode::NOT_FOUND;
    }
    e.code = r.code;
    e
}

/// Set a customer's enterprise contract: its own price, limits, features and time span.
///
/// `price_cents` creates a Stripe price for it; `stripe_price` uses an existing one. Fields left
/// out take the plan's values. Needs a tenant-wide key with the `admin` scope.
#[utoipa::path(
    put,
    path = "/admin/customers/{customer}/contract",
    tag = "admin",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = "The customer")),
    request_body = ContractSpec,
    responses(
        (status = 200, description = "The contract as stored", body = ContractBody),
        (status = 400, body = ErrorBody, description = "Invalid contract: `unknown_plan`, `unknown_feature`, `unknown_meter`, `tiers_out_of_order`, `overlapping_contract`, `unknown_price` or `invalid_request`, with the field"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
pub(crate) async fn put_contract(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ContractSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ContractBody>, ApiError> {
    let key = admin(&state, &headers).await?;
    if !schemas::token::is_token(&customer, 256) {
        return Err(invalid(
            "customer",
            "the customer id is not a valid identifier",
        ));
    }
    let Json(spec) = body.map_err(|e| invalid("body", e.body_text()))?;
    let contract = state
        .billing
        .set_contract(&key.tenant, &customer, &spec)
        .await
        .map_err(failure)?
        .map_err(refused)?;
    Ok(Json(ContractBody::of(
        &contract,
        time::OffsetDateTime::now_utc(),
    )))
}

/// A customer's contracts (in effect, scheduled and ended).
///
/// Needs a tenant-wide key with the `admin` scope.
#[utoipa::path(
    get,
    path = "/admin/customers/{customer}/contracts",
    tag = "admin",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = "The customer")),
    responses(
        (status = 200, description = "The contracts", body = ContractList),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
pub(crate) async fn list_contracts(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ContractList>, ApiError> {
    let key = admin(&state, &headers).await?;
    let plan = state
        .billing
        .plan_state(&key.tenant, &customer)
        .await
        .map_err(failure)?;
    let now = time::OffsetDateTime::now_utc();
    Ok(Json(ContractList {
        customer,
        contracts: plan
            .contracts
            .iter()
            .map(|c| ContractBody::of(c, now))
            .collect(),
    }))
}

/// End a customer's contract now (one not started yet is removed); the plan applies again.
///
/// Needs a tenant-wide key with the `admin` scope.
#[utoipa::path(
    delete,
    path = "/admin/customers/{customer}/contracts/{id}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("customer" = String, Path, description = "The customer"),
        ("id" = String, Path, description = "Contract id"),
    ),
    responses(
        (status = 200, description = "The contract as ended", body = ContractBody),
        (status = 400, body = ErrorBody, description = "`contract_ended`"),
        (status = 404, body = ErrorBody, description = "`contract_not_found`"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
pub(crate) async fn end_contract(
    State(state): State<AppState>,
    Path((customer, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ContractBody>, ApiError> {
    let key = admin(&state, &headers).await?;
    let contract = state
        .billing
        .end_contract(&key.tenant, &customer, &id)
        .await
        .map_err(failure)?
        .map_err(refused)?;
    Ok(Json(ContractBody::of(
        &contract,
        time::OffsetDateTime::now_utc(),
    )))
}

/// Move a Stripe subscriber to its plan's current version.
///
/// When the plan's current Stripe price differs from the subscription's, the plan item moves to it
/// (no proration: the new price bills from the next invoice); then the customer is pinned to the
/// current terms (limits, features). Migrating again changes nothing. Needs a tenant-wide key
/// with the `admin` scope.
#[utoipa::path(
    post,
    path = "/admin/customers/{customer}/plan/migrate",
    tag = "admin",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = "The customer")),
    responses(
        (status = 200, description = "`{customer, plan, from_version, to_version, migrated, \
            subscription_id, stripe_price_from, stripe_price_to, price_moved}`", body = Object),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 404, body = ErrorBody, description = "`no_subscription`: no live Stripe \
            subscription (the ingest's migration route pins other customers)"),
        (status = 409, body = ErrorBody, description = "`unknown_plan`: the subscription's plan \
            left the catalog; `subscription_changed`: its price is no longer on it"),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
pub(crate) async fn migrate_subscriber(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = admin(&state, &headers).await?;
    let r = state
        .billing
        .migrate_subscriber(&key.tenant, &customer)
        .await
        .map_err(failure)?
        .map_err(|(status, code, message)| {
            ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT),
                code,
                message,
            )
        })?;
    Ok(Json(r))
}
