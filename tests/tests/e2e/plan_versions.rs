//! Plan versions end to end: a catalog change makes a new version; existing subscribers keep
//! theirs (limits, features) across restarts of the ingest and the aggregator, new subscribers
//! get the new one, a status change keeps it, an admin migrates one customer or a whole plan
//! (once under retries), and every step is a `plan_version` event in the log and in ClickHouse.

use std::path::PathBuf;
use std::time::Duration;

use platform::principal::Scope;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::{Running, TestEnv, wait_until};

use crate::entitlements::{entitlements, feature, get, post};

const ALL: &[Scope] = &[Scope::Ingest, Scope::Read, Scope::Admin];

/// The built-in catalog with Starter at $39, 800 calls and analytics: its second version.
fn catalog_v2(env: &TestEnv) -> PathBuf {
    let text = schemas::catalog::DEFAULT_CATALOG_TOML
        .replacen("api_call = 500", "api_call = 800", 1)
        .replacen("price_cents = 2900", "price_cents = 3900", 1)
        .replacen(
            "\"advanced_analysis\", \"custom_reports\"]",
            "\"advanced_analysis\", \"custom_reports\", \"analytics\"]",
            1,
        );
    assert_ne!(text, schemas::catalog::DEFAULT_CATALOG_TOML);
    let path = std::env::temp_dir().join(format!("{}-catalog-v2.toml", env.name));
    std::fs::write(&path, text).expect("write catalog");
    path
}

async fn start(env: &TestEnv, catalog: Option<&PathBuf>) -> (Running, Running) {
    let mut acfg = env.aggregator_config();
    acfg.catalog = catalog.cloned();
    let (agg, _) = env.start_aggregator_with(acfg).await;
    let mut icfg = env.ingest_config();
    icfg.catalog = catalog.cloned();
    let ingest = env.start_ingest_with(icfg).await;
    tests::wait_ready(&reqwest::Client::new(), &ingest.url).await;
    (agg, ingest)
}

/// Waits until ClickHouse holds `n` subscription events of kind `kind`.
async fn stored(env: &TestEnv, kind: &str, n: f64) {
    let sql = format!("SELECT toFloat64(count()) FROM subscription_events WHERE kind = '{kind}'");
    wait_until(
        Duration::from_secs(20),
        "subscription events stored",
        || async { (env.scalar(&sql).await >= n).then_some(()) },
    )
    .await;
}

async fn set_plan(http: &reqwest::Client, ingest: &Running, key: &str, c: &str, body: Value) {
    let url = format!("{}/v1/customers/{c}/plan", ingest.url);
    let (s, v) = post(http, &url, key, body).await;
    assert_eq!(s, 202, "{v}");
}

async fn limit(http: &reqwest::Client, ingest: &Running, key: &str, c: &str) -> Value {
    let url = format!("{}/v1/customers/{c}/quota", ingest.url);
    let (s, v) = get(http, &url, key).await;
    assert_eq!(s, 200, "{v}");
    v["limit"].clone()
}

