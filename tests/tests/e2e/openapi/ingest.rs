//! The ingest's OpenAPI document against its real answers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ingest_openapi_document_is_valid_and_matches_every_route_and_answer() {
    let env = TestEnv::new("openapi_ingest").await;
    // Keys first: the ingest loads them at start.
    let key = env
        .key("acme", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let other = env.key("acme", &[Scope::Read], Some("c9")).await;
    let scoped = env.key("acme", &[Scope::Ingest], Some("c9")).await;
    let mut config = env.ingest_config();
    config.dashboard_secret = secrecy::SecretString::from("openapi-test-secret");
    let ingest = env.start_ingest_with(config).await;
    let http = client();
    tests::wait_ready(&http, &ingest.url).await;
    let doc = Document::fetch(&http, &ingest.url, INGEST_PATHS).await;
    probe(&http, &ingest.url, &doc).await;

    let k = Some(key.as_str());
    let c = Caller {
        http: &http,
        base: &ingest.url,
        doc: &doc,
    };
    let post = Method::POST;
    let get = Method::GET;
    let events = json!([
        event("oa-1", "c1", "analyze", 2),
        event("oa-2", "c1", "redact", 1)
    ]);
    let v = c
        .call(
            post.clone(),
            "/v1/events",
            "/v1/events",
            k,
            Some(events),
            202,
        )
        .await;
    assert_eq!(v["accepted"], 2);
    let bad = json!([{"id": "x", "type": "nope", "subject": "c1"}]);
    let v = c
        .call(post.clone(), "/v1/events", "/v1/events", k, Some(bad), 400)
        .await;
    assert_eq!(v["error"]["details"][0]["code"], "unknown_meter", "{v}");
    let forbidden = json!({"id": "y", "type": "api_call", "subject": "c1"});
    c.call(
        post.clone(),
        "/v1/events",
        "/v1/events",
        Some(&scoped),
        Some(forbidden),
        403,
    )
    .await;
    c.call(
        get.clone(),
        "/v1/customers/{customer}/quota",
        "/v1/customers/c1/quota?quantity=1",
        k,
        None,
        200,
    )
    .await;
    c.call(
        get.clone(),
        "/v1/customers/{customer}/quota",
        "/v1/customers/c1/quota?meter=nope",
        k,
        None,
        400,
    )
    .await;
    c.call(
        get.clone(),
        "/v1/customers/{customer}/quota",
        "/v1/customers/c1/quota",
        Some(&other),
        None,
        403,
    )
    .await;
    let checks = json!({"checks": [{"customer": "c1"}, {"customer": "c2", "quantity": 3}]});
    c.call(post.clone(), "/v1/check", "/v1/check", k, Some(checks), 200)
        .await;
    let track =
        json!({"track": true, "checks": [{"customer": "c1", "id": "oa-chk", "endpoint": "drill"}]});
    let v = c
        .call(post.clone(), "/v1/check", "/v1/check", k, Some(track), 200)
        .await;
    assert_eq!(v["results"][0]["event_id"], "oa-chk", "{v}");
    c.call(
        get.clone(),
        "/v1/customers/{customer}/usage",
        "/v1/customers/c1/usage",
        k,
        None,
        200,
    )
    .await;
    for q in [
        "",
        "?granularity=hour&group_by=endpoint",
        "?granularity=month&from=2026-01-01",
    ] {
        c.call(
            get.clone(),
            "/v1/customers/{customer}/history",
            &format!("/v1/customers/c1/history{q}"),
            k,
            None,
            200,
        )
        .await;
    }
    c.call(
        get.clone(),
        "/v1/customers/{customer}/history",
        "/v1/customers/c1/history?granularity=week",
        k,
        None,
        400,
    )
    .await;
    let plan = json!({"plan": "starter", "id": "oa-plan"});
    c.call(
        post.clone(),
        "/v1/customers/{customer}/plan",
        "/v1/customers/c1/plan",
        k,
        Some(plan),
        202,
    )
    .await;
    c.call(
        post.clone(),
        "/v1/customers/{customer}/plan",
        "/v1/customers/c1/plan",
        k,
        Some(json!({"plan": "gold"})),
        400,
    )
    .await;
    let put = json!({"limit": 5000});
    c.call(
        Method::PUT,
        "/v1/customers/{customer}/limits/{meter}",
        "/v1/customers/c1/limits/api_call",
        k,
        Some(put),
        202,
    )
    .await;
    c.call(
        Method::DELETE,
        "/v1/customers/{customer}/limits/{meter}",
        "/v1/customers/c1/limits/api_call",
        k,
        None,
        202,
    )
    .await;
    let grant = json!({"quantity": 7});
    c.call(
        post.clone(),
        "/v1/customers/{customer}/grants",
        "/v1/customers/c1/grants",
        k,
        Some(grant),
        202,
    )
    .await;
    // Entitlements, a check requiring a feature, plan version migrations.
    let ent = "/v1/customers/{customer}/entitlements";
    c.call(
        get.clone(),
        ent,
        "/v1/customers/c1/entitlements",
        k,
        None,
        200,
    )
    .await;
    let one = "/v1/customers/{customer}/entitlements/{feature}";
    let v = c
        .call(
            get.clone(),
            one,
            "/v1/customers/c1/entitlements/analytics",
            k,
            None,
            200,
        )
        .await;
    assert_eq!(v["reason"], "feature_not_in_plan", "{v}");
    c.call(
        get.clone(),
        one,
        "/v1/customers/c1/entitlements/nope",
        k,
        None,
        400,
    )
    .await;
    c.call(
        get.clone(),
        one,
        "/v1/customers/c1/entitlements/analytics",
        Some(&other),
        None,
        403,
    )
    .await;
    let needs = json!({"checks": [{"customer": "c1", "feature": "analytics"}]});
    let v = c
        .call(post.clone(), "/v1/check", "/v1/check", k, Some(needs), 200)
        .await;
    assert_eq!(v["results"][0]["upgrade"]["plan"], "professional", "{v}");
    let needs = json!({"checks": [{"customer": "c1", "feature": "nope"}]});
    c.call(post.clone(), "/v1/check", "/v1/check", k, Some(needs), 400)
        .await;
    let migrate = "/v1/customers/{customer}/plan/migrate";
    c.call(
        post.clone(),
        migrate,
        "/v1/customers/c5/plan/migrate",
        k,
        Some(json!({})),
        202,
    )
    .await;
    c.call(
        post.clone(),
        migrate,
        "/v1/customers/c5/plan/migrate",
        k,
        Some(json!({})),
        200,
    )
    .await;
    c.call(
        post.clone(),
        migrate,
        "/v1/customers/c1/plan/migrate",
        Some(&other),
        Some(json!({})),
        403,
    )
    .await;
    let all = "/v1/plans/{plan}/migrate";
    c.call(
        post.clone(),
        all,
        "/v1/plans/starter/migrate",
        k,
        Some(json!({"dry_run": true})),
        202,
    )
    .await;
    c.call(
        post.clone(),
        all,
        "/v1/plans/gold/migrate",
        k,
        Some(json!({})),
        400,
    )
    .await;
    c.call(get.clone(), "/usage", "/usage?customer=c1", k, None, 200)
        .await;
    c.call(get.clone(), "/usage", "/usage", k, None, 400).await;
    let v = c
        .call(
            post.clone(),
            "/usage/track",
            "/usage/track?customer=c1",
            k,
            Some(json!({"endpoint": "analyze"})),
            200,
        )
        .await;
    assert_eq!(v["tracked"], true, "{v}");
    // At the limit: 429 with the usage.
    c.call(
        Method::PUT,
        "/v1/customers/{customer}/limits/{meter}",
        "/v1/customers/c3/limits/api_call",
        k,
        Some(json!({"limit": 0})),
        202,
    )
    .await;
    let v = c
        .call(
            post.clone(),
            "/usage/track",
            "/usage/track?customer=c3",
            k,
            Some(json!({"endpoint": "analyze"})),
            429,
        )
        .await;
    assert_eq!(v["error"]["code"], "limit_reached", "{v}");
    c.call(
        get.clone(),
        "/usage/history",
        "/usage/history?customer=c1&days=3",
        k,
        None,
        200,
    )
    .await;
    c.call(
        get.clone(),
        "/usage/history",
        "/usage/history?customer=c1&days=0",
        k,
        None,
        400,
    )
    .await;
    let link = c
        .call(
            post.clone(),
            "/v1/customers/{customer}/dashboard-link",
            "/v1/customers/c1/dashboard-link",
            k,
            Some(json!({"ttl_secs": 120})),
            201,
        )
        .await;
    let token = json!({"link": link["link"]});
    c.call(
        post.clone(),
        "/dashboard/session",
        "/dashboard/session",
        None,
        Some(token.clone()),
        200,
    )
    .await;
    let v = c
        .call(
            post.clone(),
            "/dashboard/session",
            "/dashboard/session",
            None,
            Some(token),
            401,
        )
        .await;
    assert_eq!(v["error"]["code"], "link_used", "{v}");
    for file in [
        "app.js",
        "ui.js",
        "compact.js",
        "embed.js",
        "style.css",
        "favicon.svg",
    ] {
        c.call(
            get.clone(),
            "/dashboard/{file}",
            &format!("/dashboard/{file}"),
            None,
            None,
            200,
        )
        .await;
    }
    c.call(
        get.clone(),
        "/dashboard/{file}",
        "/dashboard/nope.js",
        None,
        None,
        404,
    )
    .await;
    for action in ["status", "portal"] {
        c.call(
            get.clone(),
            "/dashboard/billing/subscription/{action}",
            &format!("/dashboard/billing/subscription/{action}"),
            k,
            None,
            503,
        )
        .await;
    }
    c.call(
        get.clone(),
        "/dashboard/billing/subscription/{action}",
        "/dashboard/billing/subscription/create",
        k,
        None,
        404,
    )
    .await;
    c.call(
        get.clone(),
        "/dashboard/billing/v1/customers/{customer}/invoice-preview",
        "/dashboard/billing/v1/customers/c1/invoice-preview",
        k,
        None,
        503,
    )
    .await;
    c.call(get.clone(), "/readyz", "/readyz", None, None, 200)
        .await;
    ingest.stop().await;
}
