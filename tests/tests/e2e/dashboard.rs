//! The dashboard page in headless Chromium: the services run here, `tests/browser/dashboard.mjs` (playwright-core, Debian's chromium) checks the page against the API.
//!
//! Three customers of one tenant on the free plan (100 calls): `c_ok` (30 calls), `c_warn` (85,
//! signed in with a signed link) and `c_limit` (100). The browser script asserts that the page
//! shows the numbers the API returns, the warning above 80 %, the upgrade prompt at the limit, the
//! plans modal, keyboard use, accessibility (axe-core), the narrow layout, the embeddable compact
//! display, that no request leaves the API's origins, and, with billing-sync and the Stripe fake
//! running, the next invoice next to the projection (none on the free plan, Starter's $29.00 and
//! its lines after the checkout), the checkout to a new plan, the customer portal and cancel at the
//! period end, and the Emails panel of c_warn's session (a kind turned off, still off after a
//! reload and in billing-sync's preference API; a refused change shows the API's error). The signed-link and session rules are checked over plain HTTP here.

use std::path::PathBuf;
use std::time::Duration;

use platform::principal::Scope;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use tests::billing::{Fake, billing_config, start_billing_with};
use tests::{Running, TestEnv, send_all, wait_until, workspace_root};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const ENDPOINTS: [&str; 4] = ["analyze", "redact", "report", "drill"];

