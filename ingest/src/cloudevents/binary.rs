//! The binary content mode: one event whose attributes travel as `ce-*` headers (quoted strings
//! unescaped, then percent-decoded, as the HTTP binding says) and whose data is the body, of the
//! media type in `Content-Type` (its `datacontenttype`). The result is the event's JSON object,
//! validated like a structured event.

use axum::http::{HeaderMap, header};
use schemas::event::attributes::{is_attribute_name, name_problem};
use schemas::event::{ErrorCode, FieldError, MediaType};
use serde_json::{Map, Value};

/// Why a binary-mode request holds no readable event.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// Headers or body break the binding's rules: each problem with its attribute (a 400).
    #[error("{} invalid attributes", .0.len())]
    Invalid(Vec<FieldError>),
    /// The data's media type cannot be metered (a 415).
    #[error("{0}")]
    Unsupported(String),
}

fn problem(field: &str, code: ErrorCode, reason: String) -> FieldError {
    FieldError {
        index: 0,
        field: field.into(),
        code,
        reason,
    }
}

/// The event of a binary-mode request as a JSON object (its attributes from the `ce-*` headers,
/// `datacontenttype` from `Content-Type`, `data` from the body), or why there is none.
pub fn event(headers: &HeaderMap, body: &[u8]) -> Result<Value, BinaryError> {
    let mut obj = Map::new();
    let mut errors = Vec::new();
    for name in headers.keys() {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let field = attr.to_string();
        let invalid = |reason: String| problem(&field, ErrorCode::InvalidValue, reason);
        if !is_attribute_name(attr) {
            errors.push(invalid(format!("header `{name}`: {}", name_problem(attr))));
            continue;
        }
        match attr {
            "datacontenttype" => {
                errors.push(invalid(
                    "binary mode carries `datacontenttype` in Content-Type: a \
                     `ce-datacontenttype` header must not be present"
                        .into(),
                ));
                continue;
            }
            "data" => {
                errors.push(invalid(
                    "binary mode carries `data` in the body, not in a header".into(),
                ));
                continue;
            }
            _ => {}
        }
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            errors.push(invalid(format!("header `{name}` is repeated")));
            continue;
        };
        match decode_value(value.as_bytes()) {
            Ok(v) => {
                obj.insert(field, Value::String(v));
            }
            Err(reason) => errors.push(invalid(format!("header `{name}`: {reason}"))),
        }
    }

    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(raw) => {
            let text = raw.to_str().map(str::trim).unwrap_or_default();
            let media = MediaType::parse(text).ok_or_else(|| {
                BinaryError::Unsupported(format!(
                    "Content-Type {:?} is not a media type (type/subtype)",
                    String::from_utf8_lossy(raw.as_bytes())
                ))
            })?;
            obj.insert("datacontenttype".into(), Value::String(text.into()));
            Some(media)
        }
    };
    let blank = body.iter().all(u8::is_ascii_whitespace);
    if !blank {
        // Without Content-Type the data is taken for JSON, as the JSON event format has it.
        if let Some(media) = content_type
            .as_ref()
            .filter(|m| !m.is_json() || !m.is_utf8())
        {
            let hint = if media.essence == "application/x-www-form-urlencoded" {
                " (curl -d and Python's urllib send this type by default: set Content-Type: \
                 application/json, the event's datacontenttype)"
            } else {
                ""
            };
            return Err(BinaryError::Unsupported(format!(
                "Content-Type {}: meters read the event's data as a JSON object (application/json \
                 or */*+json in UTF-8); this data cannot be metered{hint}",
                media.essence
            )));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(data) => {
                obj.insert("data".into(), data);
            }
            Err(e) => errors.push(problem(
                "data",
                ErrorCode::InvalidValue,
                format!("the body (the event's data) is not valid JSON: {e}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(Value::Object(obj))
    } else {
        Err(BinaryError::Invalid(errors))
    }
}

/// One `ce-*` header value as its attribute's string: a quoted string unescaped (RFC 7230
/// 3.2.6), then one round of percent-decoding into UTF-8.
fn decode_value(raw: &[u8]) -> Result<String, String> {
    if !raw.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return Err("header values are printable ASCII: percent-encode other characters".into());
    }
    let text = std::str::from_utf8(raw)
        .map_err(|e| e.to_string())?
        .trim_matches([' ', '\t']);
    let unquoted = match text.strip_prefix('"') {
        Some(rest) => {
            let inner = rest
                .strip_suffix('"')
                .ok_or("a quoted value has no closing quote")?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next().ok_or("a quoted value ends in a backslash")?),
                    '"' => return Err("a quoted value holds an unescaped quote".into()),
                    c => out.push(c),
                }
            }
            out
        }
        None => text.to_string(),
    };
    let bytes = unquoted.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("`%` is not followed by two hexadecimal digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the percent-decoded value is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};
    use serde_json::json;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_bytes(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn headers_become_attributes_and_the_body_becomes_data() {
        let h = headers(&[
            ("ce-specversion", b"1.0"),
            ("ce-id", b"e1"),
            ("ce-source", b"/svc/a%20b"),
            ("ce-type", b"api_call"),
            ("CE-Subject", b"cust%C3%A9"),
            ("ce-time", b"2026-03-10T12:00:00.5Z"),
            ("ce-dataschema", b"https://acme.example/s.json"),
            ("ce-region", b"\"e\\u\""),
            ("content-type", b"application/json; charset=utf-8"),
            ("x-other", b"ignored"),
        ]);
        let v = event(&h, br#"{"endpoint":"redact"}"#).expect("an event");
        assert_eq!(
            v,
            json!({"specversion": "1.0", "id": "e1", "source": "/svc/a b", "type": "api_call",
                   "subject": "custé", "time": "2026-03-10T12:00:00.5Z",
                   "dataschema": "https://acme.example/s.json", "region": "eu",
                   "datacontenttype": "application/json; charset=utf-8",
                   "data": {"endpoint": "redact"}})
        );
        // No body: no data; no Content-Type: the data is JSON.
        let v = event(&headers(&[("ce-id", b"e2")]), b"").expect("no data");
        assert_eq!(v, json!({"id": "e2"}));
        let v = event(&headers(&[("ce-id", b"e3")]), b"{\"a\":1}").expect("untyped JSON data");
        assert_eq!(v["data"], json!({"a": 1}));
    }

    #[test]
    fn what_the_binding_calls_invalid_is_refused_with_its_attribute() {
        /// Headers, body, the attribute named.
        type Case<'a> = (&'a [(&'a str, &'a [u8])], &'a [u8], &'a str);
        let cases: [Case<'_>; 7] = [
            (
                &[("ce-datacontenttype", b"application/json")],
                b"",
                "datacontenttype",
            ),
            (&[("ce-trace_id", b"x")], b"", "trace_id"),
            (&[("ce-id", b"a%zz")], b"", "id"),
            (&[("ce-id", b"%C0%A0")], b"", "id"),
            (&[("ce-id", b"\"open")], b"", "id"),
            (&[("ce-id", b"a"), ("ce-id", b"b")], b"", "id"),
            (&[("ce-id", b"a")], b"{nope", "data"),
        ];
        for (h, body, field) in cases {
            match event(&headers(h), body) {
                Err(BinaryError::Invalid(errors)) => {
                    assert_eq!(errors.len(), 1, "{h:?}: {errors:?}");
                    assert_eq!(
                        (errors[0].field.as_str(), errors[0].code),
                        (field, ErrorCode::InvalidValue),
                        "{h:?}"
                    );
                }
                other => panic!("{h:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn data_that_meters_cannot_read_is_unsupported() {
        for ct in [
            &b"text/plain"[..],
            b"application/octet-stream",
            b"application/x-www-form-urlencoded",
            b"application/json; charset=latin1",
            b"x",
        ] {
            let h = headers(&[("ce-id", b"e1"), ("content-type", ct)]);
            assert!(
                matches!(event(&h, b"hello"), Err(BinaryError::Unsupported(_))),
                "{ct:?}"
            );
        }
        // Without data any media type is kept as the event's datacontenttype.
        let h = headers(&[("ce-id", b"e1"), ("content-type", b"text/plain")]);
        assert_eq!(
            event(&h, b"").expect("no data")["datacontenttype"],
            "text/plain"
        );
    }
}
