//! Event intake (`POST /v1/events`): authenticate, tell the CloudEvents content mode (binary,
//! structured, batched, or the seed's plain JSON), read the body within its limit, validate at the
//! tenant's conformance (the fast path for plain valid events, the full validation with per-field
//! errors otherwise), produce with acks=all and count the accepted events in the quota view;
//! refused batches are kept on the rejected topic.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http_body_util::BodyExt;
use schemas::api::{Accepted, ErrorBody, EventBatch, doc};
use schemas::event::{Conformance, ErrorCode, FieldError, Intake, UsageEvent};
use schemas::wire::{Checked, Wire};
use serde_json::Value;
use serde_json::value::RawValue;
use tower_http::request_id::RequestId;

use platform::auth::authenticate;
use platform::error::ApiError;
use platform::notes::Noted;
use platform::principal::Scope;
use platform::producer::{MAX_REJECTED_PAYLOAD, Outgoing, Rejection, now_millis};

use crate::cloudevents::binary::BinaryError;
use crate::cloudevents::{self, Mode};
use crate::metrics::CodeLabels;
use crate::shared::AppState;

fn request_id(id: &Option<Extension<RequestId>>) -> Option<String> {
    id.as_ref()
        .and_then(|Extension(r)| r.header_value().to_str().ok().map(String::from))
}

/// Reads at most `limit` bytes of the body; more is a 413.
/// A body declared up to this many times the limit is read and dropped before the 413.
const DRAIN_FACTOR: usize = 8;

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body exceeds {limit} bytes; split it into smaller batches"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        // Read (and drop) a moderately oversized body before answering, so the client reads the
        // 413 instead of a connection reset in the middle of its upload; a huge one is refused at
        // once.
        if n <= limit.saturating_mul(DRAIN_FACTOR) {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        }
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_read_failed",
            format!("cannot read the body: {e}"),
        )),
    }
}

/// Send one usage event or an array (up to 1,000 events / 1 MiB), in any CloudEvents HTTP content
/// mode. 202 only after the broker acknowledged every event.
///
/// Structured mode (`application/cloudevents+json`, one event), batched mode
/// (`application/cloudevents-batch+json`, an array, possibly empty), binary mode (one event: its
/// attributes in `ce-*` headers, percent-encoded; its data as the body, a JSON object, with its
/// media type in `Content-Type`) or plain `application/json` (one event or an array; the seed's
/// short form `{"id","type","subject","data"}`). Every attribute is kept: `datacontenttype`,
/// `dataschema`, `time` and extension attributes (lower-case letters and digits; strings,
/// integers, booleans). A tenant set to strict conformance must send `specversion` and `source`.
///
/// Needs a key with the `ingest` scope; a customer-scoped key only reaches its own customer. An
/// invalid batch is refused whole, with every bad field in `details`, and nothing of it is
/// produced; a retry with the same ids counts once.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "intake",
    security(("bearer" = [])),
    params(
        ("ce-specversion" = Option<String>, Header, description = "Binary mode: `1.0` \
            (required for a strict tenant)"),
        ("ce-id" = Option<String>, Header, description = "Binary mode: the event id"),
        ("ce-source" = Option<String>, Header, description = "Binary mode: the producer \
            (required for a strict tenant)"),
        ("ce-type" = Option<String>, Header, description = "Binary mode: the meter key"),
        ("ce-subject" = Option<String>, Header, description = "Binary mode: the customer"),
        ("ce-time" = Option<String>, Header, description = "Binary mode: RFC 3339 event time"),
        ("ce-dataschema" = Option<String>, Header, description = "Binary mode: absolute URI of \
            the data's schema; any other `ce-<name>` header is an extension attribute"),
    ),
    request_body(
        description = "One CloudEvents 1.0 event or an array of them (structured, batched or \
            plain JSON); in binary mode the event's data (a JSON object)",
        content(
            (EventBatch = "application/json"),
            (EventBatch = "application/cloudevents+json"),
            (EventBatch = "application/cloudevents-batch+json"),
        )
    ),
    responses(
        (status = 202, description = "The broker acknowledged every event", body = Accepted),
        (status = 400, body = ErrorBody, description = "`invalid_events` (every bad field or \
            attribute in `details`), `malformed_json`, `empty_batch`, `body_read_failed`; \
            nothing was accepted"),
        (status = 401, body = ErrorBody, description = doc::UNAUTHORIZED),
        (status = 403, body = ErrorBody, description = "`insufficient_scope`: the key lacks the \
            `ingest` scope; `forbidden`: an event names another tenant or, with a customer-scoped \
            key, another customer (in `details`)"),
        (status = 413, body = ErrorBody, description = "`payload_too_large` (over the body \
            limit, 1 MiB), `too_many_events` (over 1,000 events)"),
        (status = 415, body = ErrorBody, description = "`unsupported_media_type`: a \
            `Content-Type` that is not a media type, an event format other than JSON, or data \
            that is not JSON (binary mode); nothing was accepted"),
        (status = 503, body = ErrorBody, description = "`broker_unavailable`, `overloaded` (with \
            `Retry-After`): the broker did not acknowledge the batch; nothing was accepted, retry \
            it unchanged", headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn post_events(
    State(state): State<AppState>,
    rid: Option<Extension<RequestId>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rid = request_id(&rid);
    match intake(&state, &headers, body).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(Accepted { accepted })).into_response(),
        Err(e) => e.with_request_id(rid).into_response(),
    }
}

