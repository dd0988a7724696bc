//! billing-sync's OpenAPI document against its real answers (with the Stripe fake).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_billing_sync_openapi_document_is_valid_and_matches_every_route_and_answer() {
    let env = TestEnv::new("openapi_billing").await;
    let admin = env
        .key("acme", &[Scope::Ingest, Scope::Read, Scope::Admin], None)
        .await;
    let own = env
        .key("acme", &[Scope::Ingest, Scope::Read], Some("cust_oa"))
        .await;
    let reader = env.key("acme", &[Scope::Read], None).await;
    let fake = Fake::start().await;
    let sync = start_billing(&env, &fake).await;
    let base = sync.running.url.clone();
    let http = client();
    let doc = Document::fetch(&http, &base, BILLING_PATHS).await;
    probe(&http, &base, &doc).await;

    let c = Caller {
        http: &http,
        base: &base,
        doc: &doc,
    };
    let (a, o) = (Some(admin.as_str()), Some(own.as_str()));
    let (get, post) = (Method::GET, Method::POST);
    let v = c
        .call(
            get.clone(),
            "/subscription/status",
            "/subscription/status",
            o,
            None,
            200,
        )
        .await;
    assert_eq!(v["status"], "none", "{v}");
    const PREVIEW: &str = "/v1/customers/{customer}/invoice-preview";
    let v = c
        .call(
            get.clone(),
            PREVIEW,
            "/v1/customers/cust_oa/invoice-preview",
            o,
            None,
            200,
        )
        .await;
    assert_eq!(v["upcoming"], false, "{v}");
    c.call(
        get.clone(),
        PREVIEW,
        "/v1/customers/other/invoice-preview",
        o,
        None,
        403,
    )
    .await;
    c.call(
        get.clone(),
        PREVIEW,
        "/v1/customers/nobody/invoice-preview",
        a,
        None,
        404,
    )
    .await;
    c.call(
        get.clone(),
        "/subscription/status",
        "/subscription/status",
        a,
        None,
        400,
    )
    .await;
    c.call(
        get.clone(),
        "/subscription/status",
        "/subscription/status?customer=other",
        o,
        None,
        403,
    )
    .await;
    c.call(
        post.clone(),
        "/subscription/cancel",
        "/subscription/cancel",
        o,
        None,
        404,
    )
    .await;
    c.call(
        post.clone(),
        "/subscription/create",
        "/subscription/create?customer=x",
        Some(&reader),
        Some(json!({"plan": "starter"})),
        403,
    )
    .await;
    c.call(
        post.clone(),
        "/subscription/create",
        "/subscription/create",
        o,
        Some(json!({"plan": "free"})),
        400,
    )
    .await;
    let v = c
        .call(
            post.clone(),
            "/subscription/create",
            "/subscription/create",
            o,
            Some(json!({"plan": "starter"})),
            201,
        )
        .await;
    let url = v["url"].as_str().expect("checkout url");
    assert_eq!(
        http.get(url).send().await.expect("visit checkout").status(),
        200
    );
    wait_until(
        std::time::Duration::from_secs(20),
        "subscription active",
        || async {
            let r = http
                .get(format!("{base}/subscription/status"))
                .bearer_auth(&own)
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            (v["status"] == "active").then_some(())
        },
    )
    .await;
    let v = c
        .call(
            get.clone(),
            "/subscription/status",
            "/subscription/status",
            o,
            None,
            200,
        )
        .await;
    assert_eq!(v["subscribed_plan"], "starter", "{v}");
    let v = c
        .call(
            get.clone(),
            PREVIEW,
            "/v1/customers/cust_oa/invoice-preview",
            o,
            None,
            200,
        )
        .await;
    assert_eq!(v["amount_due"], 2900, "{v}");
    c.call(
        post.clone(),
        "/subscription/create",
        "/subscription/create",
        o,
        Some(json!({"plan": "professional"})),
        409,
    )
    .await;
    c.call(
        get.clone(),
        "/subscription/portal",
        "/subscription/portal",
        o,
        None,
        200,
    )
    .await;
    let v = c
        .call(
            post.clone(),
            "/subscription/cancel",
            "/subscription/cancel",
            o,
            Some(json!({})),
            200,
        )
        .await;
    assert_eq!(v["cancel_at_period_end"], true, "{v}");
    // Webhooks, as the fake delivers them (its answer is billing-sync's).
    let completed = fake.events_of("checkout.session.completed").await;
    let id = completed[0]["id"].as_str().expect("event id");
    for (signature, expect) in [("valid", 200), ("bad", 400)] {
        let d = fake
            .post(
                &format!("/_fake/events/{id}/deliver"),
                json!({"signature": signature}),
            )
            .await;
        let status =
            StatusCode::from_u16(d["status"].as_u64().unwrap_or(0) as u16).expect("status");
        assert_eq!(status.as_u16(), expect, "{d}");
        let body = d["body"].as_str().unwrap_or_default();
        doc.check_answer(
            &post,
            "/webhooks/stripe",
            status,
            Some("application/json"),
            body.as_bytes(),
        );
    }
    c.call(
        post.clone(),
        "/admin/usage/report",
        "/admin/usage/report",
        a,
        None,
        200,
    )
    .await;
    c.call(
        post.clone(),
        "/admin/usage/report",
        "/admin/usage/report",
        o,
        None,
        403,
    )
    .await;
    c.call(
        get.clone(),
        "/admin/usage/reconcile",
        "/admin/usage/reconcile",
        a,
        None,
        200,
    )
    .await;
    let v = c
        .call(
            get.clone(),
            "/admin/usage/proof",
            "/admin/usage/proof?month=2026-01",
            a,
            None,
            200,
        )
        .await;
    assert_eq!(
        (&v["month"], &v["tenant"]),
        (&json!("2026-01"), &json!("acme")),
        "{v}"
    );
    c.call(
        get.clone(),
        "/admin/usage/proof",
        "/admin/usage/proof?month=2026-13",
        a,
        None,
        400,
    )
    .await;
    c.call(
        get.clone(),
        "/admin/usage/proof",
        "/admin/usage/proof",
        o,
        None,
        403,
    )
    .await;
    c.call(
        post.clone(),
        "/admin/subscriptions/reconcile",
        "/admin/subscriptions/reconcile",
        a,
        None,
        200,
    )
    .await;
    sync.running.stop().await;
    fake.stop().await;
}
