//! HTTP routes: the seed's subscription endpoints (authenticated with the platform's API keys),
//! health, readiness, metrics and the OpenAPI document generated from the handlers
//! (`GET /openapi.json`), and the router that merges the other route modules (the Stripe webhook
//! in `webhook_route`, admin triggers, emails, contracts, add-ons).
//!
//! Every route is registered through [`utoipa_axum::routes!`], which takes the path and method
//! from the handler's `#[utoipa::path]`, so a route cannot exist without its documentation.
//!
//! The customer is the key's own (a customer-scoped key), or, for a tenant-wide key, the
//! `X-Customer-Id` header or `?customer=`. `status` and `portal` need the `read` scope; `create`
//! and `cancel` change the subscription and need `ingest` (the seed app's write scope) or `admin`.
//! `GET /v1/customers/{customer}/invoice-preview` (`read`) names the customer in the path; a
//! customer-scoped key may only name its own.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use platform::auth::{authenticate, authorize_customer, check_customer, customer_of};
use platform::error::{ApiError, invalid};
use platform::extract::Query;
use platform::keys::KeyStore;
use platform::principal::{KeyInfo, Scope};
use schemas::api::{BearerAuth, ErrorBody, Health, doc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::billing::{Billing, InvoicePreview};
use crate::metrics::RequestLabels;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The billing services.
    pub billing: Arc<Billing>,
    /// API keys (shared with the ingest through ClickHouse).
    pub keys: KeyStore,
    /// Stops the background jobs started from admin endpoints with the app.
    pub cancel: CancellationToken,
    /// Customer emails (their routes and the webhook hook; queued only with `emails.enabled`).
    pub emails: Option<Arc<mailer::Mailer>>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "billing-sync API",
        description = "Stripe Checkout (subscription mode), the billing portal, cancelling, \
            Stripe's signed webhooks and admin triggers for the background jobs. A \
            customer-scoped key acts for its customer; a tenant key names it with \
            `X-Customer-Id` or `?customer=`. Errors are `{\"error\": {\"code\", \"message\", \
            \"details\"}}`. Generated from the handlers; served at `GET /openapi.json`."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
    tags(
        (name = "subscription", description = "The seed application's subscription endpoints"),
        (name = "stripe", description = "Stripe's webhooks"),
        (name = "admin", description = "Background jobs run now (`admin` scope, tenant key)"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
        (name = "emails", description = "Customer emails: preview, listing, address, the \
            signed unsubscribe and preference pages, the preference API"),
    )
)]
struct ApiDoc;

/// Every route and its operation, without state or layers.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(create))
        .routes(routes!(portal))
        .routes(routes!(cancel))
        .routes(routes!(invoice_preview))
        .routes(routes!(crate::webhook_route::webhook))
        .routes(routes!(crate::admin_routes::admin_report))
        .routes(routes!(crate::admin_routes::admin_usage_reconcile))
        .routes(routes!(crate::usage::proof::endpoint::admin_usage_proof))
        .routes(routes!(crate::admin_routes::admin_reconcile))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .merge(crate::email_routes::routes())
        .merge(crate::contract_routes::routes())
        .merge(crate::addon_routes::routes())
}

/// The router.
pub fn router(state: AppState) -> Router {
    let (router, _) = api().split_for_parts();
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
}

/// The OpenAPI document of every route, as served at `GET /openapi.json` (made once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        api()
            .into_openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

/// 401 of every authenticated route.
pub(crate) const UNAUTHORIZED: &str = doc::UNAUTHORIZED;

/// 403 of the subscription routes that read.
pub(crate) const READ_FORBIDDEN: &str = "`insufficient_scope`: the key lacks the `read` scope; \
    `customer_forbidden`: a customer-scoped key named another customer";

/// 403 of the subscription routes that buy or cancel.
pub(crate) const WRITE_FORBIDDEN: &str = "`insufficient_scope`: a tenant-wide key without the `ingest` \
    scope (or a key without `read`); `customer_forbidden`: a customer-scoped key named another \
    customer";

