//! The customer emails' routes (issue 22): the admin's preview, listing (ledger and outbox),
//! address, and triggers; the customer's signed unsubscribe and preference pages (no key: the
//! link's signature is the authority); and the preference API for the dashboard (a key or a
//! dashboard session of the customer). Plain axum routes, merged into [`crate::http::router`]
//! next to the documented API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Form, Json, Router};
use mailer::{Kind, Mailer};
use platform::auth::{authenticate, authorize_customer, check_customer, customer_of};
use platform::error::{ApiError, invalid};
use platform::extract::Query;
use platform::principal::Scope;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::emails::{mail_err, rfc3339};
use crate::http::{AppState, admin, failure};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/emails", get(list))
        .route("/admin/emails/preview/{kind}", get(preview))
        .route("/admin/emails/reminders", post(reminders))
        .route("/admin/emails/dispatch", post(dispatch))
        .route("/admin/customers/{customer}/email", put(set_address))
        .route(
            "/emails/unsubscribe",
            get(unsubscribe_page).post(unsubscribe),
        )
        .route(
            "/emails/preferences",
            get(preferences_page).post(save_preferences),
        )
        .route(
            "/v1/email-preferences",
            get(get_preferences).put(put_preferences),
        )
}

fn mailer(state: &AppState) -> Result<&Arc<Mailer>, ApiError> {
    state.emails.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "emails_disabled",
            "customer emails are off (emails.enabled)",
        )
    })
}

/// A mailer that sends (`emails.enabled`).
fn enabled(state: &AppState) -> Result<&Arc<Mailer>, ApiError> {
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

fn kind_of(name: &str) -> Result<Kind, ApiError> {
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

/// `POST /admin/emails/reminders`: queue the renewal reminders due now.
async fn reminders(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let m = enabled(&state)?;
    let n = crate::reminders::run(&state.billing, m)
        .await
        .map_err(failure)?;
    Ok(Json(json!({"queued": n})))
}

/// `POST /admin/emails/dispatch`: one dispatch round now.
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

fn check_address(email: &str) -> Result<(), ApiError> {
    if email.parse::<lettre::Address>().is_err() {
        return Err(invalid("email", "not an email address"));
    }
    Ok(())
}

/// `PUT /admin/customers/{customer}/email` `{"email"}`: the customer's address (wins over
/// Stripe's).
async fn set_address(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(customer): Path<String>,
    Json(body): Json<AddressBody>,
) -> Result<Json<Value>, ApiError> {
    let key = admin(&state, &headers).await?;
    check_customer(&customer)?;
    check_address(&body.email)?;
    mailer(&state)?
        .ledger()
        .set_contact(&key.tenant, &customer, "admin", &body.email)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    Ok(Json(json!({"customer": customer, "email": body.email})))
}

#[derive(Debug, Deserialize)]
struct LinkQuery {
    tenant: String,
    customer: String,
    kind: String,
    sig: String,
}

/// Checks a link's signature; 403 `invalid_link` when it does not sign what it names.
fn verify(m: &Mailer, q: &LinkQuery) -> Result<(), ApiError> {
    if m.signer().verify(&q.tenant, &q.customer, &q.kind, &q.sig) {
        return Ok(());
    }
    tracing::warn!(tenant = %q.tenant, customer = %q.customer, kind = %q.kind, "email link with a bad signature refused");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_link",
        "this link is not valid (it was changed or belongs to another account)",
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{t}</title></head><body style=\"font-family:\
         sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem\"><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    ))
}

fn unsubscribable(q: &LinkQuery) -> Result<Kind, ApiError> {
    let kind = kind_of(&q.kind)?;
    if !kind.can_unsubscribe() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "cannot_unsubscribe",
            "payment receipts are records of a payment and cannot be turned off",
        ));
    }
    Ok(kind)
}

/// `GET /emails/unsubscribe?tenant&customer&kind&sig`: a page with the button (a GET changes
/// nothing: mail scanners follow links).
async fn unsubscribe_page(
    State(state): State<AppState>,
    Query(q): Query<LinkQuery>,
) -> Result<Html<String>, ApiError> {
    let m = enabled(&state)?;
    verify(m, &q)?;
    let kind = unsubscribable(&q)?;
    let query = m.signer().query(&q.tenant, &q.customer, kind.as_str());
    let prefs = m.signer().preferences_url("", &q.tenant, &q.customer);
    Ok(page(
        "Unsubscribe",
        &format!(
            "<p>Stop sending <strong>{}</strong> to account {}?</p>\
             <form method=\"post\" action=\"/emails/unsubscribe?{}\"><button type=\"submit\">\
             Unsubscribe</button></form><p><a href=\"{}\">All email preferences</a></p>",
            escape(&kind.label().to_lowercase()),
            escape(&q.customer),
            escape(&query),
            escape(&prefs),
        ),
    ))
}

