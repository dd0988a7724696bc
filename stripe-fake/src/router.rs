//! The fake's routes: `/v1` to the API, the hosted pages, and the admin endpoints under `/_fake`.

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};

use crate::admin::{
    add_fault, advance, clear_faults, clock, configure_webhooks, deliver_one, list_deliveries,
    list_events, list_faults, list_meter_events, list_requests, settings, stats,
    subscription_action,
};
use crate::api::api;
use crate::pages::{checkout_page, portal_page};
use crate::shared::Shared;

/// Every route of the fake over `shared`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/{*path}", any(api))
        .route("/v2/{*path}", any(api))
        .route("/checkout/{id}", get(checkout_page))
        .route("/portal/{id}", get(portal_page))
        .route("/_fake/health", get(|| async { "ok" }))
        .route(
            "/_fake/faults",
            post(add_fault).delete(clear_faults).get(list_faults),
        )
        .route("/_fake/settings", post(settings))
        .route("/_fake/clock", get(clock))
        .route("/_fake/clock/advance", post(advance))
        .route("/_fake/webhooks", post(configure_webhooks))
        .route("/_fake/events", get(list_events))
        .route("/_fake/events/{id}/deliver", post(deliver_one))
        .route("/_fake/deliveries", get(list_deliveries))
        .route("/_fake/meter_events", get(list_meter_events))
        .route("/_fake/requests", get(list_requests))
        .route("/_fake/stats", get(stats))
        .route(
            "/_fake/subscriptions/{id}/{action}",
            post(subscription_action),
        )
        .with_state(shared)
}
