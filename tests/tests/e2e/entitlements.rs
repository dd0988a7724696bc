//! Entitlements end to end: every feature of the customer's plan from memory, at once after a
//! plan change and on another instance through the state topic, one feature, `POST /v1/check`
//! requiring a feature, the seed's `/usage` and `/v1/plans` with the seed's lists, precise 400s,
//! and the quota routes' auth rules.

use std::time::Duration;

use platform::principal::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{Running, TestEnv, wait_until};

const ALL: &[Scope] = &[Scope::Ingest, Scope::Read, Scope::Admin];

pub(crate) async fn get(http: &reqwest::Client, url: &str, key: &str) -> (StatusCode, Value) {
    let r = http.get(url).bearer_auth(key).send().await.expect("get");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = http
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The customer's entitlements (200 expected).
pub(crate) async fn entitlements(
    http: &reqwest::Client,
    ingest: &Running,
    key: &str,
    customer: &str,
) -> Value {
    let url = format!("{}/v1/customers/{customer}/entitlements", ingest.url);
    let (s, v) = get(http, &url, key).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// The entitlement of `feature` in an entitlements answer.
pub(crate) fn feature<'a>(answer: &'a Value, feature: &str) -> &'a Value {
    answer["entitlements"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["feature"] == feature))
        .unwrap_or_else(|| panic!("no {feature} in {answer}"))
}

