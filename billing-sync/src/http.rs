//! HTTP routes: the seed's subscription endpoints (authenticated with the platform's API keys), the
//! Stripe webhook, admin triggers for the background jobs, health, readiness and metrics.
//!
//! The customer is the key's own (a customer-scoped key), or, for a tenant-wide key, the
//! `X-Customer-Id` header or `?customer=`. `status` and `portal` need the `read` scope; `create`
//! and `cancel` change the subscription and need `ingest` (the seed app's write scope) or `admin`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::auth::{authenticate, customer_of};
use platform::error::{ApiError, invalid};
use platform::keys::KeyStore;
use platform::principal::{KeyInfo, Scope};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::billing::Billing;
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
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/subscription/status", get(status))
        .route("/subscription/create", post(create))
        .route("/subscription/portal", get(portal))
        .route("/subscription/cancel", post(cancel))
        .route("/webhooks/stripe", post(webhook))
        .route("/admin/usage/report", post(admin_report))
        .route("/admin/usage/reconcile", get(admin_usage_reconcile))
        .route("/admin/subscriptions/reconcile", post(admin_reconcile))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
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
#[derive(Debug, Deserialize, Default)]
pub struct CustomerQuery {
    /// The customer.
    pub customer: Option<String>,
}

/// Maps a service error to a 502 (Stripe refused or is unreachable) or 503 (our dependencies).
fn failure(e: crate::Error) -> ApiError {
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Plan key (`starter`, `professional`, `enterprise`).
    pub plan: String,
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
    body: Result<Json<CreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let key = acting_customer_key(&state, &headers).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
    let billing = &state.billing;
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
    let Some(price) = billing.plans.price(&req.plan).map(String::from) else {
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
    let body = billing
        .create_checkout(&key.tenant, &customer, &req.plan, &price)
        .await
        .map_err(failure)?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

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

/// Body of `POST /subscription/cancel` (optional).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Cancel now instead of at the period end.
    #[serde(default)]
    pub immediately: bool,
}

/// Buying or cancelling: a tenant key needs the `ingest` scope; a customer-scoped key (or a
/// dashboard session) acts on its own subscription with `read`.
async fn acting_customer_key(state: &AppState, headers: &HeaderMap) -> Result<KeyInfo, ApiError> {
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
    Ok(Json(
        state
            .billing
            .cancel(&live, req.immediately)
            .await
            .map_err(failure)?,
    ))
}

async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let billing = &state.billing;
    let Ok(payload) = std::str::from_utf8(&body) else {
        billing.metrics.webhook("invalid", "malformed_event");
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_event",
            "the body is not UTF-8",
        )
        .into_response();
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let secret = billing.config.stripe.webhook_secret.expose_secret();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let event = match crate::webhook::verify(payload, signature, secret, now) {
        Ok(e) => e,
        Err(r) => {
            billing.metrics.webhook("invalid", r.code);
            tracing::warn!(code = r.code, message = %r.message, "webhook refused");
            return ApiError::new(r.status, r.code, r.message).into_response();
        }
    };
    match crate::webhook::handle(billing, event).await {
        Ok(body) => Json(body).into_response(),
        // Stripe retries on 5xx: nothing was marked handled.
        Err(e) => failure(e).into_response(),
    }
}

async fn admin(state: &AppState, headers: &HeaderMap) -> Result<KeyInfo, ApiError> {
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

async fn admin_report(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let summary = crate::usage::report(state.billing.clone(), state.cancel.clone())
        .await
        .map_err(failure)?;
    Ok(Json(json!(summary)))
}

/// Window of `GET /admin/usage/reconcile` (unix seconds; defaults to the report window).
#[derive(Debug, Deserialize, Default)]
pub struct WindowQuery {
    /// Start (inclusive).
    pub from: Option<i64>,
    /// End (exclusive).
    pub to: Option<i64>,
}

async fn admin_usage_reconcile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(w): Query<WindowQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = admin(&state, &headers).await?;
    let mut r = crate::usage::reconcile(&state.billing, w.from, w.to)
        .await
        .map_err(failure)?;
    // A tenant sees only its own customers.
    r.differences.retain(|d| d.tenant == key.tenant);
    Ok(Json(json!(r)))
}

async fn admin_reconcile(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let repaired = state.billing.reconcile().await.map_err(failure)?;
    let downgraded = state.billing.check_grace().await.map_err(failure)?;
    Ok(Json(
        json!({"repaired": repaired, "downgraded": downgraded}),
    ))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let keys = state.keys.is_loaded();
    let clickhouse = state.billing.store.ping().await;
    let broker = state.billing.producer.ping().await;
    let status = if keys && clickhouse && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"keys_loaded": keys, "clickhouse": clickhouse, "broker": broker})),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.billing.metrics.render(),
    )
        .into_response()
}
