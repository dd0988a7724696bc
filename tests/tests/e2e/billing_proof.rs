//! The usage proof per customer-hour (`GET /admin/usage/proof`, `billing-sync reconcile --month`),
//! end to end (real broker, real ClickHouse, the Stripe fake, the billing-sync binary for the CLI):
//! every customer-hour of the month with its accepted events, rollup, ledger, Stripe summary and
//! verdict for an ok hour, a late-usage hour after its correction, an unbillable hour and an
//! under-report; totals per customer; the CLI's `--json` equals the endpoint's answer and its
//! table lists the same hours; a non-admin key is refused and a tenant sees only its customers.

use std::collections::BTreeSet;
use std::time::Duration;

use billing_sync::usage::proof::Month;
use platform::principal::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::billing::{STRIPE_KEY, WEBHOOK_SECRET};
use tests::metered::{Metered, TENANT, hour_start, now};
use tests::wait_until;

/// The other tenant of the test (its usage is written straight into the rollup).
const OTHER: &str = "beta";

/// Environment variables that point the billing-sync binary at `m`'s resources, as the service
/// is configured.
fn cli_env(m: &Metered) -> Vec<(String, String)> {
    let c = &m.config;
    [
        ("BILLING_CLICKHOUSE__URL", c.clickhouse.url.clone()),
        (
            "BILLING_CLICKHOUSE__DATABASE",
            c.clickhouse.database.clone(),
        ),
        ("BILLING_CLICKHOUSE__MIGRATE", "false".into()),
        ("BILLING_KAFKA__BROKERS", c.kafka.brokers.clone()),
        ("BILLING_KAFKA__CREATE_TOPICS", "false".into()),
        ("BILLING_STRIPE__API_BASE", c.stripe.api_base.clone()),
        ("BILLING_STRIPE__SECRET_KEY", STRIPE_KEY.into()),
        ("BILLING_STRIPE__WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        (
            "BILLING_USAGE__BACKFILL_DAYS",
            c.usage.backfill_days.to_string(),
        ),
        (
            "BILLING_USAGE__SETTLE_SECS",
            c.usage.settle_secs.to_string(),
        ),
        (
            "BILLING_USAGE__CREATE_CUSTOMERS",
            c.usage.create_customers.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `billing-sync reconcile <args>`: its stdout; panics unless it exits 0.
async fn cli(m: &Metered, args: &[&str]) -> String {
    let out = tokio::process::Command::new(tests::binary("billing-sync"))
        .arg("reconcile")
        .args(args)
        .env_remove("BILLING_CONFIG_FILE")
        .envs(cli_env(m))
        .output()
        .await
        .expect("run billing-sync reconcile");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}\n{stdout}");
    stdout
}

/// `GET /admin/usage/proof?<query>` with `key`: status and JSON.
async fn get_proof(m: &Metered, key: Option<&str>, query: &str) -> (StatusCode, Value) {
    let mut req = m
        .http
        .get(format!("{}/admin/usage/proof?{query}", m.sync.running.url));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.expect("GET /admin/usage/proof");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The proof's hours of every month in `months`, through the endpoint with `key`.
async fn hours_of(m: &Metered, key: &str, months: &BTreeSet<String>, extra: &str) -> Vec<Value> {
    let mut hours = Vec::new();
    for month in months {
        let (status, v) = get_proof(m, Some(key), &format!("month={month}{extra}")).await;
        assert_eq!(status, 200, "{v}");
        hours.extend(v["hours"].as_array().cloned().unwrap_or_default());
    }
    hours
}

/// The row of one customer-hour.
fn row<'a>(hours: &'a [Value], customer: &str, hour: i64) -> &'a Value {
    let found: Vec<&Value> = hours
        .iter()
        .filter(|h| h["customer"] == customer && h["hour"] == hour)
        .collect();
    assert_eq!(found.len(), 1, "{customer} at {hour}: {hours:#?}");
    found[0]
}

/// (events, accepted, rollup, ledger, stripe, verdict) of a row.
fn columns(h: &Value) -> (Value, Value, Value, Value, Value, Value) {
    (
        h["events"].clone(),
        h["accepted"].clone(),
        h["rollup"].clone(),
        h["ledger"].clone(),
        h["stripe"].clone(),
        h["verdict"].clone(),
    )
}

/// (revision, value, state) of each revision of a row.
fn revisions(h: &Value) -> Vec<(u64, i64, String)> {
    h["revisions"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| {
                    (
                        x["revision"].as_u64().unwrap_or(99),
                        x["value"].as_i64().unwrap_or(-1),
                        x["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until billing-sync knows `key` (keys are reloaded every few seconds); its first answer.
async fn known(m: &Metered, key: &str, query: &str) -> (StatusCode, Value) {
    wait_until(
        Duration::from_secs(30),
        "billing-sync knows the key",
        || async {
            let (s, v) = get_proof(m, Some(key), query).await;
            (s != StatusCode::UNAUTHORIZED).then_some((s, v))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proof_lists_every_customer_hour_with_its_columns_and_verdict() {
    let m = Metered::start("bill_proof", |c| c.usage.backfill_days = 1).await;
    let (h, old) = (
        hour_start(now() - 3 * 3_600),
        hour_start(now() - 30 * 3_600),
    );
    let months: BTreeSet<String> = [h, old].iter().map(|t| Month::of(*t).to_string()).collect();
    let month = Month::of(h).to_string();
    m.calls("p-ok", h + 60, &[1.0; 5]).await;
    m.calls("p-late", h + 60, &[1.0; 5]).await;
    m.calls("p-under", h + 60, &[1.0; 2]).await;
    m.calls("p-old", old + 60, &[1.0; 4]).await;
    // (Usage in the window too: its report creates p-old's Stripe customer.)
    m.calls("p-old", h + 60, &[1.0]).await;
    m.wait_rollup("p-ok", h, 5.0).await;
    m.wait_rollup("p-late", h, 5.0).await;
    m.wait_rollup("p-under", h, 2.0).await;
    m.wait_rollup("p-old", old, 4.0).await;
    m.wait_rollup("p-old", h, 1.0).await;
    let s = m.report().await;
    assert_eq!((s.reported, s.unbillable), (4, 1), "{s:?}");
    // Late usage for p-late, billed by the next run; late usage for p-under, not yet.
    m.calls("p-late", h + 120, &[1.0; 3]).await;
    m.wait_rollup("p-late", h, 8.0).await;
    assert_eq!(m.report().await.corrections, 1);
    m.calls("p-under", h + 120, &[1.0; 4]).await;
    m.wait_rollup("p-under", h, 6.0).await;
    // Another tenant's customer with the same name as one of ours, straight in the rollup.
    m.env
        .ch()
        .query(
            "INSERT INTO usage_hourly (tenant, customer, meter, endpoint, hour, events, quantity) \
             VALUES (?, 'p-ok', 'api_call', 'analyze', toDateTime(?), 7, 7)",
        )
        .bind(OTHER)
        .bind(h)
        .execute()
        .await
        .expect("other tenant's usage");

    let hours = hours_of(&m, &m.admin, &months, "").await;
    assert_eq!(hours.len(), 5, "every customer-hour, ours only: {hours:#?}");
    assert!(hours.iter().all(|x| x["tenant"] == TENANT), "{hours:#?}");
    let ok = row(&hours, "p-ok", h);
    assert_eq!(
        columns(ok),
        (
            json!(5),
            json!(5.0),
            json!(5.0),
            json!(5.0),
            json!(5.0),
            json!("ok")
        ),
        "{ok}"
    );
    assert_eq!(revisions(ok), vec![(0, 5, "sent".to_string())]);
    assert_eq!(ok["reason"], "", "{ok}");
    let late = row(&hours, "p-late", h);
    assert_eq!(
        columns(late),
        (
            json!(8),
            json!(8.0),
            json!(8.0),
            json!(8.0),
            json!(8.0),
            json!("ok")
        ),
        "{late}"
    );
    assert_eq!(
        revisions(late),
        vec![(0, 5, "sent".to_string()), (1, 3, "sent".to_string())]
    );
    assert_eq!(
        late["reason"], "late usage billed by 1 correction",
        "{late}"
    );
    assert_eq!(
        late["revisions"][1]["identifier"],
        format!("{TENANT}:p-late:api_call:{h}:r1")
    );
    let gone = row(&hours, "p-old", old);
    assert_eq!(
        columns(gone),
        (
            json!(4),
            json!(4.0),
            json!(4.0),
            json!(0.0),
            json!(0.0),
            json!("unbillable")
        ),
        "{gone}"
    );
    assert_eq!(gone["unbillable"], json!(4.0));
    assert!(
        gone["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("outside_window") && r.contains("backfill_days = 1")),
        "{gone}"
    );
    let under = row(&hours, "p-under", h);
    assert_eq!(
        columns(under),
        (
            json!(6),
            json!(6.0),
            json!(6.0),
            json!(2.0),
            json!(2.0),
            json!("under_report")
        ),
        "{under}"
    );
    assert!(
        under["reason"]
            .as_str()
            .is_some_and(|r| r.contains("holds 4 more") && r.contains("correction")),
        "{under}"
    );

    // Totals per customer, and the month's verdict.
    let (status, proof) = get_proof(&m, Some(&m.admin), &format!("month={month}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&proof["month"], &proof["tenant"], &proof["exact"]),
        (&json!(month), &json!(TENANT), &json!(false)),
        "{proof}"
    );
    assert_eq!(
        (&proof["differences"], &proof["verdicts"]["under_report"]),
        (&json!(1), &json!(1)),
        "{proof}"
    );
    let totals = proof["totals"].as_array().expect("totals");
    let total = |c: &str| {
        totals
            .iter()
            .find(|t| t["customer"] == c)
            .unwrap_or_else(|| panic!("{c} in {totals:?}"))
    };
    let t = total("p-late");
    assert_eq!(
        (
            &t["hours"],
            &t["events"],
            &t["rollup"],
            &t["ledger"],
            &t["stripe"]
        ),
        (&json!(1), &json!(8), &json!(8.0), &json!(8.0), &json!(8.0))
    );
    assert_eq!(
        (&t["corrections"], &t["verdict"]),
        (&json!(1), &json!("ok"))
    );
    assert_eq!(total("p-under")["verdict"], "under_report");
    assert_eq!(total("p-ok")["verdict"], "ok");
    // One customer only.
    let only = hours_of(&m, &m.admin, &months, "&customer=p-late").await;
    assert_eq!(only.len(), 1, "{only:#?}");

    // The CLI: --json is the endpoint's answer; the table lists the same hours and totals.
    let text = cli(&m, &["--month", &month, "--tenant", TENANT, "--json"]).await;
    let from_cli: Value = serde_json::from_str(&text).expect("the CLI's JSON");
    // The report window moves on the hour: the answer before or after the CLI ran.
    let (_, after) = get_proof(&m, Some(&m.admin), &format!("month={month}")).await;
    assert!(
        from_cli == proof || from_cli == after,
        "CLI --json and the endpoint:\n{from_cli:#}\n{proof:#}"
    );
    let table = cli(&m, &["--month", &month, "--tenant", TENANT]).await;
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with(&format!("{TENANT} ")))
        .collect();
    let listed = proof["hours"].as_array().map_or(0, Vec::len);
    assert_eq!(lines.len(), listed + totals.len(), "{table}");
    for (customer, verdict) in [
        ("p-ok", "ok"),
        ("p-late", "ok"),
        ("p-under", "under_report"),
    ] {
        assert!(
            lines.iter().any(
                |l| l.contains(&format!(" {customer} ")) && l.contains(&format!(" {verdict} "))
            ),
            "{customer} {verdict}: {table}"
        );
    }
    assert!(table.contains("r0=5 r1=3"), "{table}");
    assert!(table.contains("NOT exact"), "{table}");
    // Without --tenant the CLI sees the other tenant's customer too: the endpoint hid it.
    let all: Value =
        serde_json::from_str(&cli(&m, &["--month", &month, "--json"]).await).expect("JSON");
    assert!(all["tenant"].is_null());
    let theirs: Vec<&Value> = all["hours"]
        .as_array()
        .expect("hours")
        .iter()
        .filter(|x| x["tenant"] == OTHER)
        .collect();
    assert_eq!(theirs.len(), 1, "{all}");
    assert_eq!(
        (&theirs[0]["customer"], &theirs[0]["rollup"]),
        (&json!("p-ok"), &json!(7.0))
    );

    // The next report run sends the late usage: the under-report becomes an ok hour.
    assert_eq!(m.report().await.corrections, 1);
    let hours = hours_of(&m, &m.admin, &months, "").await;
    let under = row(&hours, "p-under", h);
    assert_eq!(
        (&under["ledger"], &under["stripe"], &under["verdict"]),
        (&json!(6.0), &json!(6.0), &json!("ok")),
        "{under}"
    );
    assert!(
        hours
            .iter()
            .all(|x| x["verdict"] == "ok" || x["verdict"] == "unbillable"),
        "{hours:#?}"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proof_needs_an_admin_key_and_shows_only_its_tenant() {
    let m = Metered::start("bill_proof_keys", |_| {}).await;
    let h = hour_start(now() - 2 * 3_600);
    let month = Month::of(h).to_string();
    m.calls("k-1", h + 60, &[1.0; 3]).await;
    m.wait_rollup("k-1", h, 3.0).await;
    assert_eq!(m.report().await.reported, 1);
    m.env
        .ch()
        .query(
            "INSERT INTO usage_hourly (tenant, customer, meter, endpoint, hour, events, quantity) \
             VALUES (?, 'k-2', 'api_call', 'analyze', toDateTime(?), 2, 2)",
        )
        .bind(OTHER)
        .bind(h)
        .execute()
        .await
        .expect("other tenant's usage");
    let q = format!("month={month}");
    let (status, v) = get_proof(&m, None, &q).await;
    assert_eq!(status, 401, "{v}");
    let reader = m.env.key(TENANT, &[Scope::Read, Scope::Ingest], None).await;
    let (status, v) = known(&m, &reader, &q).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (StatusCode::FORBIDDEN, &json!("insufficient_scope")),
        "{v}"
    );
    let scoped = m.env.key(TENANT, &[Scope::Admin], Some("k-1")).await;
    let (status, v) = known(&m, &scoped, &q).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (StatusCode::FORBIDDEN, &json!("customer_forbidden")),
        "{v}"
    );
    let (status, v) = get_proof(&m, Some(&m.admin), "month=2026-1").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request")),
        "{v}"
    );
    // Each tenant's admin key sees its own customers only, even when it names another's.
    let (status, ours) = get_proof(&m, Some(&m.admin), &q).await;
    assert_eq!(status, 200);
    let customers = |v: &Value| -> Vec<(String, String)> {
        v["hours"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                (
                    x["tenant"].as_str().unwrap_or("").to_string(),
                    x["customer"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        customers(&ours),
        vec![(TENANT.to_string(), "k-1".to_string())]
    );
    assert_eq!(ours["hours"][0]["verdict"], "ok", "{ours}");
    let (status, named) = get_proof(&m, Some(&m.admin), &format!("{q}&customer=k-2")).await;
    assert_eq!(status, 200);
    assert_eq!(named["hours"], json!([]), "{named}");
    let theirs_key = m.env.key(OTHER, &[Scope::Admin], None).await;
    let (status, theirs) = known(&m, &theirs_key, &q).await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(
        customers(&theirs),
        vec![(OTHER.to_string(), "k-2".to_string())]
    );
    assert_eq!(theirs["tenant"], OTHER);
    m.stop().await;
}
