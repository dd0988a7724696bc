//! billing-sync end to end against the real broker and ClickHouse and the Stripe fake over HTTP: the
//! seed's upgrade flow into quota limits, cancel (at period end and now), the portal, status in each
//! state, payment failure with grace and recovery, webhooks (bad signature, stale timestamp,
//! duplicate and out-of-order delivery) and reconciliation of missed webhooks.

use std::time::Duration;

use platform::principal::Scope;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::billing::{BillingSync, Fake, billing_config, start_billing, start_billing_with};
use tests::{Running, TestEnv, wait_until};

const APP: &[Scope] = &[Scope::Ingest, Scope::Read];

struct Ctx {
    env: TestEnv,
    fake: Fake,
    sync: BillingSync,
    http: reqwest::Client,
    /// Aggregator and ingest, when the test needs quota limits.
    pipeline: Option<(Running, Running)>,
}

impl Ctx {
    async fn new(test: &str, pipeline: bool) -> Self {
        Self::with(test, pipeline, |_| {}).await
    }

    async fn with(
        test: &str,
        pipeline: bool,
        tweak: impl FnOnce(&mut billing_sync::Config),
    ) -> Self {
        let env = TestEnv::new(test).await;
        let fake = Fake::start().await;
        let mut config = billing_config(&env, &fake);
        tweak(&mut config);
        let sync = start_billing_with(&fake, config).await;
        let http = reqwest::Client::new();
        let pipeline = if pipeline {
            let (agg, _) = env.start_aggregator().await;
            let ingest = env.start_ingest().await;
            tests::wait_ready(&http, &ingest.url).await;
            Some((agg, ingest))
        } else {
            None
        };
        Self {
            env,
            fake,
            sync,
            http,
            pipeline,
        }
    }

