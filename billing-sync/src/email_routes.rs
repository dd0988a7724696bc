//! The customer emails' routes (issue 22): the admin's preview, listing (ledger and outbox),
//! address, and triggers; the customer's signed unsubscribe and preference pages (no key: the
//! link's signature is the authority); and the preference API for the dashboard (a key or a
//! dashboard session of the customer). Registered through `utoipa_axum::routes!` like every
//! other route, so the OpenAPI document shows them (tag `emails`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use mailer::{Kind, Mailer};
use platform::auth::{authenticate, authorize_customer, check_customer, customer_of};
use platform::error::{ApiError, invalid};
use platform::extract::Query;
use platform::principal::Scope;
use schemas::api::ErrorBody;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::emails::{mail_err, rfc3339};
use crate::http::{ADMIN_FORBIDDEN, AppState, DEPENDENCY_FAILED, UNAUTHORIZED, admin, failure};

/// 404 when customer emails are off.
pub(crate) const DISABLED: &str = "`emails_disabled`: customer emails are off (`emails.enabled`)";

/// The routes (tag `emails`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(preview))
        .routes(routes!(reminders))
        .routes(routes!(dispatch))
        .routes(routes!(retry))
        .routes(routes!(set_address))
        .routes(routes!(get_preferences, put_preferences))
        .merge(crate::email_pages::routes())
}

pub(crate) fn mailer(state: &AppState) -> Result<&Arc<Mailer>, ApiError> {
    state.emails.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "emails_disabled",
            "customer emails are off (emails.enabled)",
        )
    })
}

/// A mailer that sends (`emails.enabled`).
pub(crate) fn enabled(state: &AppState) -> Result<&Arc<Mailer>, ApiError> {
    let m = mailer(state)?;
    if !m.config().enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "emails_disabled",
            "customer emails are off (emails.enabled)",
        ));
    }
    Ok(m)
}

pub(crate) fn kind_of(name: &str) -> Result<Kind, ApiError> {
    Kind::parse(name).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_kind",
            format!(
                "no email kind {name:?}; kinds: {}",
                Kind::ALL.map(|k| k.as_str()).join(", ")
            ),
        )
    })
}

#[derive(Debug, Deserialize)]
struct PreviewQuery {
    /// `html` (default) or `text`.
    format: Option<String>,
}

