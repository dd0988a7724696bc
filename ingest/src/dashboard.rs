//! The customer dashboard served by the API: the page, its embeddable compact display, the plans list, and short-lived HMAC-signed sign-in links exchanged for sessions.
//!
//! # Routes
//! - `GET /dashboard/`: the page (usage, upgrade modal, history); plain HTML, CSS and JS embedded
//!   from `ingest/dashboard/`, no build step and no request to any other site (enforced by the
//!   Content-Security-Policy: scripts, styles, images and `fetch` from this origin only).
//! - `GET /dashboard/compact`: the compact display alone, for an iframe; `GET /dashboard/embed.js`
//!   defines the `<metering-usage>` web component that embeds it in another site (docs/dashboard.md).
//! - `GET /dashboard/config.json`: what the page needs besides the API (whether billing is on).
//! - `GET /dashboard/billing/subscription/{status,portal,addons}`, `POST .../{create,cancel,addons}`: billing-sync's
//!   seed endpoints at [`Config::billing_url`](crate::Config::billing_url), forwarded with the
//!   caller's credential and JSON body only (no query, no `X-Customer-Id`: always the credential's
//!   own customer). The page stays on one origin: billing-sync needs no CORS and no public address.
//! - `GET /dashboard/billing/v1/customers/{customer}/invoice-preview`: billing-sync's invoice
//!   preview, forwarded the same way (billing-sync lets a customer's credential name only itself).
//! - `GET|PUT /dashboard/billing/v1/email-preferences`: billing-sync's customer email choices
//!   (issue 22), forwarded the same way (no query: the credential's own customer).
//! - `GET /v1/plans`: the catalog's plans with price, limit and features (public; [`crate::plans`]).
//! - `POST /v1/customers/{customer}/dashboard-link` (admin): a sign-in link valid for minutes.
//! - `POST /dashboard/session` `{"link"}`: exchanges a link, once, for a session token.
//!
//! The tokens are [`platform::sessions`]'s, signed with
//! [`Config::dashboard_secret`](crate::Config::dashboard_secret).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use schemas::api::{ErrorBody, doc};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use platform::auth::{authenticate, authorize_customer, check_customer};
use platform::error::{ApiError, invalid};
use platform::principal::Scope;
use platform::sessions::{LINK_TTL_RANGE, LINK_TTL_SECS, LinkError, SESSION_TTL_SECS, Signer};

use crate::shared::AppState;

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
        name: "emails.js",
        mime: JS,
        body: include_bytes!("../dashboard/emails.js"),
    },
    Asset {
        name: "addons.js",
        mime: JS,
        body: include_bytes!("../dashboard/addons.js"),
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

/// The dashboard's routes with their OpenAPI operations (merged into [`crate::http::api`]).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(redirect))
        .routes(routes!(index))
        .routes(routes!(compact))
        .routes(routes!(config))
        .routes(routes!(post_session))
        .routes(routes!(billing_get, billing_post))
        .routes(routes!(billing_invoice_preview))
        .routes(routes!(email_preferences_get, email_preferences_put))
        .routes(routes!(asset))
        .routes(routes!(crate::plans::plans))
        .routes(routes!(post_link))
}

/// Redirects to /dashboard/.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "dashboard",
    responses((status = 308, description = "To `/dashboard/`",
        headers(("location" = String, description = "`/dashboard/`")))),
)]
async fn redirect() -> Redirect {
    Redirect::permanent("/dashboard/")
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

/// The usage dashboard (sign in with a customer-scoped key or a signed link).
///
/// Plain HTML, CSS and JS served by the API; the Content-Security-Policy allows scripts, styles,
/// images and `fetch` from this origin only, and the page may not be framed.
#[utoipa::path(
    get,
    path = "/dashboard/",
    tag = "dashboard",
    responses((status = 200, description = "The page", body = String,
        content_type = "text/html; charset=utf-8", headers(
            ("content-security-policy" = String, description = "This origin only; `frame-ancestors 'none'`"),
            ("x-frame-options" = String, description = "`DENY`"),
            ("cache-control" = String, description = "`no-cache`"),
        ))),
)]
async fn index() -> Response {
    html(INDEX_HTML, "'none'")
}

/// The compact usage display, for embedding in an iframe.
///
/// The compact display may be framed by any site: it shows nothing without a credential that the
/// embedding site hands it, and its upgrade button only opens the dashboard.
#[utoipa::path(
    get,
    path = "/dashboard/compact",
    tag = "dashboard",
    responses((status = 200, description = "The compact display", body = String,
        content_type = "text/html; charset=utf-8", headers(
            ("content-security-policy" = String, description = "This origin only; `frame-ancestors *`"),
            ("cache-control" = String, description = "`no-cache`"),
        ))),
)]
async fn compact() -> Response {
    html(COMPACT_HTML, "*")
}