/// The plan price in the customer's usage answer (its version's, and its projection's cost).
async fn price(http: &reqwest::Client, ingest: &Running, key: &str, c: &str) -> Value {
    let url = format!("{}/v1/customers/{c}/usage", ingest.url);
    let (s, v) = get(http, &url, key).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["meters"][0]["projection"]["projected_cost_cents"], v["plan"]["price_cents"],
        "{v}"
    );
    v["plan"]["price_cents"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_keep_their_version_new_ones_get_the_new_one_until_an_admin_migrates() {
    let env = TestEnv::new("versions").await;
    let http = reqwest::Client::new();
    let key = env.key("acme", ALL, None).await;
    let (agg, ingest) = start(&env, None).await;
    set_plan(&http, &ingest, &key, "old", json!({"plan": "starter"})).await;
    let v1 = entitlements(&http, &ingest, &key, "old").await;
    let version1 = v1["plan_version"].as_str().expect("version").to_string();
    assert_eq!(v1["current_version"], version1.as_str());
    assert_eq!(feature(&v1, "analytics")["has_access"], false);
    stored(&env, "plan_version", 1.0).await;
    ingest.stop().await;
    agg.stop().await;

    // The catalog changes: Starter's second version.
    let v2_path = catalog_v2(&env);
    let (agg, ingest) = start(&env, Some(&v2_path)).await;
    let e = entitlements(&http, &ingest, &key, "old").await;
    assert_eq!(
        e["plan_version"],
        version1.as_str(),
        "rebuilt from the log: {e}"
    );
    let version2 = e["current_version"].as_str().expect("current").to_string();
    assert_ne!(version2, version1);
    // The public plan list shows the current version (what a new subscriber gets).
    let plans: Value = http
        .get(format!("{}/v1/plans", ingest.url))
        .send()
        .await
        .expect("plans")
        .json()
        .await
        .expect("json");
    let starter = plans["plans"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["key"] == "starter"))
        .cloned()
        .expect("starter");
    assert_eq!(starter["version"], version2.as_str(), "{starter}");
    assert_eq!(starter["on_limit"], "block", "{starter}");
    assert_eq!(feature(&e, "analytics")["has_access"], false, "{e}");
    assert_eq!(limit(&http, &ingest, &key, "old").await, json!(500));
    assert_eq!(
        price(&http, &ingest, &key, "old").await,
        json!(2900),
        "its price too"
    );

    // A new subscriber gets the new version.
    set_plan(&http, &ingest, &key, "new", json!({"plan": "starter"})).await;
    let e = entitlements(&http, &ingest, &key, "new").await;
    assert_eq!(e["plan_version"], version2.as_str(), "{e}");
    assert_eq!(feature(&e, "analytics")["has_access"], true);
    assert_eq!(limit(&http, &ingest, &key, "new").await, json!(800));
    assert_eq!(price(&http, &ingest, &key, "new").await, json!(3900));

    // A status change of the same plan keeps the old version.
    set_plan(
        &http,
        &ingest,
        &key,
        "old",
        json!({"plan": "starter", "status": "past_due"}),
    )
    .await;
    let e = entitlements(&http, &ingest, &key, "old").await;
    assert_eq!(
        (e["plan_version"].clone(), e["status"].clone()),
        (json!(version1), json!("past_due"))
    );

    // The admin migrates it: the new terms at once; a second call changes nothing.
    let migrate = format!("{}/v1/customers/old/plan/migrate", ingest.url);
    let (s, m) = post(&http, &migrate, &key, json!({})).await;
    assert_eq!(s, 202, "{m}");
    assert_eq!(
        (
            m["from_version"].clone(),
            m["to_version"].clone(),
            m["migrated"].clone()
        ),
        (json!(version1), json!(version2), json!(true)),
        "{m}"
    );
    assert_eq!(m["quota"][0]["limit"], json!(800));
    assert_eq!(limit(&http, &ingest, &key, "old").await, json!(800));
    assert_eq!(price(&http, &ingest, &key, "old").await, json!(3900));
    let r = http
        .post(&migrate)
        .bearer_auth(&key)
        .send()
        .await
        .expect("again");
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.expect("json");
    assert_eq!(again["migrated"], false, "{again}");
    assert!(again.get("event_id").is_none());

    // The history is in the log: two plan_version events for `old`, the versions in the bodies.
    stored(&env, "plan_version", 3.0).await;
    let sql = format!(
        "SELECT toFloat64(count()) FROM subscription_events WHERE customer = 'old' \
         AND kind = 'plan_version' AND (position(body, '{version1}') > 0 OR position(body, '{version2}') > 0)"
    );
    assert_eq!(env.scalar(&sql).await, 2.0);

    // Rebuilt from the log once more: the migration holds.
    ingest.stop().await;
    agg.stop().await;
    let (agg, ingest) = start(&env, Some(&v2_path)).await;
    let e = entitlements(&http, &ingest, &key, "old").await;
    assert_eq!(e["plan_version"], version2.as_str(), "{e}");
    assert_eq!(feature(&e, "analytics")["has_access"], true);
    ingest.stop().await;
    agg.stop().await;
    let _ = std::fs::remove_file(v2_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrating_a_plan_moves_every_subscriber_of_the_tenant_once() {
    let env = TestEnv::new("versions_all").await;
    let http = reqwest::Client::new();
    let key = env.key("acme", ALL, None).await;
    let other = env.key("globex", ALL, None).await;
    let scoped = env.key("acme", ALL, Some("s1")).await;
    let reader = env.key("acme", &[Scope::Read], None).await;
    let (agg, ingest) = start(&env, None).await;
    for c in ["s1", "s2", "s3"] {
        set_plan(&http, &ingest, &key, c, json!({"plan": "starter"})).await;
    }
    set_plan(&http, &ingest, &key, "p1", json!({"plan": "professional"})).await;
    set_plan(&http, &ingest, &other, "g1", json!({"plan": "starter"})).await;
    stored(&env, "plan_version", 5.0).await;
    ingest.stop().await;
    agg.stop().await;

    let v2_path = catalog_v2(&env);
    let (agg, ingest) = start(&env, Some(&v2_path)).await;
    let url = format!("{}/v1/plans/starter/migrate", ingest.url);
    let (s, dry) = post(&http, &url, &key, json!({"dry_run": true})).await;
    assert_eq!(s, 202, "{dry}");
    let names = |v: &Value| -> Vec<String> {
        v["migrated"]
            .as_array()
            .expect("migrated")
            .iter()
            .map(|m| m["customer"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&dry), ["s1", "s2", "s3"], "{dry}");
    assert_eq!(
        limit(&http, &ingest, &key, "s1").await,
        json!(500),
        "a dry run moves nobody"
    );

    let (s, done) = post(&http, &url, &key, json!({})).await;
    assert_eq!(s, 202, "{done}");
    assert_eq!(names(&done), ["s1", "s2", "s3"]);
    assert_eq!(done["unchanged"], 0);
    for c in ["s1", "s2", "s3"] {
        assert_eq!(limit(&http, &ingest, &key, c).await, json!(800), "{c}");
    }
    assert_eq!(limit(&http, &ingest, &key, "p1").await, json!(5000));
    assert_eq!(
        limit(&http, &ingest, &other, "g1").await,
        json!(500),
        "another tenant's"
    );

    let (s, again) = post(&http, &url, &key, json!({})).await;
    assert_eq!(s, 202);
    assert_eq!(
        (names(&again).len(), again["unchanged"].clone()),
        (0, json!(3)),
        "{again}"
    );

    // Bad input and the auth rules.
    let (s, v) = post(
        &http,
        &format!("{}/v1/plans/gold/migrate", ingest.url),
        &key,
        json!({}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("unknown_plan"))
    );
    let (s, v) = post(&http, &url, &key, json!({"dry": true})).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_request"))
    );
    let (s, v) = post(&http, &url, &scoped, json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("customer_forbidden"))
    );
    let (s, v) = post(&http, &url, &reader, json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("insufficient_scope"))
    );
    let one = format!("{}/v1/customers/s2/plan/migrate", ingest.url);
    let (s, v) = post(&http, &one, &scoped, json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("customer_forbidden"))
    );

    // Each migration is one event in the log, 3 more plan_version events in all.
    stored(&env, "plan_version", 8.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sql = "SELECT toFloat64(count()) FROM subscription_events WHERE kind = 'plan_version'";
    assert_eq!(env.scalar(sql).await, 8.0);
    ingest.stop().await;
    agg.stop().await;
    let _ = std::fs::remove_file(v2_path);
}

