//! Plans as products, money side (issue 20, parts 2 and 3), on the real broker and ClickHouse and
//! the Stripe fake over HTTP: a plan that lets usage run over its limit with graduated tiers is
//! not blocked, and its cost on `/usage`, Stripe's invoice preview and the invoice the fake
//! creates at the period end agree to the cent; an enterprise contract (its own Stripe price,
//! limits and features, a time span) sets the quota and the entitlements, is what checkout sells
//! and the invoice bills, and ends; bad contracts get precise 400s.

use std::time::Duration;

use platform::principal::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::shop::{call, quota, stripe_get, subscribe};
use tests::wait_until;

/// The built-in catalog with Starter at 10 calls, running over into graduated tiers: 10 included,
/// 11-20 at 25 ¢, then 10 ¢ each plus a 100 ¢ flat amount on reaching the third tier.
pub(crate) fn overage_catalog() -> String {
    let starter = "config = { support = \"priority\" }\n[plans.limits]\napi_call = 500\n";
    let text = schemas::catalog::DEFAULT_CATALOG_TOML;
    assert!(
        text.contains(starter),
        "the built-in catalog's Starter block moved"
    );
    text.replacen(
        starter,
        "config = { support = \"priority\" }\non_limit = \"overage\"\n[plans.limits]\napi_call = 10\n\
         [plans.usage_prices.api_call]\nmode = \"graduated\"\n\
         tiers = [{ up_to = 10, unit_cents = 0 }, { up_to = 20, unit_cents = 25 }, \
         { unit_cents = 10, flat_cents = 100 }]\n\
         stripe_price_env = \"STRIPE_USAGE_PRICE_ID_STARTER\"\n",
        1,
    )
}

