//! The customer dashboard served by the API: the page, its embeddable compact display, the plans list, and short-lived HMAC-signed sign-in links exchanged for sessions.
//!
//! # Routes
//! - `GET /dashboard/`: the page (usage, upgrade modal, history); plain HTML, CSS and JS embedded
//!   from `ingest/dashboard/`, no build step and no request to any other site (enforced by the
//!   Content-Security-Policy: scripts, styles, images and `fetch` from this origin only).
//! - `GET /dashboard/compact`: the compact display alone, for an iframe; `GET /dashboard/embed.js`
//!   defines the `<metering-usage>` web component that embeds it in another site (docs/dashboard.md).
//! - `GET /dashboard/config.json`: what the page needs besides the API (whether billing is on).
//! - `GET /dashboard/billing/subscription/{status,portal}`, `POST .../{create,cancel}`: billing-sync's
//!   seed endpoints at [`Config::billing_url`](crate::Config::billing_url), forwarded with the
//!   caller's credential and JSON body only (no query, no `X-Customer-Id`: always the credential's
//!   own customer). The page stays on one origin: billing-sync needs no CORS and no public address.
//! - `GET /v1/plans`: the catalog's plans with price, limit and features (public).
//! - `POST /v1/customers/{customer}/dashboard-link` (admin): a sign-in link valid for minutes.
//! - `POST /dashboard/session` `{"link"}`: exchanges a link, once, for a session token.
//!
//! # Tokens
//! `mdl_` (link) or `mds_` (session), then hex(JSON claims), `.`, hex(HMAC-SHA256 over the prefix
//! and the hex claims) with [`Config::dashboard_secret`](crate::Config::dashboard_secret). Claims:
//! kind, tenant, customer, expiry (unix seconds) and a random nonce. A session token authenticates
//! everywhere a key does, as a customer-scoped key with only the `read` scope
//! ([`KeyStore::with_sessions`](crate::keys::KeyStore::with_sessions)); a link is good only for
//! the exchange, once per instance, and a session cannot mint links (that needs `admin`).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;
use crate::http::{AppState, authenticate};
use crate::keys::{KeyInfo, Scope};

/// Prefix of a sign-in link token.
pub const LINK_PREFIX: &str = "mdl_";
/// Prefix of a session token.
pub const SESSION_PREFIX: &str = "mds_";
/// Default lifetime of a sign-in link (s).
pub const LINK_TTL_SECS: i64 = 15 * 60;
/// Bounds of a requested link lifetime (s).
pub const LINK_TTL_RANGE: std::ops::RangeInclusive<i64> = 60..=24 * 3600;
/// Lifetime of a session (s).
pub const SESSION_TTL_SECS: i64 = 8 * 3600;
/// Longest token accepted (bounds the work on garbage).
const MAX_TOKEN_LEN: usize = 4096;

/// What a signed token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `link` or `session`.
    pub k: String,
    /// Tenant.
    pub t: String,
    /// Customer.
    pub c: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Random nonce (a link is exchanged once).
    pub n: String,
}

/// Why a link was not exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// Not a link, altered, or signed with another key.
    Invalid,
    /// Past its expiry.
    Expired,
    /// Already exchanged.
    Used,
}

