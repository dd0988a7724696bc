//! The fast path against the full validation on a corpus of plain, odd and invalid events, alone and in batches.

use super::*;
use crate::event::validate_with;

fn intake(now: OffsetDateTime, scope: Option<&'static str>) -> Intake<'static> {
    Intake {
        tenant: "acme",
        customer_scope: scope,
        received_at: now,
        window: Window::default(),
    }
}

/// Every input: the fast path either falls back or gives exactly what `validate` gives.
#[test]
fn the_fast_path_accepts_exactly_what_validate_accepts_and_gives_the_same_event() {
    let now = OffsetDateTime::now_utc();
    let mut toml = crate::catalog::DEFAULT_CATALOG_TOML.to_string();
    toml.push_str(
        r#"
[[meters]]
key = "tokens_used"
name = "Tokens"
aggregation = "sum"
value_property = "tokens"
dimension = "model"

[[meters]]
key = "active_users"
name = "Active users"
aggregation = "unique_count"
unique_property = "user"
"#,
    );
    let cat = Catalog::from_toml(&toml).expect("catalog");
    let corpus = [
        r#"{"id":"e1","type":"api_call","subject":"c1","data":{"endpoint":"redact"}}"#,
        r#"{"specversion":"1.0","id":"e1","source":"svc","type":"api_call","subject":"c1","tenant":"acme","time":"2026-01-01T00:00:00Z","data":{"endpoint":"analyze","other":[1,{"x":2}]}}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","data":null,"time":null,"source":null}"#,
        r#"{"specversion":null,"id":"e1","type":"api_call","subject":"c1"}"#,
        r#"{"specversion":"0.3","id":"e1","type":"api_call","subject":"c1"}"#,
        r#"{"id":"e\"1","type":"api_call","subject":"c1"}"#,
        r#"{"id":"e1","id":"e2","type":"api_call","subject":"c1"}"#,
        r#"{"id":" ","type":"api_call","subject":"c1"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","tenant":"globex"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","tenant":""}"#,
        r#"{"id":"e1","type":"api_call","subject":"c2"}"#,
        r#"{"id":"e1","type":"nope","subject":"c1"}"#,
        r#"{"id":5,"type":"api_call","subject":"c1"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","time":"2020-01-01T00:00:00Z"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","time":"yesterday"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","data":[1]}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","data":{"endpoint":7}}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","data":{"endpoint":"a","endpoint":"b"}}"#,
        r#"{"id":"e1","type":"tokens_used","subject":"c1","data":{"tokens":12.5,"model":"m"}}"#,
        r#"{"id":"e1","type":"tokens_used","subject":"c1","data":{"tokens":-1}}"#,
        r#"{"id":"e1","type":"tokens_used","subject":"c1","data":{"tokens":"5"}}"#,
        r#"{"id":"e1","type":"tokens_used","subject":"c1","data":{}}"#,
        r#"{"id":"e1","type":"tokens_used","subject":"c1","data":{"tokens":1e300}}"#,
        r#"{"id":"e1","type":"active_users","subject":"c1","data":{"user":"u7"}}"#,
        r#"{"id":"e1","type":"active_users","subject":"c1","data":{"user":42}}"#,
        r#"{"id":"e1","type":"active_users","subject":"c1","data":{"user":""}}"#,
        r#"{"specversion":"1.0","id":"e1","source":"svc","type":"api_call","subject":"c1","region":"eu","priority":3,"neg":-5,"urgent":true,"datacontenttype":"application/json","dataschema":"https://acme.example/usage.json","data":{"endpoint":"a"}}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","Region":"eu"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","trace_id":"x"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","region":"e\u00fc"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","n":1.5}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","n":007}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","n":null,"datacontenttype":null}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","n":2147483648}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","n":{"a":1}}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","n":"a","n":"b"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","datacontenttype":"text/plain","data":{}}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","datacontenttype":"text/plain"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","datacontenttype":"json"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","dataschema":"/relative"}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","data_base64":"eyJlbmRwb2ludCI6ImEifQ=="}"#,
        r#"{"id":"e1","type":"api_call","subject":"c1","data_base64":"eyJ9","data":{}}"#,
        "[1]",
        "7",
    ];
    let time = (now - time::Duration::minutes(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let recent = format!(
        r#"{{"id":"e1","type":"api_call","subject":"c1","time":"{time}","data":{{"endpoint":"drill"}}}}"#
    );
    let mut fast_accepted = 0;
    for json in corpus.iter().copied().chain([recent.as_str()]) {
        for (scope, conformance) in [
            (None, Conformance::Lenient),
            (Some("c1"), Conformance::Lenient),
            (None, Conformance::Strict),
        ] {
            let ctx = intake(now, scope);
            let Ok(value) = serde_json::from_str::<Value>(json) else {
                assert!(Wire::parse(json).is_none(), "{json}: not JSON, read");
                continue;
            };
            let slow = validate_with(&value, 0, &ctx, &cat, conformance);
            let fast = Wire::parse(json).and_then(|w| w.check_with(&ctx, &cat, conformance));
            let Some(fast) = fast else { continue };
            fast_accepted += 1;
            let (event, measure) =
                slow.unwrap_or_else(|e| panic!("{json}: fast accepted, slow refused: {e:?}"));
            let data: Map<String, Value> = serde_json::from_str(fast.data).expect("data");
            assert_eq!(
                (
                    fast.id,
                    fast.source,
                    fast.meter,
                    fast.customer,
                    fast.time,
                    &data,
                    &fast.measure
                ),
                (
                    event.id.as_str(),
                    event.source.as_str(),
                    event.meter.as_str(),
                    event.customer.as_str(),
                    event.time,
                    &event.data,
                    &measure
                ),
                "{json}"
            );
            // What the ingest produces from it decodes to the same event.
            let mut written = Vec::new();
            fast.write_json(&mut written).expect("write");
            let decoded: crate::UsageEvent =
                serde_json::from_slice(&written).expect("written JSON is an event");
            assert_eq!(decoded, event, "{json}");
            assert_eq!(
                fast.extensions_json(),
                event.attributes.extensions_json(),
                "{json}"
            );
        }
    }
    // The plain events take the fast path (so this test compares something).
    assert!(
        fast_accepted >= 12,
        "only {fast_accepted} took the fast path"
    );

    // A batch read in one pass: accepted exactly when every element is, element for element
    // as read alone.
    let plain = corpus[1];
    let mut batches_accepted = 0;
    for json in corpus.iter().copied().chain([recent.as_str()]) {
        let alone = Wire::parse(json).map(|w| format!("{w:?}"));
        let batch = format!("[{plain},{json}]");
        let read = Wire::parse_batch(batch.as_bytes());
        assert_eq!(
            read.as_ref().map(|w| format!("{:?}", w[1])),
            alone,
            "{json} in a batch"
        );
        if let Some(read) = read {
            batches_accepted += 1;
            assert_eq!(read.len(), 2);
            assert_eq!(
                format!("{:?}", read[0]),
                format!("{:?}", Wire::parse(plain).expect("plain"))
            );
        }
    }
    assert!(
        batches_accepted >= 12,
        "only {batches_accepted} batches read"
    );
    assert!(
        Wire::parse_batch(plain.as_bytes()).is_none(),
        "not an array"
    );
}