/// Dashboard assets (app.js, embed.js: the `<metering-usage>` web component, style.css, ...).
#[utoipa::path(
    get,
    path = "/dashboard/{file}",
    tag = "dashboard",
    params(("file" = String, Path, description = "One of the page's files: `app.js`, `ui.js`, \
        `compact.js`, `emails.js`, `addons.js`, `embed.js` (the `<metering-usage>` web component; any origin may load it), \
        `style.css`, `favicon.svg`", example = "embed.js")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
            (String = "image/svg+xml"),
        ), headers(
            ("cache-control" = String, description = "`no-cache`"),
            ("access-control-allow-origin" = String, description = "`*`, for `embed.js` only"),
        )),
        (status = 404, body = ErrorBody, description = "`not_found`: no such dashboard file"),
    ),
)]
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

/// What the dashboard page needs besides the API.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DashboardConfig {
    /// Whether billing (billing-sync) is configured: the page shows the upgrade and billing
    /// buttons.
    pub billing: bool,
    /// Lifetime of a dashboard session in seconds.
    pub session_ttl_secs: i64,
}

/// What the page needs to know (billing enabled, session lifetime).
#[utoipa::path(
    get,
    path = "/dashboard/config.json",
    tag = "dashboard",
    responses((status = 200, description = "The page's settings", body = DashboardConfig)),
)]
async fn config(State(state): State<AppState>) -> Response {
    let mut r = Json(DashboardConfig {
        billing: billing_url(&state).is_some(),
        session_ttl_secs: SESSION_TTL_SECS,
    })
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

/// The `GET` actions the dashboard forwards to billing-sync.
#[derive(Debug, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillingRead {
    /// `GET /subscription/status`.
    Status,
    /// `GET /subscription/portal`.
    Portal,
    /// `GET /subscription/addons` (the add-ons the customer may buy and has bought).
    Addons,
}

/// The `POST` actions the dashboard forwards to billing-sync.
#[derive(Debug, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillingWrite {
    /// `POST /subscription/create` (a Checkout Session).
    Create,
    /// `POST /subscription/cancel`.
    Cancel,
    /// `POST /subscription/addons` (a Checkout Session for an add-on).
    Addons,
}

