//! CloudEvents over HTTP by hand-made requests: every attribute of a binary-mode event is carried
//! on the events topic (members of the event's JSON in the batch message), what the spec calls
//! invalid is refused with the attribute and why (400) or as a media type that cannot be read
//! (415), nothing of a refused request is produced, an empty batch is accepted, and a strict
//! tenant needs `specversion` and `source` while the others keep the seed's short form.

use std::collections::BTreeMap;
use std::time::Duration;

use platform::principal::Scope;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use reqwest::StatusCode;
use schemas::event::Conformance;
use serde_json::{Value, json};
use tests::TestEnv;

/// A request to `/v1/events`: its headers and body.
struct Req {
    headers: Vec<(String, String)>,
    body: String,
}

fn req(headers: &[(&str, &str)], body: impl Into<String>) -> Req {
    Req {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    }
}

async fn post(http: &reqwest::Client, url: &str, key: &str, r: &Req) -> (StatusCode, Value) {
    let mut b = http
        .post(format!("{url}/v1/events"))
        .bearer_auth(key)
        .body(r.body.clone());
    for (k, v) in &r.headers {
        b = b.header(k, v);
    }
    let resp = b.send().await.expect("post");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every event on the events topic so far, by id.
fn events_on_topic(env: &TestEnv, want: usize) -> BTreeMap<String, Value> {
    let consumer: BaseConsumer = schemas::kafka::client_config(&env.kafka)
        .set("group.id", format!("{}-reader", env.group))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&env.topics.events])
        .expect("subscribe");
    let mut out = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let batch: Vec<Value> =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("a JSON array");
            for v in batch {
                out.insert(v["id"].as_str().unwrap_or_default().to_string(), v);
            }
        }
    }
    out
}