/// 403 of the admin routes.
pub(crate) const ADMIN_FORBIDDEN: &str = "`insufficient_scope`: the key lacks the `admin` scope; \
    `customer_forbidden`: a customer-scoped key cannot run billing jobs";

/// 400 of the routes that name a customer.
pub(crate) const NO_CUSTOMER: &str = "`invalid_request`: a tenant-wide key named no customer (or a bad \
    one) in `X-Customer-Id` or `?customer=`";

/// 502 of the routes that call Stripe.
pub(crate) const STRIPE_FAILED: &str =
    "`stripe_unavailable` (with `Retry-After`): Stripe refused or did not answer; retry later";

/// 503 of the routes that use ClickHouse or the broker.
pub(crate) const DEPENDENCY_FAILED: &str = "`dependency_unavailable` (with `Retry-After`): ClickHouse or \
    the broker is unavailable; retry later";

/// What `GET /subscription/status` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionStatus {
    /// The customer.
    pub customer: String,
    /// The plan in effect: the subscribed plan while the subscription is live, the fallback plan
    /// after a downgrade, the catalog's default plan otherwise.
    pub plan: String,
    /// The plan of the subscription (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed_plan: Option<String>,
    /// Stripe's subscription status, or `none` without a subscription.
    pub status: String,
    /// Stripe subscription id.
    #[schema(required = true)]
    pub subscription_id: Option<String>,
    /// Stripe customer id, once the customer has one.
    #[schema(required = true)]
    pub stripe_customer_id: Option<String>,
    /// Current billing period start (RFC 3339).
    #[schema(required = true, format = DateTime)]
    pub current_period_start: Option<String>,
    /// Current billing period end (RFC 3339).
    #[schema(required = true, format = DateTime)]
    pub current_period_end: Option<String>,
    /// Whether the subscription ends at the period end.
    pub cancel_at_period_end: bool,
    /// When the last payment failed, while unresolved (RFC 3339).
    #[schema(required = true, format = DateTime)]
    pub payment_failed_at: Option<String>,
    /// Whether the grace period ran out and the customer was moved to the fallback plan.
    pub downgraded: bool,
}

/// What `POST /subscription/create` answers (201).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Checkout {
    /// The Checkout Session's URL: send the customer there.
    pub url: String,
    /// Checkout Session id.
    pub session_id: String,
    /// The plan bought.
    pub plan: String,
    /// Stripe customer id.
    pub stripe_customer_id: String,
    /// The enterprise contract bought (its price), when one is in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
}

/// What `GET /subscription/portal` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Portal {
    /// The billing portal session's URL.
    pub url: String,
    /// Stripe customer id.
    pub stripe_customer_id: String,
}

/// What `POST /subscription/cancel` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    /// Stripe subscription id.
    pub subscription_id: String,
    /// Stripe's subscription status after the call.
    pub status: String,
    /// Whether it ends at the period end.
    pub cancel_at_period_end: bool,
    /// Current period end (RFC 3339).
    #[schema(required = true, format = DateTime)]
    pub current_period_end: Option<String>,
    /// Whether it was cancelled now (`immediately`).
    pub canceled_now: bool,
    /// With `immediately`: whether the customer's usage reached Stripe before the cancel, so that
    /// the final invoice bills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_reported: Option<bool>,
}

/// What `GET /readyz` checked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// The API keys are loaded from ClickHouse.
    pub keys_loaded: bool,
    /// ClickHouse answers.
    pub clickhouse: bool,
    /// The broker answers.
    pub broker: bool,
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    // Concurrency permits taken by the handler's authentication live until the response.
    let response = platform::concurrency::scoped(next.run(req)).await;
    state
        .billing
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    tracing::debug!(route, status = response.status().as_u16(), elapsed = ?start.elapsed(), "request");
    response
}

/// `customer` query parameter for tenant-wide keys.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CustomerQuery {
    /// For a tenant-wide key: the customer (or the `X-Customer-Id` header); a customer-scoped key
    /// may only name itself.
    pub customer: Option<String>,
}