/// Signs and verifies links and sessions.
pub struct Signer {
    key: SecretString,
    /// Nonces of exchanged links and their expiry (pruned as they expire).
    used: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Signer {
    /// A signer with `secret`; an empty secret means a random one for this process.
    pub fn new(secret: &SecretString) -> Self {
        let key = if secret.expose_secret().is_empty() {
            tracing::info!(
                "dashboard_secret is empty: sign-in links and sessions are valid on this instance only"
            );
            SecretString::from(random_hex(32))
        } else {
            secret.clone()
        };
        Self {
            key,
            used: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, prefix: &str, payload: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("any key length");
        mac.update(prefix.as_bytes());
        mac.update(payload.as_bytes());
        mac
    }

    fn sign(&self, prefix: &str, claims: &Claims) -> String {
        let payload = hex::encode(serde_json::to_vec(claims).unwrap_or_default());
        let sig = hex::encode(self.mac(prefix, &payload).finalize().into_bytes());
        format!("{prefix}{payload}.{sig}")
    }

    /// The claims of `token` if it carries `prefix`, is signed with this key and is of `kind`
    /// (expiry not checked).
    fn verify(&self, prefix: &str, kind: &str, token: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (payload, sig) = token.strip_prefix(prefix)?.split_once('.')?;
        let sig = hex::decode(sig).ok()?;
        self.mac(prefix, payload).verify_slice(&sig).ok()?;
        let claims: Claims = serde_json::from_slice(&hex::decode(payload).ok()?).ok()?;
        (claims.k == kind).then_some(claims)
    }

    fn issue(
        &self,
        prefix: &str,
        kind: &str,
        tenant: &str,
        customer: &str,
        exp: OffsetDateTime,
    ) -> String {
        let claims = Claims {
            k: kind.into(),
            t: tenant.into(),
            c: customer.into(),
            exp: exp.unix_timestamp(),
            n: random_hex(12),
        };
        self.sign(prefix, &claims)
    }

    /// A sign-in link token for `customer` of `tenant`, valid until `exp`.
    pub fn link(&self, tenant: &str, customer: &str, exp: OffsetDateTime) -> String {
        self.issue(LINK_PREFIX, "link", tenant, customer, exp)
    }

    /// A session token for `customer` of `tenant`, valid until `exp`.
    pub fn session(&self, tenant: &str, customer: &str, exp: OffsetDateTime) -> String {
        self.issue(SESSION_PREFIX, "session", tenant, customer, exp)
    }

    /// Checks a link and marks it used; returns its claims.
    pub fn redeem(&self, link: &str, now: OffsetDateTime) -> Result<Claims, LinkError> {
        let claims = self
            .verify(LINK_PREFIX, "link", link.trim())
            .ok_or(LinkError::Invalid)?;
        let now = now.unix_timestamp();
        if claims.exp <= now {
            return Err(LinkError::Expired);
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, exp| *exp > now);
        if used.insert(claims.n.clone(), claims.exp).is_some() {
            return Err(LinkError::Used);
        }
        Ok(claims)
    }

    /// The key a valid, unexpired session token stands for: its customer, `read` only.
    pub fn session_key(&self, token: &str) -> Option<KeyInfo> {
        let claims = self.verify(SESSION_PREFIX, "session", token)?;
        (claims.exp > OffsetDateTime::now_utc().unix_timestamp()).then(|| KeyInfo {
            tenant: claims.t,
            customer: Some(claims.c),
            scopes: vec![Scope::Read],
        })
    }
}

/// One embedded file of the page.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Files under `/dashboard/` (the HTML pages are served by their own routes).
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        mime: JS,
        body: include_bytes!("../dashboard/app.js"),
    },
    Asset {
        name: "ui.js",
        mime: JS,
        body: include_bytes!("../dashboard/ui.js"),
    },
    Asset {
        name: "compact.js",
        mime: JS,
        body: include_bytes!("../dashboard/compact.js"),
    },
    Asset {
        name: "embed.js",
        mime: JS,
        body: include_bytes!("../dashboard/embed.js"),
    },
    Asset {
        name: "style.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../dashboard/style.css"),
    },
    Asset {
        name: "favicon.svg",
        mime: "image/svg+xml",
        body: include_bytes!("../dashboard/favicon.svg"),
    },
];

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const COMPACT_HTML: &str = include_str!("../dashboard/compact.html");

/// The dashboard's routes (merged into [`crate::http::router`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(index))
        .route("/dashboard/compact", get(compact))
        .route("/dashboard/config.json", get(config))
        .route("/dashboard/session", post(post_session))
        .route(
            "/dashboard/billing/subscription/{action}",
            get(billing_proxy).post(billing_proxy),
        )
        .route("/dashboard/{file}", get(asset))
        .route("/v1/plans", get(plans))
        .route("/v1/customers/{customer}/dashboard-link", post(post_link))
}

/// `scheme://host[:port]` of an http(s) URL, if it is one that may go into a CSP.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    ok.then(|| format!("{scheme}://{host}"))
}

fn billing_url(state: &AppState) -> Option<String> {
    let url = state.config.billing_url.trim().trim_end_matches('/');
    origin(url).map(|_| url.to_string())
}

fn common_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// An HTML page with a CSP allowing only this origin.
fn html(body: &'static str, frame_ancestors: &str) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {frame_ancestors}"
    );
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    common_headers(&mut r);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if frame_ancestors == "'none'" {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    r
}

async fn index() -> Response {
    html(INDEX_HTML, "'none'")
}

/// The compact display may be framed by any site: it shows nothing without a credential that the
/// embedding site hands it, and its upgrade button only opens the dashboard.
async fn compact() -> Response {
    html(COMPACT_HTML, "*")
}

