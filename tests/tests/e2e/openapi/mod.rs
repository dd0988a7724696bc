//! The OpenAPI documents the ingest and billing-sync serve at `GET /openapi.json`, generated from
//! the handlers: each is valid OpenAPI 3 (read into the typed `oas3` model and checked by
//! `openapi-spec-validator`), documents exactly the expected paths, every documented operation is
//! served (and no other method on its path), and real answers — errors included — match the
//! documented status codes, content types and schemas. A source check keeps every route
//! registered through `utoipa_axum::routes!`, so none can be served without being documented.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use oas3::spec::{ObjectOrReference, ParameterIn};
use platform::principal::Scope;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::billing::{Fake, start_billing};
use tests::{TestEnv, event, wait_until};
use time::format_description::well_known::Rfc3339;

mod billing;
mod ingest;

/// The ingest's documented paths.
const INGEST_PATHS: &[&str] = &[
    "/v1/events",
    "/v1/check",
    "/v1/customers/{customer}/quota",
    "/v1/customers/{customer}/entitlements",
    "/v1/customers/{customer}/entitlements/{feature}",
    "/v1/customers/{customer}/plan/migrate",
    "/v1/plans/{plan}/migrate",
    "/v1/customers/{customer}/usage",
    "/v1/customers/{customer}/history",
    "/v1/customers/{customer}/plan",
    "/v1/customers/{customer}/limits/{meter}",
    "/v1/customers/{customer}/grants",
    "/v1/customers/{customer}/dashboard-link",
    "/v1/plans",
    "/usage",
    "/usage/track",
    "/usage/history",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/dashboard",
    "/dashboard/",
    "/dashboard/compact",
    "/dashboard/{file}",
    "/dashboard/config.json",
    "/dashboard/session",
    "/dashboard/billing/subscription/{action}",
    "/dashboard/billing/v1/customers/{customer}/invoice-preview",
    "/dashboard/billing/v1/email-preferences",
];

