//! The router on top of the handlers: every route with its OpenAPI operation, the layers, and
//! health, readiness, metrics and the OpenAPI document generated from the handlers (the
//! per-request layer is `request`).
//!
//! Every route is registered through [`utoipa_axum::routes!`], which takes the path and method
//! from the handler's `#[utoipa::path]`, so a route cannot exist without its documentation.

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemas::api::{BearerAuth, ErrorBody, Health};
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use platform::error::ApiError;

use crate::shared::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Usage metering API",
        description = "Event intake, quota checks, usage and history, plan administration, the \
            seed application's /usage endpoints and the customer dashboard. Errors are \
            `{\"error\": {\"code\", \"message\", \"request_id\", \"details\": [{\"index\", \
            \"field\", \"code\", \"reason\"}]}}`; every answer carries `x-request-id` (kept from \
            the request, made otherwise). Generated from the handlers; served at \
            `GET /openapi.json`."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
    tags(
        (name = "intake", description = "Sending usage events"),
        (name = "quota", description = "Quota and entitlement answers from memory, check-and-track"),
        (name = "usage", description = "Usage and history from the ClickHouse rollups"),
        (name = "admin", description = "Plans, plan version migrations, limits, grants and \
            sign-in links (`admin` scope)"),
        (name = "seed", description = "The seed application's usage API, served as-is"),
        (name = "dashboard", description = "The customer dashboard, its plans list and sessions"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

/// Adds the `x-request-id` header, which the per-request layer sets on every answer, to every
/// documented response (applied once every route is in the document).
struct RequestIdHeader;

impl Modify for RequestIdHeader {
    fn modify(&self, openapi: &mut Document) {
        use utoipa::openapi::{HeaderBuilder, ObjectBuilder, Type};
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for op in operations.into_iter().flatten() {
                for response in op.responses.responses.values_mut() {
                    if let utoipa::openapi::RefOr::T(r) = response {
                        r.headers.insert(
                            crate::request::REQUEST_ID.as_str().to_string(),
                            HeaderBuilder::new()
                                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                                .description(Some(
                                    "The request id: the request's own, or one made for it",
                                ))
                                .build()
                                .into(),
                        );
                    }
                }
            }
        }
    }
}

/// Every route and its operation, without state or layers.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(crate::intake::post_events))
        .routes(routes!(crate::check::post_check))
        .routes(routes!(crate::check::get_quota))
        .routes(routes!(crate::entitlements::get_entitlements))
        .routes(routes!(crate::entitlements::get_entitlement))
        .routes(routes!(crate::usage::get_usage))
        .routes(routes!(crate::usage::get_history))
        .routes(routes!(crate::admin::post_plan))
        .routes(routes!(crate::admin::put_limit, crate::admin::delete_limit))
        .routes(routes!(crate::admin::post_grant))
        .routes(routes!(crate::migrate::post_migrate_customer))
        .routes(routes!(crate::migrate::post_migrate_plan))
        .routes(routes!(crate::seed::get_usage))
        .routes(routes!(crate::seed::post_track))
        .routes(routes!(crate::seed::get_history))
        .routes(routes!(openapi))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .merge(crate::dashboard::routes())
}

/// Marks requests that arrived on `metrics_listen`.
#[derive(Debug, Clone, Copy)]
pub struct MetricsPort;

/// The router of `metrics_listen`: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    let (router, _) = OpenApiRouter::<AppState>::new()
        .routes(routes!(metrics))
        .split_for_parts();
    router
        .fallback(not_found)
        .layer(axum::Extension(MetricsPort))
        .with_state(state)
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let (router, _) = api().split_for_parts();
    router
        .fallback(not_found)
        .layer(crate::request::RequestLayer::new(state.metrics.clone()))
        .with_state(state)
}

/// The OpenAPI document of every route.
pub fn openapi_document() -> Document {
    let mut document = api().into_openapi();
    RequestIdHeader.modify(&mut document);
    document
}

/// [`openapi_document`] as served at `GET /openapi.json` (made once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        openapi_document()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// This document.
///
/// The OpenAPI 3.1 description of every route of the ingest, generated from the handlers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)),
)]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
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

/// What `GET /readyz` checked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// The API keys are loaded from ClickHouse.
    pub keys_loaded: bool,
    /// The broker answers.
    pub broker: bool,
    /// The quota view is loaded and caught up with the state topic.
    pub quota_view: bool,
}

/// Readiness (keys loaded, broker reachable, quota view caught up).
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
    let broker = state.producer.ping().await;
    let quota = state.view.is_ready();
    let status = if keys && broker && quota {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        keys_loaded: keys,
        broker,
        quota_view: quota,
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
async fn metrics(
    State(state): State<AppState>,
    admin: Option<axum::Extension<MetricsPort>>,
) -> Response {
    // With `metrics_listen` set, the metrics are served on that port only.
    if state.config.metrics_listen.is_some() && admin.is_none() {
        return not_found().await.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
