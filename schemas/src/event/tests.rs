//! Unit tests of event validation: defaults, per-field errors, windows, scopes, CloudEvents attributes.

use super::*;
use serde_json::json;

fn intake(now: OffsetDateTime) -> Intake<'static> {
    Intake {
        tenant: "acme",
        customer_scope: None,
        received_at: now,
        window: Window::default(),
    }
}

#[test]
fn a_minimal_event_gets_defaults() {
    let now = OffsetDateTime::now_utc();
    let v =
        json!({"id": "e1", "type": "api_call", "subject": "c1", "data": {"endpoint": "analyze"}});
    let (e, m) = validate(&v, 0, &intake(now), &Catalog::default()).expect("valid");
    assert_eq!(
        (e.time, e.tenant.as_str(), e.source.as_str()),
        (now, "acme", "api")
    );
    assert_eq!(
        m,
        Measure {
            quantity: 1.0,
            endpoint: "analyze".into(),
            unique_key: String::new(),
            aggregation: Aggregation::Sum,
        }
    );
    assert_eq!(e.partition_key(), "acme/c1");
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let now = OffsetDateTime::now_utc();
    let v = json!({"specversion": "0.3", "id": 5, "type": "nope", "time": "yesterday",
                    "data": {"quantity": -1}, "tenant": "globex"});
    let errors = validate(&v, 3, &intake(now), &Catalog::default()).expect_err("invalid");
    let got: Vec<(&str, ErrorCode)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
    assert_eq!(
        got,
        vec![
            ("specversion", ErrorCode::InvalidValue),
            ("id", ErrorCode::WrongType),
            ("subject", ErrorCode::Required),
            ("type", ErrorCode::UnknownMeter),
            ("tenant", ErrorCode::TenantMismatch),
            ("time", ErrorCode::InvalidValue),
        ]
    );
    assert!(errors.iter().all(|e| e.index == 3));
}

#[test]
fn quantities_and_windows_are_checked() {
    let now = OffsetDateTime::now_utc();
    let cat = Catalog::default();
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).expect("format");
    let cases = [
        (
            json!({"quantity": -1}),
            None,
            "data.quantity",
            ErrorCode::InvalidValue,
        ),
        (
            json!({"quantity": "NaN"}),
            None,
            "data.quantity",
            ErrorCode::WrongType,
        ),
        (
            json!({"quantity": 1e300}),
            None,
            "data.quantity",
            ErrorCode::InvalidValue,
        ),
        (
            json!({"endpoint": 7}),
            None,
            "data.endpoint",
            ErrorCode::WrongType,
        ),
        (
            json!({}),
            Some(fmt(now - time::Duration::days(36))),
            "time",
            ErrorCode::TooLate,
        ),
        (
            json!({}),
            Some(fmt(now + time::Duration::minutes(6))),
            "time",
            ErrorCode::InFuture,
        ),
    ];
    for (data, time, field, code) in cases {
        let v = json!({"id": "e", "type": "api_call", "subject": "c", "data": data, "time": time});
        let errors = validate(&v, 0, &intake(now), &cat).expect_err("invalid");
        assert_eq!(
            (errors[0].field.as_str(), errors[0].code),
            (field, code),
            "{v}"
        );
    }
    let edge = json!({"id": "e", "type": "api_call", "subject": "c",
                      "time": fmt(now - time::Duration::days(35) + time::Duration::seconds(1))});
    assert!(validate(&edge, 0, &intake(now), &cat).is_ok());
}

#[test]
fn customer_scoped_keys_only_send_for_their_customer() {
    let now = OffsetDateTime::now_utc();
    let mut i = intake(now);
    i.customer_scope = Some("c1");
    let other = json!({"id": "e", "type": "api_call", "subject": "c2"});
    let errors = validate(&other, 0, &i, &Catalog::default()).expect_err("forbidden");
    assert!(errors[0].code.is_forbidden());
    let own = json!({"id": "e", "type": "api_call", "subject": "c1"});
    assert!(validate(&own, 0, &i, &Catalog::default()).is_ok());
}

#[test]
fn strict_conformance_requires_specversion_and_source() {
    let now = OffsetDateTime::now_utc();
    let cat = Catalog::default();
    let short = json!({"id": "e1", "type": "api_call", "subject": "c1", "data": {"endpoint": "a"}});
    assert!(validate_with(&short, 0, &intake(now), &cat, Conformance::Lenient).is_ok());
    let errors = validate_with(&short, 0, &intake(now), &cat, Conformance::Strict)
        .expect_err("strict refuses the short form");
    let got: Vec<(&str, ErrorCode)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
    assert_eq!(
        got,
        vec![
            ("specversion", ErrorCode::Required),
            ("source", ErrorCode::Required)
        ]
    );
    let full = json!({"specversion": "1.0", "id": "e1", "source": "svc", "type": "api_call",
                      "subject": "c1"});
    assert!(validate_with(&full, 0, &intake(now), &cat, Conformance::Strict).is_ok());
}

