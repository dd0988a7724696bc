//! Metered-usage test helpers: one tenant's stack (aggregator, ingest, the Stripe fake, billing-sync
//! with its jobs off), usage events stamped in past hours, rollup waits, and what Stripe, the fake
//! and the ledger hold per customer-hour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use platform::principal::Scope;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::billing::{BillingSync, Fake, STRIPE_KEY, billing_config, start_billing_with};
use crate::{Running, TestEnv, send_all, wait_until};

/// The tenant of every customer of a [`Metered`] stack.
pub const TENANT: &str = "acme";

/// The `dashboard_secret` of a [`Metered::start_with_dashboard`] stack (the ingest's and
/// billing-sync's).
pub const DASHBOARD_SECRET: &str = "dashboard-test-secret";

/// The start of the hour `t` (unix seconds) falls in.
pub fn hour_start(t: i64) -> i64 {
    t - t.rem_euclid(3_600)
}

/// Unix seconds now.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The aggregator, ingest, Stripe fake and billing-sync of one test.
#[derive(Debug)]
pub struct Metered {
    /// The test's resources.
    pub env: TestEnv,
    /// The Stripe fake.
    pub fake: Fake,
    /// billing-sync.
    pub sync: BillingSync,
    /// Its configuration (for restarts).
    pub config: billing_sync::Config,
    /// An admin key of [`TENANT`].
    pub admin: String,
    /// HTTP client.
    pub http: reqwest::Client,
    key: String,
    agg: Running,
    ingest: Running,
    seq: AtomicU64,
}

impl Metered {
    /// Starts everything; `tweak` adjusts billing-sync's config (customers are created on need).
    pub async fn start(name: &str, tweak: impl FnOnce(&mut billing_sync::Config)) -> Self {
        Self::start_with_catalog(name, None, tweak).await
    }

    /// [`Self::start`] with every service (and the fake's seed) on the catalog `toml` (the built-in
    /// one when `None`); each plan's usage prices are configured from the fake's seed.
    pub async fn start_with_catalog(
        name: &str,
        toml: Option<&str>,
        tweak: impl FnOnce(&mut billing_sync::Config),
    ) -> Self {
        Self::build(name, toml, None, tweak).await
    }

    /// [`Self::start_with_catalog`] set up for the dashboard, as deployed: the ingest (on a port
    /// chosen first) forwards `/dashboard/billing` to billing-sync (`billing_url`), both take the
    /// dashboard's sessions (one `dashboard_secret`), and Checkout returns to the dashboard
    /// (`?checkout=success` / `?checkout=cancel`). billing-sync starts before the ingest here.
    pub async fn start_with_dashboard(
        name: &str,
        toml: Option<&str>,
        tweak: impl FnOnce(&mut billing_sync::Config),
    ) -> Self {
        Self::build(name, toml, Some(DASHBOARD_SECRET), tweak).await
    }

