//! The aggregator: a consumer group that folds usage events into ClickHouse with exactly-once effect.
//!
//! Offsets live with the data: after a batch is in ClickHouse its last offset per partition is
//! stored there too and read back when a partition is assigned; events are deduplicated by
//! (tenant, customer, id) within the lateness window, against an in-memory index of each owned
//! partition's stored ids; Kafka commits follow ClickHouse, only for owned partitions.
//!
//! # Layout
//! Imports run one way, from the top of this list down to its bottom (`lib.rs`, this file,
//! declares the modules).
//! - `main.rs`: the binary (consume, check the config, run migrations).
//! - [`app`]: build, run, shut down.
//! - [`consumer`]: the aggregator's consumer (`consumer/`): `worker.rs` the loop and batching,
//!   `flush.rs` batch writes, retries and commits, `rebalance.rs` the rebalance callbacks,
//!   `mod.rs` the shared state, the context and [`consumer::commit_list`].
//! - [`notify`]: alert notifications (signed webhooks, email), once per alert and channel
//!   (`notify/`): `notifier.rs` the consumer loop, `delivery.rs` one attempt per channel and the
//!   backoff, `log.rs` the delivery log, `message.rs` the webhook body and the email,
//!   `signature.rs` webhook signatures, `customer.rs` usage warnings queued for the customers'
//!   own emails (crate `mailer`), `mod.rs` the header names.
//! - [`quirks`]: the local broker's workarounds, all off with `broker_quirks = "none"`
//!   (`quirks/`): `mod.rs` the switch as each consumer applies it, `rewind.rs` resume before the
//!   stored offset, `rejoin.rs` rejoin when left without partitions, `gaps.rs`
//!   ([`quirks::gaps`]) read a partition again after a fetch that skipped messages.
//! - `state`: quota state and alerts published after each batch (`state/`): `mod.rs` the state
//!   read back and published, `alerts.rs` the thresholds crossed, fired once.
//! - [`sink`]: idempotent batch writes and stored offsets.
//! - [`dedup`]: the in-memory index of stored ids per partition.
//! - [`decode`]: message → raw-event row or dead letter.
//! - [`config`]: the typed, layered configuration (the notifier's settings included).
//! - [`metrics`]: Prometheus metrics.
//! - `error.rs`: the crate's [`Error`].
//! - `sync.rs`: the mutex lock helper.

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
pub(crate) mod state;
mod sync;

pub use app::App;
pub use config::Config;
pub use error::{Error, Result};