#[test]
fn every_cloudevents_attribute_survives_into_the_event_json() {
    let now = OffsetDateTime::now_utc();
    let v = json!({"specversion": "1.0", "id": "e1", "source": "svc", "type": "api_call",
                   "subject": "c1", "datacontenttype": "application/json; charset=utf-8",
                   "dataschema": "https://acme.example/usage.json", "region": "eu",
                   "priority": 3, "urgent": true, "ignored": null,
                   "data": {"endpoint": "analyze"}});
    let (e, _) = validate(&v, 0, &intake(now), &Catalog::default()).expect("valid");
    assert_eq!(
        e.attributes.datacontenttype.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        e.attributes.dataschema.as_deref(),
        Some("https://acme.example/usage.json")
    );
    assert_eq!(
        e.attributes.extensions_json(),
        r#"{"priority":3,"region":"eu","urgent":true}"#
    );
    // On the events topic: every attribute a top-level member, as in structured mode.
    let json = serde_json::to_value(&e).expect("serialize");
    for (k, want) in [
        ("region", json!("eu")),
        ("priority", json!(3)),
        ("urgent", json!(true)),
        ("dataschema", json!("https://acme.example/usage.json")),
        ("tenant", json!("acme")),
    ] {
        assert_eq!(json[k], want, "{k}");
    }
    let back: UsageEvent = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, e);
}

#[test]
fn invalid_cloudevents_attributes_are_refused_with_their_names() {
    let now = OffsetDateTime::now_utc();
    let cat = Catalog::default();
    let cases = [
        (json!({"Region": "eu"}), "Region", ErrorCode::InvalidValue),
        (
            json!({"trace_id": "x"}),
            "trace_id",
            ErrorCode::InvalidValue,
        ),
        (json!({"ratio": 0.5}), "ratio", ErrorCode::InvalidValue),
        (
            json!({"big": 2147483648i64}),
            "big",
            ErrorCode::InvalidValue,
        ),
        (json!({"tags": ["a"]}), "tags", ErrorCode::WrongType),
        (
            json!({"datacontenttype": "text/plain", "data": {}}),
            "datacontenttype",
            ErrorCode::InvalidValue,
        ),
        (
            json!({"datacontenttype": "nonsense"}),
            "datacontenttype",
            ErrorCode::InvalidValue,
        ),
        (
            json!({"datacontenttype": 5}),
            "datacontenttype",
            ErrorCode::WrongType,
        ),
        (
            json!({"dataschema": "/relative/path"}),
            "dataschema",
            ErrorCode::InvalidValue,
        ),
        (
            json!({"data_base64": "e30=", "data": {}}),
            "data_base64",
            ErrorCode::InvalidValue,
        ),
        (
            json!({"data_base64": "!!"}),
            "data_base64",
            ErrorCode::InvalidValue,
        ),
        (
            json!({"data_base64": "e30=", "datacontenttype": "image/png"}),
            "data_base64",
            ErrorCode::InvalidValue,
        ),
    ];
    for (extra, field, code) in cases {
        let mut v = json!({"id": "e1", "type": "api_call", "subject": "c1"});
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        let errors = validate(&v, 0, &intake(now), &cat).expect_err("invalid");
        assert_eq!(
            errors
                .iter()
                .map(|e| (e.field.as_str(), e.code))
                .collect::<Vec<_>>(),
            vec![(field, code)],
            "{v}"
        );
    }
    let too_many: Map<String, Value> = (0..=attributes::MAX_EXTENSIONS)
        .map(|i| (format!("x{i:02}"), json!(i)))
        .collect();
    let mut v = json!({"id": "e1", "type": "api_call", "subject": "c1"});
    v.as_object_mut().expect("object").extend(too_many);
    let errors = validate(&v, 0, &intake(now), &cat).expect_err("too many");
    assert_eq!(errors[0].code, ErrorCode::TooLong);
}

#[test]
fn data_base64_is_read_as_json_data() {
    let now = OffsetDateTime::now_utc();
    // {"endpoint":"redact"}
    let v = json!({"id": "e1", "type": "api_call", "subject": "c1",
                   "datacontenttype": "application/json",
                   "data_base64": "eyJlbmRwb2ludCI6InJlZGFjdCJ9"});
    let (e, m) = validate(&v, 0, &intake(now), &Catalog::default()).expect("valid");
    assert_eq!(m.endpoint, "redact");
    assert_eq!(e.data.get("endpoint"), Some(&json!("redact")));
}