/// Forwards `status`, `portal` and `addons` to billing-sync with the caller's key.
///
/// Always the credential's own customer (no query, no `X-Customer-Id` is forwarded); billing-sync's
/// answer and status are passed through (see billing-sync's document).
#[utoipa::path(
    get,
    path = "/dashboard/billing/subscription/{action}",
    operation_id = "get_billing",
    tag = "dashboard",
    security(("bearer" = [])),
    params(("action" = inline(BillingRead), Path, description = "billing-sync's `GET /subscription/{action}`")),
    responses(
        (status = 200, description = "billing-sync's answer", body = Object),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "billing-sync refused the key"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such billing route"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`: over 16 KiB"),
        (status = 502, body = ErrorBody, description = "`stripe_unavailable`: Stripe did not answer billing-sync"),
        (status = 503, body = ErrorBody, description = "`billing_unavailable`: billing is not \
            configured; `billing_unreachable` (with `Retry-After`): billing-sync is not reachable",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn billing_get(
    state: State<AppState>,
    action: Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    billing_proxy(state, action, method, headers, body).await
}

/// Forwards `create` (checkout), `cancel` and `addons` (an add-on's checkout) to billing-sync
/// with the caller's key.
///
/// Always the credential's own customer; the JSON body (at most 16 KiB) is forwarded, and
/// billing-sync's answer and status are passed through (see billing-sync's document).
#[utoipa::path(
    post,
    path = "/dashboard/billing/subscription/{action}",
    operation_id = "post_billing",
    tag = "dashboard",
    security(("bearer" = [])),
    params(("action" = inline(BillingWrite), Path, description = "billing-sync's `POST /subscription/{action}`")),
    request_body(content = Option<Object>, description = "billing-sync's body: `{\"plan\"}` for \
        `create`, `{\"immediately\"}` for `cancel`, `{\"addon\", \"quantity\"}` for `addons`"),
    responses(
        (status = 200, description = "billing-sync's answer (`cancel`)", body = Object),
        (status = 201, description = "billing-sync's answer (`create`, `addons`: the Checkout Session)", body = Object),
        (status = 400, body = ErrorBody, description = "billing-sync refused the body"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "billing-sync refused the key"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such billing route; \
            `no_subscription` (`cancel`)"),
        (status = 409, body = ErrorBody, description = "`subscription_exists` (`create`); \
            `addon_not_in_plan`, `addon_active` (`addons`)"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`: over 16 KiB"),
        (status = 502, body = ErrorBody, description = "`stripe_unavailable`: Stripe did not answer billing-sync"),
        (status = 503, body = ErrorBody, description = "`billing_unavailable`: billing is not \
            configured; `billing_unreachable` (with `Retry-After`): billing-sync is not reachable",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn billing_post(
    state: State<AppState>,
    action: Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    billing_proxy(state, action, method, headers, body).await
}

/// Forwards billing-sync's invoice preview of `customer` with the caller's key.
///
/// What the customer will pay at its period end (billing-sync's
/// `GET /v1/customers/{customer}/invoice-preview`); a dashboard session may only name its own
/// customer. billing-sync's answer and status are passed through (see billing-sync's document).
#[utoipa::path(
    get,
    path = "/dashboard/billing/v1/customers/{customer}/invoice-preview",
    operation_id = "get_billing_invoice_preview",
    tag = "dashboard",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = "The customer (a session: its own)")),
    responses(
        (status = 200, description = "billing-sync's answer (the upcoming invoice, or \
            `upcoming: false` and why)", body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a bad customer id"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "billing-sync refused the key"),
        (status = 404, body = ErrorBody, description = "`unknown_customer`: billing-sync knows no \
            such customer"),
        (status = 503, body = ErrorBody, description = "`billing_unavailable`: billing is not \
            configured; `billing_unreachable`: billing-sync is not reachable; \
            `stripe_unavailable`: Stripe did not answer billing-sync (all with `Retry-After` but \
            the first)",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn billing_invoice_preview(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = check_customer(&customer) {
        return e.into_response();
    }
    let segment: String = customer
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = format!("/v1/customers/{segment}/invoice-preview");
    forward(&state, &Method::GET, &path, &headers, Bytes::new()).await
}

/// Forwards billing-sync's `GET /v1/email-preferences` with the caller's credential.
///
/// The credential's own customer's address and choices per email kind (see billing-sync's
/// document, tag `emails`); billing-sync's answer and status are passed through.
#[utoipa::path(
    get,
    path = "/dashboard/billing/v1/email-preferences",
    operation_id = "get_billing_email_preferences",
    tag = "dashboard",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "billing-sync's answer: `{customer, email, kinds: [{kind, \
            label, subscribed, can_unsubscribe}], preferences_url}`", body = Object),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "billing-sync refused the key"),
        (status = 404, body = ErrorBody, description = "`emails_disabled`: customer emails are off"),
        (status = 503, body = ErrorBody, description = "`billing_unavailable`: billing is not \
            configured; `billing_unreachable` (with `Retry-After`): billing-sync is not reachable",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn email_preferences_get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let path = "/v1/email-preferences";
    forward(&state, &Method::GET, path, &headers, Bytes::new()).await
}

/// Forwards billing-sync's `PUT /v1/email-preferences` with the caller's credential and body.
///
/// `{"preferences": {"usage_warning": false}}` for the credential's own customer; receipts cannot
/// be turned off (400 `cannot_unsubscribe`). billing-sync's answer and status are passed through.
#[utoipa::path(
    put,
    path = "/dashboard/billing/v1/email-preferences",
    operation_id = "put_billing_email_preferences",
    tag = "dashboard",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{\"preferences\": {\"usage_warning\": false}}`"),
    responses(
        (status = 200, description = "billing-sync's answer: the choices after the change", body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a bad body or an \
            unknown kind; `cannot_unsubscribe`: receipts cannot be turned off"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "billing-sync refused the key"),
        (status = 404, body = ErrorBody, description = "`emails_disabled`: customer emails are off"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`: over 16 KiB"),
        (status = 503, body = ErrorBody, description = "`billing_unavailable`: billing is not \
            configured; `billing_unreachable` (with `Retry-After`): billing-sync is not reachable",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn email_preferences_put(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = "/v1/email-preferences";
    forward(&state, &Method::PUT, path, &headers, body).await
}

/// Forwards one of billing-sync's seed endpoints (see the module docs).
async fn billing_proxy(
    State(state): State<AppState>,
    Path(action): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let allowed = matches!(
        (&method, action.as_str()),
        (&Method::GET, "status" | "portal" | "addons")
            | (&Method::POST, "create" | "cancel" | "addons")
    );
    if !allowed {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such billing route")
            .into_response();
    }
    forward(
        &state,
        &method,
        &format!("/subscription/{action}"),
        &headers,
        body,
    )
    .await
}

/// Sends `method` `path` to billing-sync with the caller's credential (and, for a POST, the JSON
/// body), and passes the answer through.
async fn forward(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Some(base) = billing_url(state) else {
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
    let verb = match *method {
        Method::POST => reqwest::Method::POST,
        Method::PUT => reqwest::Method::PUT,
        _ => reqwest::Method::GET,
    };
    let mut req = billing_client()
        .request(verb, format!("{base}{path}"))
        .header("accept", "application/json");
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        req = req.header("authorization", auth);
    }
    if method == Method::POST || method == Method::PUT {
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

/// Body of `POST /v1/customers/{customer}/dashboard-link` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// Lifetime in seconds (default 900, 60 to 86,400).
    #[serde(default)]
    #[schema(minimum = 60, maximum = 86400)]
    pub ttl_secs: Option<i64>,
}

/// Answer of `POST /v1/customers/{customer}/dashboard-link`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DashboardLink {
    /// The customer.
    pub customer: String,
    /// The link token (`mdl_...`), valid once.
    pub link: String,
    /// The page with the link: `/dashboard/#link=...`.
    pub path: String,
    /// `http://<Host>/dashboard/#link=...` when the request's `Host` is a plain host name.
    #[schema(required = true)]
    pub url: Option<String>,
    /// When the link expires (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: String,
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

/// Admin: a short-lived signed sign-in link for one customer.
///
/// Needs a key with the `admin` scope; a customer-scoped key only reaches its own customer.
#[utoipa::path(
    post,
    path = "/v1/customers/{customer}/dashboard-link",
    tag = "admin",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = doc::CUSTOMER)),
    request_body(content = Option<LinkRequest>, description = "Optional; an empty body takes the defaults"),
    responses(
        (status = 201, description = "The link", body = DashboardLink),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a bad customer, body or \
            `ttl_secs`"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "`insufficient_scope`: the key lacks the \
            `admin` scope; `customer_forbidden`: a customer-scoped key named another customer"),
        (status = 501, body = ErrorBody, description = "`links_disabled`: no `dashboard_secret` is configured"),
    )
)]
async fn post_link(
    State(state): State<AppState>,
    Path(customer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Admin).await?;
    check_customer(&customer)?;
    authorize_customer(&key, &customer)?;
    let req: LinkRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LinkRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| invalid("body", e.to_string()))?
    };
    let ttl = req.ttl_secs.unwrap_or(LINK_TTL_SECS);
    if !LINK_TTL_RANGE.contains(&ttl) {
        return Err(invalid("ttl_secs", "between 60 and 86400 seconds"));
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
        Json(DashboardLink {
            customer,
            link,
            path,
            url,
            expires_at: exp.format(&Rfc3339).unwrap_or_default(),
        }),
    )
        .into_response())
}