/// Maps a service error to a 502 (Stripe refused or is unreachable) or 503 (our dependencies).
pub(crate) fn failure(e: crate::Error) -> ApiError {
    match &e {
        crate::Error::Stripe { op, .. } => {
            tracing::warn!(error = %e, "stripe call failed");
            let mut err = ApiError::new(
                StatusCode::BAD_GATEWAY,
                "stripe_unavailable",
                format!("Stripe did not complete `{op}`; retry later"),
            );
            err.retry_after = Some(5);
            err
        }
        crate::Error::ClickHouse(_) | crate::Error::Kafka(_) | crate::Error::Produce(_) => {
            tracing::warn!(error = %e, "dependency failed");
            ApiError::unavailable(
                "dependency_unavailable",
                "a backing service is unavailable; retry later",
                2,
            )
        }
        _ => ApiError::internal(&e),
    }
}

/// The customer's plan, subscription status, period and payment state.
///
/// Needs a key with the `read` scope (or a dashboard session).
#[utoipa::path(
    get,
    path = "/subscription/status",
    tag = "subscription",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        CustomerQuery,
    ),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionStatus),
        (status = 400, body = ErrorBody, description = NO_CUSTOMER),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = READ_FORBIDDEN),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    Ok(Json(
        state
            .billing
            .status(&key.tenant, &customer)
            .await
            .map_err(failure)?,
    ))
}

/// Body of `POST /subscription/create`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Plan key (`starter`, `professional`, `enterprise`).
    pub plan: String,
}

/// A Stripe Checkout Session (subscription mode) for a plan.
///
/// A tenant-wide key needs the `ingest` scope; a customer-scoped key (or a dashboard session)
/// buys for its own customer with `read`. 409 while a subscription is live: plans change in the
/// billing portal.
#[utoipa::path(
    post,
    path = "/subscription/create",
    tag = "subscription",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        CustomerQuery,
    ),
    request_body = CreateRequest,
    responses(
        (status = 201, description = "The Checkout Session", body = Checkout),
        (status = 400, body = ErrorBody, description = "`invalid_request` (no or a bad customer, \
            a bad body), `unknown_plan`, `plan_not_purchasable` (the plan has no Stripe price)"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = WRITE_FORBIDDEN),
        (status = 409, body = ErrorBody, description = "`subscription_exists`: the customer has a \
            live subscription"),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
    body: Result<Json<CreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = acting_customer_key(&state, &headers).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    let Json(mut req) = body.map_err(|e| invalid("body", e.body_text()))?;
    let billing = &state.billing;
    // A contract in effect is what the customer buys: its price and usage prices.
    let contract = billing
        .contract_of(&key.tenant, &customer)
        .await
        .map_err(failure)?;
    if req.plan == "contract" {
        match &contract {
            Some(c) => req.plan = c.terms.plan.clone(),
            None => {
                let mut e = invalid("plan", "the customer has no contract in effect");
                e.code = "no_contract";
                return Err(e);
            }
        }
    }
    if let Some(c) = &contract
        && req.plan != c.terms.plan
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "contract_in_effect",
            format!(
                "the customer's contract {} ({}) is in effect; check out plan {:?} or \"contract\"",
                c.id, c.terms.plan, c.terms.plan
            ),
        ));
    }
    if billing.catalog.plan(&req.plan).is_none() {
        let known: Vec<&str> = billing
            .catalog
            .plans
            .iter()
            .map(|p| p.key.as_str())
            .collect();
        let mut e = invalid(
            "plan",
            format!("unknown plan {:?}; known: {known:?}", req.plan),
        );
        e.code = "unknown_plan";
        return Err(e);
    }
    let contract_price = contract.as_ref().and_then(|c| c.stripe_price.clone());
    let Some(price) = contract_price.or_else(|| billing.plans.price(&req.plan).map(String::from))
    else {
        let mut e = invalid(
            "plan",
            format!(
                "plan {:?} has no Stripe price and cannot be bought",
                req.plan
            ),
        );
        e.code = "plan_not_purchasable";
        return Err(e);
    };
    if let Some(live) = billing
        .live_subscription(&key.tenant, &customer)
        .await
        .map_err(failure)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "subscription_exists",
            format!(
                "the customer already has subscription {} ({}, {}); change plans in the billing portal",
                live.subscription_id, live.plan, live.status
            ),
        ));
    }
    let metered = match &contract {
        Some(c) => {
            let mut m = billing.meter_prices();
            m.extend(c.stripe_usage_prices.clone());
            m
        }
        None => billing.metered_prices_for(&req.plan),
    };
    let body = billing
        .create_checkout(
            &key.tenant,
            &customer,
            &req.plan,
            &price,
            metered,
            contract.as_ref().map(|c| c.id.as_str()),
        )
        .await
        .map_err(failure)?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A Stripe billing portal session for the customer.
