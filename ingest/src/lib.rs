//! The ingest service: authenticated event intake into the durable event log, and the quota and
//! usage query API answered from an in-memory view of the quota state.
//!
//! A `202 Accepted` means every event of the batch was acknowledged by the broker (acks=all,
//! idempotent producer); an invalid batch is refused whole with per-field errors and nothing of it
//! reaches the events topic (it is kept on the rejected topic for the dead-letter table).
//!
//! # Layout
//! - [`config`]: the typed, layered configuration.
//! - [`keys`]: API key creation, hashing and the in-memory key store.
//! - [`producer`]: the acks=all producer.
//! - [`quota`]: the in-memory quota view (plans, daily usage, this instance's pending usage).
//! - [`notes`]: the compact header of a batch message that other instances' tails count from.
//! - [`state`]: builds the view from ClickHouse at start and follows the state topic.
//! - [`query`]: quota, check-and-track, usage, history and admin plan endpoints.
//! - [`seed`]: the seed application's `/usage` endpoints over the native API.
//! - [`http`]: routes, intake and health.
//! - [`request`]: the per-request layer (request id, tracing span, per-route metrics).
//! - [`dashboard`]: the customer dashboard page, its embeddable compact display, the plans list and signed sign-in links.
//! - [`metrics`]: Prometheus metrics.
//! - [`app`]: build, serve, shut down.
//! - [`error`]: the crate error and HTTP error rendering.

#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod metrics;
pub mod query;
pub mod quota;
pub mod request;
pub mod seed;
pub mod shared;
pub mod state;

pub use app::App;
pub use config::Config;
pub use error::{Error, Result};
