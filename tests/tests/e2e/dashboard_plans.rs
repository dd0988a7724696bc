//! Plans as products on the dashboard (issue 20) in headless Chromium: an overage plan over its limit, an enterprise contract, and a call pack bought through the Add-ons card.
//!
//! On a catalog where Starter lets usage run over its limit, `tests/browser/dashboard_plans.mjs`
//! checks an overage customer over its limit (not blocked; units over and the cost so far as
//! `/usage` says), a contract customer (the contract on the plan card, no catalog plan offered)
//! and a call pack bought ×2 through the Add-ons card and Checkout (then bought, the limit raised).
//!
//! Three customers of one tenant on the real stack ([`Metered::start_with_dashboard`]: aggregator,
//! ingest with `billing_url` and `dashboard_secret`, the Stripe fake, billing-sync): `ovy` on
//! Starter with 27 calls over its 10, `cora` on an enterprise contract (`ct_1`, $1,200, 50 calls,
//! open-ended), `pat` on Starter, signed in with a signed link, who buys the pack. After the
//! browser script, billing-sync's add-on list and the ingest's quota must have the purchase.

use std::time::Duration;

use platform::principal::Scope;
use reqwest::Method;
use serde_json::{Value, json};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::shop::{call, quota, subscribe};
use tests::wait_until;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::dashboard::{browser_tools, run_browser};
use crate::plans_pricing::overage_catalog;

/// The call pack `pat` buys.
const PACK: &str = "calls_1000";
const WAIT: Duration = Duration::from_secs(30);

/// The quota answer of `customer` once `ready` holds for it.
async fn quota_when(
    m: &Metered,
    key: &str,
    customer: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(WAIT, what, || async {
        let q = quota(m, key, customer).await;
        ready(&q).then_some(q)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_overage_and_contracts_and_sells_addons() {
    let (dir, chromium) = browser_tools();
    let catalog = overage_catalog();
    let m = Metered::start_with_dashboard("dash_plans", Some(&catalog), |_| {}).await;
    let scopes = [Scope::Read, Scope::Ingest];
    let ovy = m.env.key(TENANT, &scopes, Some("ovy")).await;
    let pat = m.env.key(TENANT, &scopes, Some("pat")).await;
    let cora = m.env.key(TENANT, &scopes, Some("cora")).await;
    let sync = m.sync.running.url.clone();

    // ovy and pat subscribed to Starter two hours ago (the fake's clock goes back for the
    // checkouts), so the usage below falls in their current period.
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": -7_200}))
        .await;
    subscribe(&m, &ovy, "starter", "starter").await;
    subscribe(&m, &pat, "starter", "starter").await;
    m.fake
        .post("/_fake/clock/advance", json!({"seconds": 7_200}))
        .await;

    // ovy: 27 calls an hour ago, 17 over Starter's 10, and still allowed.
    let hour = hour_start(now()) - 3_600;
    m.calls("ovy", hour + 60, &[5.0, 5.0, 5.0, 5.0, 5.0, 2.0])
        .await;
    m.wait_rollup("ovy", hour, 27.0).await;
    let q = quota_when(&m, &ovy, "ovy", "ovy's 27 calls on Starter", |q| {
        q["used"] == json!(27.0) && q["plan"] == "starter"
    })
    .await;
    assert_eq!(
        q["allowed"],
        json!(true),
        "an overage plan is not blocked: {q}"
    );
    assert!(q["overage"].as_f64().is_some_and(|o| o > 0.0), "{q}");

    // Reported to Stripe's meter, so that the next invoice next to the projection bills it too.
    let summary = m.report().await;
    assert!(summary.reported >= 1, "{summary:?}");

    // pat: Starter's limit before the pack.
    let before = quota_when(&m, &pat, "pat", "pat on Starter", |q| {
        q["plan"] == "starter"
    })
    .await;
    let limit_before = before["limit"].as_u64().expect("Starter has a limit");

    // cora: an enterprise contract from a minute ago, open-ended, and a few calls.
    let starts_at = (OffsetDateTime::now_utc() - time::Duration::minutes(1))
        .format(&Rfc3339)
        .expect("RFC 3339");
    let (s, v) = call(
        &m.http,
        Method::PUT,
        &format!("{sync}/admin/customers/cora/contract"),
        &m.admin,
        Some(json!({
            "id": "ct_1", "plan": "enterprise", "price_cents": 120_000,
            "limits": {"api_call": 50}, "features": ["analytics"], "starts_at": starts_at,
        })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    m.calls("cora", now() - 60, &[3.0, 4.0]).await;
    quota_when(&m, &cora, "cora", "cora's contract and calls", |q| {
        q["limit"] == json!(50) && q["plan"] == "enterprise" && q["used"] == json!(7.0)
    })
    .await;

    // pat signs in with a signed link (a session: it buys with the read scope only).
    let (s, v) = call(
        &m.http,
        Method::POST,
        &format!("{}/v1/customers/pat/dashboard-link", m.ingest_url()),
        &m.admin,
        Some(json!({"ttl_secs": 900})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let link = v["path"].as_str().expect("path").to_string();

    let vars = vec![
        ("DASH_API", m.ingest_url().to_string()),
        ("DASH_STRIPE_URL", m.fake.url.clone()),
        ("DASH_KEY_OVERAGE", ovy.clone()),
        ("DASH_KEY_CONTRACT", cora.clone()),
        ("DASH_LINK_ADDON", link),
        ("DASH_ADDON", PACK.to_string()),
    ];
    let out = run_browser(&dir, &chromium, "dashboard_plans", &vars).await;
    for step in [
        "ok - overage: ",
        "ok - contract: ct_1 ",
        "ok - contract: the modal offers no catalog plan",
        "ok - add-ons: not purchasable ones say why",
        "ok - add-ons: a refused purchase shows the API's error",
        "ok - add-ons: Buy (quantity 2, with the keyboard) lands on the Checkout URL",
        "ok - add-ons: after the Checkout the card shows",
        "ok - no request left the API",
    ] {
        assert!(out.contains(step), "missing `{step}` in the browser output");
    }

    // What the page showed is what billing-sync and the ingest hold: the pack ×2, the limit raised.
    let grant = schemas::Catalog::from_toml(&catalog)
        .expect("catalog")
        .addon(PACK)
        .and_then(|a| a.grant.clone())
        .expect("the pack grants calls")
        .quantity;
    let (s, list) = call(
        &m.http,
        Method::GET,
        &format!("{sync}/subscription/addons"),
        &pat,
        None,
    )
    .await;
    assert_eq!(s, 200, "{list}");
    let bought: Vec<&Value> = list["bought"]
        .as_array()
        .expect("bought")
        .iter()
        .filter(|b| b["addon"] == PACK)
        .collect();
    assert_eq!(bought.len(), 1, "{list}");
    assert_eq!(bought[0]["quantity"], json!(2), "{list}");
    assert_eq!(bought[0]["grant"]["quantity"], json!(2 * grant), "{list}");
    let after = quota(&m, &pat, "pat").await;
    assert_eq!(after["limit"], json!(limit_before + 2 * grant), "{after}");
    m.stop().await;
}