/// billing-sync's documented paths.
const BILLING_PATHS: &[&str] = &[
    "/subscription/status",
    "/subscription/create",
    "/subscription/portal",
    "/subscription/cancel",
    "/webhooks/stripe",
    "/admin/usage/report",
    "/admin/usage/reconcile",
    "/admin/usage/proof",
    "/admin/subscriptions/reconcile",
    "/v1/customers/{customer}/invoice-preview",
    "/admin/emails",
    "/admin/emails/preview/{kind}",
    "/admin/emails/reminders",
    "/admin/emails/dispatch",
    "/admin/emails/retry",
    "/admin/customers/{customer}/contract",
    "/admin/customers/{customer}/contracts",
    "/admin/customers/{customer}/contracts/{id}",
    "/admin/customers/{customer}/plan/migrate",
    "/subscription/addons",
    "/admin/customers/{customer}/addons/{purchase}",
    "/admin/customers/{customer}/email",
    "/emails/unsubscribe",
    "/emails/preferences",
    "/v1/email-preferences",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// A service's document: the typed model and the JSON it was read from.
struct Document {
    spec: oas3::Spec,
    json: Value,
}

impl Document {
    /// Fetches `{base}/openapi.json` and checks that it is valid OpenAPI 3 with the paths
    /// `expected`, and what every operation must have.
    async fn fetch(http: &reqwest::Client, base: &str, expected: &[&str]) -> Self {
        let r = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .expect("GET /openapi.json");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let text = r.text().await.expect("document text");
        let spec = oas3::from_json(&text).expect("the document reads as a typed OpenAPI 3 model");
        let version = spec.validate_version().expect("an OpenAPI 3.1 version");
        assert_eq!((version.major, version.minor), (3, 1), "{version}");
        spec_validator(&text);
        let json: Value = serde_json::from_str(&text).expect("JSON");
        let doc = Self { spec, json };
        let paths: BTreeSet<&str> = doc.json["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            paths,
            expected.iter().copied().collect::<BTreeSet<_>>(),
            "the documented paths"
        );
        doc.check_operations();
        doc
    }

    /// Every operation: a summary, a tag, a unique operation id, its path parameters exactly,
    /// responses; a bearer-secured one documents 401; every 4xx/5xx has a JSON schema.
    fn check_operations(&self) {
        let schemes = &self.json["components"]["securitySchemes"];
        assert_eq!(
            (&schemes["bearer"]["type"], &schemes["bearer"]["scheme"]),
            (&json!("http"), &json!("bearer"))
        );
        assert!(self.json["components"]["schemas"]["ErrorBody"].is_object());
        let mut ids = BTreeSet::new();
        let mut n = 0;
        for (path, method, op) in self.spec.operations() {
            n += 1;
            let at = format!("{method} {path}");
            assert!(
                op.summary.as_deref().is_some_and(|s| !s.trim().is_empty()),
                "{at}: no summary"
            );
            assert!(!op.tags.is_empty(), "{at}: no tag");
            let id = op.operation_id.clone().expect("operation id");
            assert!(ids.insert(id.clone()), "{at}: operation id {id} twice");
            let in_path: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(String::from)
                .collect();
            let declared: BTreeSet<String> = op
                .parameters
                .iter()
                .filter_map(|p| match p {
                    ObjectOrReference::Object(p) if p.location == ParameterIn::Path => {
                        assert_eq!(p.required, Some(true), "{at}: path parameter {}", p.name);
                        Some(p.name.clone())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(declared, in_path, "{at}: path parameters");
            let responses = op.responses.as_ref().expect("responses");
            assert!(!responses.is_empty(), "{at}: no response");
            if op.security.iter().any(|s| s.0.contains_key("bearer")) {
                assert!(responses.contains_key("401"), "{at}: 401 undocumented");
            }
            for (status, _) in responses.iter() {
                if status.starts_with('4') || status.starts_with('5') {
                    let r = &self.json["paths"][&path][method.as_str().to_lowercase()]["responses"]
                        [status];
                    assert!(
                        r["content"]["application/json"]["schema"].is_object(),
                        "{at} {status}: no JSON body schema"
                    );
                }
            }
        }
        assert!(n >= self.json["paths"].as_object().map_or(0, |p| p.len()));
    }

    /// The documented methods of `path` (upper case).
    fn methods(&self, path: &str) -> BTreeSet<String> {
        self.spec
            .operations()
            .filter(|(p, _, _)| p == path)
            .map(|(_, m, _)| m.as_str().to_string())
            .collect()
    }

    /// The documented response of `method path` with `status`, if any.
    fn response(&self, method: &Method, path: &str, status: StatusCode) -> Option<&Value> {
        let r =
            &self.json["paths"][path][method.as_str().to_lowercase()]["responses"][status.as_str()];
        r.is_object().then_some(r)
    }

    /// Checks an answer to `method path` against the document: its status is documented, its
    /// content type is one of the response's, and a JSON body matches the schema.
    fn check_answer(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Value {
        let at = format!("{method} {path} -> {status}");
        let response = self
            .response(method, path, status)
            .unwrap_or_else(|| panic!("{at}: status not documented"));
        let Some(content) = response["content"].as_object() else {
            assert!(body.is_empty(), "{at}: an undocumented body");
            return Value::Null;
        };
        let ct = content_type.unwrap_or_else(|| panic!("{at}: no content type"));
        let media = content
            .get(ct)
            .unwrap_or_else(|| panic!("{at}: content type {ct} not documented: {content:?}"));
        if ct != "application/json" {
            return Value::Null;
        }
        let value: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{at}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
        if let Err(e) = conforms(&self.json, &value, &media["schema"], "$", true) {
            panic!("{at}: the answer does not match the documented schema: {e}\n{value:#}");
        }
        value
    }
}

/// Runs PyPI `openapi-spec-validator` on the document (installed by `scripts/install.sh openapi`).
fn spec_validator(text: &str) {
    let file = std::env::temp_dir().join(format!(
        "openapi-{}-{}.json",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&file, text).expect("write the document");
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    let out = out.expect("python3 (run `bash scripts/install.sh openapi`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "openapi-spec-validator missing: run `bash scripts/install.sh openapi`: {stderr}"
    );
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "openapi-spec-validator refused the document: {stdout}{stderr}"
    );
}

/// Follows a `$ref` to `#/components/...`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> Result<&'a Value, String> {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = r
                .strip_prefix('#')
                .and_then(|p| doc.pointer(p))
                .ok_or_else(|| format!("unresolved $ref {r}"))?;
            resolve(doc, target)
        }
        None => Ok(schema),
    }
}

/// The property names an object schema declares (through `$ref` and `allOf`), and whether it
/// allows others.
fn declared(doc: &Value, schema: &Value, names: &mut BTreeSet<String>) -> Result<bool, String> {
    let s = resolve(doc, schema)?;
    let mut open = s
        .get("additionalProperties")
        .is_some_and(|a| a != &json!(false));
    if let Some(p) = s.get("properties").and_then(Value::as_object) {
        names.extend(p.keys().cloned());
    } else if s.get("allOf").is_none() {
        open = true;
    }
    for branch in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        open |= declared(doc, branch, names)?;
    }
    Ok(open)
}

fn type_matches(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => false,
    }
}