/// Body of `POST /dashboard/session`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The link token (`mdl_...`).
    pub link: String,
}

/// Answer of `POST /dashboard/session`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The session token (`mds_...`): a customer-scoped, read-only credential.
    pub token: String,
    /// The customer.
    pub customer: String,
    /// When the session expires (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// Exchange a signed sign-in link (once) for a customer-scoped, read-only session token.
#[utoipa::path(
    post,
    path = "/dashboard/session",
    tag = "dashboard",
    request_body = SessionRequest,
    responses(
        (status = 200, description = "The session", body = Session,
            headers(("cache-control" = String, description = "`no-store`"))),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a bad body"),
        (status = 401, body = ErrorBody, description = "`invalid_link`, `link_expired`, `link_used`"),
        (status = 501, body = ErrorBody, description = "`links_disabled`: no `dashboard_secret` is configured"),
        (status = 503, body = ErrorBody, description = "`dependency_unavailable` (with \
            `Retry-After`): the link's use could not be recorded in ClickHouse",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn post_session(
    State(state): State<AppState>,
    body: Result<Json<SessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| invalid("body", e.body_text()))?;
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
        LinkError::Used => link_used(),
    })?;
    // Once across instances too: the first attempt any instance recorded wins.
    let settle = std::time::Duration::from_millis(state.config.dashboard_link_settle_ms);
    match crate::links::claim_once(
        &state.ch,
        &claims.n,
        claims.exp,
        crate::links::instance(),
        settle,
    )
    .await
    {
        Ok(true) => {}
        Ok(false) => return Err(link_used()),
        Err(e) => {
            tracing::warn!(error = %e, "could not record a sign-in link's use");
            return Err(ApiError::unavailable(
                "dependency_unavailable",
                "the sign-in could not be recorded; retry shortly",
                1,
            ));
        }
    }
    let exp = now + time::Duration::seconds(SESSION_TTL_SECS);
    let token = signer.session(&claims.t, &claims.c, exp);
    let mut r = Json(Session {
        token,
        customer: claims.c,
        expires_at: exp.format(&Rfc3339).unwrap_or_default(),
    })
    .into_response();
    common_headers(&mut r);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn link_used() -> ApiError {
    ApiError::unauthorized(
        "link_used",
        "this sign-in link was already used; ask for a new one",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
