//! CloudEvents attributes beyond the meter's own: `datacontenttype` (media types), `dataschema`
//! (URIs), extension attributes (names and values), `data_base64`, and strict or lenient
//! conformance.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Checker, ErrorCode, MAX_ID_LEN, json_type};

/// Most extension attributes on one event.
pub const MAX_EXTENSIONS: usize = 32;
/// Longest accepted attribute name (the spec recommends at most 20 characters).
pub const MAX_NAME_LEN: usize = 64;
/// Longest accepted `dataschema` and `datacontenttype` (bytes).
pub const MAX_URI_LEN: usize = 2048;

/// How closely an event must follow the CloudEvents 1.0 spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conformance {
    /// The seed's short form is accepted: `specversion` defaults to "1.0", `source` to "api".
    #[default]
    Lenient,
    /// `specversion` and `source` are required, as the spec requires them.
    Strict,
}

/// The members of an event object that are not extension attributes: the spec's own attributes,
/// `data`/`data_base64`, and the platform's `tenant` and `receivedat`.
pub const MEMBERS: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "tenant",
    "receivedat",
];

/// The optional CloudEvents attributes an event carries besides its meter fields: kept on the
/// events topic (as members of the event's JSON, extensions at the top level as in structured
/// mode) and in ClickHouse's `events_raw`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    /// Media type of `data` (`Content-Type` in binary mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// URI of the schema `data` adheres to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// Extension attributes by name: strings, integers and booleans.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

impl Attributes {
    /// The extension attributes as one JSON object (`{}` when none), as `events_raw` keeps them.
    pub fn extensions_json(&self) -> String {
        serde_json::to_string(&self.extensions).unwrap_or_else(|_| "{}".into())
    }
}

/// Whether `name` is a valid CloudEvents attribute name: lower-case ASCII letters and digits.
pub fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Why an attribute name is not valid.
pub fn name_problem(name: &str) -> String {
    if name.len() > MAX_NAME_LEN {
        format!("attribute name `{name}` is longer than {MAX_NAME_LEN} characters")
    } else {
        format!(
            "`{name}` is not a CloudEvents attribute name: names consist of lower-case letters \
             (a-z) and digits (0-9) only"
        )
    }
}

/// What is wrong with an extension attribute's (non-null) value, if anything. CloudEvents types
/// in JSON: strings (String, URI, URI-reference, Timestamp, Binary), integers (-2^31 to 2^31-1)
/// and booleans.
pub fn extension_problem(name: &str, value: &Value) -> Option<(ErrorCode, String)> {
    match value {
        Value::Bool(_) | Value::Null => None,
        Value::String(s) if s.len() > MAX_ID_LEN => Some((
            ErrorCode::TooLong,
            format!("`{name}` is {} bytes; at most {MAX_ID_LEN}", s.len()),
        )),
        Value::String(s) if s.chars().any(char::is_control) => Some((
            ErrorCode::InvalidValue,
            format!("`{name}` contains control characters"),
        )),
        Value::String(_) => None,
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => None,
            _ => Some((
                ErrorCode::InvalidValue,
                format!(
                    "`{name}` is {n}: a CloudEvents integer is a whole number from -2147483648 \
                     to 2147483647 (send other numbers as strings)"
                ),
            )),
        },
        other => Some((
            ErrorCode::WrongType,
            format!(
                "extension attribute `{name}` must be a string, an integer or a boolean, got {}",
                json_type(other)
            ),
        )),
    }
}

/// A parsed media type (RFC 2046): `type/subtype` in lower case and its `charset`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// `type/subtype`, lower case.
    pub essence: String,
    /// The `charset` parameter, lower case.
    pub charset: Option<String>,
}

/// A token character of RFC 7230 (media type names and parameter names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