fn item_prices(sub: &Value) -> Vec<String> {
    sub["items"]["data"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["price"]["id"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overage_with_graduated_tiers_passes_and_usage_preview_and_invoice_agree_to_the_cent() {
    let catalog = overage_catalog();
    let m = Metered::start_with_catalog("pricing_overage", Some(&catalog), |_| {}).await;
    let ada = m
        .env
        .key(TENANT, &[Scope::Read, Scope::Ingest], Some("ada"))
        .await;

    // Ada subscribed two hours ago (the fake's clock goes back for the checkout), so the usage
    // below falls in her current period.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": -7_200}))
        .await;
    let status = subscribe(&m, &ada, "starter", "starter").await;
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 7_200}))
        .await;
    let sub_id = status["subscription_id"]
        .as_str()
        .expect("sub id")
        .to_string();
    let sub = stripe_get(&m, &format!("subscriptions/{sub_id}")).await;
    assert_eq!(
        item_prices(&sub),
        ["price_starter", "price_starter_api_call_usage"],
        "checkout adds the plan's own tiered usage price, not the shared one"
    );

    // 27 calls an hour ago: 17 over the limit of 10.
    let hour = hour_start(now()) - 3_600;
    m.calls("ada", hour + 60, &[5.0, 5.0, 5.0, 5.0, 5.0, 2.0])
        .await;
    m.wait_rollup("ada", hour, 27.0).await;
    let q = wait_until(
        Duration::from_secs(20),
        "the quota view sees 27",
        || async {
            let q = quota(&m, &ada, "ada").await;
            (q["used"] == json!(27.0) && q["plan"] == "starter").then_some(q)
        },
    )
    .await;
    assert_eq!(
        q["allowed"],
        json!(true),
        "an overage plan is not blocked: {q}"
    );
    assert!(q.get("reason").is_none(), "{q}");
    assert_eq!(q["overage"], json!(18.0), "27 used + this call - 10: {q}");
    assert_eq!(q["limit"], json!(10));

    // The cost so far: $29.00 + 10 × 25 ¢ + (100 ¢ + 7 × 10 ¢) = $33.20.
    let (s, usage) = call(
        &m.http,
        Method::GET,
        &format!("{}/v1/customers/ada/usage", m.ingest_url()),
        &ada,
        None,
    )
    .await;
    assert_eq!(s, 200, "{usage}");
    assert_eq!(usage["plan"]["on_limit"], "overage", "{usage}");
    assert_eq!(usage["plan"]["cost_to_date_cents"], json!(3_320), "{usage}");
    assert_eq!(
        usage["meters"][0]["projection"]["usage_cost_cents"],
        json!(420)
    );

    // Reported to the meter, Stripe's preview bills the same amounts.
    let summary = m.report().await;
    assert_eq!(summary.reported, 1, "{summary:?}");
    let (s, preview) = call(
        &m.http,
        Method::GET,
        &format!("{}/v1/customers/ada/invoice-preview", m.sync.running.url),
        &ada,
        None,
    )
    .await;
    assert_eq!(s, 200, "{preview}");
    let usage_line = preview["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["kind"] == "usage")
        .cloned()
        .unwrap_or_else(|| panic!("no usage line: {preview}"));
    assert_eq!(
        (
            &usage_line["meter"],
            &usage_line["quantity"],
            &usage_line["amount"]
        ),
        (&json!("api_call"), &json!(27), &json!(420)),
        "{preview}"
    );
    assert_eq!(
        preview["total"], usage["plan"]["cost_to_date_cents"],
        "{preview}"
    );

    // The period ends: the invoice the fake creates is the same to the cent.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 31 * 86_400}))
        .await;
    let renewed = stripe_get(&m, &format!("subscriptions/{sub_id}")).await;
    let invoice_id = renewed["latest_invoice"].as_str().expect("renewal invoice");
    let cycle = stripe_get(&m, &format!("invoices/{invoice_id}")).await;
    assert_eq!(cycle["billing_reason"], "subscription_cycle", "{cycle}");
    assert_eq!(cycle["total"], json!(3_320), "{cycle}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contract_sets_price_limits_and_features_is_sold_by_checkout_and_ends() {
    let m = Metered::start("pricing_contract", |_| {}).await;
    let bob = m
        .env
        .key(TENANT, &[Scope::Read, Scope::Ingest], Some("bob"))
        .await;
    let sync = m.sync.running.url.clone();
    let url = format!("{sync}/admin/customers/bob/contract");
    let put = |body: Value| {
        let (http, url, admin) = (m.http.clone(), url.clone(), m.admin.clone());
        async move { call(&http, Method::PUT, &url, &admin, Some(body)).await }
    };
    let start = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let start_text = start
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let good = json!({
        "id": "ct_bob_2027", "plan": "enterprise", "price_cents": 120_000,
        "limits": {"api_call": 50}, "features": ["basic_threat_analysis", "analytics"],
        "config": {"support": "dedicated"}, "starts_at": start_text,
    });

    // Bad contracts: each refused with its code and field, nothing produced.
    let bad_cases = [
        (
            json!({"features": ["analytics", "teleportation"]}),
            "unknown_feature",
            "features[1]",
        ),
        (json!({"plan": "platinum"}), "unknown_plan", "plan"),
        (
            json!({"stripe_price": "price_x"}),
            "invalid_request",
            "price_cents",
        ),
        (
            json!({"limits": {"tokens": 5}}),
            "unknown_meter",
            "limits.tokens",
        ),
        (
            json!({"usage_prices": {"api_call": {"mode": "graduated", "tiers": [
                {"up_to": 100, "unit_cents": 0}, {"up_to": 50, "unit_cents": 2}, {"unit_cents": 1}]}},
                "stripe_usage_prices": {"api_call": "price_api_call_usage"}}),
            "tiers_out_of_order",
            "usage_prices.api_call.tiers",
        ),
        (
            json!({"ends_at": "2020-01-01T00:00:00Z"}),
            "invalid_request",
            "ends_at",
        ),
    ];
    for (patch, code, field) in bad_cases {
        let mut body = good.clone();
        for (k, v) in patch.as_object().expect("patch") {
            body[k] = v.clone();
        }
        let (s, v) = put(body).await;
        assert_eq!(s, 400, "{patch}: {v}");
        assert_eq!(v["error"]["code"], code, "{patch}: {v}");
        assert_eq!(v["error"]["details"][0]["field"], field, "{patch}: {v}");
    }
    let (s, v) = call(&m.http, Method::PUT, &url, &bob, Some(good.clone())).await;
    assert_eq!(s, 403, "a customer key cannot set contracts: {v}");

    // The contract: a Stripe price made for it, and the quota and features follow at once.
    let (s, contract) = put(good.clone()).await;
    assert_eq!(s, 200, "{contract}");
    let price = contract["stripe_price"]
        .as_str()
        .expect("price")
        .to_string();
    assert!(price.starts_with("price_"), "{contract}");
    let stripe_price = stripe_get(&m, &format!("prices/{price}")).await;
    assert_eq!(
        stripe_price["unit_amount"],
        json!(120_000),
        "{stripe_price}"
    );
    assert_eq!(stripe_price["metadata"]["contract"], "ct_bob_2027");
    let q = wait_until(Duration::from_secs(20), "the contract's limit", || async {
        let q = quota(&m, &bob, "bob").await;
        (q["limit"] == json!(50)).then_some(q)
    })
    .await;
    assert_eq!(q["plan"], "enterprise", "{q}");
    let ent = |feature: &'static str| {
        let (http, url, bob) = (
            m.http.clone(),
            format!("{}/v1/customers/bob/entitlements/{feature}", m.ingest_url()),
            bob.clone(),
        );
        async move { call(&http, Method::GET, &url, &bob, None).await.1 }
    };
    assert_eq!(ent("analytics").await["has_access"], json!(true));
    assert_eq!(
        ent("advanced_analysis").await["has_access"],
        json!(false),
        "the contract's features, not Enterprise's"
    );

    // Another contract overlapping it is refused; a later one is accepted.
    let mut overlapping = good.clone();
    overlapping["id"] = json!("ct_other");
    let (s, v) = put(overlapping.clone()).await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (400, &json!("overlapping_contract")),
        "{v}"
    );

    // /usage shows it, at its price.
    let (_, usage) = call(
        &m.http,
        Method::GET,
        &format!("{}/v1/customers/bob/usage", m.ingest_url()),
        &bob,
        None,
    )
    .await;
    assert_eq!(usage["plan"]["contract"]["id"], "ct_bob_2027", "{usage}");
    assert_eq!(usage["plan"]["price_cents"], json!(120_000), "{usage}");

    // Checkout sells the contract, not the catalog's Enterprise price; another plan is refused.
    let (s, v) = call(
        &m.http,
        Method::POST,
        &format!("{sync}/subscription/create"),
        &bob,
        Some(json!({"plan": "starter"})),
    )
    .await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (409, &json!("contract_in_effect")),
        "{v}"
    );
    let status = subscribe(&m, &bob, "contract", "enterprise").await;
    let sub_id = status["subscription_id"].as_str().expect("sub").to_string();
    let sub = stripe_get(&m, &format!("subscriptions/{sub_id}")).await;
    assert_eq!(item_prices(&sub)[0], price, "{sub}");
    assert_eq!(sub["metadata"]["contract"], "ct_bob_2027");
    let (s, preview) = call(
        &m.http,
        Method::GET,
        &format!("{sync}/v1/customers/bob/invoice-preview"),
        &bob,
        None,
    )
    .await;
    assert_eq!(s, 200, "{preview}");
    assert_eq!(preview["total"], json!(120_000), "{preview}");
    assert_eq!(
        preview["lines"][0]["kind"], "plan",
        "the contract's line: {preview}"
    );
    assert_eq!(preview["lines"][0]["plan"], "enterprise", "{preview}");

    // Ended: the plan's terms again (Enterprise: unlimited, every feature).
    let (s, ended) = call(
        &m.http,
        Method::DELETE,
        &format!("{sync}/admin/customers/bob/contracts/ct_bob_2027"),
        &m.admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{ended}");
    assert_eq!(ended["in_effect"], json!(false), "{ended}");
    wait_until(
        Duration::from_secs(20),
        "the plan's limit again",
        || async {
            let q = quota(&m, &bob, "bob").await;
            q["limit"].is_null().then_some(())
        },
    )
    .await;
    assert_eq!(ent("advanced_analysis").await["has_access"], json!(true));
    let (s, v) = call(
        &m.http,
        Method::DELETE,
        &format!("{sync}/admin/customers/bob/contracts/nope"),
        &m.admin,
        None,
    )
    .await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (404, &json!("contract_not_found")),
        "{v}"
    );
    let (_, list) = call(
        &m.http,
        Method::GET,
        &format!("{sync}/admin/customers/bob/contracts"),
        &m.admin,
        None,
    )
    .await;
    assert_eq!(
        list["contracts"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_sync_refuses_to_start_when_a_stripe_price_differs_from_the_catalog() {
    let env = tests::TestEnv::new("pricing_check").await;
    // The fake's prices are made from the catalog with Starter's tiers; billing-sync's catalog
    // has 30 ¢ instead of 25 ¢ in the second tier.
    let text = overage_catalog();
    let fake = tests::billing::Fake::start_with_catalog(
        &schemas::Catalog::from_toml(&text).expect("catalog"),
    )
    .await;
    let other = text.replacen(
        "{ up_to = 20, unit_cents = 25 }",
        "{ up_to = 20, unit_cents = 30 }",
        1,
    );
    assert_ne!(other, text);
    let path = std::env::temp_dir().join(format!("catalog_{}.toml", env.name));
    std::fs::write(&path, &other).expect("write");
    let price = |env_name: &str| {
        fake.prices
            .iter()
            .find(|(n, _)| n == env_name)
            .map(|(_, p)| p.clone())
            .expect("seeded price")
    };
    let mut config = tests::billing::billing_config(&env, &fake);
    config.catalog = Some(path.clone());
    config.stripe.usage_prices.insert(
        "starter".into(),
        [(
            "api_call".to_string(),
            price("STRIPE_USAGE_PRICE_ID_STARTER"),
        )]
        .into(),
    );
    // And the one-time pack is configured with the monthly add-on's price.
    config.stripe.addon_prices.insert(
        "calls_1000".into(),
        price("STRIPE_PRICE_ID_ADDON_ANALYTICS"),
    );
    let e = billing_sync::App::build(config.clone())
        .await
        .expect_err("refused to start")
        .to_string();
    assert!(
        e.contains("plans[starter].usage_prices.api_call") && e.contains("tiers"),
        "{e}"
    );
    assert!(
        e.contains("addons[calls_1000]")
            && e.contains("a recurring price; the catalog sells it one_time"),
        "{e}"
    );
    // The same prices against the catalog they were made from: it starts.
    std::fs::write(&path, &text).expect("write");
    config.stripe.addon_prices.insert(
        "calls_1000".into(),
        price("STRIPE_PRICE_ID_ADDON_CALLS_1000"),
    );
    assert!(billing_sync::App::build(config).await.is_ok());
    fake.stop().await;
}
