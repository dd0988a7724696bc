//! Entitlements: `GET /v1/customers/{c}/entitlements` and `.../entitlements/{feature}`, what the
//! customer's plan version grants of each feature (boolean, metered with its usage, config value),
//! answered from the in-memory view like the quota check.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use schemas::api::{ErrorBody, doc};
use schemas::entitlements::{Entitlement, Feature};
use time::OffsetDateTime;

use platform::error::{ApiError, invalid};
use platform::principal::Scope;

use crate::access::{reader, starting};
use crate::quota::EntitlementsAnswer;
use crate::shared::AppState;

/// The catalog's feature `key`, or 400 `unknown_feature` naming `field` and the known keys.
pub(crate) fn check_feature<'a>(
    state: &'a AppState,
    field: &str,
    key: &str,
) -> Result<&'a Feature, ApiError> {
    state.catalog.feature(key).ok_or_else(|| {
        let known: Vec<&str> = state
            .catalog
            .features
            .iter()
            .map(|f| f.key.as_str())
            .collect();
        let mut e = invalid(field, format!("unknown feature {key:?}; known: {known:?}"));
        e.code = "unknown_feature";
        e
    })
}

/// What the customer's plan grants of every feature of the catalog. Answered from memory.
///
/// Boolean features, metered features (with the limit, usage and what is left in the current
/// period, as the quota check answers it) and config values, each with `has_access`; without
/// access, the reason (`feature_not_in_plan`, `limit_reached`) and the cheapest plan that has it.
/// Needs a key with the `read` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer}/entitlements",
    tag = "quota",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER)),
    responses(
        (status = 200, description = "The customer's plan version and every feature", body = EntitlementsAnswer),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a bad customer"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 503, body = ErrorBody, description = doc::VIEW_STARTING),
    )
)]
pub async fn get_entitlements(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Result<Json<EntitlementsAnswer>, ApiError> {
    let key = reader(&state, &headers, Scope::Read, &customer).await?;
    if !state.view.is_ready() {
        return Err(starting());
    }
    Ok(Json(state.view.entitlements(
        &key.tenant,
        &customer,
        None,
        OffsetDateTime::now_utc(),
    )))
}

/// What the customer's plan grants of one feature. Answered from memory.
///
/// Needs a key with the `read` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer}/entitlements/{feature}",
    tag = "quota",
    security(("bearer" = [])),
    params(
        ("customer" = String, Path, description = doc::CUSTOMER),
        ("feature" = String, Path, description = "A feature key of the catalog"),
    ),
    responses(
        (status = 200, description = "The entitlement", body = Entitlement),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad customer), \
            `unknown_feature` (not in the catalog; the message lists the known keys)"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = doc::FORBIDDEN),
        (status = 503, body = ErrorBody, description = doc::VIEW_STARTING),
    )
)]
pub async fn get_entitlement(
    State(state): State<AppState>,
    Path((customer, feature)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Entitlement>, ApiError> {
    let key = reader(&state, &headers, Scope::Read, &customer).await?;
    let feature = check_feature(&state, "feature", &feature)?;
    if !state.view.is_ready() {
        return Err(starting());
    }
    Ok(Json(state.view.entitlement(
        &key.tenant,
        &customer,
        feature,
        OffsetDateTime::now_utc(),
    )))
}