impl MediaType {
    /// Parses `type/subtype *(; name=value)`, or `None` when it is not a media type.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(';');
        let essence = parts.next()?.trim();
        let (kind, sub) = essence.split_once('/')?;
        if !is_token(kind) || !is_token(sub) {
            return None;
        }
        let mut charset = None;
        for param in parts {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            let (name, value) = param.split_once('=')?;
            let name = name.trim();
            let value = value.trim();
            let value = match value.strip_prefix('"') {
                Some(quoted) => quoted.strip_suffix('"')?,
                None if is_token(value) => value,
                None => return None,
            };
            if !is_token(name) {
                return None;
            }
            if name.eq_ignore_ascii_case("charset") {
                charset = Some(value.to_ascii_lowercase());
            }
        }
        Some(Self {
            essence: essence.to_ascii_lowercase(),
            charset,
        })
    }

    /// Whether this is JSON: `application/json`, `text/json` or a `+json` suffix.
    pub fn is_json(&self) -> bool {
        self.essence == "application/json"
            || self.essence == "text/json"
            || self.essence.ends_with("+json")
    }

    /// Whether its text is UTF-8 (no `charset`, or `utf-8`).
    pub fn is_utf8(&self) -> bool {
        matches!(self.charset.as_deref(), None | Some("utf-8" | "utf8"))
    }
}

/// What is wrong with a `dataschema` value, if anything: it must be an absolute URI.
pub fn uri_problem(field: &str, s: &str) -> Option<(ErrorCode, String)> {
    let scheme_ok = s.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if s.len() > MAX_URI_LEN {
        Some((
            ErrorCode::TooLong,
            format!("`{field}` is {} bytes; at most {MAX_URI_LEN}", s.len()),
        ))
    } else if !scheme_ok || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some((
            ErrorCode::InvalidValue,
            format!("`{field}` must be an absolute URI (with a scheme, no spaces), got {s:?}"),
        ))
    } else {
        None
    }
}

/// The optional attributes of an event object (`datacontenttype`, `dataschema`, extensions),
/// each problem recorded in `c`. `has_data`: whether the event carries `data`, which meters read
/// as a JSON object, so its media type must be JSON.
pub(crate) fn check(c: &mut Checker, obj: &Map<String, Value>, has_data: bool) -> Attributes {
    let mut attributes = Attributes::default();
    if let Some(s) = optional_string(c, obj, "datacontenttype") {
        match MediaType::parse(s) {
            _ if s.len() > MAX_URI_LEN => c.fail(
                "datacontenttype",
                ErrorCode::TooLong,
                format!(
                    "`datacontenttype` is {} bytes; at most {MAX_URI_LEN}",
                    s.len()
                ),
            ),
            None => c.fail(
                "datacontenttype",
                ErrorCode::InvalidValue,
                format!("`datacontenttype` is not a media type (type/subtype), got {s:?}"),
            ),
            Some(m) if has_data && !m.is_json() => c.fail(
                "datacontenttype",
                ErrorCode::InvalidValue,
                format!(
                    "meters read `data` as a JSON object: `datacontenttype` must be a JSON media \
                     type (application/json or */*+json) when `data` is present, got {s:?}"
                ),
            ),
            Some(_) => attributes.datacontenttype = Some(s.into()),
        }
    }
    if let Some(s) = optional_string(c, obj, "dataschema") {
        match uri_problem("dataschema", s) {
            Some((code, reason)) => c.fail("dataschema", code, reason),
            None => attributes.dataschema = Some(s.into()),
        }
    }
    for (name, value) in obj {
        if MEMBERS.contains(&name.as_str()) || value.is_null() {
            continue;
        }
        if !is_attribute_name(name) {
            c.fail(name, ErrorCode::InvalidValue, name_problem(name));
        } else if let Some((code, reason)) = extension_problem(name, value) {
            c.fail(name, code, reason);
        } else if attributes.extensions.len() == MAX_EXTENSIONS {
            c.fail(
                name,
                ErrorCode::TooLong,
                format!("more than {MAX_EXTENSIONS} extension attributes"),
            );
        } else {
            attributes.extensions.insert(name.clone(), value.clone());
        }
    }
    attributes
}

/// A string member that may be absent or null.
fn optional_string<'v>(
    c: &mut Checker,
    obj: &'v Map<String, Value>,
    field: &str,
) -> Option<&'v str> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            c.fail(
                field,
                ErrorCode::WrongType,
                format!("`{field}` must be a string, got {}", json_type(other)),
            );
            None
        }
    }
}