/// `GET /admin/emails/preview/{kind}?format=html|text`: the kind with sample data in the key's
/// tenant's branding.
#[utoipa::path(
    get,
    path = "/admin/emails/preview/{kind}",
    tag = "emails",
    security(("bearer" = [])),
    params(
        ("kind" = String, Path, description = "`usage_warning`, `receipt`, `renewal_reminder`, `payment_failed`, `plan_changed`, `cancelled`"),
        ("format" = Option<String>, Query, description = "`html` (default) or `text`"),
    ),
    responses(
        (status = 200, description = "The rendered email (HTML, or the text part with `format=text`)",
            content((String = "text/html; charset=utf-8"), (String = "text/plain; charset=utf-8"))),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 404, body = ErrorBody, description = "`unknown_kind`"),
    )
)]
async fn preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> Result<Response, ApiError> {
    let key = admin(&state, &headers).await?;
    let kind = kind_of(&kind)?;
    let r = mailer(&state)?
        .preview(&key.tenant, kind)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(match q.format.as_deref() {
        Some("text") => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("Subject: {}\n\n{}", r.subject, r.text),
        )
            .into_response(),
        _ => Html(r.html).into_response(),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u64>,
}

/// `GET /admin/emails`: the tenant's ledger rows (newest first) and the outbox's files.
#[utoipa::path(
    get,
    path = "/admin/emails",
    tag = "emails",
    security(("bearer" = [])),
    params(("limit" = Option<u64>, Query, description = "Most ledger rows (200; at most 5,000)")),
    responses(
        (status = 200, description = "`{smtp, outbox_dir, outbox: [{path, to, subject, date, kind}], emails: [ledger rows]}`", body = Object),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = admin(&state, &headers).await?;
    let m = mailer(&state)?;
    let rows = m
        .ledger()
        .recent(&key.tenant, q.limit.unwrap_or(200).min(5_000))
        .await
        .map_err(|e| failure(mail_err(e)))?;
    let emails: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "key": r.key, "customer": r.customer, "kind": r.kind, "scope": r.scope,
                "status": r.status, "recipient": r.recipient, "subject": r.subject,
                "attempt": r.attempt, "code": r.code, "reason": r.reason,
                "owner": r.owner, "at": rfc3339(r.at),
            })
        })
        .collect();
    let dir = &m.config().outbox_dir;
    let outbox = mailer::outbox::list(dir).map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({
        "smtp": m.config().smtp.is_some(),
        "outbox_dir": dir.display().to_string(),
        "outbox": outbox,
        "emails": emails,
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemindersQuery {
    /// Unix seconds to look from instead of now.
    at: Option<i64>,
}

/// `POST /admin/emails/reminders[?at=UNIX]`: queue the renewal reminders due now, or due at `at`
/// (Stripe's time when a test clock was advanced towards a renewal).
#[utoipa::path(
    post,
    path = "/admin/emails/reminders",
    tag = "emails",
    security(("bearer" = [])),
    params(("at" = Option<i64>, Query, description = "Look from this time (Unix seconds; \
        e.g. a Stripe test clock's `frozen_time`) instead of now: the periods ending within \
        `renewal_reminder_days` after it get their reminder")),
    responses(
        (status = 200, description = "`{queued, at}`", body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request`: `at` is not a time"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
async fn reminders(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RemindersQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let m = enabled(&state)?;
    let at = match q.at {
        None => time::OffsetDateTime::now_utc(),
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| invalid("at", "not a time in Unix seconds"))?,
    };
    let n = crate::reminders::run_at(&state.billing, m, at)
        .await
        .map_err(failure)?;
    Ok(Json(json!({"queued": n, "at": rfc3339(at)})))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    /// The dead letters' keys; every dead letter of the tenant when absent or empty.
    #[serde(default)]
    keys: Vec<String>,
}

/// `POST /admin/emails/retry` `{"keys": [...]}`: queue dead letters again (all of the tenant's
/// when no keys are given); the next dispatch round sends them, with the same `Message-ID`.
#[utoipa::path(
    post,
    path = "/admin/emails/retry",
    tag = "emails",
    security(("bearer" = [])),
    request_body(content = Option<Object>, description = "`{\"keys\": [\"acme:cus_1:receipt:in_1\"]}`; \
        empty or absent: every dead letter of the tenant (last 35 days)"),
    responses(
        (status = 200, description = "`{requeued: [key], refused: [{key, reason}]}`: a key that \
            is not a dead letter of the tenant is refused with the reason", body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request`: a bad body"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<mailer::Retried>, ApiError> {
    let key = admin(&state, &headers).await?;
    let body: RetryBody = if body.iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        json_body(&body)?
    };
    let m = enabled(&state)?;
    let r = m
        .retry_dead(&key.tenant, &body.keys)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    Ok(Json(r))
}

/// `POST /admin/emails/dispatch`: one dispatch round now.
#[utoipa::path(
    post,
    path = "/admin/emails/dispatch",
    tag = "emails",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{sent, outbox, dead, skipped, duplicate}`", body = Object),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
async fn dispatch(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<mailer::Summary>, ApiError> {
    admin(&state, &headers).await?;
    let m = enabled(&state)?;
    let s = m
        .dispatch_once(&state.cancel)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    Ok(Json(s))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressBody {
    email: String,
}

/// A JSON body, read after the key was checked (so that a request without a key gets 401).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| invalid("body", format!("not the expected JSON: {e}")))
}

fn check_address(email: &str) -> Result<(), ApiError> {
    if email.parse::<lettre::Address>().is_err() {
        return Err(invalid("email", "not an email address"));
    }
    Ok(())
}

/// `PUT /admin/customers/{customer}/email` `{"email"}`: the customer's address (wins over
/// Stripe's).
#[utoipa::path(
    put,
    path = "/admin/customers/{customer}/email",
    tag = "emails",
    security(("bearer" = [])),
    params(("customer" = String, Path, description = "The customer")),
    request_body(content = Object, description = "`{\"email\": \"owner@example.com\"}`"),
    responses(
        (status = 200, description = "`{customer, email}`", body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request`: not an address"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = ADMIN_FORBIDDEN),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
async fn set_address(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(customer): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = admin(&state, &headers).await?;
    let body: AddressBody = json_body(&body)?;
    check_customer(&customer)?;
    check_address(&body.email)?;
    mailer(&state)?
        .ledger()
        .set_contact(&key.tenant, &customer, "admin", &body.email)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    Ok(Json(json!({"customer": customer, "email": body.email})))
}

#[derive(Debug, Deserialize, Default)]
struct CustomerQuery {
    customer: Option<String>,
}

async fn preferences_json(m: &Mailer, tenant: &str, customer: &str) -> Result<Value, ApiError> {
    let prefs = m
        .ledger()
        .preferences(tenant, customer)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    let email = m
        .ledger()
        .contact(tenant, customer)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    let kinds: Vec<Value> = Kind::ALL
        .into_iter()
        .map(|k| {
            json!({"kind": k.as_str(), "label": k.label(), "subscribed": prefs.get(&k).copied().unwrap_or(true), "can_unsubscribe": k.can_unsubscribe()})
        })
        .collect();
    Ok(json!({
        "customer": customer,
        "email": email,
        "kinds": kinds,
        "preferences_url": m.signer().preferences_url(&m.config().public_url, tenant, customer),
    }))
}

/// `GET /v1/email-preferences`: the customer's address and choices (`read` scope; a
/// customer-scoped key or dashboard session, or `?customer=` with a tenant key).
#[utoipa::path(
    get,
    path = "/v1/email-preferences",
    tag = "emails",
    security(("bearer" = [])),
    params(("customer" = Option<String>, Query, description = "For a tenant key: the customer")),
    responses(
        (status = 200, description = "`{customer, email, kinds: [{kind, label, subscribed, can_unsubscribe}], preferences_url}`", body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request`, `cannot_unsubscribe`"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "`customer_forbidden`: another customer's"),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
async fn get_preferences(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    authorize_customer(&key, &customer)?;
    let m = enabled(&state)?;
    Ok(Json(preferences_json(m, &key.tenant, &customer).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferencesBody {
    /// Kind → subscribed (kinds left out keep their choice; receipts stay on).
    #[serde(default)]
    preferences: BTreeMap<String, bool>,
}

/// `PUT /v1/email-preferences` `{"preferences": {"usage_warning": false, ...}}`.
#[utoipa::path(
    put,
    path = "/v1/email-preferences",
    tag = "emails",
    security(("bearer" = [])),
    params(("customer" = Option<String>, Query, description = "For a tenant key: the customer")),
    request_body(content = Object, description = "`{\"preferences\": {\"usage_warning\": false}}`"),
    responses(
        (status = 200, description = "`{customer, email, kinds: [{kind, label, subscribed, can_unsubscribe}], preferences_url}`", body = Object),
        (status = 400, body = ErrorBody, description = "`invalid_request`, `cannot_unsubscribe`"),
        (status = 401, body = ErrorBody, description = UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "`customer_forbidden`: another customer's"),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
async fn put_preferences(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
    let body: PreferencesBody = json_body(&body)?;
    let customer = customer_of(&key, &headers, q.customer.as_deref())?;
    authorize_customer(&key, &customer)?;
    let m = enabled(&state)?;
    for (name, on) in &body.preferences {
        let kind = Kind::parse(name).map_err(|_| invalid("preferences", "an unknown kind"))?;
        if !kind.can_unsubscribe() && !on {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "cannot_unsubscribe",
                "payment receipts cannot be turned off",
            ));
        }
        m.ledger()
            .set_preference(&key.tenant, &customer, kind, *on)
            .await
            .map_err(|e| failure(mail_err(e)))?;
    }
    Ok(Json(preferences_json(m, &key.tenant, &customer).await?))
}
