//! Two billing-sync instances at once (invariant 8: they never bill twice), against the real broker
//! and ClickHouse and the Stripe fake: the work split by the consumer group over the work topic,
//! concurrent report runs over many customers, one webhook delivered to both instances at once and
//! replayed, and SIGKILL of one instance process mid-run (the other takes its partitions over).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::Duration;

use billing_sync::billing::Billing;
use platform::principal::Scope;
use serde_json::{Value, json};
use tests::billing::{
    BillingSync, Fake, STRIPE_KEY, WEBHOOK_SECRET, billing_config, start_billing_with,
};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::servers::free_port;
use tests::webhook::{Request, WebhookReceiver};
use tests::{TestEnv, wait_until};
use tokio_util::sync::CancellationToken;

/// Splits the work of instances started with `config` in a consumer group of this test (named
/// after its database), with a short takeover delay.
fn split_work(config: &mut billing_sync::Config) {
    config.work.enabled = true;
    config.work.group_id = format!("{}_billing", config.clickhouse.database);
    config.work.takeover_delay_ms = 300;
}

/// Waits until `a` and `b` split the work topic: each bills a non-empty share, the shares are
/// disjoint and together every partition. Returns the shares.
async fn wait_split(a: &Billing, b: &Billing) -> (Vec<i32>, Vec<i32>) {
    let n = a.ownership.partitions() as usize;
    wait_until(
        Duration::from_secs(45),
        "two instances splitting the work",
        || async {
            let (x, y) = (a.ownership.owned(), b.ownership.owned());
            let all: BTreeSet<i32> = x.iter().chain(&y).copied().collect();
            (!x.is_empty() && !y.is_empty() && all.len() == n && x.len() + y.len() == n)
                .then_some((x, y))
        },
    )
    .await
}