    fn ingest(&self) -> &Running {
        &self.pipeline.as_ref().expect("pipeline started").1
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.sync.running.url)
        };
        let mut req = self.http.request(method, url).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn status(&self, key: &str) -> Value {
        let (s, v) = self
            .call(Method::GET, "/subscription/status", key, None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Waits until the status satisfies `ok`.
    async fn status_until(&self, key: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        wait_until(Duration::from_secs(20), what, || async {
            let v = self.status(key).await;
            ok(&v).then_some(v)
        })
        .await
    }

    /// Checkout for `plan` and a visit of its URL; returns the session URL.
    async fn checkout(&self, key: &str, plan: &str) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                "/subscription/create",
                key,
                Some(json!({"plan": plan})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let url = v["url"].as_str().expect("checkout url").to_string();
        assert!(
            url.starts_with(&format!("{}/checkout/cs_", self.fake.url)),
            "{url}"
        );
        let page = self.http.get(&url).send().await.expect("visit checkout");
        assert_eq!(page.status(), 200);
        url
    }

    /// Checkout, then wait until the status shows the plan active; returns the status.
    async fn subscribe(&self, key: &str, plan: &str) -> Value {
        self.checkout(key, plan).await;
        self.status_until(key, "subscription active", |v| {
            v["status"] == "active" && v["plan"] == plan
        })
        .await
    }

    async fn quota(&self, key: &str, customer: &str) -> Value {
        let (s, v) = self
            .call(
                Method::GET,
                &format!("{}/v1/customers/{customer}/quota", self.ingest().url),
                key,
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    async fn quota_until(
        &self,
        key: &str,
        customer: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(Duration::from_secs(20), what, || async {
            let v = self.quota(key, customer).await;
            ok(&v).then_some(v)
        })
        .await
    }

    /// Plan changes the aggregator stored for `customer`, by source.
    /// The customer's plan changes (`kind = 'plan'`; the version pins that follow a change to
    /// another plan are not counted here).
    async fn plan_events(&self, customer: &str) -> Vec<(String, String)> {
        self.env
            .ch()
            .query("SELECT id, source FROM subscription_events WHERE customer = ? AND kind = 'plan' ORDER BY kafka_offset")
            .bind(customer)
            .fetch_all()
            .await
            .expect("subscription_events")
    }

    async fn deliver(&self, event_id: &str, signature: &str) -> (u16, Value) {
        let v = self
            .fake
            .post(
                &format!("/_fake/events/{event_id}/deliver"),
                json!({"signature": signature}),
            )
            .await;
        let body =
            serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        (v["status"].as_u64().unwrap_or(0) as u16, body)
    }

    async fn stop(self) {
        self.sync.running.stop().await;
        if let Some((agg, ingest)) = self.pipeline {
            ingest.stop().await;
            agg.stop().await;
        }
        self.fake.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_upgrade_flow_lifts_a_free_customer_at_its_limit_to_starter() {
    let ctx = Ctx::new("bill_upgrade", true).await;
    let key = ctx.env.key("acme", APP, Some("cust_up")).await;
    let track = |i: usize| {
        let (http, url, key) = (
            ctx.http.clone(),
            format!("{}/usage/track", ctx.ingest().url),
            key.clone(),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"endpoint": "analyze", "id": format!("up-{i}")}))
                .send()
                .await
                .expect("track");
            r.status()
        }
    };
    for i in 1..=100 {
        assert_eq!(track(i).await, 200, "call {i}");
    }
    assert_eq!(track(101).await, 429, "the free plan stops at 100");
    let q = ctx.quota(&key, "cust_up").await;
    assert_eq!(
        (q["limit"].clone(), q["allowed"].clone()),
        (json!(100), json!(false)),
        "{q}"
    );
    let s = ctx.status(&key).await;
    assert_eq!(
        (s["plan"].clone(), s["status"].clone()),
        (json!("free"), json!("none")),
        "{s}"
    );

    // Upgrade through Checkout: the webhook makes the plan starter and the quota follows.
    let s = ctx.subscribe(&key, "starter").await;
    assert_eq!(s["cancel_at_period_end"], json!(false));
    assert!(
        s["subscription_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("sub_")),
        "{s}"
    );
    assert!(s["current_period_end"].as_str().is_some(), "{s}");
    let q = ctx
        .quota_until(&key, "cust_up", "limit 500", |q| q["limit"] == json!(500))
        .await;
    assert_eq!(
        (q["plan"].clone(), q["allowed"].clone()),
        (json!("starter"), json!(true)),
        "{q}"
    );
    assert_eq!(track(101).await, 200, "call 101 is allowed on starter");

    // The checkout's webhooks (completed, subscription created, invoice paid) made one plan change.
    wait_until(
        Duration::from_secs(10),
        "the fake delivered every event",
        || async {
            let delivered = ctx.fake.get("/_fake/deliveries").await;
            let ok = delivered
                .as_array()
                .map_or(0, |d| d.iter().filter(|x| x["status"] == 200).count());
            (ok >= ctx.fake.events().await.len()).then_some(())
        },
    )
    .await;
    let events = wait_until(
        Duration::from_secs(10),
        "the plan change stored",
        || async {
            let e = ctx.plan_events("cust_up").await;
            (!e.is_empty()).then_some(e)
        },
    )
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, "stripe");
    let completed = ctx.fake.events_of("checkout.session.completed").await;
    assert_eq!(
        events[0].0,
        format!("stripe:{}", completed[0]["id"].as_str().unwrap_or_default())
    );

    // A second purchase while subscribed is refused.
    let (s, v) = ctx
        .call(
            Method::POST,
            "/subscription/create",
            &key,
            Some(json!({"plan": "professional"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("subscription_exists")),
        "{v}"
    );
    ctx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_at_period_end_cancel_now_portal_and_status_in_each_state() {
    let ctx = Ctx::new("bill_cancel", true).await;
    let tenant_key = ctx.env.key("acme", APP, None).await;
    let a = ctx.env.key("acme", APP, Some("cust_a")).await;
    let b = ctx.env.key("acme", APP, Some("cust_b")).await;

    // Errors in the ingest's shape.
    let (s, v) = ctx
        .call(Method::POST, "/subscription/cancel", &a, None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("no_subscription")),
        "{v}"
    );
    let (s, v) = ctx
        .call(
            Method::POST,
            "/subscription/create",
            &a,
            Some(json!({"plan": "free"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("plan_not_purchasable")),
        "{v}"
    );
    assert_eq!(v["error"]["details"][0]["field"], "plan", "{v}");
    let (s, v) = ctx
        .call(
            Method::POST,
            "/subscription/create",
            &a,
            Some(json!({"plan": "gold"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("unknown_plan")),
        "{v}"
    );
    let (s, v) = ctx
        .call(Method::GET, "/subscription/status", &tenant_key, None)
        .await;
    assert_eq!(
        (s, v["error"]["details"][0]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("customer")),
        "{v}"
    );
    let (s, v) = ctx
        .call(
            Method::GET,
            "/subscription/status?customer=cust_b",
            &a,
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("customer_forbidden")),
        "{v}"
    );
    let r = ctx
        .http
        .get(format!("{}/subscription/status", ctx.sync.running.url))
        .send()
        .await
        .expect("no key");
    assert_eq!(r.status(), 401);

    // Status: none → active.
    assert_eq!(ctx.status(&a).await["status"], "none");
    ctx.subscribe(&a, "professional").await;
    ctx.quota_until(&a, "cust_a", "limit 5000", |q| q["limit"] == json!(5000))
        .await;

    // Portal URL (and the tenant key acting for the customer through X-Customer-Id).
    let r = ctx
        .http
        .get(format!("{}/subscription/portal", ctx.sync.running.url))
        .bearer_auth(&tenant_key)
        .header("x-customer-id", "cust_a")
        .send()
        .await
        .expect("portal");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("portal JSON");
    let url = v["url"].as_str().expect("portal url");
    assert!(
        url.starts_with(&format!("{}/portal/bps_", ctx.fake.url)),
        "{v}"
    );
    let page = ctx
        .http
        .get(url)
        .send()
        .await
        .expect("visit portal")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        page.contains("sub_"),
        "the portal lists the subscription: {page}"
    );

    // Cancel at period end (the default): still professional until the period ends.
    let (s, v) = ctx
        .call(Method::POST, "/subscription/cancel", &a, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["cancel_at_period_end"].clone(), v["status"].clone()),
        (json!(true), json!("active")),
        "{v}"
    );
    let st = ctx.status(&a).await;
    assert_eq!(
        (
            st["status"].clone(),
            st["plan"].clone(),
            st["cancel_at_period_end"].clone()
        ),
        (json!("active"), json!("professional"), json!(true)),
        "{st}"
    );
    ctx.quota_until(&a, "cust_a", "cancel flag in the quota view", |q| {
        q["limit"] == json!(5000)
    })
    .await;
    // The period ends: Stripe deletes the subscription, the customer is back on free.
    ctx.fake
        .post("/_fake/clock/advance", json!({"seconds": 31 * 86_400}))
        .await;
    let st = ctx
        .status_until(&a, "canceled at period end", |v| v["status"] == "canceled")
        .await;
    assert_eq!(st["plan"], "free", "{st}");
    ctx.quota_until(&a, "cust_a", "back to 100", |q| q["limit"] == json!(100))
        .await;

    // Cancel now.
    ctx.subscribe(&b, "starter").await;
    let (s, v) = ctx
        .call(
            Method::POST,
            "/subscription/cancel",
            &b,
            Some(json!({"immediately": true})),
        )
        .await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::OK, json!("canceled")),
        "{v}"
    );
    let st = ctx.status(&b).await;
    assert_eq!(
        (st["status"].clone(), st["plan"].clone()),
        (json!("canceled"), json!("free")),
        "{st}"
    );
    ctx.quota_until(&b, "cust_b", "b back to 100", |q| {
        q["limit"] == json!(100) && q["status"] == json!("canceled")
    })
    .await;
    // A canceled customer may buy again.
    ctx.subscribe(&b, "starter").await;
    ctx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_payment_downgrades_after_the_grace_period_and_payment_restores_the_plan() {
    let ctx = Ctx::with("bill_grace", true, |c| {
        c.payment_failure.grace_period_secs = 1;
    })
    .await;
    let admin = ctx.env.key("acme", &[Scope::Admin], None).await;
    let key = ctx.env.key("acme", APP, Some("cust_late")).await;
    let st = ctx.subscribe(&key, "starter").await;
    let sub = st["subscription_id"].as_str().expect("sub").to_string();
    ctx.quota_until(&key, "cust_late", "starter", |q| q["limit"] == json!(500))
        .await;

    ctx.fake
        .post(
            &format!("/_fake/subscriptions/{sub}/payment_failed"),
            json!({}),
        )
        .await;
    let st = ctx
        .status_until(&key, "past_due with a failure time", |v| {
            v["status"] == "past_due" && v["payment_failed_at"].is_string()
        })
        .await;
    assert_eq!(
        (st["plan"].clone(), st["downgraded"].clone()),
        (json!("starter"), json!(false)),
        "in grace: {st}"
    );
    // The grace period (1 s) expires; the check downgrades to the default plan.
    let downgraded = wait_until(
        Duration::from_secs(10),
        "the grace check downgrades",
        || async {
            let (s, v) = ctx
                .call(Method::POST, "/admin/subscriptions/reconcile", &admin, None)
                .await;
            assert_eq!(s, 200, "{v}");
            (v["downgraded"].as_u64() == Some(1)).then_some(v)
        },
    )
    .await;
    assert_eq!(downgraded["repaired"], json!(0), "{downgraded}");
    let st = ctx.status(&key).await;
    assert_eq!(
        (st["plan"].clone(), st["downgraded"].clone()),
        (json!("free"), json!(true)),
        "{st}"
    );
    ctx.quota_until(&key, "cust_late", "free after grace", |q| {
        q["limit"] == json!(100)
    })
    .await;
    // Checking again changes nothing.
    let (_, v) = ctx
        .call(Method::POST, "/admin/subscriptions/reconcile", &admin, None)
        .await;
    assert_eq!(v["downgraded"], json!(0), "{v}");

    // The invoice is paid: the plan comes back.
    ctx.fake
        .post(
            &format!("/_fake/subscriptions/{sub}/invoice_paid"),
            json!({}),
        )
        .await;
    let st = ctx
        .status_until(&key, "active again", |v| {
            v["status"] == "active" && v["plan"] == "starter"
        })
        .await;
    assert_eq!(
        (st["downgraded"].clone(), st["payment_failed_at"].clone()),
        (json!(false), json!(null)),
        "{st}"
    );
    ctx.quota_until(&key, "cust_late", "starter again", |q| {
        q["limit"] == json!(500)
    })
    .await;
    let sources: Vec<String> = ctx
        .plan_events("cust_late")
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert!(sources.contains(&"grace".to_string()), "{sources:?}");
    ctx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_bad_signature_stale_duplicate_and_out_of_order() {
    let ctx = Ctx::new("bill_hooks", true).await;
    let key = ctx.env.key("acme", APP, Some("cust_w")).await;
    let st = ctx.subscribe(&key, "starter").await;
    let sub = st["subscription_id"].as_str().expect("sub").to_string();
    let completed = ctx.fake.events_of("checkout.session.completed").await;
    let completed_id = completed[0]["id"].as_str().expect("event id").to_string();
    let first = wait_until(Duration::from_secs(10), "the first plan change", || async {
        let e = ctx.plan_events("cust_w").await;
        (!e.is_empty()).then_some(e)
    })
    .await;

    // Bad signature and stale timestamp: 400 with a code, nothing marked handled.
    ctx.fake
        .post("/_fake/webhooks", json!({"paused": true}))
        .await;
    ctx.fake
        .post(
            &format!("/_fake/subscriptions/{sub}/update"),
            json!({"cancel_at_period_end": true}),
        )
        .await;
    ctx.fake
        .post("/_fake/clock/advance", json!({"seconds": 5}))
        .await;
    ctx.fake
        .post(
            &format!("/_fake/subscriptions/{sub}/update"),
            json!({"cancel_at_period_end": false}),
        )
        .await;
    let updates = ctx.fake.events_of("customer.subscription.updated").await;
    assert_eq!(updates.len(), 2);
    let (older, newer) = (
        updates[0]["id"].as_str().expect("id").to_string(),
        updates[1]["id"].as_str().expect("id").to_string(),
    );
    assert!(updates[0]["created"].as_i64() < updates[1]["created"].as_i64());

    let (s, v) = ctx.deliver(&newer, "bad").await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_signature")),
        "{v}"
    );
    let (s, v) = ctx.deliver(&newer, "stale").await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("stale_signature")),
        "{v}"
    );
    let r = ctx
        .http
        .post(ctx.sync.webhook_url())
        .body(updates[1].to_string())
        .send()
        .await
        .expect("unsigned");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("error JSON");
    assert_eq!(v["error"]["code"], "missing_signature", "{v}");

    // Out of order: the newer event (cancel_at_period_end=false) first, then the older one
    // (true), which must not win.
    let (s, v) = ctx.deliver(&newer, "valid").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["duplicate"],
        json!(null),
        "refused deliveries were not marked: {v}"
    );
    let (s, v) = ctx.deliver(&older, "valid").await;
    assert_eq!((s, v["outcome"].clone()), (200, json!("stale")), "{v}");
    assert_eq!(ctx.status(&key).await["cancel_at_period_end"], json!(false));

    // Duplicates: answered, no effect.
    let (s, v) = ctx.deliver(&newer, "valid").await;
    assert_eq!((s, v["duplicate"].clone()), (200, json!(true)), "{v}");
    let (s, v) = ctx.deliver(&completed_id, "valid").await;
    assert_eq!((s, v["duplicate"].clone()), (200, json!(true)), "{v}");

    // A deletion is final: an older update delivered after it changes nothing.
    ctx.fake
        .post(
            &format!("/_fake/subscriptions/{sub}/update"),
            json!({"cancel_at_period_end": true}),
        )
        .await;
    let late_update = ctx
        .fake
        .events_of("customer.subscription.updated")
        .await
        .last()
        .and_then(|e| e["id"].as_str().map(String::from))
        .expect("update");
    ctx.fake
        .post("/_fake/clock/advance", json!({"seconds": 5}))
        .await;
    ctx.fake
        .post(&format!("/_fake/subscriptions/{sub}/delete"), json!({}))
        .await;
    let deleted = ctx.fake.events_of("customer.subscription.deleted").await;
    let (s, v) = ctx
        .deliver(deleted[0]["id"].as_str().expect("id"), "valid")
        .await;
    assert_eq!((s, v["outcome"].clone()), (200, json!("applied")), "{v}");
    let (s, v) = ctx.deliver(&late_update, "valid").await;
    assert_eq!((s, v["outcome"].clone()), (200, json!("stale")), "{v}");
    let st = ctx.status(&key).await;
    assert_eq!(
        (st["status"].clone(), st["plan"].clone()),
        (json!("canceled"), json!("free")),
        "{st}"
    );
    ctx.quota_until(&key, "cust_w", "free after deletion", |q| {
        q["limit"] == json!(100)
    })
    .await;

    // Exactly: the checkout, the deletion.
    let events = wait_until(Duration::from_secs(10), "two plan changes", || async {
        let e = ctx.plan_events("cust_w").await;
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], first[0]);
    ctx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_webhooks_are_repaired_by_reconciliation() {
    let ctx = Ctx::new("bill_recon", true).await;
    let admin = ctx.env.key("acme", &[Scope::Admin], None).await;
    let key = ctx.env.key("acme", APP, Some("cust_r")).await;
    ctx.fake
        .post("/_fake/webhooks", json!({"paused": true}))
        .await;
    ctx.checkout(&key, "enterprise").await;
    // No webhook arrives: still no subscription locally.
    assert_eq!(ctx.status(&key).await["status"], "none");
    let (s, v) = ctx
        .call(Method::POST, "/admin/subscriptions/reconcile", &admin, None)
        .await;
    assert_eq!(
        (s, v["repaired"].clone()),
        (StatusCode::OK, json!(1)),
        "{v}"
    );
    let st = ctx.status(&key).await;
    assert_eq!(
        (st["plan"].clone(), st["status"].clone()),
        (json!("enterprise"), json!("active")),
        "{st}"
    );
    ctx.quota_until(&key, "cust_r", "unlimited", |q| {
        q["limit"].is_null() && q["plan"] == json!("enterprise")
    })
    .await;
    // Nothing drifted since: nothing to repair.
    let (_, v) = ctx
        .call(Method::POST, "/admin/subscriptions/reconcile", &admin, None)
        .await;
    assert_eq!(v["repaired"], json!(0), "{v}");
    // A change made in Stripe while webhooks are lost is repaired too.
    let sub = ctx.status(&key).await["subscription_id"]
        .as_str()
        .expect("sub")
        .to_string();
    ctx.fake
        .post(
            &format!("/_fake/subscriptions/{sub}/update"),
            json!({"cancel_at_period_end": true}),
        )
        .await;
    let (_, v) = ctx
        .call(Method::POST, "/admin/subscriptions/reconcile", &admin, None)
        .await;
    assert_eq!(v["repaired"], json!(1), "{v}");
    assert_eq!(ctx.status(&key).await["cancel_at_period_end"], json!(true));
    let sources: Vec<String> = wait_until(
        Duration::from_secs(10),
        "two reconcile plan changes",
        || async {
            let e: Vec<String> = ctx
                .plan_events("cust_r")
                .await
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            (e.len() >= 2).then_some(e)
        },
    )
    .await;
    assert_eq!(
        sources,
        vec!["reconcile".to_string(), "reconcile".to_string()]
    );
    // A customer key cannot run jobs.
    let (s, _) = ctx
        .call(Method::POST, "/admin/subscriptions/reconcile", &key, None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    ctx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_billing_default_config_serves_health_and_metrics() {
    let env = TestEnv::new("bill_health").await;
    let fake = Fake::start().await;
    let sync = start_billing(&env, &fake).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/healthz", sync.running.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let m = http
        .get(format!("{}/metrics", sync.running.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    assert!(m.contains("http_requests"), "{m}");
    sync.running.stop().await;
    fake.stop().await;
}

/// A customer signed in to the dashboard by a link (a read-only session) can start a checkout for
/// itself through the ingest's billing proxy when billing-sync shares the dashboard secret; a
/// billing-sync without the secret refuses the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dashboard_session_buys_its_own_plan_only_with_the_shared_secret() {
    let env = TestEnv::new("session_buy").await;
    let fake = Fake::start().await;
    let admin = env.key("acme", &[Scope::Admin], None).await;
    let http = reqwest::Client::new();
    for (shared, expected) in [
        (true, StatusCode::CREATED),
        (false, StatusCode::UNAUTHORIZED),
    ] {
        let mut bcfg = billing_config(&env, &fake);
        if shared {
            bcfg.dashboard_secret = secrecy::SecretString::from("shared-secret");
        }
        let sync = start_billing_with(&fake, bcfg).await;
        let mut cfg = env.ingest_config();
        cfg.dashboard_secret = secrecy::SecretString::from("shared-secret");
        cfg.billing_url = sync.running.url.clone();
        let ingest = env.start_ingest_with(cfg).await;
        let customer = format!("sess_{shared}");
        let link: Value = http
            .post(format!(
                "{}/v1/customers/{customer}/dashboard-link",
                ingest.url
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("link")
            .json()
            .await
            .expect("json");
        let session: Value = http
            .post(format!("{}/dashboard/session", ingest.url))
            .json(&json!({"link": link["link"]}))
            .send()
            .await
            .expect("session")
            .json()
            .await
            .expect("json");
        let token = session["session"]
            .as_str()
            .or(session["token"].as_str())
            .expect("session token")
            .to_string();
        let r = http
            .post(format!(
                "{}/dashboard/billing/subscription/create",
                ingest.url
            ))
            .bearer_auth(&token)
            .json(&json!({"plan": "starter"}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), expected, "shared secret: {shared}");
        if shared {
            let body: Value = r.json().await.expect("json");
            let url = body["url"].as_str().expect("checkout url").to_string();
            assert!(url.starts_with(&fake.url), "{url}");
            // Another customer's subscription is out of reach, even asking billing-sync directly.
            let r = http
                .post(format!(
                    "{}/subscription/create?customer=someone_else",
                    sync.running.url
                ))
                .bearer_auth(&token)
                .json(&json!({"plan": "starter"}))
                .send()
                .await
                .expect("create other");
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
        ingest.stop().await;
        sync.running.stop().await;
    }
}