async fn intake(state: &AppState, headers: &HeaderMap, body: Body) -> Result<usize, ApiError> {
    let key = authenticate(&state.keys, headers, Scope::Ingest).await?;
    let mode = cloudevents::mode(headers)?;
    let body = read_body(body, headers, state.config.max_body_bytes).await?;
    let received_at = now_millis();
    let reject = |code: &'static str, reason: String, payload: &[u8]| {
        state
            .metrics
            .events_rejected
            .get_or_create(&CodeLabels { code: code.into() })
            .inc();
        keep_rejection(state, &key.tenant, received_at, code, reason, payload);
    };

    let ctx = Intake {
        tenant: &key.tenant,
        customer_scope: key.customer.as_deref(),
        received_at,
        window: state.config.window(),
    };
    let conformance = state.config.cloudevents.conformance(&key.tenant);
    if mode == Mode::Binary {
        let value = match cloudevents::binary::event(headers, &body) {
            Ok(v) => v,
            Err(BinaryError::Unsupported(reason)) => return Err(cloudevents::unsupported(reason)),
            Err(BinaryError::Invalid(errors)) => {
                let reason = serde_json::to_string(&errors).unwrap_or_default();
                reject("invalid_events", reason, &body);
                return Err(refused(errors, 1));
            }
        };
        let payload = serde_json::to_vec(&value).unwrap_or_default();
        return match schemas::event::validate_with(&value, 0, &ctx, &state.catalog, conformance) {
            Ok((event, _)) => {
                let events = [event];
                let notes = [Noted::of_event(&events[0], &state.catalog)];
                produce(state, &events, &notes).await
            }
            Err(errors) => {
                let err = refused(errors, 1);
                let reason = serde_json::to_string(&err.details).unwrap_or_default();
                reject(err.code, reason, &payload);
                Err(err)
            }
        };
    }
    if let Some(events) = fast_events(&body, &ctx, state, mode, conformance) {
        let notes: Vec<Noted<'_>> = events.iter().map(Noted::of_checked).collect();
        return produce(state, &events, &notes).await;
    }

    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("the body is not valid JSON: {e}");
            reject("malformed_json", message.clone(), &body);
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                message,
            ));
        }
    };
    let items: Vec<&Value> = match (&value, mode) {
        (Value::Array(_), Mode::Structured) | (Value::Object(_), Mode::Batched) => {
            let reason = if mode == Mode::Structured {
                "structured mode (application/cloudevents+json) carries one event, a JSON \
                 object; send an array as application/cloudevents-batch+json"
            } else {
                "the batched format (application/cloudevents-batch+json) is a JSON array of \
                 events; send one event as application/cloudevents+json"
            };
            let errors = vec![FieldError {
                index: 0,
                field: String::new(),
                code: ErrorCode::NotAnObject,
                reason: reason.into(),
            }];
            reject("invalid_events", reason.into(), &body);
            return Err(refused(errors, 1));
        }
        (Value::Array(items), _) => items.iter().collect(),
        (single, _) => vec![single],
    };
    if items.is_empty() {
        if mode == Mode::Batched {
            // The JSON batch format allows an empty batch: nothing to accept.
            return Ok(0);
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_batch",
            "the batch holds no events",
        ));
    }
    if items.len() > state.config.max_batch_events {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "{} events in one request; at most {}",
                items.len(),
                state.config.max_batch_events
            ),
        ));
    }

    let mut events: Vec<UsageEvent> = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match schemas::event::validate_with(item, i, &ctx, &state.catalog, conformance) {
            Ok((event, _)) => events.push(event),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        let err = refused(errors, items.len());
        let reason = serde_json::to_string(&err.details).unwrap_or_default();
        reject(err.code, reason, &body);
        return Err(err);
    }

    let notes: Vec<Noted<'_>> = events
        .iter()
        .map(|e| Noted::of_event(e, &state.catalog))
        .collect();
    produce(state, &events, &notes).await
}

