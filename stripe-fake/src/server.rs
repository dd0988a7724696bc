//! The fake as a server handle: how it is started ([`FakeConfig`]), binding, its URL, seeding the
//! catalog, and serving until cancelled (with the webhook delivery loop beside it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::router::router;
use crate::shared::{Shared, Target};
use crate::state::State;
use crate::webhooks::deliver_loop;

/// How the fake is started.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// The secret key callers must send; any `Bearer` key is accepted when `None`.
    pub api_key: Option<String>,
    /// Where webhooks go; none until configured.
    pub webhook_url: Option<String>,
    /// Webhook signing secret (`whsec_...`).
    pub webhook_secret: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            webhook_url: None,
            webhook_secret: "whsec_fake".into(),
        }
    }
}

/// A bound fake, not yet serving.
#[derive(Debug)]
pub struct FakeStripe {
    listener: TcpListener,
    shared: Arc<Shared>,
    queue: mpsc::UnboundedReceiver<Value>,
}

impl FakeStripe {
    /// Binds the listener.
    pub async fn bind(config: FakeConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            target: Mutex::new(Target {
                url: config.webhook_url,
                secret: config.webhook_secret,
                paused: false,
                api_version: None,
            }),
            base_url: format!("http://{addr}"),
            api_key: config.api_key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(std::io::Error::other)?,
            queue: tx,
        });
        Ok(Self {
            listener,
            shared,
            queue: rx,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Base URL (`http://127.0.0.1:PORT`); async-stripe needs it with a trailing slash.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Creates a product, a monthly price for every paid plan and a meter for every meter of
    /// `catalog`, with fixed ids (`prod_<plan>`, `price_<plan>`, `mtr_<meter>`), and for every meter
    /// a product and a metered monthly price at 0 (`prod_<meter>`, `price_<meter>_usage`: the
    /// usage the plans include), and for every add-on a product and a price (`prod_addon_<key>`,
    /// `price_addon_<key>`: one-time, or monthly licensed for a recurring add-on; lookup key
    /// `addon_<key>`, metadata `addon`). Returns the `(env var, price id)` pairs: the ones the
    /// plans and add-ons name in `stripe_price_env`, and `STRIPE_METER_PRICE_ID_<METER>` for each
    /// meter's price.
    pub fn seed_catalog(&self, catalog: &schemas::Catalog) -> Vec<(String, String)> {
        let mut st = self.shared.lock();
        st.seed_catalog(catalog)
    }

    /// Serves until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let worker = tokio::spawn(deliver_loop(shared.clone(), self.queue, cancel.clone()));
        let app = router(shared);
        let stop = cancel.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        cancel.cancel();
        let _ = worker.await;
        Ok(())
    }
}