/// A customer that subscribes through Stripe Checkout (billing-sync) is pinned to the plan's
/// current version like one set by the admin route: the log holds a `plan_version` event after the
/// plan change, so folding it under a later catalog (Starter at 800 calls and analytics) still
/// gives the customer 500 calls and no analytics, while a customer of that catalog gets 800.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_subscriber_is_pinned_to_the_version_it_bought() {
    let m = tests::metered::Metered::start("versions_stripe", |_| {}).await;
    let key = m
        .env
        .key(
            tests::metered::TENANT,
            &[Scope::Read, Scope::Ingest],
            Some("sam"),
        )
        .await;
    tests::shop::subscribe(&m, &key, "starter", "starter").await;
    let customers = [(tests::metered::TENANT.to_string(), "sam".to_string())];
    let old = schemas::Catalog::default();
    let pinned = wait_until(Duration::from_secs(20), "the pin stored", || async {
        let mut states = schemas::quota_store::plans(&m.env.ch(), &old, Some(&customers))
            .await
            .expect("plans");
        let s = states.remove(&customers[0]).expect("sam");
        s.terms.is_some().then_some(s)
    })
    .await;
    let starter = old.plan("starter").expect("starter").terms();
    assert_eq!(pinned.terms.as_deref(), Some(&**starter), "{pinned:?}");
    let kinds: Vec<(String, String)> = m
        .env
        .ch()
        .query(
            "SELECT kind, id FROM subscription_events WHERE customer = 'sam' ORDER BY kafka_offset",
        )
        .fetch_all()
        .await
        .expect("events");
    let plan_at = kinds
        .iter()
        .position(|(k, _)| k == "plan")
        .expect("a plan event");
    let (kind, id) = &kinds[plan_at + 1];
    assert_eq!(kind, "plan_version", "{kinds:?}");
    assert_eq!(*id, format!("{}:version", kinds[plan_at].1), "{kinds:?}");

    // The catalog moves on: the log still gives sam the version it bought.
    let text = std::fs::read_to_string(catalog_v2(&m.env)).expect("v2");
    let new = schemas::Catalog::from_toml(&text).expect("v2 catalog");
    let mut states = schemas::quota_store::plans(&m.env.ch(), &new, Some(&customers))
        .await
        .expect("plans");
    let s = states.remove(&customers[0]).expect("sam");
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(s.limit(&new, "api_call", now), Some(500));
    assert!(!s.terms(&new, now).expect("terms").has_feature("analytics"));
    let fresh = schemas::quota::PlanState {
        plan: "starter".into(),
        ..schemas::quota::PlanState::initial("acme", "new", &new)
    };
    assert_eq!(fresh.limit(&new, "api_call", now), Some(800));
    m.stop().await;
}