/// `node`, the npm packages and the browser, or a panic that says how to install them.
pub(crate) fn browser_tools() -> (PathBuf, String) {
    let dir = workspace_root().join("tests/browser");
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing: Vec<String> = [
        (
            dir.join("node_modules/playwright-core/package.json"),
            "npm packages of tests/browser",
        ),
        (dir.join("node_modules/axe-core/axe.min.js"), "axe-core"),
        (PathBuf::from(&chromium), "chromium"),
    ]
    .into_iter()
    .filter(|(p, _)| !p.exists())
    .map(|(p, what)| format!("{what} ({})", p.display()))
    .collect();
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        missing.is_empty() && node.is_ok_and(|o| o.status.success()),
        "browser test tools missing: {missing:?} / node; run `bash scripts/install.sh chromium`"
    );
    (dir, chromium)
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> (StatusCode, Value) {
    let r = http.get(url).bearer_auth(key).send().await.expect("get");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = http.post(url).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.expect("post");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `n` calls of `customer` spread evenly from `from` to now, over the four endpoints.
fn calls(customer: &str, n: usize, from: OffsetDateTime) -> Vec<Value> {
    let now = OffsetDateTime::now_utc() - Duration::from_secs(5);
    let span = (now - from).as_seconds_f64().max(0.0);
    (0..n)
        .map(|i| {
            let at = from + time::Duration::seconds_f64(span * (i as f64 + 0.5) / n as f64);
            let mut e = tests::event(
                &format!("{customer}-{i}"),
                customer,
                ENDPOINTS[(i * 7 / 3) % 4],
                1,
            );
            e["time"] = json!(at.format(&Rfc3339).expect("rfc3339"));
            e
        })
        .collect()
}

/// Signed links and sessions over HTTP: one exchange per link, a session reads only its customer
/// and only with the `read` scope, an altered link is refused.
async fn links_and_sessions(http: &reqwest::Client, url: &str, admin: &str, limit_key: &str) {
    let (s, v) = post(
        http,
        &format!("{url}/v1/customers/c_warn/dashboard-link"),
        Some(admin),
        json!({"ttl_secs": 600}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let link = v["link"].as_str().expect("link").to_string();
    assert!(
        v["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/dashboard/#link=mdl_")),
        "{v}"
    );
    // A customer-scoped key (even one of the tenant) cannot mint links; nor for others.
    let (s, v) = post(
        http,
        &format!("{url}/v1/customers/c_warn/dashboard-link"),
        Some(limit_key),
        json!({}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = post(
        http,
        &format!("{url}/dashboard/session"),
        None,
        json!({"link": link}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["customer"], "c_warn");
    let session = v["token"].as_str().expect("token").to_string();
    let (s, v) = post(
        http,
        &format!("{url}/dashboard/session"),
        None,
        json!({"link": link}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("link_used")),
        "{v}"
    );
    // An altered link (another customer in the claims) is refused.
    let (payload, sig) = link["mdl_".len()..].split_once('.').expect("link shape");
    let claims = String::from_utf8(hex_decode(payload)).expect("utf8");
    let forged = format!(
        "mdl_{}.{sig}",
        hex_encode(claims.replace("\"c_warn\"", "\"c_ok\"").as_bytes())
    );
    let (s, v) = post(
        http,
        &format!("{url}/dashboard/session"),
        None,
        json!({"link": forged}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_link")),
        "{v}"
    );
    // The session reads its own customer only, and cannot track, mint links or change plans.
    let (s, v) = get(http, &format!("{url}/usage"), &session).await;
    assert_eq!(
        (s, v["customer"].as_str()),
        (StatusCode::OK, Some("c_warn")),
        "{v}"
    );
    let (s, v) = get(http, &format!("{url}/v1/customers/c_ok/usage"), &session).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("customer_forbidden")),
        "{v}"
    );
    let (s, _) = get(http, &format!("{url}/usage?customer=c_ok"), &session).await;
    assert_eq!(s, 403);
    let (s, _) = post(
        http,
        &format!("{url}/usage/track"),
        Some(&session),
        json!({"endpoint": "analyze"}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(
        http,
        &format!("{url}/v1/customers/c_warn/dashboard-link"),
        Some(&session),
        json!({}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(
        http,
        &format!("{url}/v1/customers/c_warn/plan"),
        Some(&session),
        json!({"plan": "starter"}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = get(http, &format!("{url}/usage"), &format!("{session}x")).await;
    assert_eq!(s, 401);
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The page, its assets and the plans list are served with a CSP that keeps requests on the API.
async fn served(http: &reqwest::Client, url: &str) {
    let r = http
        .get(format!("{url}/dashboard/"))
        .send()
        .await
        .expect("page");
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    for asset in [
        "app.js",
        "ui.js",
        "style.css",
        "embed.js",
        "compact.js",
        "emails.js",
        "addons.js",
        "favicon.svg",
    ] {
        let r = http
            .get(format!("{url}/dashboard/{asset}"))
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
    }
    let r = http
        .get(format!("{url}/dashboard/compact"))
        .send()
        .await
        .expect("compact");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .is_ok_and(|c| c.contains("frame-ancestors *"))
    );
    let v: Value = http
        .get(format!("{url}/v1/plans"))
        .send()
        .await
        .expect("plans")
        .json()
        .await
        .expect("json");
    let plans: Vec<(String, u64, Option<u64>)> = v["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap_or_default().to_string(),
                p["price_cents"].as_u64().unwrap_or(0),
                p["limit"].as_u64(),
            )
        })
        .collect();
    let expected = [
        ("free", 0, Some(100)),
        ("starter", 2900, Some(500)),
        ("professional", 9900, Some(5000)),
        ("enterprise", 49900, None),
    ];
    assert_eq!(
        plans,
        expected.map(|(k, p, l)| (k.to_string(), p, l)).to_vec()
    );
}

/// Runs the browser script `tests/browser/{script}.mjs` with `vars` (screenshots under
/// `.data/artifacts/{script}`); returns its output, panicking with it on failure.
pub(crate) async fn run_browser(
    dir: &std::path::Path,
    chromium: &str,
    script: &str,
    vars: &[(&str, String)],
) -> String {
    let artifacts = workspace_root().join(format!(".data/artifacts/{script}"));
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join(format!("{script}.mjs")))
        .current_dir(workspace_root())
        .env("CHROMIUM_BIN", chromium)
        .env("DASH_ARTIFACTS", &artifacts)
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the browser script finished within 300 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("--- browser script stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "the browser script failed ({}); screenshots in {}",
        out.status,
        artifacts.display()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_the_api_numbers_warns_blocks_and_offers_the_plans() {
    let (dir, chromium) = browser_tools();
    let env = TestEnv::new("dash").await;
    let (agg, _) = env.start_aggregator().await;
    // billing-sync and the Stripe fake; Checkout returns the customer to the dashboard.
    let fake = Fake::start().await;
    let port = tests::servers::free_port();
    let dashboard = format!("http://127.0.0.1:{port}/dashboard/");
    let mut bcfg = billing_config(&env, &fake);
    bcfg.stripe.success_url = format!("{dashboard}?checkout=success");
    bcfg.stripe.cancel_url = format!("{dashboard}?checkout=cancel");
    bcfg.stripe.portal_return_url = dashboard.clone();
    // As deployed: billing-sync takes the dashboard's sessions (the next invoice of c_warn's).
    bcfg.dashboard_secret = SecretString::from("dashboard-test-secret");
    // Customer emails on (to an outbox): the Emails panel reads and saves the choices.
    bcfg.emails = tests::emails::mailer_config(None, tests::emails::outbox_dir("dashboard"));
    let sync = start_billing_with(&fake, bcfg).await;
    let mut cfg = env.ingest_config();
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    cfg.dashboard_secret = SecretString::from("dashboard-test-secret");
    cfg.billing_url = sync.running.url.clone();
    let ingest: Running = env.start_ingest_with(cfg).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &ingest.url).await;
    served(&http, &ingest.url).await;

    let admin = env.key("acme", &[Scope::Admin], None).await;
    let read = [Scope::Read];
    let k_ok = env.key("acme", &read, Some("c_ok")).await;
    // Buying a plan through billing-sync takes the seed app's write scope (`ingest`).
    let k_limit = env
        .key("acme", &[Scope::Read, Scope::Ingest], Some("c_limit"))
        .await;
    let k_tenant = env.key("acme", &read, None).await;
    let other_tenant = env.key("globex", &read, Some("c_ok")).await;

    // Usage: within the current period (the period starts at the 1st, 00:00 UTC), spread over
    // the days since then (at most the last 12), so the charts have something to draw.
    let now = OffsetDateTime::now_utc();
    let month_start = now
        .replace_day(1)
        .expect("day 1")
        .replace_time(time::Time::MIDNIGHT);
    let from = month_start.max(now - time::Duration::days(12));
    let mut events = calls("c_ok", 30, from);
    events.extend(calls("c_warn", 85, from));
    events.extend(calls(
        "c_limit",
        100,
        now - time::Duration::hours(2).min(now - month_start),
    ));
    // Another tenant's customer of the same name: the page must never count it.
    events.extend([tests::event("other-1", "c_ok", "analyze", 40)]);
    let ingest_key = env.key("acme", &[Scope::Ingest], None).await;
    let globex_ingest = env.key("globex", &[Scope::Ingest], None).await;
    send_all(
        &http,
        &ingest.url,
        &ingest_key,
        &events[..events.len() - 1],
        100,
    )
    .await;
    send_all(
        &http,
        &ingest.url,
        &globex_ingest,
        &events[events.len() - 1..],
        1,
    )
    .await;
    for (c, n) in [("c_ok", 30.0), ("c_warn", 85.0), ("c_limit", 100.0)] {
        let sql = format!(
            "SELECT sum(quantity) FROM usage_daily WHERE tenant = 'acme' AND customer = '{c}'"
        );
        wait_until(
            Duration::from_secs(30),
            "usage folded into ClickHouse",
            || async { (env.scalar(&sql).await >= n).then_some(()) },
        )
        .await;
        wait_until(
            Duration::from_secs(30),
            "the quota view has the usage",
            || async {
                let (_, v) = get(
                    &http,
                    &format!("{}/v1/customers/{c}/quota", ingest.url),
                    &admin,
                )
                .await;
                (v["used"].as_f64() == Some(n)).then_some(())
            },
        )
        .await;
    }
    let sql = "SELECT sum(quantity) FROM usage_daily WHERE tenant = 'globex'";
    wait_until(
        Duration::from_secs(30),
        "the other tenant's usage folded",
        || async { (env.scalar(sql).await >= 40.0).then_some(()) },
    )
    .await;

    links_and_sessions(&http, &ingest.url, &admin, &k_limit).await;
    let mint = |ttl: i64| {
        let (http, url, admin) = (&http, &ingest.url, &admin);
        async move {
            let (s, v) = post(
                http,
                &format!("{url}/v1/customers/c_warn/dashboard-link"),
                Some(admin),
                json!({"ttl_secs": ttl}),
            )
            .await;
            assert_eq!(s, 201, "{v}");
            v["path"].as_str().expect("path").to_string()
        }
    };
    let warn_link = mint(600).await;
    // c_warn's address, set by the admin (the panel shows where the emails go).
    let r = http
        .put(format!("{}/admin/customers/c_warn/email", sync.running.url))
        .bearer_auth(&admin)
        .json(&json!({"email": "owner@c-warn.test"}))
        .send()
        .await
        .expect("set the address");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let second_link = mint(600).await;

    let vars = vec![
        ("DASH_API", ingest.url.clone()),
        ("DASH_BILLING", "1".to_string()),
        ("DASH_STRIPE_URL", fake.url.clone()),
        ("DASH_KEY_OK", k_ok),
        ("DASH_KEY_LIMIT", k_limit.clone()),
        ("DASH_KEY_TENANT", k_tenant.clone()),
        ("DASH_KEY_OTHER_TENANT", other_tenant),
        ("DASH_LINK_WARN", warn_link),
        ("DASH_LINK_WARN_2", second_link),
    ];
    let out = run_browser(&dir, &chromium, "dashboard", &vars).await;
    for step in [
        "ok - the page shows the numbers the API returns",
        "ok - no request leaves the API's origins",
        "ok - over 80 %: warning",
        "ok - emails: every kind with a switch as the API has it",
        "ok - emails: a refused change shows the API's error",
        "ok - at the limit: upgrade prompt",
        "ok - upgrade modal",
        "ok - keyboard",
        "ok - accessibility",
        "ok - narrow screen",
        "ok - embedded compact display",
        "ok - sign-in refuses",
        "ok - clicking a plan lands on the checkout URL",
        "ok - next invoice: none for a free customer",
        "ok - after the checkout completes the page shows the new plan",
        "ok - next invoice: Next invoice: $29.00 on ",
        "ok - customer portal",
        "ok - cancel",
        "ok - no page errors",
    ] {
        assert!(out.contains(step), "missing `{step}` in the browser output");
    }
    // The choice the page saved is the one billing-sync has (read with a tenant key).
    let (s, v) = get(
        &http,
        &format!("{}/v1/email-preferences?customer=c_warn", sync.running.url),
        &k_tenant,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let subscribed = |kind: &str| {
        v["kinds"]
            .as_array()
            .and_then(|a| a.iter().find(|k| k["kind"] == kind))
            .map(|k| k["subscribed"].clone())
    };
    assert_eq!(subscribed("usage_warning"), Some(json!(false)), "{v}");
    assert_eq!(subscribed("receipt"), Some(json!(true)), "{v}");
    assert_eq!(subscribed("renewal_reminder"), Some(json!(true)), "{v}");
    // The plan the page showed is the one billing-sync recorded.
    let (s, v) = get(
        &http,
        &format!("{}/subscription/status", sync.running.url),
        &k_limit,
    )
    .await;
    assert_eq!(
        (s, v["plan"].as_str()),
        (StatusCode::OK, Some("starter")),
        "{v}"
    );
    ingest.stop().await;
    sync.running.stop().await;
    fake.stop().await;
    agg.stop().await;
}
