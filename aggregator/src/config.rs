//! The aggregator's configuration: defaults, then a TOML file, then `AGGREGATOR_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemas::config::{ClickHouseConfig, KafkaConfig};
use schemas::topics::Topics;
use serde::Deserialize;

pub use crate::notify::{NotifyConfig, SmtpConfig, TenantTargets};
use crate::{Error, Result};

/// Environment variable prefix (`AGGREGATOR_KAFKA__BROKERS=...`).
pub const ENV_PREFIX: &str = "AGGREGATOR_";

/// Everything the aggregator needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Broker connection.
    pub kafka: KafkaConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Topic names.
    pub topics: Topics,
    /// Meter and plan catalog file; the built-in catalog when absent.
    pub catalog: Option<PathBuf>,
    /// Consumer group id.
    pub group_id: String,
    /// Static group membership id (`group.instance.id`): a restarted instance with the same id takes
    /// its partitions back at once instead of after the session timeout. Unique per instance.
    pub instance_id: Option<String>,
    /// Consumer session timeout (ms): how long a vanished member keeps its partitions.
    pub session_timeout_ms: u64,
    /// A batch is written when it holds this many rows (events, dead letters, plan changes)...
    pub batch_max_events: usize,
    /// ...or when the messages it read hold this many payload bytes (bounds its memory when events
    /// are large: its rows hold about as much, and the previous batch may be in flight)...
    pub batch_max_bytes: usize,
    /// ...or when its first message is this old (ms). This is how late history and alerts may be
    /// (quota answers do not wait for it: the ingests count accepted usage from the events topic).
    /// Every batch costs one insert (a part of 20-35 files per table and view, merged later) and
    /// one state record per customer it touched, so fewer, larger batches cost less per event: in
    /// the throughput benchmark 1 s and 100,000 rows used 15-17 µs of CPU per event where 200 ms
    /// and 50,000 used 19-28, and 200,000 rows stored 8-15% more per second than 100,000.
    pub batch_max_wait_ms: u64,
    /// Duplicates of an event id are recognized for this many days.
    pub dedup_window_days: i64,
    /// Oldest counted event time, in days before arrival (older: dead letter).
    pub max_late_days: i64,
    /// Furthest counted event time after arrival, in seconds (later: dead letter).
    pub max_future_secs: i64,
    /// How long shutdown and rebalance may spend writing the last batch (s).
    pub shutdown_grace_secs: u64,
    /// Longest wait between two ClickHouse retries (ms).
    pub max_retry_backoff_ms: u64,
    /// Messages re-read before the stored offset when a partition is assigned (duplicates are
    /// dropped). Must cover the largest producer batch: the local broker (tansu) answers a fetch
    /// from inside a record batch with the next batch, skipping the rest of the batch.
    pub resume_rewind: i64,
    /// Rejoin the group after owning no partition for this long (s); 0 = never. A workaround for
    /// the local broker (tansu), which can leave a live member without partitions after another
    /// member died. Set 0 on Kafka when the group has more members than partitions.
    pub rejoin_idle_secs: u64,
    /// Alert notifications (webhooks and email); see [`crate::notify`].
    pub notify: NotifyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            topics: Topics::default(),
            catalog: None,
            group_id: "metering-aggregator".into(),
            instance_id: None,
            session_timeout_ms: 6_000,
            batch_max_events: 200_000,
            batch_max_bytes: 64 << 20,
            batch_max_wait_ms: 1_000,
            dedup_window_days: 35,
            max_late_days: 35,
            max_future_secs: 300,
            shutdown_grace_secs: 10,
            max_retry_backoff_ms: 5_000,
            resume_rewind: 10_000,
            rejoin_idle_secs: 20,
            notify: NotifyConfig::default(),
        }
    }
}

impl Config {
    /// Loads the layered configuration and validates it.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self> {
        let config: Self =
            schemas::config::load(ENV_PREFIX, file).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(Error::Config(m.into()));
        if self.batch_max_events == 0 || self.batch_max_bytes == 0 || self.batch_max_wait_ms == 0 {
            return fail(
                "batch_max_events, batch_max_bytes and batch_max_wait_ms must be at least 1",
            );
        }
        if self.resume_rewind < 0 {
            return fail("resume_rewind must not be negative");
        }
        if self.group_id.trim().is_empty() {
            return fail("group_id must not be empty");
        }
        if self.dedup_window_days < self.max_late_days {
            return fail("dedup_window_days must cover max_late_days");
        }
        if self.max_late_days <= 0 || self.max_future_secs < 0 {
            return fail("max_late_days must be positive and max_future_secs not negative");
        }
        schemas::migrate::check_identifier(&self.clickhouse.database)?;
        self.notify.validate().map_err(Error::Config)?;
        Ok(())
    }

    /// The event time window.
    pub fn window(&self) -> schemas::event::Window {
        schemas::event::Window {
            max_late: time::Duration::days(self.max_late_days),
            max_future: time::Duration::seconds(self.max_future_secs),
        }
    }
}