async fn asset(Path(file): Path<String>) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == file) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such dashboard file")
            .into_response();
    };
    let mut r = ([(header::CONTENT_TYPE, a.mime)], a.body).into_response();
    common_headers(&mut r);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if a.name == "embed.js" {
        // Loaded by other sites' pages with <script src>.
        r.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    r
}

async fn config(State(state): State<AppState>) -> Response {
    let mut r = Json(json!({
        "billing": billing_url(&state).is_some(),
        "session_ttl_secs": SESSION_TTL_SECS,
    }))
    .into_response();
    common_headers(&mut r);
    r
}

/// The HTTP client of the billing proxy.
fn billing_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// Forwards one of billing-sync's seed endpoints (see the module docs).
async fn billing_proxy(
    State(state): State<AppState>,
    Path(action): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use axum::http::Method;
    let allowed = matches!(
        (&method, action.as_str()),
        (&Method::GET, "status" | "portal") | (&Method::POST, "create" | "cancel")
    );
    if !allowed {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such billing route")
            .into_response();
    }
    let Some(base) = billing_url(&state) else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "billing_unavailable",
            "billing is not configured",
        )
        .into_response();
    };
    if body.len() > 16 * 1024 {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "at most 16 KiB",
        )
        .into_response();
    }
    let verb = if method == Method::POST {
        reqwest::Method::POST
    } else {
        reqwest::Method::GET
    };
    let mut req = billing_client()
        .request(verb, format!("{base}/subscription/{action}"))
        .header("accept", "application/json");
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        req = req.header("authorization", auth);
    }
    if method == Method::POST {
        req = req
            .header("content-type", "application/json")
            .body(body.to_vec());
    }
    match req.send().await {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let bytes = r.bytes().await.unwrap_or_default();
            let mut out =
                (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
            if let Some(v) = retry.and_then(|v| HeaderValue::from_str(&v).ok()) {
                out.headers_mut().insert(header::RETRY_AFTER, v);
            }
            out.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            out
        }
        Err(e) => {
            tracing::warn!(error = %e, "billing-sync unreachable");
            ApiError::unavailable(
                "billing_unreachable",
                "billing is not reachable; retry shortly",
                5,
            )
            .into_response()
        }
    }
}

/// `GET /v1/plans`: the plans of the catalog for the first meter, in catalog order.
async fn plans(State(state): State<AppState>) -> Json<Value> {
    let c = &state.catalog;
    let meter = &c.meters[0];
    let plans: Vec<Value> = c
        .plans
        .iter()
        .map(|p| {
            json!({
                "key": p.key,
                "name": p.name,
                "price_cents": p.price_cents,
                "currency": p.currency,
                "limit": p.limit(&meter.key),
                "features": p.features,
                "default": p.key == c.default_plan,
            })
        })
        .collect();
    Json(json!({
        "meter": {"key": meter.key, "name": meter.name},
        "warn_percent": c.warn_percent,
        "default_plan": c.default_plan,
        "plans": plans,
    }))
}

/// Body of `POST /v1/customers/{customer}/dashboard-link` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// Lifetime in seconds (default 900, 60 to 86,400).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

fn signer(state: &AppState) -> Result<&std::sync::Arc<Signer>, ApiError> {
    state.keys.sessions().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "links_disabled",
            "dashboard sign-in links are not enabled",
        )
    })
}

/// `POST /v1/customers/{customer}/dashboard-link` (admin): a short-lived signed sign-in link.
async fn post_link(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Admin).await?;
    if customer.trim().is_empty()
        || customer.len() > schemas::event::MAX_ID_LEN
        || customer.chars().any(char::is_control)
    {
        return Err(crate::query::invalid(
            "customer",
            "the customer must be 1-256 bytes without control characters",
        ));
    }
    crate::query::authorize_customer(&key, &customer)?;
    let req: LinkRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LinkRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| crate::query::invalid("body", e.to_string()))?
    };
    let ttl = req.ttl_secs.unwrap_or(LINK_TTL_SECS);
    if !LINK_TTL_RANGE.contains(&ttl) {
        return Err(crate::query::invalid(
            "ttl_secs",
            "between 60 and 86400 seconds",
        ));
    }
    let exp = OffsetDateTime::now_utc() + time::Duration::seconds(ttl);
    let link = signer(&state)?.link(&key.tenant, &customer, exp);
    let path = format!("/dashboard/#link={link}");
    let url = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| origin(&format!("http://{h}")).is_some())
        .map(|h| format!("http://{h}{path}"));
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "customer": customer,
            "link": link,
            "path": path,
            "url": url,
            "expires_at": exp.format(&Rfc3339).unwrap_or_default(),
        })),
    )
        .into_response())
}

