//! Shared vocabulary of the metering pipeline: events, catalog, topics, migrations, API types.
//!
//! # Layout
//! - [`event`]: the CloudEvents usage event and its validation with per-field errors.
//! - [`wire`]: the fast, borrowed decode of plain valid events (falls back to [`event`]).
//! - [`catalog`]: meters, features and plans as configuration (`catalog.toml` is the default).
//! - [`entitlements`]: the feature kinds (boolean, metered, config) and what a plan grants.
//! - [`plan_version`]: a plan's terms as a content-hashed version, kept by its subscribers.
//! - [`pricing`]: usage prices (per unit, volume or graduated tiers) and the limit behaviour.
//! - [`addon`]: purchasable add-ons (call packs, feature add-ons) and a customer's bought ones.
//! - [`contract`]: enterprise contracts, a customer's own terms for a time span.
//! - [`token`]: the identifier rule of tenants, meter keys and endpoints.
//! - [`topics`]: Kafka topic names.
//! - `kafka` (feature `kafka`): broker client settings and topic creation.
//! - [`partition`]: the partitioner, batch content type and origin header (no broker client).
//! - [`config`]: broker and ClickHouse connection settings embedded in every service's config.
//! - [`migrate`]: numbered ClickHouse DDL (`migrations/`) and the runner.
//! - [`quota`]: plan changes and versions, plan and usage state, billing periods, alerts.
//! - [`quota_store`]: daily usage and folded plans read back from ClickHouse.
//! - [`sql`]: client-side SQL literals.
//! - [`api`]: HTTP request/response bodies.
//! - [`rows`]: ClickHouse row structs, shared by writers and readers.

#![forbid(unsafe_code)]

pub mod addon;
pub mod api;
pub mod catalog;
pub mod config;
pub mod contract;
pub mod entitlements;
mod error;
pub mod event;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod migrate;
pub mod partition;
pub mod plan_version;
pub mod pricing;
pub mod quota;
pub mod quota_store;
pub mod rows;
pub mod sql;
pub mod token;
pub mod topics;
pub mod wire;

pub use catalog::Catalog;
pub use error::{Error, Result};
pub use event::UsageEvent;
pub use topics::Topics;
