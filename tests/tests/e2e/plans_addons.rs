//! Purchasable add-ons (issue 20 part 4) on the real broker and ClickHouse and the Stripe fake over
//! HTTP: a call pack bought through Checkout (payment mode) raises the quota limit for the period,
//! a recurring feature add-on (its own subscription) turns a feature on in the entitlements and the
//! check; a full refund (as from Stripe's dashboard) and the admin's removal (a cancel through
//! Stripe) take them away; a redelivered purchase does not bring one back; bad purchases get
//! precise errors; the log alone rebuilds the customer's add-ons.

use std::time::Duration;

use platform::principal::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use tests::metered::{Metered, TENANT};
use tests::shop::{call, quota, stripe_get, subscribe};
use tests::wait_until;

const WAIT: Duration = Duration::from_secs(20);

/// Starts a Checkout for `addon` × `quantity` as `key`'s customer and pays on the hosted page;
/// returns the session as billing-sync answered it.
async fn buy(m: &Metered, key: &str, addon: &str, quantity: u32) -> Value {
    let (s, v) = call(
        &m.http,
        Method::POST,
        &format!("{}/subscription/addons", m.sync.running.url),
        key,
        Some(json!({"addon": addon, "quantity": quantity})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let url = v["url"].as_str().expect("checkout url");
    assert_eq!(m.http.get(url).send().await.expect("pay").status(), 200);
    v
}

async fn addons(m: &Metered, key: &str) -> Value {
    let (s, v) = call(
        &m.http,
        Method::GET,
        &format!("{}/subscription/addons", m.sync.running.url),
        key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn entitled(m: &Metered, key: &str, customer: &str, feature: &str) -> bool {
    let (s, v) = call(
        &m.http,
        Method::GET,
        &format!(
            "{}/v1/customers/{customer}/entitlements/{feature}",
            m.ingest_url()
        ),
        key,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["has_access"] == json!(true)
}

/// `POST /v1/check` of one call that needs analytics: (allowed, reason).
async fn check_analytics(m: &Metered, key: &str) -> (bool, Value) {
    let (s, v) = call(
        &m.http,
        Method::POST,
        &format!("{}/v1/check", m.ingest_url()),
        key,
        Some(json!({"checks": [{"customer": "cy", "feature": "analytics"}]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let r = &v["results"][0];
    (
        r["allowed"] == json!(true),
        r.get("reason").cloned().unwrap_or(Value::Null),
    )
}

/// The quota limit once it is `limit`.
async fn limit_becomes(m: &Metered, key: &str, customer: &str, limit: u64, what: &str) -> Value {
    wait_until(WAIT, what, || async {
        let q = quota(m, key, customer).await;
        (q["limit"] == json!(limit)).then_some(q)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_packs_and_feature_addons_are_bought_counted_refunded_and_removed() {
    let m = Metered::start("plans_addons", |_| {}).await;
    let cy = m
        .env
        .key(TENANT, &[Scope::Read, Scope::Ingest], Some("cy"))
        .await;
    let sync = m.sync.running.url.clone();

    // On Free, neither add-on may be bought (both are sold to paying plans only).
    let offer = addons(&m, &cy).await;
    assert_eq!(offer["plan"], "free", "{offer}");
    let reasons: Vec<&Value> = offer["available"]
        .as_array()
        .expect("available")
        .iter()
        .map(|a| &a["reason"])
        .collect();
    assert_eq!(
        reasons,
        [&json!("addon_not_in_plan"), &json!("addon_not_in_plan")],
        "{offer}"
    );
    let (s, v) = call(
        &m.http,
        Method::POST,
        &format!("{sync}/subscription/addons"),
        &cy,
        Some(json!({"addon": "calls_1000"})),
    )
    .await;
    assert_eq!(
        (s.as_u16(), &v["error"]["code"]),
        (409, &json!("addon_not_in_plan")),
        "{v}"
    );

    subscribe(&m, &cy, "starter", "starter").await;
    limit_becomes(&m, &cy, "cy", 500, "Starter's 500").await;
    assert!(
        !entitled(&m, &cy, "cy", "analytics").await,
        "Starter has no analytics"
    );
    assert_eq!(
        check_analytics(&m, &cy).await,
        (false, json!("feature_not_in_plan"))
    );

    // Bad purchases: each refused with its code and field; nothing is bought.
    for (body, status, code, field) in [
        (json!({"addon": "teleport"}), 400, "unknown_addon", "addon"),
        (
            json!({"addon": "calls_1000", "quantity": 11}),
            400,
            "invalid_request",
            "quantity",
        ),
        (
            json!({"addon": "calls_1000", "quantity": 0}),
            400,
            "invalid_request",
            "quantity",
        ),
        (
            json!({"addon": "analytics", "quantity": 2}),
            400,
            "invalid_request",
            "quantity",
        ),
        (
            json!({"addon": "calls_1000", "colour": "red"}),
            400,
            "invalid_request",
            "body",
        ),
    ] {
        let (s, v) = call(
            &m.http,
            Method::POST,
            &format!("{sync}/subscription/addons"),
            &cy,
            Some(body.clone()),
        )
        .await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert_eq!(v["error"]["details"][0]["field"], field, "{body}: {v}");
    }

    // A call pack: 2 × 1,000 calls, paid once ($38.00), counted until the period's end.
    let session = buy(&m, &cy, "calls_1000", 2).await;
    let s = stripe_get(
        &m,
        &format!(
            "checkout/sessions/{}",
            session["session_id"].as_str().expect("id")
        ),
    )
    .await;
    assert_eq!(
        (&s["mode"], &s["amount_total"], &s["payment_status"]),
        (&json!("payment"), &json!(3_800), &json!("paid")),
        "{s}"
    );
    let pi = s["payment_intent"]
        .as_str()
        .expect("payment intent")
        .to_string();
    let q = limit_becomes(&m, &cy, "cy", 2_500, "the pack's 2,000 calls").await;
    let (st, usage) = call(
        &m.http,
        Method::GET,
        &format!("{}/v1/customers/cy/usage", m.ingest_url()),
        &cy,
        None,
    )
    .await;
    assert_eq!(st, 200, "{usage}");
    let bought = &usage["plan"]["addons"];
    assert_eq!(bought.as_array().map(Vec::len), Some(1), "{usage}");
    assert_eq!(bought[0]["purchase"], pi.as_str());
    assert_eq!(
        bought[0]["grant"],
        json!({"meter": "api_call", "quantity": 2_000})
    );
    assert_eq!(
        bought[0]["expires_at"], usage["period_end"],
        "a pack counts until the period's end: {usage}"
    );
    assert_eq!(q["period_end"], usage["period_end"]);

    // A recurring feature add-on: its own subscription; analytics turns on for the entitlement
    // and for a check that requires it.
    let session = buy(&m, &cy, "analytics", 1).await;
    let s = stripe_get(
        &m,
        &format!(
            "checkout/sessions/{}",
            session["session_id"].as_str().expect("id")
        ),
    )
    .await;
    let addon_sub = s["subscription"]
        .as_str()
        .expect("the add-on's subscription")
        .to_string();
    wait_until(WAIT, "analytics on", || async {
        entitled(&m, &cy, "cy", "analytics").await.then_some(())
    })
    .await;
    assert_eq!(check_analytics(&m, &cy).await, (true, Value::Null));
    // The add-on's subscription did not become the plan: still Starter, its own subscription.
    let (_, status) = call(
        &m.http,
        Method::GET,
        &format!("{sync}/subscription/status"),
        &cy,
        None,
    )
    .await;
    assert_eq!(status["subscribed_plan"], "starter", "{status}");
    assert_ne!(status["subscription_id"], addon_sub.as_str(), "{status}");
    // Bought once: a second purchase of a recurring add-on is refused.
    let (s2, v) = call(
        &m.http,
        Method::POST,
        &format!("{sync}/subscription/addons"),
        &cy,
        Some(json!({"addon": "analytics"})),
    )
    .await;
    assert_eq!(
        (s2.as_u16(), &v["error"]["code"]),
        (409, &json!("addon_active")),
        "{v}"
    );
    let offer = addons(&m, &cy).await;
    assert_eq!(offer["bought"].as_array().map(Vec::len), Some(2), "{offer}");

    // A partial refund keeps the pack; the refund of the rest removes it.
    let refund = |amount: Option<i64>| {
        let (m, pi) = (&m, pi.clone());
        async move {
            let mut form = vec![("payment_intent".to_string(), pi)];
            if let Some(a) = amount {
                form.push(("amount".into(), a.to_string()));
            }
            let r = m
                .http
                .post(format!("{}/v1/refunds", m.fake.url))
                .bearer_auth(tests::billing::STRIPE_KEY)
                .form(&form)
                .send()
                .await
                .expect("refund");
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
        }
    };
    refund(Some(1_000)).await;
    wait_until(WAIT, "the partial refund handled", || async {
        let n: u64 = m
            .env
            .ch()
            .query(
                "SELECT count() FROM billing_webhook_events WHERE outcome = 'partially_refunded'",
            )
            .fetch_one()
            .await
            .expect("count");
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(
        quota(&m, &cy, "cy").await["limit"],
        json!(2_500),
        "a partial refund keeps the pack"
    );
    refund(None).await;
    limit_becomes(&m, &cy, "cy", 500, "the refunded pack gone").await;

    // The purchase's webhook delivered again (a late retry) does not bring the pack back.
    let completed: Vec<Value> = m
        .fake
        .events_of("checkout.session.completed")
        .await
        .into_iter()
        .filter(|e| e["data"]["object"]["payment_intent"] == pi.as_str())
        .collect();
    assert_eq!(completed.len(), 1);
    let id = completed[0]["id"].as_str().expect("event id");
    // (billing-sync answers it as a known redelivery; the fold's own rule, a purchase after its
    // removal stays removed, is the unit test `addons_fold_by_purchase_and_stay_removed`.)
    m.fake
        .post(&format!("/_fake/events/{id}/deliver"), json!({}))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(quota(&m, &cy, "cy").await["limit"], json!(500));

    // The admin removes the feature add-on: its subscription is cancelled now, analytics is off.
    let (st, removed) = call(
        &m.http,
        Method::DELETE,
        &format!("{sync}/admin/customers/cy/addons/{addon_sub}"),
        &m.admin,
        None,
    )
    .await;
    assert_eq!(st, 200, "{removed}");
    assert_eq!(removed["stripe"]["status"], "canceled", "{removed}");
    wait_until(WAIT, "analytics off", || async {
        (!entitled(&m, &cy, "cy", "analytics").await).then_some(())
    })
    .await;
    assert_eq!(
        stripe_get(&m, &format!("subscriptions/{addon_sub}")).await["status"],
        "canceled"
    );
    let (st, again) = call(
        &m.http,
        Method::DELETE,
        &format!("{sync}/admin/customers/cy/addons/{addon_sub}"),
        &m.admin,
        None,
    )
    .await;
    assert_eq!(
        (st.as_u16(), &again["error"]["code"]),
        (404, &json!("no_such_addon")),
        "{again}"
    );

    // The log alone: folding cy's subscription events from ClickHouse gives no add-on, both
    // purchases removed, and Starter's limit.
    let catalog = schemas::Catalog::default();
    let key = [(TENANT.to_string(), "cy".to_string())];
    let state = wait_until(WAIT, "both removals stored", || async {
        let mut states = schemas::quota_store::plans(&m.env.ch(), &catalog, Some(&key))
            .await
            .expect("plans");
        let s = states.remove(&key[0]).expect("cy");
        (s.removed_addons.len() == 2).then_some(s)
    })
    .await;
    assert!(state.addons.is_empty(), "{state:?}");
    assert_eq!(
        state.limit(&catalog, "api_call", time::OffsetDateTime::now_utc()),
        Some(500)
    );
    let mut removed = state.removed_addons.clone();
    removed.sort();
    let mut expected = vec![pi.clone(), addon_sub.clone()];
    expected.sort();
    assert_eq!(removed, expected);
    m.stop().await;
}