/// `POST /emails/unsubscribe?tenant&customer&kind&sig`: turns the kind off (also RFC 8058's
/// one-click `List-Unsubscribe=One-Click` POST from a mail client).
async fn unsubscribe(
    State(state): State<AppState>,
    Query(q): Query<LinkQuery>,
) -> Result<Html<String>, ApiError> {
    let m = enabled(&state)?;
    verify(m, &q)?;
    let kind = unsubscribable(&q)?;
    m.ledger()
        .set_preference(&q.tenant, &q.customer, kind, false)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    tracing::info!(tenant = %q.tenant, customer = %q.customer, kind = %kind, "customer unsubscribed");
    let prefs = m.signer().preferences_url("", &q.tenant, &q.customer);
    Ok(page(
        "Unsubscribed",
        &format!(
            "<p>You will no longer receive {} for account {}.</p><p><a href=\"{}\">\
             Email preferences</a></p>",
            escape(&kind.label().to_lowercase()),
            escape(&q.customer),
            escape(&prefs)
        ),
    ))
}

fn preference_form(
    m: &Mailer,
    q: &LinkQuery,
    prefs: &BTreeMap<Kind, bool>,
    saved: bool,
) -> Html<String> {
    let mut rows = String::new();
    for kind in Kind::ALL {
        let on = prefs.get(&kind).copied().unwrap_or(true);
        rows.push_str(&format!(
            "<p><label><input type=\"checkbox\" name=\"{}\"{}{}> {}</label>{}</p>",
            kind.as_str(),
            if on { " checked" } else { "" },
            if kind.can_unsubscribe() {
                ""
            } else {
                " disabled"
            },
            escape(kind.label()),
            if kind.can_unsubscribe() {
                ""
            } else {
                " <small>(always sent)</small>"
            },
        ));
    }
    let query = m
        .signer()
        .query(&q.tenant, &q.customer, mailer::token::ALL_KINDS);
    page(
        "Email preferences",
        &format!(
            "<p>Account {}.</p>{}<form method=\"post\" action=\"/emails/preferences?{}\">{rows}\
             <button type=\"submit\">Save</button></form>",
            escape(&q.customer),
            if saved {
                "<p><strong>Saved.</strong></p>"
            } else {
                ""
            },
            escape(&query)
        ),
    )
}

fn all_kinds(q: &LinkQuery) -> Result<(), ApiError> {
    if q.kind == mailer::token::ALL_KINDS {
        Ok(())
    } else {
        Err(invalid("kind", "a preference link names every kind (`*`)"))
    }
}

/// `GET /emails/preferences?tenant&customer&kind=*&sig`: the customer's choices.
async fn preferences_page(
    State(state): State<AppState>,
    Query(q): Query<LinkQuery>,
) -> Result<Html<String>, ApiError> {
    let m = enabled(&state)?;
    verify(m, &q)?;
    all_kinds(&q)?;
    let prefs = m
        .ledger()
        .preferences(&q.tenant, &q.customer)
        .await
        .map_err(|e| failure(mail_err(e)))?;
    Ok(preference_form(m, &q, &prefs, false))
}

/// `POST /emails/preferences?...` with the form's checkboxes (a kind not sent: off).
async fn save_preferences(
    State(state): State<AppState>,
    Query(q): Query<LinkQuery>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Result<Html<String>, ApiError> {
    let m = enabled(&state)?;
    verify(m, &q)?;
    all_kinds(&q)?;
    let mut prefs = BTreeMap::new();
    for kind in Kind::ALL {
        let on = form.contains_key(kind.as_str()) || !kind.can_unsubscribe();
        m.ledger()
            .set_preference(&q.tenant, &q.customer, kind, on)
            .await
            .map_err(|e| failure(mail_err(e)))?;
        prefs.insert(kind, on);
    }
    Ok(preference_form(m, &q, &prefs, true))
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
async fn put_preferences(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CustomerQuery>,
    Json(body): Json<PreferencesBody>,
) -> Result<Json<Value>, ApiError> {
    let key = authenticate(&state.keys, &headers, Scope::Read).await?;
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