/// Whether `v` matches `schema` (the parts of JSON Schema the documents use). `strict`: an object
/// may hold only the properties the schema declares (unless it allows more).
fn conforms(doc: &Value, v: &Value, schema: &Value, at: &str, strict: bool) -> Result<(), String> {
    let s = resolve(doc, schema)?;
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for branch in all {
            conforms(doc, v, branch, at, false)?;
        }
        if strict && let Some(m) = v.as_object() {
            let mut names = BTreeSet::new();
            if !declared(doc, s, &mut names)?
                && let Some(k) = m.keys().find(|k| !names.contains(*k))
            {
                return Err(format!("{at}.{k}: not documented"));
            }
        }
        return Ok(());
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|b| conforms(doc, v, b, at, strict).is_ok())
            .count();
        return if matching == 1 {
            Ok(())
        } else {
            Err(format!("{at}: {matching} oneOf branches match {v}"))
        };
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array)
        && !values.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {values:?}"));
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(v, t)) {
        return Err(format!("{at}: {v} is not {types:?}"));
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        return Err(format!("{at}: {n} < minimum {min}"));
    }
    match v {
        Value::Object(m) => {
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap_or_default();
                if !m.contains_key(r) {
                    return Err(format!("{at}.{r}: required, missing"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, val) in m {
                let here = format!("{at}.{k}");
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(p), _) => conforms(doc, val, p, &here, true)?,
                    (None, Some(Value::Bool(false))) => return Err(format!("{here}: not allowed")),
                    (None, Some(a)) if a.is_object() => conforms(doc, val, a, &here, true)?,
                    (None, _) if strict && props.is_some() => {
                        return Err(format!("{here}: not documented"));
                    }
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    conforms(doc, x, item, &format!("{at}[{i}]"), true)?;
                }
            }
        }
        Value::String(text) => match s.get("format").and_then(Value::as_str) {
            Some("date-time") => {
                time::OffsetDateTime::parse(text, &Rfc3339)
                    .map_err(|e| format!("{at}: {text:?} is not a date-time: {e}"))?;
            }
            Some("date") => {
                let fmt = time::macros::format_description!("[year]-[month]-[day]");
                time::Date::parse(text, &fmt)
                    .map_err(|e| format!("{at}: {text:?} is not a date: {e}"))?;
            }
            _ => {}
        },
        _ => {}
    }
    Ok(())
}

