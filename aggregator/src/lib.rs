//! The aggregator: a consumer group that folds usage events into ClickHouse with exactly-once effect.
//!
//! Offsets live with the data: after a batch is in ClickHouse its last offset per partition is
//! stored there too and read back when a partition is assigned; events are deduplicated by
//! (tenant, customer, id) within the lateness window, against an in-memory index of each owned
//! partition's stored ids; Kafka commits follow ClickHouse, only for owned partitions.
//!
//! # Layout
//! - [`config`]: the typed, layered configuration.
//! - [`decode`]: message → raw-event row or dead letter.
//! - [`dedup`]: the in-memory index of stored ids per partition.
//! - [`sink`]: idempotent batch writes and stored offsets.
//! - [`state`]: quota state and alerts published after each batch.
//! - [`consumer`]: the loop, batching, rebalance handling, commits.
//! - [`gaps`]: catches a fetch that skipped messages and reads the partition again.
//! - [`notify`]: alert notifications (signed webhooks, email), once per alert and channel.
//! - [`metrics`]: Prometheus metrics.
//! - [`app`]: build, run, shut down.

#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod consumer;
pub mod decode;
pub mod dedup;
mod error;
pub mod metrics;
pub mod notify;
pub mod quirks;
pub mod sink;
pub mod state;
mod sync;

pub use app::App;
pub use config::Config;
pub use error::{Error, Result};