/// The data of a structured event that carries `data_base64` (binary data) instead of `data`:
/// decoded and read as JSON when its media type is JSON (or absent), each problem recorded in `c`.
/// `None` when the event has no `data_base64`.
pub(crate) fn data_base64(c: &mut Checker, obj: &Map<String, Value>) -> Option<Option<Value>> {
    let encoded = match obj.get("data_base64") {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => s,
        Some(other) => {
            c.fail(
                "data_base64",
                ErrorCode::WrongType,
                format!("`data_base64` must be a string, got {}", json_type(other)),
            );
            return Some(None);
        }
    };
    if !obj.get("data").is_none_or(Value::is_null) {
        c.fail(
            "data_base64",
            ErrorCode::InvalidValue,
            "an event carries `data` or `data_base64`, not both",
        );
        return Some(None);
    }
    let media = obj
        .get("datacontenttype")
        .and_then(Value::as_str)
        .and_then(MediaType::parse);
    if media.as_ref().is_some_and(|m| !m.is_json() || !m.is_utf8()) {
        c.fail(
            "data_base64",
            ErrorCode::InvalidValue,
            "meters read data as a JSON object: `data_base64` is read only when `datacontenttype` \
             is a JSON media type in UTF-8",
        );
        return Some(None);
    }
    let parsed = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("`data_base64` is not base64: {e}"))
        .and_then(|bytes| {
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| format!("`data_base64` does not hold JSON: {e}"))
        });
    match parsed {
        Ok(v) => Some(Some(v)),
        Err(reason) => {
            c.fail("data_base64", ErrorCode::InvalidValue, reason);
            Some(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names_are_lower_case_letters_and_digits() {
        for ok in ["region", "traceparent", "a1", "x"] {
            assert!(is_attribute_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Region",
            "trace_parent",
            "trace-parent",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_attribute_name(bad), "{bad}");
        }
    }

    #[test]
    fn extension_values_follow_the_cloudevents_type_system() {
        use serde_json::json;
        for ok in [
            json!("eu"),
            json!(7),
            json!(-2147483648i64),
            json!(true),
            json!(""),
        ] {
            assert_eq!(extension_problem("x", &ok), None, "{ok}");
        }
        let cases = [
            (json!(1.5), ErrorCode::InvalidValue),
            (json!(2147483648i64), ErrorCode::InvalidValue),
            (json!({"a": 1}), ErrorCode::WrongType),
            (json!([1]), ErrorCode::WrongType),
            (json!("a\u{7}b"), ErrorCode::InvalidValue),
            (json!("x".repeat(MAX_ID_LEN + 1)), ErrorCode::TooLong),
        ];
        for (value, code) in cases {
            assert_eq!(
                extension_problem("x", &value).map(|p| p.0),
                Some(code),
                "{value}"
            );
        }
    }

    #[test]
    fn media_types_are_parsed_with_their_charset() {
        let m = MediaType::parse("Application/JSON; charset=\"UTF-8\"").expect("media type");
        assert_eq!(
            (m.essence.as_str(), m.charset.as_deref()),
            ("application/json", Some("utf-8"))
        );
        assert!(m.is_json() && m.is_utf8());
        assert!(
            MediaType::parse("application/vnd.acme+json")
                .expect("suffix")
                .is_json()
        );
        assert!(!MediaType::parse("text/plain").expect("text").is_json());
        assert!(
            !MediaType::parse("application/json; charset=latin1")
                .expect("latin1")
                .is_utf8()
        );
        for bad in [
            "",
            "json",
            "application/",
            "a b/c",
            "application/json; charset",
            "x/y; a=b c",
        ] {
            assert_eq!(MediaType::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn dataschema_must_be_an_absolute_uri() {
        assert_eq!(
            uri_problem("dataschema", "https://acme.example/s.json"),
            None
        );
        assert_eq!(uri_problem("dataschema", "urn:acme:usage:1"), None);
        for bad in ["/relative", "no scheme", "1http://x", "https://a b"] {
            assert!(uri_problem("dataschema", bad).is_some(), "{bad}");
        }
    }
}
