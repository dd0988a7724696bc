//! A dashboard sign-in link signs in once across ingest instances (issue 26 part 4): two instances
//! with the same `dashboard_secret` on the real ClickHouse; a link used on one is `link_used` on
//! the other, and links raced on both at the same moment give exactly one session each.

use platform::principal::Scope;
use serde_json::{Value, json};
use tests::TestEnv;

async fn exchange(http: &reqwest::Client, base: &str, link: &str) -> (u16, Value) {
    let r = http
        .post(format!("{base}/dashboard/session"))
        .json(&json!({"link": link}))
        .send()
        .await
        .expect("exchange");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_signs_in_once_across_two_instances() {
    let env = TestEnv::new("dashboard_links").await;
    let mut cfg = env.ingest_config();
    cfg.dashboard_secret = secrecy::SecretString::from("shared-links-secret");
    let a = env.start_ingest_with(cfg.clone()).await;
    let b = env.start_ingest_with(cfg).await;
    let http = reqwest::Client::new();
    tests::wait_ready(&http, &a.url).await;
    tests::wait_ready(&http, &b.url).await;
    let admin = env.key("acme", &[Scope::Admin, Scope::Read], None).await;
    let mint = || async {
        let r = http
            .post(format!("{}/v1/customers/lin/dashboard-link", a.url))
            .bearer_auth(&admin)
            .json(&json!({"ttl_secs": 600}))
            .send()
            .await
            .expect("mint");
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.expect("json")["link"]
            .as_str()
            .expect("link")
            .to_string()
    };

    // Used on A, then refused on B (and on A).
    let link = mint().await;
    let (s, v) = exchange(&http, &a.url, &link).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["customer"], "lin");
    for base in [&b.url, &a.url] {
        let (s, v) = exchange(&http, base, &link).await;
        assert_eq!((s, &v["error"]["code"]), (401, &json!("link_used")), "{v}");
    }

    // Raced: each link exchanged on both instances at once, one session per link.
    for round in 0..8 {
        let link = mint().await;
        let (ra, rb) = tokio::join!(
            exchange(&http, &a.url, &link),
            exchange(&http, &b.url, &link)
        );
        let ok = [ra.0, rb.0].iter().filter(|s| **s == 200).count();
        assert_eq!(ok, 1, "round {round}: {ra:?} {rb:?}");
        let refused = if ra.0 == 200 { &rb } else { &ra };
        assert_eq!(
            refused.1["error"]["code"], "link_used",
            "round {round}: {refused:?}"
        );
    }
    let claims: u64 = env
        .ch()
        .query("SELECT count() FROM dashboard_link_claims")
        .fetch_one()
        .await
        .expect("claims");
    assert_eq!(
        claims,
        2 + 8 * 2,
        "every attempt past the instance's own memory is recorded"
    );
    a.stop().await;
    b.stop().await;
}