/// The partitions a billing-sync's `/metrics` says it owns.
async fn owned_in_metrics(http: &reqwest::Client, url: &str) -> Option<Vec<i32>> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut owned = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("work_partition_owned{partition=\"") else {
            continue;
        };
        let (p, value) = rest.split_once("\"} ")?;
        if value.trim() == "1" {
            owned.push(p.parse().ok()?);
        }
    }
    owned.sort_unstable();
    Some(owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_in_one_group_split_the_customers_between_them() {
    let env = TestEnv::new("ha_split").await;
    let fake = Fake::start().await;
    let mut config = billing_config(&env, &fake);
    split_work(&mut config);
    let http = reqwest::Client::new();
    let a = start_billing_with(&fake, config.clone()).await;
    let n = a.billing.ownership.partitions();
    assert_eq!(n, config.work.partitions, "the work topic as configured");
    wait_until(
        Duration::from_secs(30),
        "a alone owning everything",
        || async { (a.billing.ownership.owned().len() == n as usize).then_some(()) },
    )
    .await;
    let b = start_billing_with(&fake, config.clone()).await;
    let (sa, sb) = wait_split(&a.billing, &b.billing).await;
    // Every customer is billed by exactly one of them, and each bills some.
    let (mut by_a, mut by_b) = (0, 0);
    for i in 0..500 {
        let c = format!("cust_{i}");
        let (x, y) = (
            a.billing.ownership.owns(TENANT, &c),
            b.billing.ownership.owns(TENANT, &c),
        );
        assert!(
            x != y,
            "{c}: owned by a: {x}, by b: {y} (shares {sa:?} / {sb:?})"
        );
        if x {
            by_a += 1;
        } else {
            by_b += 1;
        }
    }
    assert!(by_a > 0 && by_b > 0, "a bills {by_a}, b bills {by_b}");
    assert_eq!(owned_in_metrics(&http, &a.running.url).await, Some(sa));
    assert_eq!(owned_in_metrics(&http, &b.running.url).await, Some(sb));
    // A clean stop leaves the group at once: the other takes every customer over.
    b.running.stop().await;
    wait_until(
        Duration::from_secs(30),
        "a owning everything after b left",
        || async { (a.billing.ownership.owned().len() == n as usize).then_some(()) },
    )
    .await;
    a.running.stop().await;
    fake.stop().await;
}

/// Meter event requests per identifier in the fake's request log.
async fn meter_event_requests(fake: &Fake) -> BTreeMap<String, usize> {
    let log = fake.get("/_fake/requests").await;
    let mut per_key = BTreeMap::new();
    for r in log.as_array().into_iter().flatten() {
        if r["path"] == "/v1/billing/meter_events"
            && let Some(key) = r["identifier"].as_str()
        {
            *per_key.entry(key.to_string()).or_default() += 1;
        }
    }
    per_key
}

/// Waits until the rollups of `TENANT` sum to `total`.
async fn wait_total(env: &TestEnv, total: f64) {
    wait_until(
        Duration::from_secs(30),
        &format!("rollups summing to {total}"),
        || async {
            let sql = format!("SELECT sum(quantity) FROM usage_hourly WHERE tenant = '{TENANT}'");
            (env.scalar(&sql).await == total).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_report_runs_of_two_instances_bill_every_customer_hour_exactly_once() {
    let m = Metered::start("ha_report", split_work).await;
    let b = start_billing_with(&m.fake, m.config.clone()).await;
    let a = m.sync.billing.clone();
    wait_split(&a, &b.billing).await;
    let h1 = hour_start(now()) - 2 * 3_600;
    let h2 = h1 - 3_600;
    let customers: Vec<String> = (0..40).map(|i| format!("ha{i}")).collect();
    let mut total = 0.0;
    for (i, c) in customers.iter().enumerate() {
        let q = 1.0 + (i % 3) as f64;
        m.calls(c, h1 + 60, &[q]).await;
        m.calls(c, h2 + 60, &[2.0, 1.0]).await;
        total += q + 3.0;
    }
    wait_total(&m.env, total).await;
    let both = || async {
        let (x, y) = tokio::join!(
            billing_sync::usage::report(a.clone(), CancellationToken::new()),
            billing_sync::usage::report(b.billing.clone(), CancellationToken::new()),
        );
        (x.expect("report run of a"), y.expect("report run of b"))
    };
    let (x, y) = both().await;
    assert!(
        x.reported > 0 && y.reported > 0,
        "both instances report their share: {x:?} / {y:?}"
    );
    assert_eq!(x.reported + y.reported, 80, "{x:?} / {y:?}");
    assert_eq!(x.already_reported + y.already_reported, 0, "{x:?} / {y:?}");
    // Late usage in every customer's first hour: corrections, run twice concurrently.
    for c in &customers {
        m.calls(c, h1 + 120, &[1.0]).await;
    }
    total += customers.len() as f64;
    wait_total(&m.env, total).await;
    let (x1, y1) = both().await;
    let (x2, y2) = both().await;
    assert_eq!(
        x1.corrections + y1.corrections + x2.corrections + y2.corrections,
        40,
        "{x1:?} / {y1:?} / {x2:?} / {y2:?}"
    );
    let (x, y) = both().await;
    assert_eq!(
        (x.reported + y.reported, x.corrections + y.corrections),
        (0, 0),
        "nothing left: {x:?} / {y:?}"
    );
    // Stripe holds exactly the rollup per customer-hour.
    for c in &customers {
        for h in [h1, h2] {
            let (rollup, stripe) = (m.rollup(c, h).await, m.stripe_hour(c, h).await);
            assert_eq!(stripe, rollup, "{c} at {h}");
        }
    }
    // No identifier was sent twice (by both, or by one twice).
    let requests = meter_event_requests(&m.fake).await;
    assert_eq!(requests.len(), 120, "{requests:?}");
    let twice: Vec<_> = requests.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "identifiers sent more than once: {twice:?}"
    );
    b.running.stop().await;
    m.stop().await;
}

/// Posts one recorded (signed) webhook delivery to `sync`: (status, answer).
async fn deliver(http: &reqwest::Client, sync: &BillingSync, hook: &Request) -> (u16, Value) {
    let r = http
        .post(sync.webhook_url())
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            hook.header("stripe-signature").expect("signed"),
        )
        .body(hook.body.clone())
        .send()
        .await
        .expect("webhook delivery");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Delivers `hook` to both instances at once; both must answer 200.
async fn deliver_both(
    http: &reqwest::Client,
    a: &BillingSync,
    b: &BillingSync,
    hook: &Request,
) -> [Value; 2] {
    let ((sa, va), (sb, vb)) = tokio::join!(deliver(http, a, hook), deliver(http, b, hook));
    assert_eq!((sa, sb), (200, 200), "{va} / {vb}");
    [va, vb]
}

/// Every column of `billing_subscriptions` but the row version and `updated_at`.
const STATE_COLUMNS: &str = "tenant, customer, subscription_id, stripe_customer_id, price_id, plan, \
    status, period_start, period_end, cancel_at_period_end, created, event_time, event_id, \
    payment_failed_at, downgraded";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_webhook_delivered_to_both_instances_at_once_and_replayed_has_one_effect() {
    let env = TestEnv::new("ha_hooks").await;
    // Every row written stays visible (no background merge replaces one by another).
    env.ch()
        .query(&format!(
            "SYSTEM STOP MERGES {}.billing_subscriptions",
            env.clickhouse.database
        ))
        .execute()
        .await
        .expect("stop merges");
    let (agg, _) = env.start_aggregator().await;
    let ingest = env.start_ingest().await;
    let fake = Fake::start().await;
    let mut config = billing_config(&env, &fake);
    split_work(&mut config);
    let a = start_billing_with(&fake, config.clone()).await;
    let b = start_billing_with(&fake, config.clone()).await;
    let recorder = WebhookReceiver::start().await;
    fake.deliver_to(&recorder.url()).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let customer = "cust_ha";
    let key = env
        .key(TENANT, &[Scope::Ingest, Scope::Read], Some(customer))
        .await;
    let r = http
        .post(format!("{}/subscription/create", a.running.url))
        .bearer_auth(&key)
        .json(&json!({"plan": "starter"}))
        .send()
        .await
        .expect("checkout");
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.expect("checkout JSON");
    let url = v["url"].as_str().expect("checkout url").to_string();
    assert_eq!(http.get(&url).send().await.expect("pay").status(), 200);
    let kind = |h: &Request| h.json()["type"].as_str().unwrap_or_default().to_string();
    let first = wait_until(
        Duration::from_secs(20),
        "the checkout's webhooks",
        || async {
            let hooks = recorder.requests();
            let kinds: Vec<String> = hooks.iter().map(kind).collect();
            (kinds.iter().any(|k| k == "checkout.session.completed")
                && kinds.iter().any(|k| k == "customer.subscription.created"))
            .then_some(hooks)
        },
    )
    .await;
    let sub = first
        .iter()
        .find(|h| kind(h) == "customer.subscription.created")
        .and_then(|h| h.json()["data"]["object"]["id"].as_str().map(String::from))
        .expect("subscription id");
    // One event at a time: both instances at once, then both again (a replay).
    let mut raced = 0;
    let mut handled = 0;
    let mut run = |answers: [Value; 2]| {
        if answers.iter().all(|v| v["duplicate"].is_null()) {
            raced += 1;
        }
        answers
    };
    for hook in &first {
        run(deliver_both(&http, &a, &b, hook).await);
        handled += 1;
    }
    for hook in &first {
        let replay = deliver_both(&http, &a, &b, hook).await;
        assert!(
            replay
                .iter()
                .all(|v| v["duplicate"] == json!(true) || v["outcome"] == json!("already_applied")),
            "a replay changed something: {replay:?}"
        );
    }
    wait_until(Duration::from_secs(20), "the starter limit", || async {
        let q: Value = http
            .get(format!("{}/v1/customers/{customer}/quota", ingest.url))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (q["limit"] == json!(500)).then_some(())
    })
    .await;
    // A failed payment, an hour later on Stripe's clock: its grace period starts at the event's
    // time, whichever instance handles it.
    fake.post("/_fake/clock/advance", json!({"seconds": 3_600}))
        .await;
    fake.post(
        &format!("/_fake/subscriptions/{sub}/payment_failed"),
        json!({}),
    )
    .await;
    let later = wait_until(
        Duration::from_secs(20),
        "the payment failure's webhook",
        || async {
            let hooks: Vec<Request> = recorder.requests().into_iter().skip(first.len()).collect();
            // The fake sends the invoice's failure, then the subscription's move to past_due;
            // both must have arrived before they are handed on.
            let past_due = hooks.iter().any(|h| {
                kind(h) == "customer.subscription.updated"
                    && h.json()["data"]["object"]["status"] == json!("past_due")
            });
            (past_due && hooks.iter().any(|h| kind(h) == "invoice.payment_failed")).then_some(hooks)
        },
    )
    .await;
    let failed_at = later
        .iter()
        .find(|h| kind(h) == "invoice.payment_failed")
        .and_then(|h| h.json()["created"].as_i64())
        .expect("created");
    for hook in &later {
        run(deliver_both(&http, &a, &b, hook).await);
        handled += 1;
    }
    for hook in &later {
        deliver_both(&http, &a, &b, hook).await;
    }
    assert!(
        raced > 0,
        "no delivery reached both instances' handling at once: the test did not race them"
    );
    // One plan change per id downstream (the aggregator counts an id once).
    let ids: Vec<(String, u64)> = env
        .ch()
        .query("SELECT id, count() FROM subscription_events WHERE customer = ? GROUP BY id")
        .bind(customer)
        .fetch_all()
        .await
        .expect("plan changes");
    assert!(!ids.is_empty(), "no plan change");
    assert!(ids.iter().all(|(_, n)| *n == 1), "plan changes: {ids:?}");
    // Identical billing state: rows that describe one state are one row (same version and
    // `updated_at`), whichever instance wrote it, however often.
    let distinct = |columns: &str| {
        let sql = format!(
            "SELECT toFloat64(uniqExact({columns})) FROM billing_subscriptions WHERE customer = '{customer}'"
        );
        let env = &env;
        async move { env.scalar(&sql).await }
    };
    let states = distinct(STATE_COLUMNS).await;
    let rows = distinct(&format!("{STATE_COLUMNS}, version, updated_at")).await;
    assert!(states >= 1.0, "no subscription state");
    assert_eq!(
        rows, states,
        "one state was written as different rows by the two instances ({handled} deliveries)"
    );
    let (status, failed): (String, u32) = env
        .ch()
        .query(
            "SELECT status, toUInt32(payment_failed_at) FROM billing_subscriptions FINAL \
             WHERE subscription_id = ?",
        )
        .bind(&sub)
        .fetch_one()
        .await
        .expect("state");
    assert_eq!(
        (status.as_str(), i64::from(failed)),
        ("past_due", failed_at),
        "the grace period starts at the event's time"
    );
    b.running.stop().await;
    a.running.stop().await;
    ingest.stop().await;
    agg.stop().await;
    fake.stop().await;
}

/// Environment variables that run a billing-sync process on `port` against `m`'s resources, in the
/// work group of `m`'s config, reporting every second at `pace` Stripe calls per second.
fn billing_env(m: &Metered, port: u16, pace: u32) -> Vec<(String, String)> {
    let t = &m.env.topics;
    let c = &m.config;
    [
        ("BILLING_LISTEN", format!("127.0.0.1:{port}")),
        ("BILLING_KAFKA__BROKERS", m.env.kafka.brokers.clone()),
        ("BILLING_CLICKHOUSE__URL", m.env.clickhouse.url.clone()),
        (
            "BILLING_CLICKHOUSE__DATABASE",
            m.env.clickhouse.database.clone(),
        ),
        ("BILLING_TOPICS__EVENTS", t.events.clone()),
        ("BILLING_TOPICS__STATE", t.state.clone()),
        ("BILLING_TOPICS__ALERTS", t.alerts.clone()),
        ("BILLING_TOPICS__SUBSCRIPTIONS", t.subscriptions.clone()),
        ("BILLING_TOPICS__REJECTED", t.rejected.clone()),
        ("BILLING_TOPICS__WORK", t.work.clone()),
        ("BILLING_STRIPE__API_BASE", c.stripe.api_base.clone()),
        ("BILLING_STRIPE__SECRET_KEY", STRIPE_KEY.to_string()),
        ("BILLING_STRIPE__WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("BILLING_STRIPE__TIMEOUT_MS", "2000".to_string()),
        ("BILLING_STRIPE__BACKOFF_BASE_MS", "20".to_string()),
        ("BILLING_STRIPE__BACKOFF_MAX_MS", "200".to_string()),
        ("BILLING_STRIPE__MAX_REQUESTS_PER_SEC", pace.to_string()),
        ("BILLING_RECONCILE__ENABLED", "false".to_string()),
        ("BILLING_USAGE__ENABLED", "true".to_string()),
        ("BILLING_USAGE__INTERVAL_SECS", "1".to_string()),
        ("BILLING_USAGE__SETTLE_SECS", "0".to_string()),
        ("BILLING_USAGE__CREATE_CUSTOMERS", "true".to_string()),
        ("BILLING_USAGE__RECONCILE_ENABLED", "false".to_string()),
        ("BILLING_WORK__ENABLED", "true".to_string()),
        ("BILLING_WORK__GROUP_ID", c.work.group_id.clone()),
        (
            "BILLING_WORK__SESSION_TIMEOUT_MS",
            c.work.session_timeout_ms.to_string(),
        ),
        (
            "BILLING_WORK__TAKEOVER_DELAY_MS",
            c.work.takeover_delay_ms.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A billing-sync process; its log goes to `.data/test-logs/<test>-<name>.log`.
fn spawn_billing(m: &Metered, name: &str, port: u16, pace: u32) -> Child {
    tests::spawn_binary(
        "billing-sync",
        billing_env(m, port, pace),
        "info,rdkafka=warn,librdkafka=warn",
        "test-logs",
        &format!("{}-{name}", m.env.name),
    )
}

/// (customer, hour) → whole units the fake accepted, from meter event identifiers
/// `acme:<customer>:api_call:<hour>[:r<n>]`; and whether an identifier was accepted twice.
async fn accepted(fake: &Fake) -> (BTreeMap<(String, i64), f64>, Vec<String>) {
    let mut cells = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut twice = Vec::new();
    for e in fake.meter_events().await {
        let Some(id) = e["identifier"].as_str() else {
            continue;
        };
        if !seen.insert(id.to_string()) {
            twice.push(id.to_string());
        }
        let parts: Vec<&str> = id.split(':').collect();
        if let [_, customer, _, hour, ..] = parts.as_slice()
            && e["cancelled"].is_null()
        {
            *cells
                .entry((customer.to_string(), hour.parse().unwrap_or(0)))
                .or_default() += e["value"].as_f64().unwrap_or(0.0);
        }
    }
    (cells, twice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_one_instance_mid_run_its_partitions_go_to_the_other_and_nothing_is_lost_or_doubled()
 {
    // The in-process billing-sync of the stack stays idle (jobs off, outside the group); the two
    // processes below bill.
    let m = Metered::start("ha_kill", |c| {
        split_work(c);
        c.work.enabled = false;
    })
    .await;
    let http = reqwest::Client::new();
    let (pa, pb) = (free_port(), free_port());
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    // Slow enough (8 Stripe calls per second each) that a run lasts seconds.
    let mut a = spawn_billing(&m, "a", pa, 8);
    let mut b = spawn_billing(&m, "b", pb, 8);
    tests::wait_ready(&http, &url_a).await;
    tests::wait_ready(&http, &url_b).await;
    let partitions = m.config.work.partitions as usize;
    let share_a = wait_until(
        Duration::from_secs(45),
        "the processes splitting the work",
        || async {
            let x = owned_in_metrics(&http, &url_a).await?;
            let y = owned_in_metrics(&http, &url_b).await?;
            (!x.is_empty() && !y.is_empty() && x.len() + y.len() == partitions).then_some(x)
        },
    )
    .await;
    // Usage of 48 customers in two past hours: both processes start reporting it as it lands.
    let h1 = hour_start(now()) - 2 * 3_600;
    let h2 = h1 - 3_600;
    let customers: Vec<String> = (0..48).map(|i| format!("k{i}")).collect();
    let mut total = 0.0;
    for (i, c) in customers.iter().enumerate() {
        let q = 1.0 + (i % 4) as f64;
        m.calls(c, h1 + 60, &[q]).await;
        m.calls(c, h2 + 60, &[1.0]).await;
        total += q + 1.0;
    }
    let of_a: BTreeSet<String> = customers
        .iter()
        .filter(|c| {
            share_a.contains(&schemas::kafka::customer_partition(
                TENANT,
                c,
                partitions as i32,
            ))
        })
        .cloned()
        .collect();
    assert!(!of_a.is_empty() && of_a.len() < customers.len(), "{of_a:?}");
    let a_cells = 2 * of_a.len();
    // Kill a once it has reported part of its share, not all of it.
    let done_at_kill = wait_until(
        Duration::from_secs(60),
        "a reporting part of its share",
        || async {
            let (cells, _) = accepted(&m.fake).await;
            let done = cells.keys().filter(|(c, _)| of_a.contains(c)).count();
            (done > 0).then_some(done)
        },
    )
    .await;
    a.kill().expect("SIGKILL");
    let _ = a.wait();
    let (cells, _) = accepted(&m.fake).await;
    let done_after_kill = cells.keys().filter(|(c, _)| of_a.contains(c)).count();
    assert!(
        done_after_kill < a_cells,
        "a finished its share ({done_at_kill}..{done_after_kill} of {a_cells}) before the kill: not mid-run"
    );
    eprintln!("a killed with {done_after_kill} of its {a_cells} customer-hours in Stripe");
    // The other takes a's partitions over after a's session timeout, and its next runs report the
    // rest.
    wait_until(
        Duration::from_secs(60),
        "b owning every partition",
        || async { (owned_in_metrics(&http, &url_b).await?.len() == partitions).then_some(()) },
    )
    .await;
    let expected: BTreeMap<(String, i64), f64> = {
        let mut e = BTreeMap::new();
        for c in &customers {
            for h in [h1, h2] {
                e.insert((c.clone(), h), m.rollup(c, h).await);
            }
        }
        e
    };
    assert_eq!(
        expected.values().sum::<f64>(),
        total,
        "every rollup written"
    );
    wait_until(
        Duration::from_secs(90),
        "Stripe holding every customer-hour's rollup",
        || async {
            let (cells, _) = accepted(&m.fake).await;
            (cells == expected).then_some(())
        },
    )
    .await;
    // Nothing doubled: no identifier accepted twice, and the runs that follow send nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cells, twice) = accepted(&m.fake).await;
    assert!(twice.is_empty(), "identifiers accepted twice: {twice:?}");
    assert_eq!(cells, expected, "Stripe after more runs");
    let pending: u64 = m
        .env
        .ch()
        .query("SELECT count() FROM billing_usage_revisions FINAL WHERE state = 0")
        .fetch_one()
        .await
        .expect("pending revisions");
    assert_eq!(pending, 0, "revisions left pending");
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(b.id().to_string())
        .status();
    let _ = b.wait();
    m.stop().await;
}
