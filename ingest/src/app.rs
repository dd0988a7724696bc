//! Building and running the ingest: migrations, topics, keys, producer, HTTP server, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::config::Config;
use crate::http::router;
use crate::metrics::Metrics;
use crate::quota::QuotaView;
use crate::shared::{AppState, Shared};
use platform::keys::KeyStore;
use platform::producer::EventProducer;
use platform::sessions::Signer;

/// A built ingest, bound to its port, not yet serving.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    /// `metrics_listen`'s listener: `/metrics` is served there only.
    metrics_listener: Option<TcpListener>,
    state: AppState,
}

impl App {
    /// Applies migrations (if configured), creates topics, loads keys and binds the listener.
    pub async fn build(config: Config) -> Result<Self> {
        config.validate()?;
        let catalog = schemas::Catalog::load(config.catalog.as_deref())?;
        if config.clickhouse.migrate {
            schemas::migrate::run(&config.clickhouse).await?;
        }
        if config.kafka.create_topics {
            schemas::kafka::ensure_topics(&config.kafka, &config.topics).await?;
        }
        let keys = KeyStore::new(config.clickhouse.client())
            .with_sessions(Arc::new(Signer::new(&config.dashboard_secret)))
            .with_limits(&config.limits);
        keys.refresh().await?;
        let producer = EventProducer::new(
            &config.kafka,
            config.topics.clone(),
            Duration::from_millis(config.produce_timeout_ms),
        )?;
        let listener = TcpListener::bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let catalog = Arc::new(catalog);
        let view = Arc::new(QuotaView::new(catalog.clone(), config.unknown_customer));
        let ch = config.clickhouse.client();
        let baseline = crate::follow::load_baseline(&ch, &view).await?;
        tracing::info!(records = baseline, "quota baseline loaded from ClickHouse");
        let state = AppState::new(Shared {
            config: Arc::new(config),
            catalog,
            keys,
            producer,
            metrics: Arc::new(Metrics::default()),
            view,
            ch,
        });
        Ok(Self {
            listener,
            metrics_listener,
            state,
        })
    }

    /// The bound address of `metrics_listen`, when set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen)
    }

    /// The handlers' state (tests read metrics from it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `cancel` fires, then drains requests and unsent messages within the grace period.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let state = self.state;
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        let mut tasks = JoinSet::new();
        {
            let (keys, cancel) = (state.keys.clone(), cancel.clone());
            let every = Duration::from_secs(state.config.key_refresh_secs);
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(every) => {
                            if let Err(e) = keys.refresh().await {
                                tracing::warn!(error = %e, "reloading API keys failed");
                            }
                        }
                    }
                }
            });
        }
        {
            let (kafka, topics) = (state.config.kafka.clone(), state.config.topics.clone());
            let (view, cancel) = (state.view.clone(), cancel.clone());
            let origin = state.producer.origin().to_string();
            let metrics = state.metrics.clone();
            tasks.spawn(async move {
                if let Err(e) =
                    crate::follow::follow(&kafka, &topics, &origin, view, metrics, cancel).await
                {
                    tracing::error!(error = %e, "quota state follower stopped");
                }
            });
        }
        if let Some(listener) = self.metrics_listener {
            let (app, shutdown) = (crate::http::metrics_router(state.clone()), cancel.clone());
            tracing::info!(addr = %listener.local_addr()?, "ingest metrics listening");
            tasks.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        }
        tracing::info!(addr = %self.listener.local_addr()?, "ingest listening");
        let app = router(state.clone());
        let shutdown = cancel.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        cancel.cancel();
        state.producer.flush(grace).await;
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        tracing::info!("ingest stopped");
        Ok(())
    }
}
