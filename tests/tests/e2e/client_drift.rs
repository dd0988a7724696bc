//! The Rust client's types cannot drift from the services': every answer of the public API,
//! fetched raw from the real services, decodes into the `client` crate's type and encodes back to
//! the very same JSON (a field added, renamed or retyped on either side fails here), and the
//! client's typed methods surface the API's error codes.

use std::time::Duration;

use client::types::*;
use client::{Client, Error, ErrorCode};
use platform::principal::Scope;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tests::billing::{Fake, billing_config, start_billing_with};
use tests::{TestEnv, wait_until};

/// `GET`/`POST` raw; returns the JSON body, asserting the status.
async fn raw(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let mut r = http.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("request");
    let s = r.status().as_u16();
    let v: Value = r.json().await.expect("json body");
    assert_eq!(s, status, "{url}: {v}");
    v
}

/// Decodes `v` as `T` and encodes it back: must be the same JSON.
fn lossless<T: DeserializeOwned + Serialize>(what: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{what} does not decode into the client's type: {e}\n{v}"));
    let back = serde_json::to_value(&t).expect("encode");
    assert_eq!(&back, v, "{what}: the client's type loses or adds fields");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_round_trips_through_the_clients_types() {
    use reqwest::Method;
    let env = TestEnv::new("client_drift").await;
    let (agg, _) = env.start_aggregator().await;
    let fake = Fake::start().await;
    let sync = start_billing_with(&fake, billing_config(&env, &fake)).await;
    let mut cfg = env.ingest_config();
    cfg.billing_url = sync.running.url.clone();
    cfg.dashboard_secret = secrecy::SecretString::from("drift-secret");
    let ingest = env.start_ingest_with(cfg).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    let key = env
        .key("acme", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let ck = env
        .key("acme", &[Scope::Read, Scope::Ingest], Some("d1"))
        .await;
    let (api, bill) = (ingest.url.as_str(), sync.running.url.as_str());
    let events: Vec<Value> = (0..5)
        .map(|i| tests::event(&format!("d-{i}"), "d1", "analyze", 1))
        .collect();
    let v = raw(
        &http,
        Method::POST,
        &format!("{api}/v1/events"),
        &key,
        Some(json!(events)),
        202,
    )
    .await;
    lossless::<Accepted>("POST /v1/events", &v);
    let c = Client::new(api, &key).expect("client");
    wait_until(Duration::from_secs(30), "usage in ClickHouse", || async {
        let u = c.usage("d1").await.ok()?;
        (u.meters[0].by_endpoint.get("analyze") == Some(&5.0)).then_some(())
    })
    .await;

    let q = format!("{api}/v1/customers/d1");
    lossless::<QuotaAnswer>(
        "quota",
        &raw(&http, Method::GET, &format!("{q}/quota"), &key, None, 200).await,
    );
    let body = json!({"track": true, "checks": [{"customer": "d1", "endpoint": "redact", "id": "chk"}, {"customer": "d2"}]});
    lossless::<CheckResponse>(
        "check",
        &raw(
            &http,
            Method::POST,
            &format!("{api}/v1/check"),
            &key,
            Some(body),
            200,
        )
        .await,
    );
    lossless::<UsageBody>(
        "usage",
        &raw(&http, Method::GET, &format!("{q}/usage"), &key, None, 200).await,
    );
    let h = raw(
        &http,
        Method::GET,
        &format!("{q}/history?granularity=hour&group_by=endpoint"),
        &key,
        None,
        200,
    )
    .await;
    let h: HistoryBody = lossless("history", &h);
    assert!(!h.points.is_empty());
    let v = raw(
        &http,
        Method::GET,
        &format!("{q}/entitlements"),
        &key,
        None,
        200,
    )
    .await;
    let ents: EntitlementsAnswer = lossless("entitlements", &v);
    let feature = ents.entitlements[0].feature.clone();
    let v = raw(
        &http,
        Method::GET,
        &format!("{q}/entitlements/{feature}"),
        &key,
        None,
        200,
    )
    .await;
    lossless::<Entitlement>("entitlement", &v);
    let missing = ents
        .entitlements
        .iter()
        .find(|e| !e.has_access)
        .map(|e| e.feature.clone())
        .expect("a feature the free plan lacks");
    let body = json!({"checks": [{"customer": "d1", "feature": missing}]});
    let v = raw(
        &http,
        Method::POST,
        &format!("{api}/v1/check"),
        &key,
        Some(body),
        200,
    )
    .await;
    let r: CheckResponse = lossless("check with a feature", &v);
    assert!(r.results[0].upgrade.is_some(), "{v}");
    let v = raw(
        &http,
        Method::POST,
        &format!("{q}/plan/migrate"),
        &key,
        Some(json!({})),
        202,
    )
    .await;
    lossless::<Migrated>("migrate a customer", &v);
    let v = raw(
        &http,
        Method::POST,
        &format!("{api}/v1/plans/free/migrate"),
        &key,
        Some(json!({"dry_run": true})),
        202,
    )
    .await;
    lossless::<PlanMigrated>("migrate a plan", &v);
    lossless::<PlansBody>(
        "plans",
        &raw(
            &http,
            Method::GET,
            &format!("{api}/v1/plans"),
            &key,
            None,
            200,
        )
        .await,
    );
    let v = raw(
        &http,
        Method::PUT,
        &format!("{q}/limits/api_call"),
        &key,
        Some(json!({"limit": 7})),
        202,
    )
    .await;
    lossless::<ChangeAccepted>("limit", &v);
    let v = raw(
        &http,
        Method::POST,
        &format!("{q}/grants"),
        &key,
        Some(json!({"quantity": 2})),
        202,
    )
    .await;
    lossless::<ChangeAccepted>("grant", &v);
    let v = raw(
        &http,
        Method::DELETE,
        &format!("{q}/limits/api_call"),
        &key,
        None,
        202,
    )
    .await;
    lossless::<ChangeAccepted>("delete limit", &v);
    let v = raw(
        &http,
        Method::POST,
        &format!("{api}/v1/customers/d3/plan"),
        &key,
        Some(json!({"plan": "starter"})),
        202,
    )
    .await;
    lossless::<ChangeAccepted>("plan", &v);
    let v = raw(
        &http,
        Method::POST,
        &format!("{q}/dashboard-link"),
        &key,
        Some(json!({})),
        201,
    )
    .await;
    lossless::<DashboardLink>("dashboard link", &v);
    lossless::<SeedUsage>(
        "GET /usage",
        &raw(&http, Method::GET, &format!("{api}/usage"), &ck, None, 200).await,
    );
    let v = raw(
        &http,
        Method::POST,
        &format!("{api}/usage/track"),
        &ck,
        Some(json!({"endpoint": "drill"})),
        200,
    )
    .await;
    lossless::<Tracked>("track", &v);
    lossless::<SeedHistory>(
        "history",
        &raw(
            &http,
            Method::GET,
            &format!("{api}/usage/history?days=3"),
            &ck,
            None,
            200,
        )
        .await,
    );
    // At the limit: the 429 body.
    c.set_limit(
        "d1",
        "api_call",
        &LimitRequest {
            limit: Some(1),
            id: None,
        },
    )
    .await
    .expect("limit 1");
    let v = raw(
        &http,
        Method::POST,
        &format!("{api}/usage/track"),
        &ck,
        Some(json!({"endpoint": "drill"})),
        429,
    )
    .await;
    lossless::<LimitReached>("track at the limit", &v);
    lossless::<ErrorBody>("error body", &json!({"error": v["error"].clone()}));

    // billing-sync: status, checkout, the fake pays, status again, preview, portal, cancel.
    let v = raw(
        &http,
        Method::GET,
        &format!("{bill}/subscription/status"),
        &ck,
        None,
        200,
    )
    .await;
    lossless::<SubscriptionStatus>("status, none", &v);
    let v = raw(
        &http,
        Method::POST,
        &format!("{bill}/subscription/create"),
        &ck,
        Some(json!({"plan": "starter"})),
        201,
    )
    .await;
    let checkout: Checkout = lossless("checkout", &v);
    let paid = http
        .get(&checkout.url)
        .send()
        .await
        .expect("pay at the fake");
    assert!(paid.status().is_success());
    let b = c.for_customer("d1").with_billing(bill);
    wait_until(Duration::from_secs(30), "the subscription", || async {
        (b.subscription_status().await.ok()?.status == "active").then_some(())
    })
    .await;
    let v = raw(
        &http,
        Method::GET,
        &format!("{bill}/subscription/status"),
        &ck,
        None,
        200,
    )
    .await;
    lossless::<SubscriptionStatus>("status, subscribed", &v);
    // Add-ons: the offer, a pack's checkout paid at the fake, then the usage answer with it.
    let v = raw(
        &http,
        Method::GET,
        &format!("{bill}/subscription/addons"),
        &ck,
        None,
        200,
    )
    .await;
    let offer: AddonList = lossless("add-ons", &v);
    assert!(
        offer
            .available
            .iter()
            .any(|a| a.key == "calls_1000" && a.purchasable),
        "{v}"
    );
    let v = raw(
        &http,
        Method::POST,
        &format!("{bill}/subscription/addons"),
        &ck,
        Some(json!({"addon": "calls_1000", "quantity": 2})),
        201,
    )
    .await;
    let pack: AddonCheckout = lossless("add-on checkout", &v);
    assert!(
        http.get(&pack.url)
            .send()
            .await
            .expect("pay the pack")
            .status()
            .is_success()
    );
    let bought = wait_until(Duration::from_secs(30), "the pack", || async {
        let l = b.addons().await.ok()?;
        (!l.bought.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(
        bought.bought[0].grant.as_ref().map(|g| g.quantity),
        Some(2_000)
    );
    let v = raw(
        &http,
        Method::GET,
        &format!("{bill}/subscription/addons"),
        &ck,
        None,
        200,
    )
    .await;
    lossless::<AddonList>("add-ons, one bought", &v);
    let v = wait_until(Duration::from_secs(30), "the pack in /usage", || async {
        let v = raw(
            &http,
            Method::GET,
            &format!("{api}/v1/customers/d1/usage"),
            &ck,
            None,
            200,
        )
        .await;
        (v["plan"]["addons"]
            .as_array()
            .is_some_and(|a| !a.is_empty()))
        .then_some(v)
    })
    .await;
    lossless::<UsageBody>("usage with an add-on", &v);
    // The admin removes it (a refund at the fake), so the limits below are the plan's again.
    let purchase = bought.bought[0].purchase.clone();
    raw(
        &http,
        Method::DELETE,
        &format!("{bill}/admin/customers/d1/addons/{purchase}"),
        &key,
        None,
        200,
    )
    .await;
    wait_until(Duration::from_secs(30), "the pack removed", || async {
        let v = raw(
            &http,
            Method::GET,
            &format!("{api}/v1/customers/d1/usage"),
            &ck,
            None,
            200,
        )
        .await;
        (v["plan"]["addons"] == json!([])).then_some(())
    })
    .await;
    let e = b
        .buy_addon("teleport", 1)
        .await
        .expect_err("unknown add-on");
    assert_eq!(e.code(), Some(&ErrorCode::UnknownAddon), "{e}");
    let v = raw(
        &http,
        Method::GET,
        &format!("{bill}/v1/customers/d1/invoice-preview"),
        &ck,
        None,
        200,
    )
    .await;
    let preview: InvoicePreview = lossless("invoice preview", &v);
    assert!(preview.upcoming && !preview.lines.is_empty(), "{v}");
    lossless::<Portal>(
        "portal",
        &raw(
            &http,
            Method::GET,
            &format!("{bill}/subscription/portal"),
            &ck,
            None,
            200,
        )
        .await,
    );
    let v = raw(
        &http,
        Method::POST,
        &format!("{bill}/subscription/cancel"),
        &ck,
        Some(json!({})),
        200,
    )
    .await;
    lossless::<Cancelled>("cancel", &v);

    // The typed methods: codes, not statuses.
    let e = b
        .create_checkout("starter")
        .await
        .expect_err("a second checkout");
    assert_eq!(e.code(), Some(&ErrorCode::SubscriptionExists), "{e}");
    let e = c
        .quota("d1", Some("no_meter"), None)
        .await
        .expect_err("unknown meter");
    assert_eq!(e.code(), Some(&ErrorCode::UnknownMeter), "{e}");
    let e = c.send_events(&[]).await.expect_err("empty");
    assert_eq!(e.code(), Some(&ErrorCode::EmptyBatch), "{e}");
    let bad = IncomingEvent {
        specversion: None,
        id: "x".into(),
        meter: "api_call".into(),
        subject: String::new(),
        source: None,
        time: None,
        data: None,
        tenant: Some("globex".into()),
    };
    match c.send_events(std::slice::from_ref(&bad)).await {
        Err(Error::Api {
            status: 403,
            code: ErrorCode::Forbidden,
            detail,
            ..
        }) => {
            let fields: Vec<&str> = detail.details.iter().map(|d| d.field.as_str()).collect();
            assert_eq!(fields, ["subject", "tenant"], "every bad field");
        }
        other => panic!("expected forbidden (another tenant), got {other:?}"),
    }
    let bad = IncomingEvent {
        tenant: None,
        ..bad
    };
    match c.send_events(&[bad]).await {
        Err(Error::Api {
            status: 400,
            code: ErrorCode::InvalidEvents,
            detail,
            ..
        }) => {
            assert_eq!(detail.details[0].field, "subject");
            assert!(detail.request_id.is_some());
        }
        other => panic!("expected invalid_events, got {other:?}"),
    }
    let e = Client::new(api, "mk_nope")
        .expect("client")
        .usage("d1")
        .await
        .expect_err("bad key");
    assert_eq!(e.code(), Some(&ErrorCode::InvalidApiKey));
    assert!(!e.is_retryable());
    let e = Client::new(api, &ck)
        .expect("client")
        .usage("d2")
        .await
        .expect_err("other customer");
    assert_eq!(e.code(), Some(&ErrorCode::CustomerForbidden));
    let e = b
        .track(&TrackRequest {
            endpoint: "drill".into(),
            ..TrackRequest::default()
        })
        .await
        .expect_err("limit");
    assert_eq!(e.code(), Some(&ErrorCode::LimitReached));
    let e = Client::new(
        format!("http://127.0.0.1:{}", tests::servers::free_port()),
        &key,
    )
    .expect("client")
    .plans()
    .await
    .expect_err("nothing listens");
    assert!(
        matches!(e, Error::Transport(_)) && e.is_unavailable(),
        "{e}"
    );
    assert!(matches!(Client::new("ftp://x", "k"), Err(Error::Config(_))));

    ingest.stop().await;
    sync.running.stop().await;
    agg.stop().await;
    fake.stop().await;
}
