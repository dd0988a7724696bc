//! An example service metered by [`client::MeteringLayer`]: the threat-analysis API of the
//! project's first user (`analyze`, `redact`, `report`, `drill`), its customer in `X-Customer-Id`.
//!
//! # Layout
//! - [`Settings`]: the environment it reads.
//! - [`router`]: the routes, with the layer on the metered ones (`route_layer`, so each request
//!   carries its `MatchedPath` and the endpoint is the route's).
//! - [`serve`]: listen, shut down gracefully, flush the layer's queue.
//! - [`Error`], [`Result`]: the crate's error.

#![forbid(unsafe_code)]

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::{get, post};
use client::{Client, ClientConfig, MeteringConfig, MeteringLayer, Mode, Policy};
use serde_json::{Value, json};

/// What can go wrong when starting the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad setting.
    #[error("bad setting {0}: {1}")]
    Setting(&'static str, String),
    /// The metering client.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// Listening or serving.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `THREAT_API_LISTEN` (default `127.0.0.1:8095`).
    pub listen: String,
    /// `METERING_URL`: the ingest (default `http://127.0.0.1:8080`).
    pub metering_url: String,
    /// `METERING_KEY`: a tenant key with the `read` and `ingest` scopes.
    pub metering_key: String,
    /// `METERING_MODE`: `check-and-track` (default) or `check-then-track`.
    pub mode: Mode,
    /// `METERING_UPGRADE_URL`: where the 429 sends the customer.
    pub upgrade_url: Option<String>,
}

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mode = match var("METERING_MODE").as_deref() {
            None | Some("check-and-track") => Mode::CheckAndTrack,
            Some("check-then-track") => Mode::CheckThenTrack,
            Some(other) => return Err(Error::Setting("METERING_MODE", other.into())),
        };
        Ok(Self {
            listen: var("THREAT_API_LISTEN").unwrap_or_else(|| "127.0.0.1:8095".into()),
            metering_url: var("METERING_URL").unwrap_or_else(|| "http://127.0.0.1:8080".into()),
            metering_key: var("METERING_KEY")
                .ok_or_else(|| Error::Setting("METERING_KEY", "not set".into()))?,
            mode,
            upgrade_url: var("METERING_UPGRADE_URL"),
        })
    }

    /// The layer for these settings: `report` fails closed (reports are the expensive calls),
    /// the others fail open.
    pub fn layer(&self) -> Result<MeteringLayer> {
        let mut c = ClientConfig::new(&self.metering_url, &self.metering_key);
        c.timeout = Duration::from_secs(2);
        let mut config = MeteringConfig::default()
            .mode(self.mode)
            .policy(Policy::FailOpen)
            .route_policy("/v1/report", Policy::FailClosed);
        config.upgrade_url = self.upgrade_url.clone();
        Ok(MeteringLayer::new(Client::with_config(c)?, config))
    }
}

async fn analyze(body: Option<Json<Value>>) -> Json<Value> {
    let text = body
        .as_ref()
        .and_then(|b| b.get("text"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let hits = ["password", "token", "ssn"]
        .iter()
        .filter(|w| text.contains(*w))
        .count();
    Json(json!({"risk": if hits > 0 { "high" } else { "low" }, "findings": hits}))
}

async fn redact(body: Option<Json<Value>>) -> Json<Value> {
    let text = body
        .as_ref()
        .and_then(|b| b.get("text"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let redacted: String = text
        .split_whitespace()
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    Json(json!({ "text": redacted }))
}

async fn report() -> Json<Value> {
    Json(json!({"report": "weekly threat summary", "incidents": 3}))
}

async fn drill() -> Json<Value> {
    Json(json!({"drill": "phishing", "scheduled": true}))
}

/// The routes; `layer` wraps the four metered ones, `/healthz` is not metered.
pub fn router(layer: MeteringLayer) -> Router {
    Router::new()
        .route("/v1/analyze", post(analyze))
        .route("/v1/redact", post(redact))
        .route("/v1/report", post(report))
        .route("/v1/drill", post(drill))
        .route_layer(layer)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
}

/// Serves until `shutdown` resolves, then sends what the layer still holds.
pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<client::BatchStats> {
    let layer = settings.layer()?;
    let listener = tokio::net::TcpListener::bind(&settings.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "threat-api listening");
    axum::serve(listener, router(layer.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    let stats = layer.shutdown().await;
    tracing::info!(?stats, layer = ?layer.stats(), "threat-api stopped, usage flushed");
    Ok(stats)
}