/// A client that does not follow redirects (`GET /dashboard` answers 308).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The path with its parameters filled in: an enum's first value, an example, or a name's
/// usual value.
fn filled(doc: &Document, path: &str, method: &Method) -> String {
    let op = &doc.json["paths"][path][method.as_str().to_lowercase()];
    let mut out = path.to_string();
    for p in op["parameters"].as_array().into_iter().flatten() {
        if p["in"] != "path" {
            continue;
        }
        let name = p["name"].as_str().unwrap_or_default();
        let value = p["schema"]["enum"][0]
            .as_str()
            .or_else(|| p["example"].as_str())
            .unwrap_or(match name {
                "meter" => "api_call",
                _ => "c1",
            });
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// Whether an answer is the router's fallback (no route matched).
fn is_fallback(status: StatusCode, body: &[u8]) -> bool {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    status == 404 && v["error"]["code"] == "not_found" && v["error"]["message"] == "no such route"
}

/// Every documented operation is served (called without a key: never the fallback, never 405,
/// always a documented status and body), every path answers an undocumented method with 405 and
/// exactly the documented methods in `Allow`, and an unknown path gets the fallback.
async fn probe(http: &reqwest::Client, base: &str, doc: &Document) {
    let r = http
        .get(format!("{base}/no/such/route"))
        .send()
        .await
        .expect("send");
    let status = r.status();
    assert!(
        is_fallback(status, &r.bytes().await.unwrap_or_default()),
        "the fallback is recognized"
    );
    let mut probed = 0;
    for (path, method, _) in doc.spec.operations() {
        let url = format!("{base}{}", filled(doc, &path, &method));
        let r = http
            .request(method.clone(), &url)
            .send()
            .await
            .expect("send");
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = r.bytes().await.unwrap_or_default();
        assert!(
            !is_fallback(status, &body) && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {url}: documented but not served ({status})"
        );
        doc.check_answer(&method, &path, status, ct.as_deref(), &body);
        probed += 1;
    }
    assert!(probed >= doc.json["paths"].as_object().map_or(0, |p| p.len()));
    for path in doc.json["paths"].as_object().expect("paths").keys() {
        let mut documented = doc.methods(path);
        assert!(!documented.contains("PATCH"), "no route uses PATCH");
        if documented.contains("GET") {
            documented.insert("HEAD".into());
        }
        let first = doc
            .spec
            .operations()
            .find(|(p, _, _)| p == path)
            .map(|(_, m, _)| m)
            .expect("an operation");
        let url = format!("{base}{}", filled(doc, path, &first));
        let r = http
            .request(Method::PATCH, &url)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 405, "PATCH {url}");
        let allow: BTreeSet<String> = r
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        assert_eq!(allow, documented, "{path}: served methods vs documented");
    }
}

/// Sends a request with `key` and checks the answer against the document.
struct Caller<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    doc: &'a Document,
}

impl Caller<'_> {
    /// `method` on `path` (the documented `template` filled in, with a query), answered with
    /// `expect`; returns the JSON answer.
    async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        expect: u16,
    ) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("send");
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let bytes = r.bytes().await.unwrap_or_default();
        assert_eq!(
            status.as_u16(),
            expect,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        self.doc
            .check_answer(&method, template, status, ct.as_deref(), &bytes)
    }
}

/// Every route of both services is registered through `utoipa_axum::routes!` (which takes the
/// path and method from the handler's `#[utoipa::path]`): no `.route(`, `.route_service(` or
/// `.nest(` anywhere in their sources (unit tests apart), so nothing is served that the document
/// does not show.
#[test]
fn every_route_of_both_services_is_registered_with_its_openapi_operation() {
    fn sources(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                // Unit tests build routers of their own.
                let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                out.insert(p.display().to_string(), text.to_string());
            }
        }
    }
    let root = tests::workspace_root();
    let mut files = BTreeMap::new();
    sources(&root.join("ingest/src"), &mut files);
    sources(&root.join("billing-sync/src"), &mut files);
    assert!(files.len() > 20, "{files:?}");
    let mut registered = 0;
    for (file, text) in &files {
        for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            assert!(
                !text.contains(call),
                "{file} registers a route with `{call}`: use `.routes(routes!(handler))` with a \
                 `#[utoipa::path]` on the handler"
            );
        }
        registered += text.matches(".routes(routes!(").count();
    }
    // The ingest's 24 paths and billing-sync's 12 (two handlers share a path twice).
    assert!(registered >= 34, "{registered} route registrations");
    assert!(
        !root.join("ingest/openapi.json").exists(),
        "the hand-kept document is gone"
    );
}
