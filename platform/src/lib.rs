//! Shared plumbing of the services, below them all: ingest, aggregator and billing-sync stand side
//! by side on this crate and on `schemas` (the words of the domain), and never import each other.
//!
//! # Layout
//! - [`error`]: the crate error and [`ApiError`], the HTTP error answer every service renders.
//! - [`principal`]: who a request is (tenant, optional customer, scopes).
//! - [`extract`]: extractors that reject with the standard error body.
//! - [`keys`]: API key creation, hashing and the in-memory key store.
//! - [`limits`]: inbound rate limits per key and per tenant (429 `rate_limited`), with
//!   [`concurrency`] the requests in flight per key and tenant (429 `concurrency_limited`).
//! - [`sessions`]: the dashboard's signed sign-in links and sessions.
//! - [`auth`]: the bearer key (or session) of a request, its scope, and the customer it may act for.
//! - [`notes`]: what the quota view counts of an accepted event, and the batch header that carries it.
//! - [`producer`]: the acks=all, idempotent producer of usage events, rejections and plan changes.
//! - [`shutdown`]: a cancellation token tied to Ctrl-C / SIGTERM.
//! - [`logs`]: the binaries' log set-up.

#![forbid(unsafe_code)]

pub mod auth;
pub mod concurrency;
pub mod error;
pub mod extract;
pub mod keys;
pub mod limits;
pub mod logs;
pub mod notes;
pub mod principal;
pub mod producer;
pub mod sessions;
pub mod shutdown;

pub use error::{ApiError, Error, Result};