///
/// Needs a key with the `read` scope (or a dashboard session).
#[utoipa::path(
    get,
    path = "/subscription/portal",
    tag = "subscription",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        CustomerQuery,
    ),
    responses(
        (status = 200, description = "The portal session", body = Portal),
        (status = 400, body = ErrorBody, description = NO_CUSTOMER),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = READ_FORBIDDEN),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn portal(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    Ok(Json(
        state
            .billing
            .portal(&key.tenant, &customer)
            .await
            .map_err(failure)?,
    ))
}

/// A Stripe failure of the invoice preview as a 503 with `Retry-After` (Stripe's own words stay
/// in the log); other failures as [`failure`].
fn preview_failure(e: crate::Error) -> ApiError {
    match &e {
        crate::Error::Stripe { .. } | crate::Error::StripeData(_) => {
            tracing::warn!(error = %e, "invoice preview: stripe call failed");
            ApiError::unavailable(
                "stripe_unavailable",
                "Stripe did not answer the invoice preview; retry later",
                5,
            )
        }
        _ => failure(e),
    }
}

/// What the customer will pay at its period end.
///
/// Stripe's preview of the next invoice of the customer's live subscription
/// (`POST /v1/invoices/create_preview`): currency, amount due, subtotal, the period it closes and
/// one line per subscription item (the plan's flat price, each meter's metered usage). Without a
/// live subscription (the free plan) the answer is 200 with `upcoming: false` and the `reason`:
/// "nothing to pay" is a state, not an error. Needs the `read` scope (or a dashboard session); a
/// customer-scoped key may only name its own customer, a tenant key any of its tenant's.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer}/invoice-preview",
    tag = "subscription",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = "The customer (a customer-scoped key: its \
        own)")),
    responses(
        (status = 200, description = "The upcoming invoice, or `upcoming: false` and why", body = InvoicePreview),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a bad customer id"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = READ_FORBIDDEN),
        (status = 404, body = ErrorBody, description = "`unknown_customer`: the key's tenant has \
            no such customer (no usage, subscription, plan change or key)"),
        (status = 503, body = ErrorBody, description = "`stripe_unavailable`: Stripe did not \
            answer; `dependency_unavailable`: ClickHouse is unavailable; retry after `Retry-After`",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn invoice_preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(customer): Path<String>,
) -> Result<Json<InvoicePreview>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    authorize_customer(&key, &customer)?;
    check_customer(&customer)?;
    let billing = &state.billing;
    let preview = billing
        .invoice_preview(&key.tenant, &customer)
        .await
        .map_err(preview_failure)?;
    // A customer-scoped key's customer exists; a tenant key may name one the tenant never had.
    if preview.reason.as_deref() == Some("no_subscription")
        && key.customer.is_none()
        && !billing
            .store
            .knows_customer(&key.tenant, &customer)
            .await
            .map_err(failure)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_customer",
            format!("the tenant has no customer {customer:?}"),
        ));
    }
    Ok(Json(preview))
}

/// Body of `POST /subscription/cancel` (optional).
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Cancel now instead of at the period end.
    #[serde(default)]
    pub immediately: bool,
}

