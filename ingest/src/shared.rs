//! The handlers' shared state: configuration, catalog, keys, producer, metrics, the quota view and
//! ClickHouse, behind one reference count.

use std::sync::Arc;

use platform::keys::KeyStore;
use platform::producer::EventProducer;
use schemas::Catalog;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::quota::QuotaView;

/// Shared state of the handlers: one allocation, so that the per-request clones axum makes of its
/// state (every `State` extractor and middleware) cost one reference count, not a copy of the
/// ClickHouse client's settings, the producer and the configuration handles.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the handlers' shared parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Meters and plans.
    pub catalog: Arc<Catalog>,
    /// API keys.
    pub keys: KeyStore,
    /// The producer.
    pub producer: EventProducer,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The in-memory quota view.
    pub view: Arc<QuotaView>,
    /// ClickHouse (usage breakdowns and history; never on the quota path).
    pub ch: clickhouse::Client,
}
