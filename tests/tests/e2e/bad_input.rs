//! Bad input at the intake (DESIGN.md invariant 4, the "clear 4xx" half): every kind of refused
//! request gets its status, its machine-readable `error.code`, the failing fields, a request id, and
//! puts nothing on the events topic.

use std::collections::HashMap;
use std::time::Duration;

use platform::principal::Scope;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use schemas::api::ErrorBody;
use serde_json::{Value, json};
use tests::{TestEnv, event, events};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Which `Authorization` header a case sends.
#[derive(Debug, Clone, Copy)]
enum Auth {
    /// A tenant-wide `acme` key with the ingest scope.
    Ingest,
    /// An `acme` key with only the read scope.
    ReadOnly,
    /// An `acme` key with the ingest scope, limited to customer `cust_a`.
    CustomerA,
    /// A well-formed key that does not exist.
    Unknown,
    /// No `Authorization` header.
    Missing,
    /// This exact header value.
    Raw(&'static str),
}

/// One refused request and what the answer must be.
struct Case {
    name: &'static str,
    auth: Auth,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Exactly the expected `error.details`, as (index, field, code).
    details: Vec<(usize, &'static str, &'static str)>,
}

fn case(
    name: &'static str,
    auth: Auth,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
    details: &[(usize, &'static str, &'static str)],
) -> Case {
    Case {
        name,
        auth,
        body: body.into(),
        status,
        code,
        details: details.to_vec(),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialize a test body")
}

/// A valid event with `field` set to `value` (`data.x` sets inside `data`; `Value::Null` removes it).
fn with(field: &str, value: Value) -> Value {
    let mut e = event("bad-1", "cust_a", "analyze", 1);
    let obj = match field.strip_prefix("data.") {
        Some(inner) => (inner, &mut e["data"]),
        None => (field, &mut e),
    };
    let (name, target) = obj;
    let map = target.as_object_mut().expect("event fields are an object");
    if value.is_null() {
        map.remove(name);
    } else {
        map.insert(name.to_string(), value);
    }
    e
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format an RFC 3339 time")
}

fn cases() -> Vec<Case> {
    let now = OffsetDateTime::now_utc();
    let valid = event("ok-1", "cust_a", "analyze", 1);
    let mut batch: Vec<Value> = events("mix", 5, 2).0;
    batch[3]["data"]["quantity"] = json!(-5);
    let too_many = Value::Array(events("many", 1_001, 3).0);
    let two_mib = format!("\"{}\"", "a".repeat(2 * 1024 * 1024));
    vec![
        case(
            "malformed JSON",
            Auth::Ingest,
            &b"[{\"id\": \"x\","[..],
            400,
            "malformed_json",
            &[],
        ),
        case(
            "a JSON string instead of an object",
            Auth::Ingest,
            &b"\"hello\""[..],
            400,
            "invalid_events",
            &[(0, "", "not_an_object")],
        ),
        case(
            "a JSON number instead of an object",
            Auth::Ingest,
            &b"42"[..],
            400,
            "invalid_events",
            &[(0, "", "not_an_object")],
        ),
        case(
            "a number inside the batch",
            Auth::Ingest,
            bytes(&json!([valid, 7])),
            400,
            "invalid_events",
            &[(1, "", "not_an_object")],
        ),
        case(
            "empty array",
            Auth::Ingest,
            &b"[]"[..],
            400,
            "empty_batch",
            &[],
        ),
        case(
            "id is a number",
            Auth::Ingest,
            bytes(&with("id", json!(17))),
            400,
            "invalid_events",
            &[(0, "id", "wrong_type")],
        ),
        case(
            "subject is a number",
            Auth::Ingest,
            bytes(&with("subject", json!(17))),
            400,
            "invalid_events",
            &[(0, "subject", "wrong_type")],
        ),
        case(
            "quantity is the string NaN",
            Auth::Ingest,
            bytes(&with("data.quantity", json!("NaN"))),
            400,
            "invalid_events",
            &[(0, "data.quantity", "wrong_type")],
        ),
        case(
            "endpoint is a number",
            Auth::Ingest,
            bytes(&with("data.endpoint", json!(3))),
            400,
            "invalid_events",
            &[(0, "data.endpoint", "wrong_type")],
        ),
        case(
            "time is a number",
            Auth::Ingest,
            bytes(&with("time", json!(1_700_000_000))),
            400,
            "invalid_events",
            &[(0, "time", "wrong_type")],
        ),
        case(
            "data is a string",
            Auth::Ingest,
            bytes(&with("data", json!("analyze"))),
            400,
            "invalid_events",
            &[(0, "data", "wrong_type")],
        ),
        case(
            "missing id",
            Auth::Ingest,
            bytes(&with("id", Value::Null)),
            400,
            "invalid_events",
            &[(0, "id", "required")],
        ),
        case(
            "missing subject",
            Auth::Ingest,
            bytes(&with("subject", Value::Null)),
            400,
            "invalid_events",
            &[(0, "subject", "required")],
        ),
        case(
            "missing type",
            Auth::Ingest,
            bytes(&with("type", Value::Null)),
            400,
            "invalid_events",
            &[(0, "type", "required")],
        ),
        case(
            "empty id",
            Auth::Ingest,
            bytes(&with("id", json!("  "))),
            400,
            "invalid_events",
            &[(0, "id", "invalid_value")],
        ),
        case(
            "negative quantity",
            Auth::Ingest,
            bytes(&with("data.quantity", json!(-1))),
            400,
            "invalid_events",
            &[(0, "data.quantity", "invalid_value")],
        ),
        case(
            "quantity 1e300",
            Auth::Ingest,
            bytes(&with("data.quantity", json!(1e300))),
            400,
            "invalid_events",
            &[(0, "data.quantity", "invalid_value")],
        ),
        case(
            "unknown meter",
            Auth::Ingest,
            bytes(&with("type", json!("tokens"))),
            400,
            "invalid_events",
            &[(0, "type", "unknown_meter")],
        ),
        case(
            "time is not RFC 3339",
            Auth::Ingest,
            bytes(&with("time", json!("yesterday"))),
            400,
            "invalid_events",
            &[(0, "time", "invalid_value")],
        ),
        case(
            "time without an offset",
            Auth::Ingest,
            bytes(&with("time", json!("2025-01-01T00:00:00"))),
            400,
            "invalid_events",
            &[(0, "time", "invalid_value")],
        ),
        case(
            "too late: 40 days ago",
            Auth::Ingest,
            bytes(&with(
                "time",
                json!(rfc3339(now - time::Duration::days(40))),
            )),
            400,
            "invalid_events",
            &[(0, "time", "too_late")],
        ),
        case(
            "in the future: +10 min",
            Auth::Ingest,
            bytes(&with(
                "time",
                json!(rfc3339(now + time::Duration::minutes(10))),
            )),
            400,
            "invalid_events",
            &[(0, "time", "in_future")],
        ),
        case(
            "wrong specversion",
            Auth::Ingest,
            bytes(&with("specversion", json!("0.3"))),
            400,
            "invalid_events",
            &[(0, "specversion", "invalid_value")],
        ),
        case(
            "one bad event among valid ones",
            Auth::Ingest,
            bytes(&Value::Array(batch)),
            400,
            "invalid_events",
            &[(3, "data.quantity", "invalid_value")],
        ),
        case(
            "2 MiB body",
            Auth::Ingest,
            two_mib,
            413,
            "payload_too_large",
            &[],
        ),
        case(
            "1,001 events",
            Auth::Ingest,
            bytes(&too_many),
            413,
            "too_many_events",
            &[],
        ),
        case(
            "no Authorization",
            Auth::Missing,
            bytes(&valid),
            401,
            "missing_api_key",
            &[],
        ),
        case(
            "Basic instead of Bearer",
            Auth::Raw("Basic YWNtZTpzZWNyZXQ="),
            bytes(&valid),
            401,
            "missing_api_key",
            &[],
        ),
        case(
            "empty bearer token",
            Auth::Raw("Bearer "),
            bytes(&valid),
            401,
            "missing_api_key",
            &[],
        ),
        case(
            "wrong key",
            Auth::Unknown,
            bytes(&valid),
            401,
            "invalid_api_key",
            &[],
        ),
        case(
            "read-only key",
            Auth::ReadOnly,
            bytes(&valid),
            403,
            "insufficient_scope",
            &[],
        ),
        case(
            "body names another tenant",
            Auth::Ingest,
            bytes(&with("tenant", json!("globex"))),
            403,
            "forbidden",
            &[(0, "tenant", "tenant_mismatch")],
        ),
        case(
            "customer-scoped key sends for another customer",
            Auth::CustomerA,
            bytes(&json!([valid, event("ok-2", "cust_b", "analyze", 1)])),
            403,
            "forbidden",
            &[(1, "subject", "customer_forbidden")],
        ),
    ]
}

/// Every message on `topic`, read from the beginning with a fresh consumer, once the topic's
/// high watermarks say all of them were read (or after 20 s).
fn read_topic(env: &TestEnv, topic: &str) -> Vec<Value> {
    let consumer: BaseConsumer = schemas::kafka::client_config(&env.kafka)
        .set("group.id", format!("{}-reader", env.group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let mut total = 0;
    for p in 0..env.kafka.partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks of the events topic");
        total += high - low;
    }
    consumer.subscribe(&[topic]).expect("subscribe the reader");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (seen.len() as i64) < total && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("reading the events topic");
            let payload = m.payload().unwrap_or_default();
            seen.push(serde_json::from_slice(payload).unwrap_or_else(|e| {
                panic!(
                    "not JSON on the events topic ({e}): {}",
                    String::from_utf8_lossy(payload)
                )
            }));
        }
    }
    assert_eq!(
        seen.len() as i64,
        total,
        "messages read vs. high watermarks"
    );
    // A batch message holds an array of events: one value per event.
    seen.into_iter()
        .flat_map(|v| match v {
            Value::Array(items) => items,
            one => vec![one],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_request_gets_its_code_and_produces_nothing() {
    let env = TestEnv::new("badinput").await;
    let ingest = env.start_ingest().await;
    let keys: HashMap<&str, String> = HashMap::from([
        ("ingest", env.key("acme", &[Scope::Ingest], None).await),
        ("read", env.key("acme", &[Scope::Read], None).await),
        (
            "cust_a",
            env.key("acme", &[Scope::Ingest], Some("cust_a")).await,
        ),
    ]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/events", ingest.url);

    let mut failures = Vec::new();
    for c in cases() {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body(c.body.clone());
        req = match c.auth {
            Auth::Ingest => req.bearer_auth(&keys["ingest"]),
            Auth::ReadOnly => req.bearer_auth(&keys["read"]),
            Auth::CustomerA => req.bearer_auth(&keys["cust_a"]),
            Auth::Unknown => req.bearer_auth(format!("mk_{}", "0".repeat(48))),
            Auth::Missing => req,
            Auth::Raw(v) => req.header("authorization", v),
        };
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: request failed: {e}", c.name));
        let status = r.status().as_u16();
        let header_id = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text = r.text().await.expect("read the answer");
        let got: ErrorBody = match serde_json::from_str(&text) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!(
                    "{}: {status}, body is not an ErrorBody ({e}): {text}",
                    c.name
                ));
                continue;
            }
        };
        let details: Vec<(usize, String, String)> = got
            .error
            .details
            .iter()
            .map(|d| (d.index, d.field.clone(), d.code.as_str().to_string()))
            .collect();
        let want_details: Vec<(usize, String, String)> = c
            .details
            .iter()
            .map(|(i, f, code)| (*i, (*f).to_string(), (*code).to_string()))
            .collect();
        let mut problems = Vec::new();
        if (status, got.error.code.as_str()) != (c.status, c.code) {
            problems.push(format!(
                "got {status} {:?}, want {} {:?}",
                got.error.code, c.status, c.code
            ));
        }
        if details != want_details {
            problems.push(format!("details {details:?}, want {want_details:?}"));
        }
        if got.error.message.is_empty() {
            problems.push("empty message".into());
        }
        if header_id.is_none() {
            problems.push("no x-request-id header".into());
        }
        if got.error.request_id.is_none() || got.error.request_id != header_id {
            problems.push(format!(
                "request_id {:?} differs from the x-request-id header {header_id:?}",
                got.error.request_id
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} (body: {text:.300})",
                c.name,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing refused reached the log: a valid sentinel is the only message on the topic.
    let r = http
        .post(&url)
        .bearer_auth(&keys["ingest"])
        .json(&event("sentinel", "cust_a", "analyze", 1))
        .send()
        .await
        .expect("post the sentinel");
    assert_eq!(r.status(), 202, "the sentinel is accepted");
    let on_topic = read_topic(&env, &env.topics.events);
    let ids: Vec<&str> = on_topic
        .iter()
        .map(|v| v["id"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(ids, vec!["sentinel"], "messages on the events topic");
    ingest.stop().await;
}

/// A chunked body (no `Content-Length`) over the limit is cut off while reading: 413 as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_chunked_body_is_413() {
    let env = TestEnv::new("badchunked").await;
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let addr = ingest.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect to the ingest");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    // 2 MiB in 64 KiB chunks; the server may answer and close before all of it is sent.
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..32 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "want 413, got: {answer:.400}"
    );
    assert!(answer.contains("\"payload_too_large\""), "{answer:.400}");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_string_gets_the_error_body_naming_the_query() {
    let env = TestEnv::new("badquery").await;
    let ingest = env.start_ingest().await;
    let key = env.key("acme", &[Scope::Read], Some("cust_q")).await;
    let http = reqwest::Client::new();
    for path in [
        "/usage?days=many",
        "/usage/history?days=many",
        "/usage/history?days=-1",
    ] {
        let r = http
            .get(format!("{}{path}", ingest.url))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let body: ErrorBody = r.json().await.expect("the standard error body");
        assert_eq!(body.error.code, "invalid_request", "{path}");
        assert_eq!(body.error.details[0].field, "query", "{path}");
    }
    ingest.stop().await;
}