/// Buying or cancelling: a tenant key needs the `ingest` scope; a customer-scoped key (or a
/// dashboard session) acts on its own subscription with `read`.
pub(crate) async fn acting_customer_key(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<KeyInfo, ApiError> {
    let key = authenticate(&state.keys, headers, Scope::Read).await?;
    if key.customer.is_none() && !key.allows(Scope::Ingest) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "a tenant-wide key needs the `ingest` scope to buy or cancel for a customer",
        ));
    }
    Ok(key)
}

/// Cancel the live subscription at the period end (or now).
///
/// A tenant-wide key needs the `ingest` scope; a customer-scoped key (or a dashboard session)
/// cancels its own subscription with `read`. Stripe's answer is applied at once.
#[utoipa::path(
    post,
    path = "/subscription/cancel",
    tag = "subscription",
    security(("bearer" = [])),
    params(
        ("X-Customer-Id" = Option<String>, Header, description = doc::CUSTOMER_HEADER),
        CustomerQuery,
    ),
    request_body(content = Option<CancelRequest>, description = "Optional; an empty body cancels \
        at the period end"),
    responses(
        (status = 200, description = "The subscription after the cancel", body = Cancelled),
        (status = 400, body = ErrorBody, description = "`invalid_request`: no or a bad customer, a \
            bad body"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = WRITE_FORBIDDEN),
        (status = 404, body = ErrorBody, description = "`no_subscription`: the customer has no \
            live subscription"),
        (status = 502, body = ErrorBody, description = STRIPE_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = acting_customer_key(&state, &headers).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    let req: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| invalid("body", e.to_string()))?
    };
    let live = state
        .billing
        .live_subscription(&key.tenant, &customer)
        .await
        .map_err(failure)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_subscription",
                "the customer has no live subscription",
            )
        })?;
    // Cancelling now: the customer's usage goes to Stripe first, so that the final invoice bills
    // it. A failed flush does not keep the customer from cancelling; the usage stays in the ledger
    // and the answer says so.
    let flushed = if req.immediately {
        match crate::usage::report::flush_customer(&state.billing, &key.tenant, &customer).await {
            Ok(s) => Some(s.failed == 0),
            Err(e) => {
                tracing::error!(tenant = %key.tenant, customer = %customer, error = %e, "usage not reported before an immediate cancel: the final invoice misses it");
                Some(false)
            }
        }
    } else {
        None
    };
    let mut answer = state
        .billing
        .cancel(&live, req.immediately)
        .await
        .map_err(failure)?;
    if let Some(ok) = flushed {
        answer["usage_reported"] = Value::Bool(ok);
    }
    Ok(Json(answer))
}

/// The key of an admin route: tenant-wide, with the `admin` scope.
pub(crate) async fn admin(state: &AppState, headers: &HeaderMap) -> Result<KeyInfo, ApiError> {
    let key = authenticate(&state.keys, headers, Scope::Admin).await?;
    if key.customer.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "customer_forbidden",
            "a customer-scoped key cannot run billing jobs",
        ));
    }
    Ok(key)
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "Alive", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health::OK)
}

/// Readiness (keys loaded, ClickHouse and the broker reachable).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: what is missing", body = Readiness),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let keys = state.keys.is_loaded();
    let clickhouse = state.billing.store.ping().await;
    let broker = state.billing.producer.ping().await;
    let status = if keys && clickhouse && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        keys_loaded: keys,
        clickhouse,
        broker,
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
)]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        match &state.emails {
            // The mailer's counters inside the one exposition (before its `# EOF`).
            Some(m) => {
                let own = state.billing.metrics.render();
                let body = own.trim_end().trim_end_matches("# EOF").to_string();
                format!("{body}{}\n# EOF\n", m.metrics().render())
            }
            None => state.billing.metrics.render(),
        },
    )
        .into_response()
}

/// This document.
///
/// The OpenAPI 3.1 description of every route of billing-sync, generated from the handlers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)),
)]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}
