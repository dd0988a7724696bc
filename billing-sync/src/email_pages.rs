//! The customer's own email pages (issue 22): the signed unsubscribe link's page and its
//! one-click POST (RFC 8058), and the signed preference page. No key: the link's signature
//! (`mailer::token`) is the authority; a changed link is refused with 403 `invalid_link`.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Html;
use mailer::{Kind, Mailer};
use platform::error::{ApiError, invalid};
use platform::extract::Query;
use schemas::api::ErrorBody;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::email_routes::{DISABLED, enabled, kind_of};
use crate::emails::mail_err;
use crate::http::{AppState, DEPENDENCY_FAILED, failure};

/// 403 of a link whose signature does not sign what it names.
const BAD_LINK: &str = "`invalid_link`: the link was changed or belongs to another account";

/// The routes (tag `emails`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(unsubscribe_page, unsubscribe))
        .routes(routes!(preferences_page, save_preferences))
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
#[utoipa::path(
    get,
    path = "/emails/unsubscribe",
    tag = "emails",
    params(
        ("tenant" = String, Query, description = "Tenant"),
        ("customer" = String, Query, description = "Customer"),
        ("kind" = String, Query, description = "The kind (`*` on a preference link)"),
        ("sig" = String, Query, description = "The link's signature"),
    ),
    responses(
        (status = 200, description = "A page with the unsubscribe button", content_type = "text/html; charset=utf-8", body = String),
        (status = 400, body = ErrorBody, description = "`cannot_unsubscribe` (receipts), `invalid_request`"),
        (status = 403, body = ErrorBody, description = BAD_LINK),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
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
#[utoipa::path(
    post,
    path = "/emails/unsubscribe",
    tag = "emails",
    params(
        ("tenant" = String, Query, description = "Tenant"),
        ("customer" = String, Query, description = "Customer"),
        ("kind" = String, Query, description = "The kind (`*` on a preference link)"),
        ("sig" = String, Query, description = "The link's signature"),
    ),
    responses(
        (status = 200, description = "Unsubscribed", content_type = "text/html; charset=utf-8", body = String),
        (status = 400, body = ErrorBody, description = "`cannot_unsubscribe` (receipts), `invalid_request`"),
        (status = 403, body = ErrorBody, description = BAD_LINK),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
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
#[utoipa::path(
    get,
    path = "/emails/preferences",
    tag = "emails",
    params(
        ("tenant" = String, Query, description = "Tenant"),
        ("customer" = String, Query, description = "Customer"),
        ("kind" = String, Query, description = "The kind (`*` on a preference link)"),
        ("sig" = String, Query, description = "The link's signature"),
    ),
    responses(
        (status = 200, description = "The preference form", content_type = "text/html; charset=utf-8", body = String),
        (status = 400, body = ErrorBody, description = "`cannot_unsubscribe` (receipts), `invalid_request`"),
        (status = 403, body = ErrorBody, description = BAD_LINK),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
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
#[utoipa::path(
    post,
    path = "/emails/preferences",
    tag = "emails",
    params(
        ("tenant" = String, Query, description = "Tenant"),
        ("customer" = String, Query, description = "Customer"),
        ("kind" = String, Query, description = "The kind (`*` on a preference link)"),
        ("sig" = String, Query, description = "The link's signature"),
    ),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "The checked kinds (`usage_warning=on&...`)"),
    responses(
        (status = 200, description = "Saved; the form again", content_type = "text/html; charset=utf-8", body = String),
        (status = 400, body = ErrorBody, description = "`cannot_unsubscribe` (receipts), `invalid_request`"),
        (status = 403, body = ErrorBody, description = BAD_LINK),
        (status = 404, body = ErrorBody, description = DISABLED),
        (status = 503, body = ErrorBody, description = DEPENDENCY_FAILED),
    )
)]
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
