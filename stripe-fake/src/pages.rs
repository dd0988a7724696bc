//! The hosted pages: visiting a Checkout Session's page completes it (starts the subscription or
//! pays the one-time purchase); the portal page lists the customer's subscriptions.

use std::sync::Arc;

use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::shared::{Shared, json_response};

pub(crate) async fn checkout_page(
    Extract(shared): Extract<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let result = shared.lock().complete_checkout(&id);
    match result {
        Ok((session, events)) => {
            shared.enqueue(events);
            let link = session
                .success_url
                .as_deref()
                .map(|u| format!("<p><a href=\"{u}\">Continue</a></p>"))
                .unwrap_or_default();
            let what = match (&session.subscription, &session.payment_intent) {
                (Some(sub), _) => format!("subscription {sub}"),
                (None, Some(pi)) => format!("payment {pi}"),
                (None, None) => "nothing paid".into(),
            };
            Html(format!(
                "<!doctype html><title>Checkout complete</title><h1>Payment complete</h1>\
                 <p>Session {} is {}; {what}.</p>{link}",
                session.id, session.status,
            ))
            .into_response()
        }
        Err(e) => json_response(e.status, &e.body, false),
    }
}

pub(crate) async fn portal_page(
    Extract(shared): Extract<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let st = shared.lock();
    let Some(session) = st.portal_sessions.get(&id) else {
        return (StatusCode::NOT_FOUND, "no such portal session").into_response();
    };
    let customer = session["customer"].as_str().unwrap_or_default();
    let rows: String = st
        .subscriptions
        .values()
        .filter(|s| s.customer == customer)
        .map(|s| {
            format!(
                "<li>{} — {} — {} — cancel at period end: {}</li>",
                s.id, s.price.id, s.status, s.cancel_at_period_end
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><title>Billing portal</title><h1>Billing portal for {customer}</h1><ul>{rows}</ul>"
    ))
    .into_response()
}