const BINARY: [(&str, &str); 6] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "bin-1"),
    ("ce-source", "/svc/a"),
    ("ce-type", "api_call"),
    ("ce-subject", "cust_1"),
    ("content-type", "application/json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binary_event_keeps_every_attribute_on_the_events_topic() {
    let env = TestEnv::new("ce_topic").await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let ingest = env.start_ingest().await;
    let http = reqwest::Client::new();
    // A recent time with its fraction (the lateness window applies).
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("now");
    let mut headers = BINARY.to_vec();
    headers.extend([
        ("ce-time", now.as_str()),
        ("ce-dataschema", "https://acme.example/usage.json"),
        ("ce-region", "eu%2Dwest%201"),
        ("ce-traceparent", "\"00-abc-01\""),
    ]);
    let r = req(&headers, r#"{"endpoint":"redact","quantity":4}"#);
    let (status, body) = post(&http, &ingest.url, &key, &r).await;
    assert_eq!(
        (status, &body),
        (StatusCode::ACCEPTED, &json!({"accepted": 1}))
    );
    let structured = json!({"specversion": "1.0", "id": "str-1", "source": "/svc/b",
        "type": "api_call", "subject": "cust_1", "datacontenttype": "application/json",
        "priority": 3, "urgent": false, "data": {"endpoint": "drill"}});
    let r = req(
        &[("content-type", "application/cloudevents+json")],
        structured.to_string(),
    );
    assert_eq!(
        post(&http, &ingest.url, &key, &r).await.0,
        StatusCode::ACCEPTED
    );

    let events = tokio::task::block_in_place(|| events_on_topic(&env, 2));
    let bin = &events["bin-1"];
    for (k, want) in [
        ("specversion", json!("1.0")),
        ("source", json!("/svc/a")),
        ("type", json!("api_call")),
        ("subject", json!("cust_1")),
        ("datacontenttype", json!("application/json")),
        ("dataschema", json!("https://acme.example/usage.json")),
        ("region", json!("eu-west 1")),
        ("traceparent", json!("00-abc-01")),
        ("data", json!({"endpoint": "redact", "quantity": 4})),
        ("tenant", json!("acme")),
    ] {
        assert_eq!(bin[k], want, "{k} of {bin}");
    }
    let t = time::OffsetDateTime::parse(
        bin["time"].as_str().unwrap_or_default(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("time");
    let sent = time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339)
        .expect("sent");
    assert_eq!(t, sent, "time with its fraction");
    let st = &events["str-1"];
    assert_eq!((&st["priority"], &st["urgent"]), (&json!(3), &json!(false)));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_cloudevents_are_refused_with_the_attribute_and_why() {
    let env = TestEnv::new("ce_refused").await;
    let key = env.key("acme", &[Scope::Ingest], None).await;
    let ingest = env.start_ingest().await;
    let http = reqwest::Client::new();
    let data = r#"{"endpoint":"analyze"}"#;
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut h = BINARY.to_vec();
        for (k, v) in extra {
            h.retain(|(name, _)| name != k);
            if !v.is_empty() {
                h.push((*k, *v));
            }
        }
        h
    };
    let structured = |extra: Value| {
        let mut e = json!({"specversion": "1.0", "id": "s1", "source": "/s", "type": "api_call",
                           "subject": "cust_1", "data": {"endpoint": "analyze"}});
        for (k, v) in extra.as_object().expect("object") {
            e[k] = v.clone();
        }
        req(
            &[("content-type", "application/cloudevents+json")],
            e.to_string(),
        )
    };
    let ce = [("content-type", "application/cloudevents+json")];
    let batch = [("content-type", "application/cloudevents-batch+json")];
    let cases: Vec<(&str, Req, u16, &str, &str, &str)> = vec![
        // (what, request, status, code, details[0].field, details[0].code)
        (
            "ce-datacontenttype in binary mode",
            req(&with(&[("ce-datacontenttype", "application/json")]), data),
            400,
            "invalid_events",
            "datacontenttype",
            "invalid_value",
        ),
        (
            "an attribute name with an underscore",
            req(&with(&[("ce-trace_id", "x")]), data),
            400,
            "invalid_events",
            "trace_id",
            "invalid_value",
        ),
        (
            "a broken percent-encoding",
            req(&with(&[("ce-id", "a%zz")]), data),
            400,
            "invalid_events",
            "id",
            "invalid_value",
        ),
        (
            "no ce-id",
            req(&with(&[("ce-id", "")]), data),
            400,
            "invalid_events",
            "id",
            "required",
        ),
        (
            "an unsupported specversion",
            req(&with(&[("ce-specversion", "0.3")]), data),
            400,
            "invalid_events",
            "specversion",
            "invalid_value",
        ),
        (
            "a relative dataschema",
            req(&with(&[("ce-dataschema", "/schemas/x")]), data),
            400,
            "invalid_events",
            "dataschema",
            "invalid_value",
        ),
        (
            "a body that is not JSON",
            req(&with(&[]), "{nope"),
            400,
            "invalid_events",
            "data",
            "invalid_value",
        ),
        (
            "text data in binary mode",
            req(&with(&[("content-type", "text/plain")]), "hello"),
            415,
            "unsupported_media_type",
            "Content-Type",
            "invalid_value",
        ),
        (
            "a Content-Type that is not a media type",
            req(&[("content-type", "garbage")], data),
            415,
            "unsupported_media_type",
            "Content-Type",
            "invalid_value",
        ),
        (
            "an event format other than JSON",
            req(&[("content-type", "application/cloudevents+xml")], "<e/>"),
            415,
            "unsupported_media_type",
            "Content-Type",
            "invalid_value",
        ),
        (
            "plain events that are not JSON",
            req(&[("content-type", "text/csv")], "id,type"),
            415,
            "unsupported_media_type",
            "Content-Type",
            "invalid_value",
        ),
        (
            "an array in structured mode",
            req(&ce, format!("[{data}]")),
            400,
            "invalid_events",
            "",
            "not_an_object",
        ),
        (
            "one object as a batch",
            req(&batch, r#"{"id":"x"}"#),
            400,
            "invalid_events",
            "",
            "not_an_object",
        ),
        (
            "a fractional extension",
            structured(json!({"ratio": 0.5})),
            400,
            "invalid_events",
            "ratio",
            "invalid_value",
        ),
        (
            "an upper-case extension name",
            structured(json!({"Region": "eu"})),
            400,
            "invalid_events",
            "Region",
            "invalid_value",
        ),
        (
            "an object as an extension",
            structured(json!({"meta": {"a": 1}})),
            400,
            "invalid_events",
            "meta",
            "wrong_type",
        ),
        (
            "data and data_base64 together",
            structured(json!({"data_base64": "e30="})),
            400,
            "invalid_events",
            "data_base64",
            "invalid_value",
        ),
        (
            "text datacontenttype for JSON data",
            structured(json!({"datacontenttype": "text/plain"})),
            400,
            "invalid_events",
            "datacontenttype",
            "invalid_value",
        ),
    ];
    for (what, r, status, code, field, detail) in &cases {
        let (got, body) = post(&http, &ingest.url, &key, r).await;
        let e = &body["error"];
        assert_eq!(
            (
                got.as_u16(),
                e["code"].as_str().unwrap_or(""),
                e["details"][0]["field"].as_str().unwrap_or("?"),
                e["details"][0]["code"].as_str().unwrap_or("?")
            ),
            (*status, *code, *field, *detail),
            "{what}: {body}"
        );
        assert!(
            !e["details"][0]["reason"].as_str().unwrap_or("").is_empty(),
            "{what}: a reason"
        );
    }
    // The batched format allows an empty batch: nothing to accept, nothing produced.
    let (status, body) = post(&http, &ingest.url, &key, &req(&batch, "[]")).await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"accepted": 0}))
    );
    // None of the refused requests reached the events topic; a valid one did. Every event here
    // is cust_1's, so on one partition in order: read up to the valid one, nothing came before.
    let (status, _) = post(&http, &ingest.url, &key, &req(&with(&[]), data)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let events = tokio::task::block_in_place(|| events_on_topic(&env, 1));
    assert_eq!(events.keys().collect::<Vec<_>>(), ["bin-1"]);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strict_tenant_needs_specversion_and_source_the_others_keep_the_short_form() {
    let env = TestEnv::new("ce_strict").await;
    let lenient = env.key("acme", &[Scope::Ingest], None).await;
    let strict = env.key("strictco", &[Scope::Ingest], None).await;
    let mut config = env.ingest_config();
    config
        .cloudevents
        .tenants
        .insert("strictco".into(), Conformance::Strict);
    let ingest = env.start_ingest_with(config).await;
    let http = reqwest::Client::new();
    let json_ct = [("content-type", "application/json")];
    let short =
        r#"{"id":"s-1","type":"api_call","subject":"cust_1","data":{"endpoint":"analyze"}}"#;
    let (status, _) = post(&http, &ingest.url, &lenient, &req(&json_ct, short)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the seed's short form, lenient"
    );

    let (status, body) = post(&http, &ingest.url, &strict, &req(&json_ct, short)).await;
    let details: Vec<(String, String)> = body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| {
                    (
                        x["field"].as_str().unwrap_or("").into(),
                        x["code"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        details,
        [
            ("specversion".to_string(), "required".to_string()),
            ("source".to_string(), "required".to_string())
        ]
    );
    // Binary mode without ce-specversion, strict: refused; with it: accepted.
    let no_version: Vec<_> = BINARY
        .iter()
        .copied()
        .filter(|(k, _)| *k != "ce-specversion")
        .collect();
    let data = r#"{"endpoint":"redact"}"#;
    let (status, body) = post(&http, &ingest.url, &strict, &req(&no_version, data)).await;
    assert_eq!(
        (status, &body["error"]["details"][0]["field"]),
        (StatusCode::BAD_REQUEST, &json!("specversion")),
        "{body}"
    );
    let (status, _) = post(&http, &ingest.url, &lenient, &req(&no_version, data)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "binary without specversion, lenient"
    );
    let (status, _) = post(&http, &ingest.url, &strict, &req(&BINARY, data)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "a full binary event, strict");
    let full =
        r#"{"specversion":"1.0","id":"s-2","source":"/svc","type":"api_call","subject":"cust_1"}"#;
    let (status, _) = post(&http, &ingest.url, &strict, &req(&json_ct, full)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a full structured event, strict"
    );
    ingest.stop().await;
}
