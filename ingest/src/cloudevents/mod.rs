//! CloudEvents over HTTP for `POST /v1/events`: the content mode read from the request's
//! `Content-Type` and `ce-*` headers (the HTTP protocol binding's rules), the per-tenant
//! conformance setting, and the `415` of a media type the ingest cannot read.
//!
//! - `mod.rs`: [`Mode`], [`mode`], [`Settings`], [`unsupported`].
//! - [`binary`]: the binary mode's event, built from its `ce-*` headers and its body.

pub mod binary;

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode, header};
use platform::error::ApiError;
use schemas::event::{Conformance, ErrorCode, FieldError, MediaType};
use serde::Deserialize;

/// The structured mode's media type (JSON event format).
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The batched mode's media type (JSON batch format).
pub const BATCHED: &str = "application/cloudevents-batch+json";

/// How a request carries its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/cloudevents+json`: one event, attributes and data in the body.
    Structured,
    /// `application/cloudevents-batch+json`: a JSON array of events (it may be empty).
    Batched,
    /// `ce-*` headers hold the attributes, the body is the data, `Content-Type` its media type.
    Binary,
    /// No CloudEvents media type and no `ce-*` header: one event or an array of them in JSON,
    /// as the seed sends them.
    Json,
}

/// The content mode of a request, as the HTTP binding tells it: the `Content-Type` prefix
/// (`application/cloudevents-batch`: batched, `application/cloudevents`: structured), else
/// binary mode when a `ce-*` header is present, else plain JSON. A `Content-Type` that cannot be
/// read, an event format other than JSON, and a plain body that is not JSON are a 415.
pub fn mode(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let binary = headers.keys().any(|k| k.as_str().starts_with("ce-"));
    let Some(raw) = headers.get(header::CONTENT_TYPE) else {
        return Ok(if binary { Mode::Binary } else { Mode::Json });
    };
    let media = raw
        .to_str()
        .ok()
        .and_then(MediaType::parse)
        .ok_or_else(|| {
            unsupported(format!(
                "Content-Type {:?} is not a media type (type/subtype)",
                String::from_utf8_lossy(raw.as_bytes())
            ))
        })?;
    let utf8 = |mode: Mode| {
        if media.is_utf8() {
            Ok(mode)
        } else {
            Err(unsupported(format!(
                "Content-Type {}: the body must be UTF-8 JSON",
                media.essence
            )))
        }
    };
    if media.essence.starts_with("application/cloudevents-batch") {
        if media.essence == BATCHED {
            return utf8(Mode::Batched);
        }
        return Err(unsupported(format!(
            "Content-Type {}: the only batch format read here is {BATCHED}",
            media.essence
        )));
    }
    if media.essence.starts_with("application/cloudevents") {
        if media.essence == STRUCTURED {
            return utf8(Mode::Structured);
        }
        return Err(unsupported(format!(
            "Content-Type {}: the only event format read here is {STRUCTURED}",
            media.essence
        )));
    }
    if binary {
        // The Content-Type is the data's media type: `binary::event` decides about it.
        return Ok(Mode::Binary);
    }
    // curl's `-d` sends application/x-www-form-urlencoded: read as JSON, as before.
    if media.is_json() || media.essence == "application/x-www-form-urlencoded" {
        return utf8(Mode::Json);
    }
    Err(unsupported(format!(
        "Content-Type {}: send events as application/json, {STRUCTURED} or {BATCHED}, or one \
         event in binary mode (ce-* headers)",
        media.essence
    )))
}

/// A 415 `unsupported_media_type` naming the `Content-Type` and why it cannot be read; nothing
/// was accepted.
pub fn unsupported(reason: String) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("{reason}; nothing was accepted"),
    );
    e.details = vec![FieldError {
        index: 0,
        field: "Content-Type".into(),
        code: ErrorCode::InvalidValue,
        reason,
    }];
    e
}

/// How closely each tenant's events must follow the CloudEvents spec (`[cloudevents]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Every tenant's conformance unless listed in `tenants`: `lenient` (the default: the seed's
    /// short form `{"id","type","subject","data"}` is accepted) or `strict` (`specversion` and
    /// `source` are required).
    pub conformance: Conformance,
    /// Per-tenant conformance (`[cloudevents.tenants]` `acme = "strict"`).
    pub tenants: BTreeMap<String, Conformance>,
}

impl Settings {
    /// The conformance `tenant`'s events must meet.
    pub fn conformance(&self, tenant: &str) -> Conformance {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.conformance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_content_mode_follows_the_http_binding() {
        let cases: [(&[(&str, &str)], Mode); 8] = [
            (&[], Mode::Json),
            (&[("content-type", "application/json")], Mode::Json),
            (
                &[("content-type", "application/x-www-form-urlencoded")],
                Mode::Json,
            ),
            (
                &[(
                    "content-type",
                    "application/cloudevents+json; charset=UTF-8",
                )],
                Mode::Structured,
            ),
            (&[("content-type", BATCHED)], Mode::Batched),
            // Structured wins over ce-* headers, which it may carry too.
            (
                &[("content-type", STRUCTURED), ("ce-id", "e1")],
                Mode::Structured,
            ),
            (&[("ce-id", "e1")], Mode::Binary),
            (
                &[("content-type", "text/plain"), ("ce-id", "e1")],
                Mode::Binary,
            ),
        ];
        for (h, want) in cases {
            assert_eq!(mode(&headers(h)).expect("a mode"), want, "{h:?}");
        }
    }

    #[test]
    fn unreadable_or_unsupported_media_types_are_a_415_naming_the_header() {
        for ct in [
            "nonsense",
            "application/cloudevents+avro",
            "application/cloudevents-batch+protobuf",
            "application/cloudevents+json; charset=latin1",
            "text/csv",
            "application/xml",
        ] {
            let e = mode(&headers(&[("content-type", ct)])).expect_err(ct);
            assert_eq!(
                (e.status, e.code, e.details[0].field.as_str()),
                (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "Content-Type"
                ),
                "{ct}"
            );
        }
    }

    #[test]
    fn a_tenant_setting_overrides_the_default_conformance() {
        let s: Settings = serde_json::from_value(serde_json::json!({
            "tenants": {"acme": "strict"}
        }))
        .expect("settings");
        assert_eq!(s.conformance("acme"), Conformance::Strict);
        assert_eq!(s.conformance("globex"), Conformance::Lenient);
        let all: Settings =
            serde_json::from_value(serde_json::json!({"conformance": "strict"})).expect("all");
        assert_eq!(all.conformance("globex"), Conformance::Strict);
    }
}