    async fn build(
        name: &str,
        toml: Option<&str>,
        dashboard_secret: Option<&str>,
        tweak: impl FnOnce(&mut billing_sync::Config),
    ) -> Self {
        let env = TestEnv::new(name).await;
        let catalog = match toml {
            Some(text) => schemas::Catalog::from_toml(text).expect("test catalog"),
            None => schemas::Catalog::default(),
        };
        let path = toml.map(|text| {
            let path = std::env::temp_dir().join(format!("catalog_{}.toml", env.name));
            std::fs::write(&path, text).expect("write the test catalog");
            path
        });
        let key = env.key(TENANT, &[Scope::Ingest], None).await;
        let admin = env.key(TENANT, &[Scope::Admin], None).await;
        let mut agg_config = env.aggregator_config();
        agg_config.catalog = path.clone();
        let (agg, _) = env.start_aggregator_with(agg_config).await;
        let mut ingest_config = env.ingest_config();
        ingest_config.catalog = path.clone();
        // Without the dashboard the ingest starts first (as it always did); with it, after
        // billing-sync, whose address it needs.
        let mut ingest = None;
        let mut dashboard = None;
        match dashboard_secret {
            None => ingest = Some(env.start_ingest_with(ingest_config.clone()).await),
            Some(secret) => {
                let port = crate::servers::free_port();
                ingest_config.listen = format!("127.0.0.1:{port}").parse().expect("addr");
                ingest_config.dashboard_secret = secret.to_string().into();
                dashboard = Some(format!("http://127.0.0.1:{port}/dashboard/"));
            }
        }
        let fake = Fake::start_with_catalog(&catalog).await;
        let mut config = billing_config(&env, &fake);
        config.catalog = path;
        if let (Some(secret), Some(page)) = (dashboard_secret, &dashboard) {
            config.stripe.success_url = format!("{page}?checkout=success");
            config.stripe.cancel_url = format!("{page}?checkout=cancel");
            config.stripe.portal_return_url = page.clone();
            config.dashboard_secret = secret.to_string().into();
        }
        for plan in &catalog.plans {
            for (meter, usage) in &plan.usage_prices {
                let seeded = usage
                    .stripe_price_env
                    .as_ref()
                    .and_then(|e| fake.prices.iter().find(|(name, _)| name == e));
                if let Some((_, price)) = seeded {
                    config
                        .stripe
                        .usage_prices
                        .entry(plan.key.clone())
                        .or_default()
                        .insert(meter.clone(), price.clone());
                }
            }
        }
        config.usage.create_customers = true;
        tweak(&mut config);
        let sync = start_billing_with(&fake, config.clone()).await;
        let ingest = match ingest {
            Some(running) => running,
            None => {
                ingest_config.billing_url = sync.running.url.clone();
                env.start_ingest_with(ingest_config).await
            }
        };
        let http = reqwest::Client::new();
        crate::wait_ready(&http, &ingest.url).await;
        Self {
            env,
            fake,
            sync,
            config,
            admin,
            http,
            key,
            agg,
            ingest,
            seq: AtomicU64::new(0),
        }
    }

    /// The ingest's base URL.
    pub fn ingest_url(&self) -> &str {
        &self.ingest.url
    }

    /// Starts a new billing-sync with the same config and stops the old one.
    pub async fn restart_billing(&mut self) {
        let new = start_billing_with(&self.fake, self.config.clone()).await;
        let old = std::mem::replace(&mut self.sync, new);
        old.running.stop().await;
    }

    /// Sends one usage event per quantity for `customer`, stamped `at` (unix seconds), through the
    /// ingest.
    pub async fn calls(&self, customer: &str, at: i64, quantities: &[f64]) {
        let time = OffsetDateTime::from_unix_timestamp(at)
            .expect("time")
            .format(&Rfc3339)
            .expect("RFC 3339");
        let events: Vec<Value> = quantities
            .iter()
            .map(|q| {
                let n = self.seq.fetch_add(1, Ordering::SeqCst);
                json!({
                    "specversion": "1.0", "id": format!("{customer}-{at}-{n}"), "source": "test",
                    "type": "api_call", "subject": customer, "time": time,
                    "data": {"endpoint": "analyze", "quantity": q},
                })
            })
            .collect();
        send_all(&self.http, &self.ingest.url, &self.key, &events, 100).await;
    }

    /// The rollup of one customer-hour.
    pub async fn rollup(&self, customer: &str, hour: i64) -> f64 {
        self.env
            .ch()
            .query(
                "SELECT sum(quantity) FROM usage_hourly WHERE tenant = ? AND customer = ? \
                 AND meter = 'api_call' AND hour = toDateTime(?)",
            )
            .bind(TENANT)
            .bind(customer)
            .bind(hour)
            .fetch_one::<f64>()
            .await
            .expect("rollup")
    }

    /// Waits until the rollup of one customer-hour is `quantity`.
    pub async fn wait_rollup(&self, customer: &str, hour: i64, quantity: f64) {
        wait_until(
            Duration::from_secs(30),
            &format!("rollup of {customer} at {hour} = {quantity}"),
            || async { (self.rollup(customer, hour).await == quantity).then_some(()) },
        )
        .await;
    }