/// Body of `POST /dashboard/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The link token (`mdl_...`).
    pub link: String,
}

/// `POST /dashboard/session`: a link, once, for a session token.
async fn post_session(
    State(state): State<AppState>,
    body: Result<Json<SessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| crate::query::invalid("body", e.body_text()))?;
    let signer = signer(&state)?;
    let now = OffsetDateTime::now_utc();
    let claims = signer.redeem(&req.link, now).map_err(|e| match e {
        LinkError::Invalid => {
            ApiError::unauthorized("invalid_link", "this sign-in link is not valid")
        }
        LinkError::Expired => ApiError::unauthorized(
            "link_expired",
            "this sign-in link has expired; ask for a new one",
        ),
        LinkError::Used => ApiError::unauthorized(
            "link_used",
            "this sign-in link was already used; ask for a new one",
        ),
    })?;
    let exp = now + time::Duration::seconds(SESSION_TTL_SECS);
    let token = signer.session(&claims.t, &claims.c, exp);
    let mut r = Json(json!({
        "token": token,
        "customer": claims.c,
        "expires_at": exp.format(&Rfc3339).unwrap_or_default(),
    }))
    .into_response();
    common_headers(&mut r);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(&SecretString::from("test-secret"))
    }

    #[test]
    fn a_link_is_exchanged_once_and_a_session_is_a_read_only_customer_key() {
        let s = signer();
        let now = OffsetDateTime::now_utc();
        let link = s.link("acme", "c1", now + time::Duration::minutes(5));
        let claims = s.redeem(&link, now).expect("valid link");
        assert_eq!((claims.t.as_str(), claims.c.as_str()), ("acme", "c1"));
        assert_eq!(s.redeem(&link, now), Err(LinkError::Used));
        let session = s.session("acme", "c1", now + time::Duration::hours(1));
        let key = s.session_key(&session).expect("valid session");
        assert_eq!(key.customer.as_deref(), Some("c1"));
        assert!(key.allows(Scope::Read) && !key.allows(Scope::Ingest) && !key.allows(Scope::Admin));
        // A link is not a session and a session is not a link.
        assert!(s.session_key(&link).is_none());
        assert_eq!(s.redeem(&session, now), Err(LinkError::Invalid));
    }

    #[test]
    fn altered_foreign_and_expired_tokens_are_refused() {
        let s = signer();
        let now = OffsetDateTime::now_utc();
        let link = s.link("acme", "c1", now + time::Duration::minutes(5));
        // Another customer in the claims with the old signature.
        let (payload, sig) = link[LINK_PREFIX.len()..].split_once('.').expect("dot");
        let text = String::from_utf8(hex::decode(payload).expect("hex")).expect("utf8");
        let forged = format!(
            "{LINK_PREFIX}{}.{sig}",
            hex::encode(text.replace("\"c1\"", "\"c2\""))
        );
        assert_eq!(s.redeem(&forged, now), Err(LinkError::Invalid));
        let other = Signer::new(&SecretString::from("other"));
        assert_eq!(other.redeem(&link, now), Err(LinkError::Invalid));
        let old = s.link("acme", "c1", now - time::Duration::seconds(1));
        assert_eq!(s.redeem(&old, now), Err(LinkError::Expired));
        let ended = s.session("acme", "c1", now - time::Duration::seconds(1));
        assert!(s.session_key(&ended).is_none());
        assert!(s.session_key("mds_zz.zz").is_none());
        // Random keys differ per process when no secret is configured.
        let (a, b) = (
            Signer::new(&SecretString::from("")),
            Signer::new(&SecretString::from("")),
        );
        let t = a.session("acme", "c1", now + time::Duration::hours(1));
        assert!(a.session_key(&t).is_some() && b.session_key(&t).is_none());
    }

    #[test]
    fn csp_origins_come_only_from_plain_urls() {
        assert_eq!(
            origin("http://127.0.0.1:8090/x").as_deref(),
            Some("http://127.0.0.1:8090")
        );
        assert_eq!(
            origin("https://billing.example.com").as_deref(),
            Some("https://billing.example.com")
        );
        assert_eq!(origin("javascript:alert(1)"), None);
        assert_eq!(origin("http://a; script-src *"), None);
        assert_eq!(origin(""), None);
    }
}
