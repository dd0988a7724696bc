//! Rust client of the usage-metering API and a tower layer that meters an axum/hyper service.
//!
//! ```no_run
//! # async fn demo() -> client::Result<()> {
//! use axum::{Router, routing::post};
//! use client::{Client, MeteringConfig, MeteringLayer, Mode, Policy};
//!
//! let api = Client::new("http://127.0.0.1:8080", "mk_...")?;
//! let layer = MeteringLayer::new(
//!     api,
//!     MeteringConfig::default()
//!         .mode(Mode::CheckAndTrack)
//!         .route_policy("/v1/report", Policy::FailClosed),
//! );
//! let app: Router = Router::new()
//!     .route("/v1/analyze", post(|| async { "ok" }))
//!     .route("/v1/report", post(|| async { "ok" }))
//!     .route_layer(layer.clone());
//! // ... serve `app` with graceful shutdown, then:
//! layer.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`error`]: [`Error`] with the API's codes typed ([`ErrorCode`]), [`Result`].
//! - [`types`]: request and answer bodies (the error body and the event are `schemas::api`'s).
//! - [`api`]: [`Client`], one method per public route (ingest and billing-sync).
//! - [`batch`]: [`Batcher`], background batches of usage events with retries and bounded memory.
//! - [`config`]: [`MeteringConfig`], [`Mode`], [`Policy`] (per route), [`RouteConfig`].
//! - [`layer`]: [`MeteringLayer`] and its service.

#![forbid(unsafe_code)]

pub mod api;
pub mod batch;
pub mod config;
pub mod error;
pub mod layer;
pub mod types;

pub use api::{Client, ClientConfig};
pub use batch::{BatchConfig, BatchStats, Batcher};
pub use config::{MeteringConfig, Mode, Policy, RouteConfig};
pub use error::{Error, ErrorCode, Result};
pub use layer::{LayerStats, MeteringLayer, MeteringService};

/// The crate's version (sent nowhere; for logs).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
