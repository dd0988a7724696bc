//! Billing test helpers: the Stripe fake in-process (seeded with the catalog's prices and meters),
//! billing-sync started on port 0 against it and this test's broker and ClickHouse, with webhooks
//! wired from the fake to billing-sync.

use std::collections::BTreeMap;
use std::sync::Arc;

use billing_sync::billing::Billing;
use serde_json::Value;
use stripe_fake::{FakeConfig, FakeStripe};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Running, TestEnv};

/// The Stripe secret key the fake accepts in tests.
pub const STRIPE_KEY: &str = "sk_test_billing";
/// The webhook signing secret shared by the fake and billing-sync in tests.
pub const WEBHOOK_SECRET: &str = "whsec_billing_test";

/// A running Stripe fake.
#[derive(Debug)]
pub struct Fake {
    /// Base URL without a trailing slash.
    pub url: String,
    /// `STRIPE_PRICE_ID_*` → price id of the seeded plans, `STRIPE_METER_PRICE_ID_*` → the metered
    /// price of each seeded meter.
    pub prices: Vec<(String, String)>,
    http: reqwest::Client,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Fake {
    /// Starts a fake seeded with the built-in catalog (`price_<plan>`, `mtr_<meter>`).
    pub async fn start() -> Self {
        Self::start_with_catalog(&schemas::Catalog::default()).await
    }

    /// Starts a fake seeded with `catalog`: also each plan's usage price with its tiers
    /// (`price_<plan>_<meter>_usage`, under the env name the catalog gives it).
    pub async fn start_with_catalog(catalog: &schemas::Catalog) -> Self {
        let fake = FakeStripe::bind(FakeConfig {
            api_key: Some(STRIPE_KEY.into()),
            webhook_secret: WEBHOOK_SECRET.into(),
            ..FakeConfig::default()
        })
        .await
        .expect("bind the Stripe fake");
        let prices = fake.seed_catalog(catalog);
        let url = fake.url();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(fake.run(cancel.clone()));
        Self {
            url,
            prices,
            http: reqwest::Client::new(),
            cancel,
            task,
        }
    }

    /// `POST {url}{path}` with a JSON body; panics unless 2xx. Returns the JSON answer (or null).
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("fake {path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "fake {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// `GET {url}{path}` as JSON.
    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("fake {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("fake {path}: not JSON: {e}"))
    }

    /// Every event the fake created.
    pub async fn events(&self) -> Vec<Value> {
        self.get("/_fake/events")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Events of one type.
    pub async fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// Meter events accepted (identifier, customer, value, timestamp, ...).
    pub async fn meter_events(&self) -> Vec<Value> {
        self.get("/_fake/meter_events")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Sends webhooks to `url`.
    pub async fn deliver_to(&self, url: &str) {
        self.post("/_fake/webhooks", serde_json::json!({"url": url}))
            .await;
    }

    /// Stops it.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// A billing-sync config for this test's resources and `fake`: jobs off (tests trigger them), fast
/// retries, the seeded plan prices and meter prices.
pub fn billing_config(env: &TestEnv, fake: &Fake) -> billing_sync::Config {
    let mut config = billing_sync::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        kafka: env.kafka.clone(),
        clickhouse: env.clickhouse.clone(),
        topics: env.topics.clone(),
        produce_timeout_ms: 5_000,
        ..billing_sync::Config::default()
    };
    config.stripe.api_base = format!("{}/", fake.url);
    config.stripe.secret_key = STRIPE_KEY.to_string().into();
    config.stripe.webhook_secret = WEBHOOK_SECRET.to_string().into();
    config.stripe.timeout_ms = 2_000;
    config.stripe.backoff_base_ms = 20;
    config.stripe.backoff_max_ms = 200;
    // Faster than the default (20 per second for a test key) so that the suite stays quick; the
    // fake has no rate limit unless a test sets one.
    config.stripe.max_requests_per_sec = 200;
    config.stripe.prices = fake
        .prices
        .iter()
        .filter_map(|(env_name, price)| {
            let plan = env_name.strip_prefix("STRIPE_PRICE_ID_")?.to_lowercase();
            (!plan.starts_with("addon_")).then(|| (plan, price.clone()))
        })
        .collect::<BTreeMap<_, _>>();
    // Each add-on's price (`STRIPE_PRICE_ID_ADDON_<KEY>`).
    config.stripe.addon_prices = fake
        .prices
        .iter()
        .filter_map(|(env_name, price)| {
            let addon = env_name
                .strip_prefix("STRIPE_PRICE_ID_ADDON_")?
                .to_lowercase();
            Some((addon, price.clone()))
        })
        .collect::<BTreeMap<_, _>>();
    // Every subscription carries the meter's metered price (at 0: the plans include the usage).
    config.stripe.meter_prices = fake
        .prices
        .iter()
        .filter_map(|(env_name, price)| {
            let meter = env_name
                .strip_prefix("STRIPE_METER_PRICE_ID_")?
                .to_lowercase();
            Some((meter, price.clone()))
        })
        .collect::<BTreeMap<_, _>>();
    config.reconcile.enabled = false;
    config.usage.enabled = false;
    config.usage.reconcile_enabled = false;
    config.usage.settle_secs = 0;
    config
}

/// A running billing-sync and its services.
#[derive(Debug)]
pub struct BillingSync {
    /// The service.
    pub running: Running,
    /// Its services (run jobs, read metrics).
    pub billing: Arc<Billing>,
}

impl BillingSync {
    /// The webhook endpoint URL.
    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/stripe", self.running.url)
    }
}

/// Starts billing-sync with `config` and points the fake's webhooks at it.
pub async fn start_billing_with(fake: &Fake, config: billing_sync::Config) -> BillingSync {
    let app = billing_sync::App::build(config)
        .await
        .expect("build billing-sync");
    let addr = app.local_addr();
    let billing = app.billing();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { app.run(c).await.map_err(|e| e.to_string()) });
    let sync = BillingSync {
        running: Running {
            url: format!("http://{addr}"),
            cancel,
            task,
        },
        billing,
    };
    fake.deliver_to(&sync.webhook_url()).await;
    let http = reqwest::Client::new();
    crate::wait_ready(&http, &sync.running.url).await;
    sync
}

/// Starts billing-sync on this test's resources against `fake`.
pub async fn start_billing(env: &TestEnv, fake: &Fake) -> BillingSync {
    start_billing_with(fake, billing_config(env, fake)).await
}
