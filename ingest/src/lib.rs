//! The ingest service: authenticated event intake into the durable event log, and the quota and
//! usage query API answered from an in-memory view of the quota state.
//!
//! A `202 Accepted` means every event of the batch was acknowledged by the broker (acks=all,
//! idempotent producer); an invalid batch is refused whole with per-field errors and nothing of it
//! reaches the events topic (it is kept on the rejected topic for the dead-letter table).
//!
//! # Layout
//! From the bottom up; a module uses only those above it in this list.
//! - [`error`], [`config`], [`metrics`]: the crate error, the typed layered configuration, the
//!   Prometheus metrics.
//! - [`quota`]: the in-memory quota view (plans, daily usage, this instance's pending usage).
//! - [`follow`]: builds the view from ClickHouse at start and follows the state and events topics.
//! - [`shared`]: [`shared::AppState`], what every handler shares.
//! - [`access`]: what the native handlers check first (key, customer, ready view, meter, quantity).
//! - [`cloudevents`]: the CloudEvents HTTP binding's content modes (binary, structured, batched)
//!   and the per-tenant conformance setting, used by [`intake`].
//! - Handlers: [`intake`] (`POST /v1/events`), [`check`] (quota and check-and-track, a required
//!   feature), [`entitlements`] (what a customer's plan version grants), [`usage`] (usage and
//!   history), [`admin`] (plans, limits, grants), [`migrate`] (plan version migrations), [`seed`]
//!   (the seed application's `/usage` endpoints), [`dashboard`] (the customer dashboard, its
//!   compact display and sign-in links, with [`links`] a link exchanged once across instances),
//!   [`plans`] (the plans list).
//! - [`request`]: the per-request layer (request id, tracing span, per-route metrics).
//! - [`http`]: the router on top, health, readiness, metrics and the OpenAPI document.
//! - [`app`]: build, serve, shut down.
//!
//! Keys, auth, sessions, the HTTP error type and the producer are the `platform` crate's.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod app;
pub mod check;
pub mod cloudevents;
pub mod config;
pub mod dashboard;
pub mod entitlements;
pub mod error;
pub mod follow;
pub mod http;
pub mod intake;
pub mod links;
pub mod metrics;
pub mod migrate;
pub mod plans;
pub mod quota;
pub mod request;
pub mod seed;
pub mod shared;
pub mod usage;

pub use app::App;
pub use config::Config;
pub use error::{Error, Result};
