//! Request and response types of the HTTP API shared by services, clients and tests, and the
//! parts of the services' OpenAPI documents they share (the bearer security scheme, the error
//! answers' descriptions).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::event::FieldError;

/// Body of every error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code, a human message and, for invalid events, the failing fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (`invalid_events`, `payload_too_large`, `unauthorized`, ...).
    pub code: String,
    /// Human explanation.
    pub message: String,
    /// Request id to quote in support requests (equals the answer's `x-request-id` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Per-event, per-field problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// Answer to an accepted `POST /v1/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Number of events the broker acknowledged.
    pub accepted: usize,
}

/// One usage event as a client sends it to `POST /v1/events`: CloudEvents 1.0 JSON. The ingest
/// validates the JSON itself (`schemas::event::validate`) and answers every bad field at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncomingEvent {
    /// `"1.0"` if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^1\\.0$")]
    pub specversion: Option<String>,
    /// Required, at most 256 bytes; (tenant, customer, id) is unique: a retry with the same id
    /// counts once.
    #[schema(min_length = 1, max_length = 256)]
    pub id: String,
    /// The meter key in the catalog (`api_call` in the built-in catalog).
    #[serde(rename = "type")]
    pub meter: String,
    /// The customer, at most 256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub subject: String,
    /// Producer of the event (default `api`), at most 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the usage happened, RFC 3339; default: the arrival time. At most `max_late_days`
    /// (35) before arrival and `max_future_secs` (300) after.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub time: Option<OffsetDateTime>,
    /// At most 16 KiB: the meter's value property (`quantity` for `api_call`, 1 when absent), its
    /// dimension (`endpoint`) and anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Value>>,
    /// Must be the key's tenant if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Body of `POST /v1/events`: one event or an array of up to 1,000.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EventBatch {
    /// One event.
    One(IncomingEvent),
    /// Many events, all accepted or none.
    Many(Vec<IncomingEvent>),
}

/// Answer of `GET /healthz`: `{"status": "ok"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    #[schema(value_type = String)]
    pub status: std::borrow::Cow<'static, str>,
}

impl Health {
    /// The service is alive.
    pub const OK: Self = Self {
        status: std::borrow::Cow::Borrowed("ok"),
    };
}

/// Name of the bearer security scheme in the services' OpenAPI documents.
pub const BEARER: &str = "bearer";

/// Adds the [`BEARER`] security scheme to an OpenAPI document: `Authorization: Bearer <API key>`.
#[derive(Debug, Clone, Copy)]
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("API key")
            .description(Some(
                "An API key (its scopes `ingest`, `read`, `admin` decide what it may do; a \
                 customer-scoped key reaches only its customer) or a dashboard session token \
                 (`mds_...`, customer-scoped, `read` only).",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// Descriptions of the error answers shared by the services' OpenAPI documents.
pub mod doc {
    /// The `{customer}` path parameter.
    pub const CUSTOMER: &str = "The customer id: 1-256 bytes without control characters";
    /// The `X-Customer-Id` header of the seed application's routes.
    pub const CUSTOMER_HEADER: &str = "For a tenant-wide key: the customer to act for (or `?customer=`); a customer-scoped key \
         may only name itself";
    /// 401 of every authenticated route.
    pub const UNAUTHORIZED: &str = "`missing_api_key`, `invalid_api_key`: no `Authorization: Bearer` key, or an unknown or revoked one";
    /// 403 of a route that needs a scope and may be limited to one customer.
    pub const FORBIDDEN: &str = "`insufficient_scope`: the key lacks the route's scope; \
         `customer_forbidden`: a customer-scoped key asked about another customer";
    /// 503 of the routes answered from the quota view.
    pub const VIEW_STARTING: &str = "`quota_view_starting` (with `Retry-After`): the quota view is still loading; retry shortly";
    /// 500 of the routes that read ClickHouse.
    pub const INTERNAL: &str = "`internal`: ClickHouse failed; quote the request id";
    /// 400 of a malformed request.
    pub const INVALID_REQUEST: &str =
        "`invalid_request`: a bad parameter or body, named in `details[].field`";
}
