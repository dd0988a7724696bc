//! Kafka topic names, configurable so that tests and tenants of the broker can use their own.

use serde::Deserialize;

/// The topics of the pipeline (DESIGN.md diagram).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Usage events as accepted by the ingest (key = `tenant/customer`).
    pub events: String,
    /// Compacted quota state per (tenant, customer, meter, period).
    pub state: String,
    /// Threshold alerts.
    pub alerts: String,
    /// Plan changes (subscription events).
    pub subscriptions: String,
    /// Batches rejected at intake, kept for inspection.
    pub rejected: String,
    /// billing-sync's work split: its instances form one consumer group over this topic, and the
    /// partitions each is assigned name the customers it bills. It carries no messages; billing-sync
    /// creates it with `work.partitions` (it is not in [`Topics::layout`]).
    pub work: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Topics {
    /// The standard names behind `prefix` (tests use a fresh prefix each).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            events: format!("{prefix}usage.events"),
            state: format!("{prefix}usage.state"),
            alerts: format!("{prefix}usage.alerts"),
            subscriptions: format!("{prefix}subscription.events"),
            rejected: format!("{prefix}usage.rejected"),
            work: format!("{prefix}billing.work"),
        }
    }

    /// Every topic with its partition count and whether it is compacted.
    pub fn layout(&self, partitions: i32) -> Vec<(String, i32, bool)> {
        vec![
            (self.events.clone(), partitions, false),
            (self.state.clone(), partitions, true),
            (self.alerts.clone(), 1, false),
            (self.subscriptions.clone(), partitions, false),
            (self.rejected.clone(), 1, false),
        ]
    }
}
