//! Prometheus metrics of the aggregator, named after what happened.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Machine-readable reason.
    pub reason: String,
}

/// A notification channel label (`webhook`, `email`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// Channel.
    pub channel: String,
}

/// Every metric the aggregator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `messages_consumed_total`.
    pub messages_consumed: Counter,
    /// `fetch_gaps_reread_total`: partitions read again because a fetch skipped messages.
    pub fetch_gaps_reread: Counter,
    /// `fetch_gaps_accepted_total`: skips that stayed after every re-read (messages lost to this
    /// consumer until the next rebalance).
    pub fetch_gaps_accepted: Counter,
    /// `events_stored_total`: new events written to ClickHouse.
    pub events_stored: Counter,
    /// `duplicates_skipped_total`: events whose (tenant, customer, id) was already stored.
    pub duplicates_skipped: Counter,
    /// `dedup_index_loads_total`: partitions whose dedup index was loaded from ClickHouse.
    pub dedup_index_loads: Counter,
    /// `dedup_index_ids`: ids held in the dedup index.
    pub dedup_index_ids: Gauge,
    /// `dedup_index_bytes`: heap bytes of the dedup index's tables.
    pub dedup_index_bytes: Gauge,
    /// `dead_letters_total{reason}`.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// `batches_flushed_total`.
    pub batches_flushed: Counter,
    /// `flush_failures_total`: ClickHouse write attempts that failed (and were retried).
    pub flush_failures: Counter,
    /// `flush_duration_seconds`.
    pub flush_duration: Histogram,
    /// `rebalances_total{reason}` (assign / revoke).
    pub rebalances: Family<ReasonLabels, Counter>,
    /// `assigned_partitions`.
    pub assigned_partitions: Gauge,
    /// `state_records_published_total`: usage and plan records produced to the state topic.
    pub state_records_published: Counter,
    /// `alerts_fired_total`: usage thresholds crossed (once per customer, meter, period).
    pub alerts_fired: Counter,
    /// `subscription_events_stored_total`: plan changes, overrides and grants stored.
    pub subscription_events_stored: Counter,
    /// `notifications_delivered_total{channel}`: alerts delivered (once per alert and channel).
    pub notifications_delivered: Family<ChannelLabels, Counter>,
    /// `notifications_failed_total{channel}`: alerts given up on (permanent error or attempts used up).
    pub notifications_failed: Family<ChannelLabels, Counter>,
    /// `notification_attempts_total{channel}`: delivery attempts, successful or not.
    pub notification_attempts: Family<ChannelLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let m = Self {
            messages_consumed: Counter::default(),
            fetch_gaps_reread: Counter::default(),
            fetch_gaps_accepted: Counter::default(),
            events_stored: Counter::default(),
            duplicates_skipped: Counter::default(),
            dedup_index_loads: Counter::default(),
            dedup_index_ids: Gauge::default(),
            dedup_index_bytes: Gauge::default(),
            dead_letters: Family::default(),
            batches_flushed: Counter::default(),
            flush_failures: Counter::default(),
            flush_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            rebalances: Family::default(),
            assigned_partitions: Gauge::default(),
            state_records_published: Counter::default(),
            alerts_fired: Counter::default(),
            subscription_events_stored: Counter::default(),
            notifications_delivered: Family::default(),
            notifications_failed: Family::default(),
            notification_attempts: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "messages_consumed",
            "Messages read from the broker",
            m.messages_consumed.clone(),
        );
        r.register(
            "fetch_gaps_reread",
            "Partitions read again because a fetch skipped messages",
            m.fetch_gaps_reread.clone(),
        );
        r.register(
            "fetch_gaps_accepted",
            "Fetch skips that stayed after every re-read",
            m.fetch_gaps_accepted.clone(),
        );
        r.register(
            "events_stored",
            "New events written to ClickHouse",
            m.events_stored.clone(),
        );
        r.register(
            "duplicates_skipped",
            "Events already stored (same tenant, customer and id)",
            m.duplicates_skipped.clone(),
        );
        r.register(
            "dedup_index_loads",
            "Partitions whose dedup index was loaded from ClickHouse",
            m.dedup_index_loads.clone(),
        );
        r.register(
            "dedup_index_ids",
            "Ids held in the dedup index",
            m.dedup_index_ids.clone(),
        );
        r.register(
            "dedup_index_bytes",
            "Heap bytes of the dedup index's tables",
            m.dedup_index_bytes.clone(),
        );
        r.register(
            "dead_letters",
            "Events written to the dead-letter table, by reason",
            m.dead_letters.clone(),
        );
        r.register(
            "batches_flushed",
            "Batches acknowledged by ClickHouse",
            m.batches_flushed.clone(),
        );
        r.register(
            "flush_failures",
            "Failed ClickHouse write attempts (retried)",
            m.flush_failures.clone(),
        );
        r.register(
            "flush_duration_seconds",
            "Time to write one batch",
            m.flush_duration.clone(),
        );
        r.register(
            "state_records_published",
            "Usage and plan records produced to the quota state topic",
            m.state_records_published.clone(),
        );
        r.register(
            "alerts_fired",
            "Usage thresholds crossed (once per customer, meter, period and threshold)",
            m.alerts_fired.clone(),
        );
        r.register(
            "subscription_events_stored",
            "Plan changes, overrides and grants stored",
            m.subscription_events_stored.clone(),
        );
        r.register(
            "rebalances",
            "Partition assignments and revocations",
            m.rebalances.clone(),
        );
        r.register(
            "assigned_partitions",
            "Partitions owned now",
            m.assigned_partitions.clone(),
        );
        r.register(
            "notifications_delivered",
            "Alert notifications delivered, by channel",
            m.notifications_delivered.clone(),
        );
        r.register(
            "notifications_failed",
            "Alert notifications given up on, by channel",
            m.notifications_failed.clone(),
        );
        r.register(
            "notification_attempts",
            "Alert notification delivery attempts, by channel",
            m.notification_attempts.clone(),
        );
        Self { registry: r, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