/// Waits until the ingest answers `customer`'s quota (its key known there) with `limit`.
async fn limit_becomes(m: &tests::metered::Metered, key: &str, customer: &str, limit: u64) {
    let url = format!(
        "{}/v1/customers/{customer}/quota?meter=api_call",
        m.ingest_url()
    );
    wait_until(
        Duration::from_secs(20),
        &format!("{customer} on {limit}"),
        || async {
            let (s, v) = tests::shop::call(&m.http, Method::GET, &url, key, None).await;
            (s == 200 && v["limit"] == json!(limit)).then_some(())
        },
    )
    .await;
}

/// An admin migration through billing-sync moves a Stripe subscriber to the plan's current
/// version: the subscription's plan item to the new Stripe price and the quota to the new terms,
/// once; new subscribers buy the new price and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_migration_moves_a_stripe_subscriber_to_the_new_price_and_terms() {
    use tests::metered::TENANT;
    use tests::shop::{call, quota, stripe_get, subscribe};
    let mut m = tests::metered::Metered::start("versions_migrate", |_| {}).await;
    let mia = m
        .env
        .key(TENANT, &[Scope::Read, Scope::Ingest], Some("mia"))
        .await;
    let first = subscribe(&m, &mia, "starter", "starter").await;
    let sub_id = first["subscription_id"].as_str().expect("sub").to_string();
    limit_becomes(&m, &mia, "mia", 500).await;
    let v1 = schemas::Catalog::default()
        .plan("starter")
        .expect("starter")
        .terms()
        .version
        .clone();

    // Starter's second version ($39, 800 calls, analytics) and its Stripe price.
    let r = m
        .http
        .post(format!("{}/v1/prices", m.fake.url))
        .bearer_auth(tests::billing::STRIPE_KEY)
        .form(&[
            ("product", "prod_starter"),
            ("unit_amount", "3900"),
            ("currency", "usd"),
            ("recurring[interval]", "month"),
        ])
        .send()
        .await
        .expect("create price");
    assert_eq!(r.status(), 200);
    let new_price = r.json::<Value>().await.expect("price")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let v2_path = catalog_v2(&m.env);
    let v2 = schemas::Catalog::load(Some(&v2_path))
        .expect("v2")
        .plan("starter")
        .expect("starter")
        .terms()
        .version
        .clone();
    m.config.catalog = Some(v2_path);
    m.config
        .stripe
        .prices
        .insert("starter".into(), new_price.clone());
    m.restart_billing().await;
    let sync = m.sync.running.url.clone();
    assert_eq!(
        quota(&m, &mia, "mia").await["limit"],
        json!(500),
        "mia keeps her version"
    );

    let url = format!("{sync}/admin/customers/mia/plan/migrate");
    let (s, v) = call(&m.http, Method::POST, &url, &m.admin, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["from_version"],
            &v["to_version"],
            &v["migrated"],
            &v["price_moved"]
        ),
        (&json!(v1), &json!(v2), &json!(true), &json!(true)),
        "{v}"
    );
    let sub = stripe_get(&m, &format!("subscriptions/{sub_id}")).await;
    let prices: Vec<&str> = sub["items"]["data"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["price"]["id"].as_str())
        .collect();
    assert!(
        prices.contains(&new_price.as_str()) && !prices.contains(&"price_starter"),
        "{sub}"
    );
    limit_becomes(&m, &mia, "mia", 800).await;
    let (s, again) = call(&m.http, Method::POST, &url, &m.admin, None).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        (&again["migrated"], &again["price_moved"]),
        (&json!(false), &json!(false)),
        "{again}"
    );
    let (_, status) = call(
        &m.http,
        Method::GET,
        &format!("{sync}/subscription/status"),
        &mia,
        None,
    )
    .await;
    assert_eq!(status["subscribed_plan"], "starter", "{status}");

    // A new subscriber buys the new price and version; a customer without a subscription is 404.
    let neo = m
        .env
        .key(TENANT, &[Scope::Read, Scope::Ingest], Some("neo"))
        .await;
    let s2 = subscribe(&m, &neo, "starter", "starter").await;
    let sub2 = stripe_get(
        &m,
        &format!(
            "subscriptions/{}",
            s2["subscription_id"].as_str().expect("sub")
        ),
    )
    .await;
    assert_eq!(
        sub2["items"]["data"][0]["price"]["id"],
        new_price.as_str(),
        "{sub2}"
    );
    limit_becomes(&m, &neo, "neo", 800).await;
    let (s, none) = call(
        &m.http,
        Method::POST,
        &format!("{sync}/admin/customers/nobody/plan/migrate"),
        &m.admin,
        None,
    )
    .await;
    assert_eq!(
        (s.as_u16(), &none["error"]["code"]),
        (404, &json!("no_subscription")),
        "{none}"
    );
    m.stop().await;
}
