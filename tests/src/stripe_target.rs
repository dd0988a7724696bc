//! The Stripe a contract test talks to: the project's fake by default, or Stripe's test mode when
//! `STRIPE_TEST_SECRET_KEY` holds a test key (`sk_test_…`; a live key is refused). Each test makes
//! its own catalog on the target (a product, a licensed price, a meter with a run-unique event
//! name, its metered price, a customer on a test clock) and removes it afterwards: customers
//! deleted, the meter deactivated, prices and the product archived (Stripe deletes none of those),
//! the test clock deleted.

use std::time::Duration;

use serde_json::Value;

use crate::billing::Fake;

/// The environment variable that points the contract tests at Stripe's test mode.
pub const KEY_VAR: &str = "STRIPE_TEST_SECRET_KEY";

/// Where the calls go.
#[derive(Debug)]
pub enum Kind {
    /// The project's Stripe fake, in process.
    Fake(Fake),
    /// `https://api.stripe.com/` with a test key.
    Stripe,
}

/// One call of [`Target::cleanup`]: method, path, form.
type CleanupStep = (reqwest::Method, String, Vec<(&'static str, String)>);

/// One contract test's Stripe.
#[derive(Debug)]
pub struct Target {
    /// Fake or Stripe.
    pub kind: Kind,
    /// Base URL ending in `/`.
    pub api_base: String,
    /// Secret key.
    pub key: String,
    /// A suffix unique to this test run (meter event names, product names).
    pub run: String,
    http: reqwest::Client,
}

/// The catalog a test made on its target.
#[derive(Debug, Clone)]
pub struct Made {
    /// Product id.
    pub product: String,
    /// A licensed monthly price ($29.00).
    pub price: String,
    /// Meter id.
    pub meter: String,
    /// The meter's event name.
    pub event_name: String,
    /// The meter's metered price ($0.01 per unit).
    pub meter_price: String,
    /// Test clock id.
    pub clock: String,
    /// A customer on the clock.
    pub customer: String,
}

impl Target {
    /// Stripe's test mode when [`KEY_VAR`] is set, else a fresh fake.
    pub async fn start() -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let http = reqwest::Client::new();
        match std::env::var(KEY_VAR) {
            Ok(key) if !key.is_empty() => {
                assert!(
                    key.starts_with("sk_test_") || key.starts_with("rk_test_"),
                    "{KEY_VAR} must be a test-mode key (sk_test_…); the contract tests create and delete objects"
                );
                Self {
                    kind: Kind::Stripe,
                    api_base: "https://api.stripe.com/".into(),
                    key,
                    run,
                    http,
                }
            }
            _ => {
                let fake = Fake::start().await;
                let api_base = format!("{}/", fake.url);
                Self {
                    kind: Kind::Fake(fake),
                    api_base,
                    key: crate::billing::STRIPE_KEY.into(),
                    run,
                    http,
                }
            }
        }
    }

    /// Whether this is Stripe's test mode.
    pub fn is_stripe(&self) -> bool {
        matches!(self.kind, Kind::Stripe)
    }

    /// The fake, when the target is the fake.
    pub fn fake(&self) -> Option<&Fake> {
        match &self.kind {
            Kind::Fake(f) => Some(f),
            Kind::Stripe => None,
        }
    }

    /// An async-stripe client on the target.
    pub fn client(&self) -> stripe::Client {
        stripe::ClientBuilder::new(&self.key)
            .url(self.api_base.clone())
            .build()
            .expect("stripe client")
    }

    /// A form call on the target: (status, JSON body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, String)],
        key: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.api_base);
        let mut r = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.key);
        r = if method == reqwest::Method::GET {
            r.query(form)
        } else {
            r.form(form)
        };
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        let resp = r.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A POST that must succeed; returns the object's id.
    async fn create(&self, path: &str, form: &[(&str, String)]) -> String {
        let (status, v) = self.call(reqwest::Method::POST, path, form, None).await;
        assert_eq!(status, 200, "{path}: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Makes the test's catalog and customer.
    pub async fn setup(&self) -> Made {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let run = &self.run;
        let product = self
            .create(
                "v1/products",
                &[("name", format!("metering contract {run}"))],
            )
            .await;
        let price = self
            .create(
                "v1/prices",
                &[
                    ("product", product.clone()),
                    ("currency", "usd".into()),
                    ("unit_amount", "2900".into()),
                    ("recurring[interval]", "month".into()),
                ],
            )
            .await;
        let event_name = format!("contract_{run}");
        let meter = self
            .create(
                "v1/billing/meters",
                &[
                    ("display_name", format!("contract {run}")),
                    ("event_name", event_name.clone()),
                    ("default_aggregation[formula]", "sum".into()),
                ],
            )
            .await;
        let meter_price = self
            .create(
                "v1/prices",
                &[
                    ("product", product.clone()),
                    ("currency", "usd".into()),
                    ("unit_amount", "1".into()),
                    ("recurring[interval]", "month".into()),
                    ("recurring[usage_type]", "metered".into()),
                    ("recurring[meter]", meter.clone()),
                ],
            )
            .await;
        let clock = self
            .create(
                "v1/test_helpers/test_clocks",
                &[
                    ("frozen_time", now.to_string()),
                    ("name", format!("contract {run}")),
                ],
            )
            .await;
        let customer = self
            .create(
                "v1/customers",
                &[
                    ("name", format!("contract {run}")),
                    ("test_clock", clock.clone()),
                    ("metadata[run]", run.clone()),
                ],
            )
            .await;
        Made {
            product,
            price,
            meter,
            event_name,
            meter_price,
            clock,
            customer,
        }
    }

    /// Stripe's summary of `customer` on `meter` over `[start, end)`.
    pub async fn summary(&self, made: &Made, start: i64, end: i64) -> f64 {
        let (status, page) = self
            .call(
                reqwest::Method::GET,
                &format!("v1/billing/meters/{}/event_summaries", made.meter),
                &[
                    ("customer", made.customer.clone()),
                    ("start_time", start.to_string()),
                    ("end_time", end.to_string()),
                ],
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|s| s["aggregated_value"].as_f64())
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// Waits (Stripe's summaries lag its meter events; up to two minutes on Stripe) until the
    /// summary is `value`.
    pub async fn summary_becomes(&self, made: &Made, start: i64, end: i64, value: f64) {
        let deadline = if self.is_stripe() { 120 } else { 10 };
        crate::wait_until(
            Duration::from_secs(deadline),
            &format!("Stripe's summary to reach {value}"),
            || async { (self.summary(made, start, end).await == value).then_some(()) },
        )
        .await;
    }

    /// Moves the test clock to `to` and waits until it is ready.
    pub async fn advance(&self, made: &Made, to: i64) {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("v1/test_helpers/test_clocks/{}/advance", made.clock),
                &[("frozen_time", to.to_string())],
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        crate::wait_until(Duration::from_secs(180), "the test clock", || async {
            let (_, c) = self
                .call(
                    reqwest::Method::GET,
                    &format!("v1/test_helpers/test_clocks/{}", made.clock),
                    &[],
                    None,
                )
                .await;
            (c["status"] == "ready").then_some(())
        })
        .await;
    }

    /// Removes what [`Self::setup`] made; every step must succeed.
    pub async fn cleanup(self, made: Made) {
        let steps: Vec<CleanupStep> = vec![
            (
                reqwest::Method::DELETE,
                format!("v1/customers/{}", made.customer),
                vec![],
            ),
            (
                reqwest::Method::DELETE,
                format!("v1/test_helpers/test_clocks/{}", made.clock),
                vec![],
            ),
            (
                reqwest::Method::POST,
                format!("v1/billing/meters/{}/deactivate", made.meter),
                vec![],
            ),
            (
                reqwest::Method::POST,
                format!("v1/prices/{}", made.meter_price),
                vec![("active", "false".into())],
            ),
            (
                reqwest::Method::POST,
                format!("v1/prices/{}", made.price),
                vec![("active", "false".into())],
            ),
            (
                reqwest::Method::POST,
                format!("v1/products/{}", made.product),
                vec![("active", "false".into())],
            ),
        ];
        for (method, path, form) in steps {
            let (status, v) = self.call(method, &path, &form, None).await;
            assert_eq!(status, 200, "cleanup {path}: {v}");
        }
        if let Kind::Fake(f) = self.kind {
            f.stop().await;
        }
    }
}