/// The answer to a request whose events have problems (`errors`, each with its event's index, of
/// `total` events): 403 `forbidden` when one is an authorization problem, else 400
/// `invalid_events`, every problem in `details`.
fn refused(errors: Vec<FieldError>, total: usize) -> ApiError {
    let forbidden = errors.iter().any(|e| e.code.is_forbidden());
    let bad = errors
        .iter()
        .map(|e| e.index)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let (status, code) = if forbidden {
        (StatusCode::FORBIDDEN, "forbidden")
    } else {
        (StatusCode::BAD_REQUEST, "invalid_events")
    };
    let mut err = ApiError::new(
        status,
        code,
        format!("{bad} of {total} events are invalid; nothing was accepted"),
    );
    err.details = errors;
    err
}

/// The request's events through the fast path ([`Wire`]) when every one is plain and valid, their
/// number is within the limit and the body has its mode's shape; `None` sends the request through
/// the full validation, which also explains what is wrong.
fn fast_events<'a>(
    body: &'a [u8],
    ctx: &Intake<'a>,
    state: &AppState,
    mode: Mode,
    conformance: Conformance,
) -> Option<Vec<Checked<'a>>> {
    let batch = schemas::event::is_batch(body);
    let raws: Vec<&RawValue> = match (batch, mode) {
        (true, Mode::Structured) | (false, Mode::Batched) => return None,
        (true, _) => serde_json::from_slice(body).ok()?,
        (false, _) => vec![serde_json::from_slice(body).ok()?],
    };
    if raws.is_empty() || raws.len() > state.config.max_batch_events {
        return None;
    }
    raws.iter()
        .map(|raw| Wire::parse(raw.get())?.check_with(ctx, &state.catalog, conformance))
        .collect()
}

/// Produces accepted events, waits for the acknowledgement and counts them in the quota view
/// (`notes`: what the view counts of each event, in order; also the batches' notes header).
async fn produce<E: Outgoing>(
    state: &AppState,
    events: &[E],
    notes: &[Noted<'_>],
) -> Result<usize, ApiError> {
    match state.producer.send_events(events, notes).await {
        Ok(positions) => {
            let n = positions.len();
            state.metrics.events_accepted.inc_by(n as u64);
            for (&note, pos) in notes.iter().zip(positions) {
                state.view.note(note, pos);
            }
            Ok(n)
        }
        Err(e) => {
            state
                .metrics
                .produce_failures
                .get_or_create(&CodeLabels {
                    code: e.code().into(),
                })
                .inc();
            tracing::warn!(error = %e, events = events.len(), "batch not acknowledged");
            Err(ApiError::unavailable(
                e.code(),
                "the event log did not acknowledge the batch; retry it unchanged (same ids count once)",
                1,
            ))
        }
    }
}

/// Keeps a refused batch on the rejected topic without delaying the answer.
fn keep_rejection(
    state: &AppState,
    tenant: &str,
    receivedat: time::OffsetDateTime,
    code: &str,
    reason: String,
    body: &[u8],
) {
    let cut = body.len().min(MAX_REJECTED_PAYLOAD);
    let rejection = Rejection {
        tenant: tenant.into(),
        receivedat,
        reason_code: code.into(),
        reason,
        payload: String::from_utf8_lossy(&body[..cut]).into_owned(),
    };
    let producer = state.producer.clone();
    tokio::spawn(async move {
        if let Err(e) = producer.send_rejection(&rejection).await {
            tracing::warn!(error = %e, "could not keep a rejected batch");
        }
    });
}
