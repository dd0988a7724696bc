//! Building and running the aggregator: migrations, topics, the consumer worker, the metrics server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::config::Config;
use crate::consumer::Worker;
use crate::metrics::Metrics;
use crate::sink::Sink;

/// A built aggregator, not yet consuming.
#[derive(Debug)]
pub struct App {
    config: Arc<Config>,
    catalog: Arc<schemas::Catalog>,
    sink: Sink,
    metrics: Arc<Metrics>,
    listener: TcpListener,
}

impl App {
    /// Applies migrations (if configured), creates topics and binds the metrics port.
    pub async fn build(config: Config) -> Result<Self> {
        config.validate()?;
        let catalog = schemas::Catalog::load(config.catalog.as_deref())?;
        if config.clickhouse.migrate {
            schemas::migrate::run(&config.clickhouse).await?;
        }
        if config.kafka.create_topics {
            schemas::kafka::ensure_topics(&config.kafka, &config.topics).await?;
        }
        let sink = Sink::new(
            config.clickhouse.client(),
            time::Duration::days(config.dedup_window_days),
            time::Duration::days(config.max_late_days),
        );
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            config: Arc::new(config),
            catalog: Arc::new(catalog),
            sink,
            metrics: Arc::new(Metrics::default()),
            listener,
        })
    }

    /// Address of the metrics endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The metrics (tests read them).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Consumes until `cancel` fires, then writes what is pending and leaves the group.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let notifier_catalog = self.catalog.clone();
        let worker = Worker::new(
            self.config.clone(),
            self.catalog,
            self.sink,
            self.metrics.clone(),
            cancel.clone(),
        )?;
        // Alert notifications (own consumer group), stopped with the same token.
        let notifier =
            crate::notify::start(&self.config, notifier_catalog, &self.metrics, &cancel)?;
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(ready))
            .with_state(self.metrics.clone());
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        tracing::info!(group = %self.config.group_id, topic = %self.config.topics.events, "aggregator consuming");
        let result = worker.run().await;
        cancel.cancel();
        if let Some(notifier) = notifier {
            notifier.stop().await;
        }
        let _ = server.await;
        tracing::info!("aggregator stopped");
        result
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let assigned = m.assigned_partitions.get();
    let status = if assigned > 0 {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({"assigned_partitions": assigned})),
    )
}
