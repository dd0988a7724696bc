//! The official CloudEvents SDKs as clients of `POST /v1/events`: the Python SDK (PyPI
//! `cloudevents`, `tests/cloudevents/send.py`) in binary and structured mode and the JavaScript
//! SDK (npm `cloudevents`, `tests/cloudevents/send.mjs`) in binary, structured and batched mode.
//! Each event is followed through the events topic into `events_raw` (its meter fields where they
//! always were, every other attribute in its column) and into the rollups, one (customer,
//! endpoint) per event so that each is seen there on its own. Both SDKs are installed by
//! `scripts/install.sh cloudevents`.

use std::path::PathBuf;
use std::time::Duration;

use platform::principal::Scope;
use serde_json::Value;
use tests::{TestEnv, workspace_root};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What one event sent by an SDK must become in `events_raw`.
struct Expected {
    id: &'static str,
    customer: &'static str,
    endpoint: &'static str,
    quantity: f64,
    source: &'static str,
    datacontenttype: &'static str,
    extensions: &'static str,
}

const SCHEMA: &str = "https://metering.example/schemas/api_call.json";

fn sdk_dir() -> PathBuf {
    workspace_root().join("tests/cloudevents")
}

/// Runs an SDK script (`program` `script`) against the ingest at `url`; returns its JSON lines,
/// panicking with its output when it failed.
async fn run_sdk(program: &str, script: &str, url: &str, key: &str, run: &str) -> Vec<Value> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(sdk_dir().join(script))
        .current_dir(sdk_dir())
        .env("CE_URL", url)
        .env("CE_KEY", key)
        .env("CE_RUN", run)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} finished within 120 s"))
        .unwrap_or_else(|e| {
            panic!("{program} runs ({e}): run `bash scripts/install.sh cloudevents`")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("--- {script} stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        !stderr.contains("No module named") && !stderr.contains("ERR_MODULE_NOT_FOUND"),
        "the CloudEvents SDK is missing: run `bash scripts/install.sh cloudevents`: {stderr}"
    );
    assert!(out.status.success(), "{script} failed ({})", out.status);
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Waits until every expected event counts exactly once everywhere, then checks each one's row
/// in `events_raw` and its own cell of the hourly and daily rollups.
async fn check_stored(env: &TestEnv, run: &str, expected: &[Expected]) {
    let total: f64 = expected.iter().map(|e| e.quantity).sum();
    env.assert_stored_exactly(expected.len() as u64, total)
        .await;
    type Row = (
        String,
        String,
        f64,
        String,
        String,
        String,
        String,
        String,
        u32,
    );
    for e in expected {
        let id = format!("{run}-{}", e.id);
        let row: Row = env
            .ch()
            .query(
                "SELECT customer, endpoint, quantity, source, datacontenttype, dataschema, \
                 extensions, time_rfc3339, toUInt32(time) FROM events_raw WHERE id = ?",
            )
            .bind(&id)
            .fetch_one()
            .await
            .unwrap_or_else(|err| panic!("{id} in events_raw: {err}"));
        let (customer, endpoint, quantity, source, dct, schema, extensions, at, secs) = row;
        assert_eq!(
            (
                customer.as_str(),
                endpoint.as_str(),
                quantity,
                source.as_str(),
                dct.as_str(),
                schema.as_str(),
                extensions.as_str()
            ),
            (
                e.customer,
                e.endpoint,
                e.quantity,
                e.source,
                e.datacontenttype,
                SCHEMA,
                e.extensions
            ),
            "{id}"
        );
        // `time` as the SDK set it (now, to the millisecond or better), whole seconds in `time`.
        let t = OffsetDateTime::parse(&at, &Rfc3339).unwrap_or_else(|err| panic!("{at}: {err}"));
        assert_eq!(t.unix_timestamp(), i64::from(secs), "{id}: {at}");
        assert!(
            (OffsetDateTime::now_utc() - t).whole_minutes() < 5,
            "{id}: {at}"
        );
    }
    for table in ["usage_hourly", "usage_daily"] {
        let sql = format!(
            "SELECT customer, endpoint, sum(events), sum(quantity) FROM {table} \
             GROUP BY customer, endpoint ORDER BY customer, endpoint"
        );
        let cells: Vec<(String, String, u64, f64)> =
            env.ch().query(&sql).fetch_all().await.expect("rollup");
        let mut want: Vec<(String, String, u64, f64)> = expected
            .iter()
            .map(|e| (e.customer.into(), e.endpoint.into(), 1, e.quantity))
            .collect();
        want.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(cells, want, "{table}: one cell per event");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_sdk_sends_binary_and_structured_events_counted_in_the_rollups() {
    let env = TestEnv::new("ce_python").await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let run = env.name.clone();
    let lines = run_sdk("python3", "send.py", &ingest.url, &key, &run).await;
    let modes: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["mode"].as_str().unwrap_or(""),
                l["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(modes, [("binary", 202), ("structured", 202)]);
    // The SDK really sent each mode: ce-* headers in one, the event format's media type in the
    // other.
    assert_eq!(lines[0]["headers"]["ce-id"], format!("{run}-bin-1"));
    assert_eq!(lines[0]["headers"]["ce-tracestate"], "k=v%20w");
    assert_eq!(
        lines[1]["headers"]["content-type"],
        "application/cloudevents+json"
    );
    let source = "/services/python-sdk";
    check_stored(
        &env,
        &run,
        &[
            Expected {
                id: "bin-1",
                customer: "cust_py",
                endpoint: "drill",
                quantity: 7.0,
                source,
                datacontenttype: "application/json",
                extensions: r#"{"region":"ap","tracestate":"k=v w"}"#,
            },
            Expected {
                id: "str-1",
                customer: "cust_py",
                endpoint: "analyze",
                quantity: 1.0,
                source,
                datacontenttype: "application/json",
                extensions: r#"{"priority":9,"region":"eu"}"#,
            },
        ],
    )
    .await;
    // An analyst's query by an extension attribute (visitParamExtract*: 18.16 and modern alike).
    let by_region: Vec<(String, u64, f64)> = env
        .ch()
        .query(
            "SELECT visitParamExtractString(extensions, 'region') AS region, count(), \
             sum(quantity) FROM events_raw GROUP BY region ORDER BY region",
        )
        .fetch_all()
        .await
        .expect("by region");
    assert_eq!(
        by_region,
        [("ap".to_string(), 1, 7.0), ("eu".to_string(), 1, 1.0)]
    );
    agg.stop().await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_javascript_sdk_sends_binary_structured_and_batched_events_counted_in_the_rollups() {
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success())
            && sdk_dir()
                .join("node_modules/cloudevents/package.json")
                .exists(),
        "node or the npm package cloudevents is missing: run `bash scripts/install.sh cloudevents`"
    );
    let env = TestEnv::new("ce_js").await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let ingest = env.start_ingest().await;
    let (agg, _) = env.start_aggregator().await;
    let run = env.name.clone();
    let lines = run_sdk("node", "send.mjs", &ingest.url, &key, &run).await;
    let modes: Vec<(&str, u64, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["mode"].as_str().unwrap_or(""),
                l["status"].as_u64().unwrap_or(0),
                l["body"]["accepted"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("binary", 202, 1),
            ("structured", 202, 1),
            ("batched", 202, 3)
        ]
    );
    assert_eq!(lines[0]["headers"]["ce-id"], format!("{run}-bin-1"));
    let source = "/services/js-sdk";
    let dct = "application/json";
    check_stored(
        &env,
        &run,
        &[
            // Binary mode: every extension is a header, read back as a string.
            Expected {
                id: "bin-1",
                customer: "cust_js",
                endpoint: "analyze",
                quantity: 2.0,
                source,
                datacontenttype: dct,
                extensions: r#"{"priority":"3","region":"eu"}"#,
            },
            Expected {
                id: "str-1",
                customer: "cust_js",
                endpoint: "redact",
                quantity: 3.0,
                source,
                datacontenttype: dct,
                extensions: r#"{"priority":5,"region":"us","urgent":true}"#,
            },
            Expected {
                id: "bat-1",
                customer: "cust_js",
                endpoint: "report",
                quantity: 1.0,
                source,
                datacontenttype: dct,
                extensions: r#"{"batchpos":1}"#,
            },
            Expected {
                id: "bat-2",
                customer: "cust_js2",
                endpoint: "drill",
                quantity: 4.0,
                source,
                datacontenttype: dct,
                extensions: r#"{"batchpos":2}"#,
            },
            Expected {
                id: "bat-3",
                customer: "cust_js2",
                endpoint: "analyze",
                quantity: 5.0,
                source,
                datacontenttype: dct,
                extensions: r#"{"batchpos":3}"#,
            },
        ],
    )
    .await;
    agg.stop().await;
    ingest.stop().await;
}