    /// Lowers (voids) the rollup of one customer-hour by `quantity`, as an operator's correction.
    pub async fn void(&self, customer: &str, hour: i64, quantity: f64) {
        self.env
            .ch()
            .query(
                "INSERT INTO usage_hourly (tenant, customer, meter, endpoint, hour, events, quantity) \
                 VALUES (?, ?, 'api_call', 'void', toDateTime(?), 0, ?)",
            )
            .bind(TENANT)
            .bind(customer)
            .bind(hour)
            .bind(-quantity)
            .execute()
            .await
            .expect("void usage");
    }

    /// One report run (the library call the job and `POST /admin/usage/report` make).
    pub async fn report(&self) -> billing_sync::usage::ReportSummary {
        billing_sync::usage::report(self.sync.billing.clone(), CancellationToken::new())
            .await
            .expect("report run")
    }

    /// `method` `path` on billing-sync with the admin key; panics unless 200.
    pub async fn admin_call(&self, method: reqwest::Method, path: &str) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.sync.running.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// `GET /admin/usage/reconcile`.
    pub async fn reconcile(&self) -> Value {
        self.admin_call(reqwest::Method::GET, "/admin/usage/reconcile")
            .await
    }

    /// The Stripe customer of `customer`.
    pub async fn stripe_customer(&self, customer: &str) -> String {
        self.sync
            .billing
            .store
            .stripe_customer(TENANT, customer)
            .await
            .expect("mapping")
            .unwrap_or_else(|| panic!("{customer} has no Stripe customer"))
    }

    /// Stripe's meter event summary of one customer-hour (through the fake's API).
    pub async fn stripe_hour(&self, customer: &str, hour: i64) -> f64 {
        let stripe_customer = self.stripe_customer(customer).await;
        let page: Value = self
            .http
            .get(format!(
                "{}/v1/billing/meters/mtr_api_call/event_summaries",
                self.fake.url
            ))
            .bearer_auth(STRIPE_KEY)
            .query(&[
                ("customer", stripe_customer),
                ("start_time", hour.to_string()),
                ("end_time", (hour + 3_600).to_string()),
            ])
            .send()
            .await
            .expect("summaries")
            .json()
            .await
            .expect("summaries JSON");
        page["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|s| s["aggregated_value"].as_f64())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// The fake's meter events of `customer`: (identifier, value, cancelled), in arrival order.
    pub async fn meter_events(&self, customer: &str) -> Vec<(String, f64, bool)> {
        let prefix = format!("{TENANT}:{customer}:");
        self.fake
            .meter_events()
            .await
            .iter()
            .filter_map(|e| {
                let id = e["identifier"].as_str()?;
                id.starts_with(&prefix).then(|| {
                    (
                        id.to_string(),
                        e["value"].as_f64().unwrap_or(f64::NAN),
                        !e["cancelled"].is_null(),
                    )
                })
            })
            .collect()
    }

    /// The ledger's revisions of one customer-hour: (revision, value, state, reason).
    pub async fn revisions(&self, customer: &str, hour: i64) -> Vec<(u32, i64, u8, String)> {
        self.env
            .ch()
            .query(
                "SELECT revision, value, state, reason FROM billing_usage_revisions FINAL \
                 WHERE tenant = ? AND customer = ? AND hour = toDateTime(?) ORDER BY revision",
            )
            .bind(TENANT)
            .bind(customer)
            .bind(hour)
            .fetch_all()
            .await
            .expect("revisions")
    }

    /// Meter event requests the fake logged for one identifier: (status, replayed).
    pub async fn requests_with_identifier(&self, identifier: &str) -> Vec<(u64, bool)> {
        let log = self.fake.get("/_fake/requests").await;
        log.as_array()
            .map(|r| {
                r.iter()
                    .filter(|x| x["identifier"] == identifier)
                    .map(|x| {
                        (
                            x["status"].as_u64().unwrap_or(0),
                            x["replayed"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds a fault on meter event calls.
    pub async fn fault(&self, mut fault: Value) {
        fault["path"] = json!("/v1/billing/meter_events");
        self.fake.post("/_fake/faults", fault).await;
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.sync.running.stop().await;
        self.ingest.stop().await;
        self.agg.stop().await;
        self.fake.stop().await;
    }
}
