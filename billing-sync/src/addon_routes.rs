//! The add-on routes: `GET /subscription/addons` (what the customer may buy and has bought),
//! `POST /subscription/addons` (a Checkout Session for one) and the admin's
//! `DELETE /admin/customers/{customer}/addons/{purchase}` (refund or cancel, then remove).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::auth::{authenticate, customer_of};
use platform::error::{ApiError, invalid};
use platform::extract::Query;
use platform::principal::Scope;
use schemas::addon::{AddonBilling, AddonGrant, BoughtAddon};
use schemas::api::{ErrorBody, doc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::billing::addons::AddonRefusal;
use crate::http::{
    ADMIN_FORBIDDEN, AppState, CustomerQuery, DEPENDENCY_FAILED, NO_CUSTOMER, READ_FORBIDDEN,
    STRIPE_FAILED, UNAUTHORIZED, WRITE_FORBIDDEN, acting_customer_key, admin, failure,
};

/// The add-on routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_addons, buy_addon))
        .routes(routes!(remove_addon))
}

/// An add-on of the catalog as a customer sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OfferedAddon {
    /// Add-on key.
    pub key: String,
    /// Human name.
    pub name: String,
    /// Price per unit in the smallest currency unit (per month when recurring).
    pub price_cents: u64,
    /// ISO currency code.
    pub currency: String,
    /// `one_time` or `recurring`.
    pub billing: AddonBilling,
    /// Extra quantity of a meter per unit.
    #[schema(required = true)]
    pub grant: Option<AddonGrant>,
    /// Boolean features it adds.
    pub features: Vec<String>,
    /// Config values it sets.
    pub config: BTreeMap<String, String>,
    /// Most units in one purchase.
    pub max_quantity: u32,
    /// Whether this customer can buy it now, and if not, why (`addon_not_in_plan`,
    /// `addon_active`, `addon_not_purchasable`).
    pub purchasable: bool,
    /// Why not, when not purchasable.
    #[schema(required = true)]
    pub reason: Option<String>,
}

/// What `GET /subscription/addons` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddonList {
    /// The customer.
    pub customer: String,
    /// Its plan (what decides which add-ons it may buy).
    pub plan: String,
    /// The catalog's add-ons, in catalog order.
    pub available: Vec<OfferedAddon>,
    /// Its bought add-ons that count now.
    pub bought: Vec<BoughtAddon>,
}

/// Body of `POST /subscription/addons`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuyAddon {
    /// Add-on key (`calls_1000`).
    pub addon: String,
    /// Units (default 1; at most the add-on's `max_quantity`; 1 for a recurring add-on).
    #[serde(default = "one")]
    pub quantity: u32,
}

fn one() -> u32 {
    1
}

fn refused(r: AddonRefusal) -> ApiError {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut e = match r.field {
        Some(field) => invalid(field, r.message.clone()),
        None => ApiError::new(status, r.code, r.message.clone()),
    };
    e.status = status;
    e.code = r.code;
    e
}

/// The catalog's add-ons with whether the customer may buy each, and its bought ones.
///
/// Needs a key with the `read` scope (or a dashboard session).
#[utoipa::path(
    get,
    path = "/subscription/addons",
    tag = "subscription",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        CustomerQuery,
    ),
    responses(
        (status = 200, description = "The add-ons", body = AddonList),
        (status = 400, body = ErrorBody, description = NO_CUSTOMER),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = READ_FORBIDDEN),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn list_addons(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<AddonList>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    let billing = &state.billing;
    let now = OffsetDateTime::now_utc();
    let plan_state = billing
        .plan_state(&key.tenant, &customer)
        .await
        .map_err(failure)?;
    let (plan, _) = billing
        .addon_plan(&key.tenant, &customer, &plan_state, now)
        .await
        .map_err(failure)?;
    let mut available = Vec::new();
    for a in &billing.catalog.addons {
        let reason = if !a.available_to(&plan) {
            Some("addon_not_in_plan")
        } else if a.billing == AddonBilling::Recurring
            && plan_state.active_addons(now).any(|b| b.addon == a.key)
        {
            Some("addon_active")
        } else if billing.addon_price(a).is_none() {
            Some("addon_not_purchasable")
        } else {
            None
        };
        available.push(OfferedAddon {
            key: a.key.clone(),
            name: a.name.clone(),
            price_cents: a.price_cents,
            currency: a.currency.clone(),
            billing: a.billing,
            grant: a.grant.clone(),
            features: a.features.clone(),
            config: a.config.clone(),
            max_quantity: a.max_quantity,
            purchasable: reason.is_none(),
            reason: reason.map(String::from),
        });
    }
    Ok(Json(AddonList {
        customer,
        plan,
        available,
        bought: plan_state.active_addons(now).cloned().collect(),
    }))
}

/// A Stripe Checkout Session for an add-on: `payment` mode for a one-time pack, `subscription`
/// mode (its own monthly subscription) for a recurring add-on. The webhook of the completed
/// session makes it count.
///
/// A tenant-wide key needs the `ingest` scope; a customer-scoped key (or a dashboard session)
/// buys for its own customer with `read`.
#[utoipa::path(
    post,
    path = "/subscription/addons",
    tag = "subscription",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        CustomerQuery,
    ),
    request_body = BuyAddon,
    responses(
        (status = 201, description = "`{url, session_id, addon, quantity, stripe_customer_id}`",
            body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request` (a bad body or \
            quantity), `unknown_addon`, `addon_not_purchasable` (no Stripe price)"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = WRITE_FORBIDDEN),
        (status = 409, body = ErrorBody, description = "`addon_not_in_plan`: the customer's \
            plan may not buy it; `addon_active`: a recurring add-on is active already"),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn buy_addon(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
    body: Result<Json<BuyAddon>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = acting_customer_key(&state, &headers).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
    let billing = &state.billing;
    let (addon, price) = billing
        .check_addon(&key.tenant, &customer, &req.addon, req.quantity)
        .await
        .map_err(failure)?
        .map_err(refused)?;
    let body = billing
        .create_addon_checkout(&key.tenant, &customer, &addon, &price, req.quantity)
        .await
        .map_err(failure)?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Removes a bought add-on: a one-time pack is refunded in full through Stripe, a recurring
/// add-on's subscription is cancelled now; it stops counting at once.
///
/// Needs a tenant-wide key with the `admin` scope.
#[utoipa::path(
    delete,
    path = "/admin/customers/{customer}/addons/{purchase}",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("customer" = String, Path, description = doc::CUSTOMER),
        ("purchase" = String, Path, description = "The purchase id (`pi_...` or `sub_...`), as \
            `GET /subscription/addons` lists it"),
    ),
    responses(
        (status = 200, description = "`{customer, purchase, addon, removed, stripe}`", body = Object),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 404, body = ErrorBody, description = "`no_such_addon`: the customer has no \
            add-on of that purchase"),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn remove_addon(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((customer, purchase)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let key = admin(&state, &headers).await?;
    let r = state
        .billing
        .remove_addon(&key.tenant, &customer, &purchase)
        .await
        .map_err(failure)?
        .map_err(refused)?;
    Ok(Json(r))
}