/// The keys of the features the answer grants.
pub(crate) fn granted(answer: &Value) -> Vec<String> {
    answer["entitlements"]
        .as_array()
        .expect("entitlements")
        .iter()
        .filter(|e| e["has_access"] == true)
        .map(|e| e["feature"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn setup(test: &str) -> (TestEnv, Running, Running, reqwest::Client) {
    let env = TestEnv::new(test).await;
    let (agg, _) = env.start_aggregator().await;
    let ingest = env.start_ingest().await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    (env, agg, ingest, http)
}

const FREE: [&str; 4] = [
    "api_call",
    "basic_threat_analysis",
    "document_redaction",
    "report_generation",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entitlements_come_from_memory_and_follow_a_plan_change_at_once_and_on_another_instance() {
    let (env, agg, a, http) = setup("ent_fresh").await;
    let b = env.start_ingest().await;
    tests::wait_ready(&http, &b.url).await;
    let key = env.key("acme", ALL, None).await;

    // A customer nobody changed: the free plan's features, every other one refused with the
    // cheapest plan that has it.
    let e = entitlements(&http, &a, &key, "c1").await;
    assert_eq!(
        (e["plan"].clone(), e["status"].clone()),
        (json!("free"), json!("active"))
    );
    assert_eq!(e["plan_version"], e["current_version"], "{e}");
    assert_eq!(granted(&e), FREE, "{e}");
    let analytics = feature(&e, "analytics");
    assert_eq!(analytics["kind"], "boolean");
    assert_eq!(analytics["reason"], "feature_not_in_plan");
    assert_eq!(analytics["upgrade"]["plan"], "professional", "{analytics}");
    assert_eq!(analytics["upgrade"]["price_cents"], 9900);
    assert_eq!(
        feature(&e, "advanced_analysis")["upgrade"]["plan"],
        "starter"
    );
    assert_eq!(feature(&e, "custom_sla")["upgrade"]["plan"], "enterprise");
    let support = feature(&e, "support");
    assert_eq!(
        (support["kind"].clone(), support["has_access"].clone()),
        (json!("config"), json!(false))
    );
    let calls = feature(&e, "api_call");
    assert_eq!(calls["kind"], "metered");
    assert_eq!(
        (calls["limit"].clone(), calls["used"].clone()),
        (json!(100), json!(0.0))
    );
    assert_eq!(calls["label"], "100 API calls / month");

    // Metered: the usage a check-and-track recorded, at once.
    let (s, v) = post(
        &http,
        &format!("{}/v1/check", a.url),
        &key,
        json!({"track": true, "checks": [{"customer": "c1", "endpoint": "analyze", "quantity": 3}]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let e = entitlements(&http, &a, &key, "c1").await;
    assert_eq!(feature(&e, "api_call")["used"], json!(3.0), "{e}");
    assert_eq!(feature(&e, "api_call")["remaining"], json!(97.0));

    // A plan change: in effect at once on this instance.
    let (s, v) = post(
        &http,
        &format!("{}/v1/customers/c1/plan", a.url),
        &key,
        json!({"plan": "professional"}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let e = entitlements(&http, &a, &key, "c1").await;
    assert_eq!(e["plan"], "professional");
    assert_eq!(
        granted(&e),
        [
            "api_call",
            "basic_threat_analysis",
            "document_redaction",
            "report_generation",
            "advanced_analysis",
            "support",
            "custom_reports",
            "analytics",
            "team_collaboration",
            "api_access",
        ],
        "{e}"
    );
    assert_eq!(feature(&e, "support")["value"], "priority");
    assert_eq!(feature(&e, "support")["label"], "Priority support");
    assert_eq!(feature(&e, "api_call")["limit"], json!(5000));
    assert!(feature(&e, "custom_sla").get("upgrade").is_some());

    // The other instance, through the state topic (as fresh as its quota answer).
    wait_until(Duration::from_secs(15), "B sees the plan", || async {
        let e = entitlements(&http, &b, &key, "c1").await;
        (feature(&e, "analytics")["has_access"] == true).then_some(())
    })
    .await;
    let one = |base: &str, f: &str| format!("{base}/v1/customers/c1/entitlements/{f}");
    let (s, v) = get(&http, &one(&b.url, "analytics"), &key).await;
    assert_eq!(
        (s, v["has_access"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    let (s, v) = get(&http, &one(&b.url, "custom_sla"), &key).await;
    assert_eq!(s, 200);
    assert_eq!(v["reason"], "feature_not_in_plan");
    assert_eq!(v["upgrade"]["plan"], "enterprise");
    let (s, v) = get(&http, &one(&a.url, "api_call"), &key).await;
    assert_eq!((s, v["used"].clone()), (StatusCode::OK, json!(3.0)), "{v}");

    // An unknown feature: 400 naming it and the known ones.
    let (s, v) = get(&http, &one(&a.url, "telepathy"), &key).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "unknown_feature");
    assert_eq!(v["error"]["details"][0]["field"], "feature");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("analytics")),
        "{v}"
    );
    b.stop().await;
    a.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_can_require_a_feature_refused_with_the_cheapest_plan_that_has_it() {
    let (env, agg, ingest, http) = setup("ent_check").await;
    let key = env.key("acme", ALL, None).await;
    let (s, _) = post(
        &http,
        &format!("{}/v1/customers/pro/plan", ingest.url),
        &key,
        json!({"plan": "professional"}),
    )
    .await;
    assert_eq!(s, 202);
    let check = format!("{}/v1/check", ingest.url);
    let body = json!({"track": true, "checks": [
        {"customer": "free", "endpoint": "analyze", "feature": "analytics", "id": "f-1"},
        {"customer": "pro", "endpoint": "analyze", "feature": "analytics", "id": "p-1"},
        {"customer": "free", "endpoint": "analyze", "feature": "basic_threat_analysis", "id": "f-2"},
        {"customer": "free", "endpoint": "analyze", "feature": "support", "id": "f-3"},
    ]});
    let (s, v) = post(&http, &check, &key, body).await;
    assert_eq!(s, 200, "{v}");
    let r = &v["results"];
    assert_eq!(r[0]["allowed"], false, "{v}");
    assert_eq!(r[0]["tracked"], false);
    assert_eq!(r[0]["reason"], "feature_not_in_plan");
    assert_eq!(r[0]["feature"], "analytics");
    assert_eq!(r[0]["upgrade"]["plan"], "professional");
    assert_eq!(r[0]["upgrade"]["name"], "Professional");
    assert_eq!(
        (r[1]["allowed"].clone(), r[1]["tracked"].clone()),
        (json!(true), json!(true)),
        "{v}"
    );
    assert!(r[1].get("upgrade").is_none());
    assert_eq!(
        (r[2]["allowed"].clone(), r[2]["tracked"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(r[3]["reason"], "feature_not_in_plan");
    assert_eq!(r[3]["upgrade"]["plan"], "starter");
    // The refused calls counted nothing: 1 of 100 used (the allowed basic one).
    let (_, q) = tests_get_quota(&http, &ingest, &key, "free").await;
    assert_eq!(q["used"], json!(1.0), "{q}");

    // Without track, the same answers; a metered feature at its limit is `limit_reached`.
    let r = http
        .put(format!("{}/v1/customers/free/limits/api_call", ingest.url))
        .bearer_auth(&key)
        .json(&json!({"limit": 1}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 202);
    let (s, v) = post(
        &http,
        &check,
        &key,
        json!({"checks": [{"customer": "free", "feature": "api_call"}, {"customer": "free", "feature": "analytics"}]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["reason"], "limit_reached", "{v}");
    assert_eq!(v["results"][0]["upgrade"]["plan"], "starter", "{v}");
    assert_eq!(v["results"][1]["reason"], "feature_not_in_plan");

    // An unknown feature: 400 naming the check, nothing tracked.
    let (s, v) = post(
        &http,
        &check,
        &key,
        json!({"track": true, "checks": [{"customer": "pro", "id": "p-2"}, {"customer": "pro", "feature": "telepathy"}]}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "unknown_feature");
    assert_eq!(v["error"]["details"][0]["field"], "checks[1].feature");
    let (_, q) = tests_get_quota(&http, &ingest, &key, "pro").await;
    assert_eq!(q["used"], json!(1.0), "{q}");
    ingest.stop().await;
    agg.stop().await;
}

async fn tests_get_quota(
    http: &reqwest::Client,
    ingest: &Running,
    key: &str,
    customer: &str,
) -> (StatusCode, Value) {
    get(
        http,
        &format!("{}/v1/customers/{customer}/quota", ingest.url),
        key,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_usage_and_the_plans_list_show_the_seed_features() {
    let (env, agg, ingest, http) = setup("ent_seed").await;
    let ck = env
        .key("acme", &[Scope::Read, Scope::Ingest], Some("s1"))
        .await;
    let (s, u) = get(&http, &format!("{}/usage", ingest.url), &ck).await;
    assert_eq!(s, 200, "{u}");
    let features = u["features"].as_array().expect("features");
    let names: Vec<&str> = features
        .iter()
        .filter(|f| f["has_access"] == true)
        .filter_map(|f| f["label"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "100 API calls / month",
            "Basic threat analysis",
            "Document redaction",
            "Report generation"
        ]
    );
    assert_eq!(features.len(), 11, "every feature of the catalog: {u}");

    let r = http
        .get(format!("{}/v1/plans", ingest.url))
        .send()
        .await
        .expect("plans");
    let plans: Value = r.json().await.expect("json");
    let list = |key: &str| -> Vec<String> {
        plans["plans"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["key"] == key))
            .map(|p| serde_json::from_value(p["features"].clone()).expect("strings"))
            .unwrap_or_default()
    };
    let seed = [
        "Basic threat analysis",
        "Document redaction",
        "Report generation",
    ];
    assert_eq!(list("free"), seed);
    assert_eq!(
        list("starter"),
        [
            &seed[..],
            &["Advanced analysis", "Priority support", "Custom reports"]
        ]
        .concat()
    );
    assert_eq!(
        list("professional"),
        [
            &seed[..],
            &["Advanced analysis", "Priority support", "Custom reports"],
            &["Analytics", "Team collaboration", "API access"]
        ]
        .concat()
    );
    let enterprise = list("enterprise");
    assert!(
        ["Dedicated support", "Custom SLA", "Analytics", "API access"]
            .iter()
            .all(|f| enterprise.iter().any(|e| e == f)),
        "{enterprise:?}"
    );
    assert!(!enterprise.iter().any(|e| e == "Priority support"));
    ingest.stop().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entitlements_keep_the_quota_routes_auth_rules() {
    let (env, agg, ingest, http) = setup("ent_auth").await;
    let admin = env.key("acme", ALL, None).await;
    let own = env.key("acme", &[Scope::Read], Some("c1")).await;
    let other_tenant = env.key("globex", &[Scope::Read], None).await;
    let ingest_only = env.key("acme", &[Scope::Ingest], None).await;
    let (s, _) = post(
        &http,
        &format!("{}/v1/customers/c1/plan", ingest.url),
        &admin,
        json!({"plan": "enterprise"}),
    )
    .await;
    assert_eq!(s, 202);
    let url = |c: &str, f: &str| format!("{}/v1/customers/{c}/entitlements{f}", ingest.url);
    let (s, v) = get(&http, &url("c1", ""), &own).await;
    assert_eq!(
        (s, v["plan"].clone()),
        (StatusCode::OK, json!("enterprise"))
    );
    let (s, v) = get(&http, &url("c1", "/custom_sla"), &own).await;
    assert_eq!((s, v["has_access"].clone()), (StatusCode::OK, json!(true)));
    for path in ["", "/analytics"] {
        let (s, v) = get(&http, &url("c2", path), &own).await;
        assert_eq!(s, 403, "{v}");
        assert_eq!(v["error"]["code"], "customer_forbidden");
        let (s, v) = get(&http, &url("c1", path), &ingest_only).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("insufficient_scope"))
        );
        let r = http.get(url("c1", path)).send().await.expect("get");
        assert_eq!(r.status(), 401);
        let (s, v) = get(&http, &url("c1", path), "mk_not_a_key").await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("invalid_api_key"))
        );
    }
    // Another tenant's c1 is another customer: the free plan.
    let (s, v) = get(&http, &url("c1", ""), &other_tenant).await;
    assert_eq!((s, v["plan"].clone()), (StatusCode::OK, json!("free")));
    // A customer-scoped key may not require a feature for another customer either.
    let (s, v) = post(
        &http,
        &format!("{}/v1/check", ingest.url),
        &own,
        json!({"checks": [{"customer": "c2", "feature": "analytics"}]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("customer_forbidden"))
    );
    ingest.stop().await;
    agg.stop().await;
}
