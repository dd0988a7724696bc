//! The usage event (CloudEvents 1.0 JSON plus `tenant`) and its validation with per-field errors.
//!
//! [`attributes`] holds the rules of the optional CloudEvents attributes (`datacontenttype`,
//! `dataschema`, extensions, `data_base64`) and the strict or lenient [`Conformance`].

pub mod attributes;

pub use attributes::{Attributes, Conformance, MediaType};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::catalog::{Aggregation, Catalog};

/// Longest accepted `id`, `subject`, `source` (bytes).
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted dimension value (bytes).
pub const MAX_DIMENSION_LEN: usize = 128;
/// Largest accepted `data` object, serialized (bytes).
pub const MAX_DATA_BYTES: usize = 16 * 1024;
/// Largest accepted quantity.
pub const MAX_QUANTITY: f64 = 1e15;

/// A validated usage event, as produced to the events topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// CloudEvents spec version, always "1.0".
    pub specversion: String,
    /// Client-chosen id; (tenant, customer, id) is unique: a retry with the same id counts once.
    pub id: String,
    /// Producer of the event.
    pub source: String,
    /// The meter key.
    #[serde(rename = "type")]
    pub meter: String,
    /// The customer.
    #[serde(rename = "subject")]
    pub customer: String,
    /// When the usage happened (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Event payload (endpoint, quantity, anything else).
    pub data: Map<String, Value>,
    /// The other CloudEvents attributes: `datacontenttype`, `dataschema`, extensions (members of
    /// the event's JSON, extensions at the top level).
    #[serde(flatten)]
    pub attributes: Attributes,
    /// The tenant, taken from the API key.
    pub tenant: String,
    /// When the ingest accepted it (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub receivedat: OffsetDateTime,
}

impl UsageEvent {
    /// The Kafka message key: all events of a customer land in one partition.
    pub fn partition_key(&self) -> String {
        format!("{}/{}", self.tenant, self.customer)
    }

    /// The events-topic partition of [`Self::partition_key`] among `partitions`.
    pub fn partition(&self, partitions: i32) -> i32 {
        crate::partition::customer_partition(&self.tenant, &self.customer, partitions)
    }
}

/// Whether a message payload is a batch of events (a JSON array) rather than one event.
pub fn is_batch(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[')
}

/// What a meter makes of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    /// Value added to the meter (1 for count meters).
    pub quantity: f64,
    /// Breakdown dimension value ("" when absent).
    pub endpoint: String,
    /// Distinct value for unique-count meters ("" otherwise).
    pub unique_key: String,
    /// How the meter folds it.
    pub aggregation: Aggregation,
}

/// Why one field of one event is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Position of the event in the request (0 for a single event).
    pub index: usize,
    /// JSON path of the field (`subject`, `data.quantity`).
    pub field: String,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human explanation.
    pub reason: String,
}

/// Machine-readable reasons for rejecting an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The event is not a JSON object.
    NotAnObject,
    /// A required field is missing.
    Required,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field's value is out of range or badly formed.
    InvalidValue,
    /// A string is too long.
    TooLong,
    /// The `type` is not a configured meter.
    UnknownMeter,
    /// The event time is older than the lateness window.
    TooLate,
    /// The event time is too far in the future.
    InFuture,
    /// The event names another tenant than the API key.
    TenantMismatch,
    /// A customer-scoped key sent an event for another customer.
    CustomerForbidden,
}

impl ErrorCode {
    /// The code as it appears in JSON and in the dead-letter table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAnObject => "not_an_object",
            Self::Required => "required",
            Self::WrongType => "wrong_type",
            Self::InvalidValue => "invalid_value",
            Self::TooLong => "too_long",
            Self::UnknownMeter => "unknown_meter",
            Self::TooLate => "too_late",
            Self::InFuture => "in_future",
            Self::TenantMismatch => "tenant_mismatch",
            Self::CustomerForbidden => "customer_forbidden",
        }
    }

    /// Whether this is an authorization problem (403) rather than bad input (400).
    pub fn is_forbidden(self) -> bool {
        matches!(self, Self::TenantMismatch | Self::CustomerForbidden)
    }
}

/// The time window an event must fall into, relative to when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Oldest accepted event age.
    pub max_late: time::Duration,
    /// Furthest accepted distance into the future.
    pub max_future: time::Duration,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            max_late: time::Duration::days(35),
            max_future: time::Duration::minutes(5),
        }
    }
}

/// Who sends the events and when they arrived.
#[derive(Debug, Clone)]
pub struct Intake<'a> {
    /// Tenant of the API key (or of the Kafka message, in the aggregator).
    pub tenant: &'a str,
    /// Customer the key is restricted to, if any.
    pub customer_scope: Option<&'a str>,
    /// Arrival time: the reference for the lateness window and the default event time.
    pub received_at: OffsetDateTime,
    /// Lateness window.
    pub window: Window,
}

pub(crate) struct Checker {
    pub(crate) index: usize,
    pub(crate) errors: Vec<FieldError>,
}

impl Checker {
    pub(crate) fn fail(&mut self, field: &str, code: ErrorCode, reason: impl Into<String>) {
        self.errors.push(FieldError {
            index: self.index,
            field: field.into(),
            code,
            reason: reason.into(),
        });
    }

    /// A required or optional string field, checked for type, emptiness, length and control chars.
    fn string<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        field: &str,
        required: bool,
    ) -> Option<&'v str> {
        match obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(field, ErrorCode::Required, format!("`{field}` is required"));
                }
                None
            }
            Some(Value::String(s)) => match string_problem(field, s) {
                Some((code, reason)) => {
                    self.fail(field, code, reason);
                    None
                }
                None => Some(s),
            },
            Some(other) => {
                self.fail(
                    field,
                    ErrorCode::WrongType,
                    format!("`{field}` must be a string, got {}", json_type(other)),
                );
                None
            }
        }
    }
}

/// The JSON type name of a value, for error messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What is wrong with a string field's value, if anything: blank, too long, or control characters.
pub(crate) fn string_problem(field: &str, s: &str) -> Option<(ErrorCode, String)> {
    if s.trim().is_empty() {
        Some((
            ErrorCode::InvalidValue,
            format!("`{field}` must not be empty"),
        ))
    } else if s.len() > MAX_ID_LEN {
        Some((
            ErrorCode::TooLong,
            format!("`{field}` is {} bytes; at most {MAX_ID_LEN}", s.len()),
        ))
    } else if s.chars().any(char::is_control) {
        Some((
            ErrorCode::InvalidValue,
            format!("`{field}` contains control characters"),
        ))
    } else {
        None
    }
}

/// The event time of a `time` string, in UTC, if it is RFC 3339 and inside the intake's window.
pub(crate) fn event_time(
    s: &str,
    intake: &Intake<'_>,
) -> Result<OffsetDateTime, (ErrorCode, String)> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| {
            (
                ErrorCode::InvalidValue,
                format!("`time` is not RFC 3339: {e}"),
            )
        })?
        .to_offset(time::UtcOffset::UTC);
    if t < intake.received_at - intake.window.max_late {
        Err((
            ErrorCode::TooLate,
            format!(
                "event time {s} is more than {} days before arrival",
                intake.window.max_late.whole_days()
            ),
        ))
    } else if t > intake.received_at + intake.window.max_future {
        Err((
            ErrorCode::InFuture,
            format!(
                "event time {s} is more than {} s after arrival",
                intake.window.max_future.whole_seconds()
            ),
        ))
    } else {
        Ok(t)
    }
}

/// Validates one event (a JSON value) and returns it normalized with what its meter makes of it,
/// or every problem found, each with its field ([`Conformance::Lenient`]: the seed's short form).
pub fn validate(
    value: &Value,
    index: usize,
    intake: &Intake<'_>,
    catalog: &Catalog,
) -> Result<(UsageEvent, Measure), Vec<FieldError>> {
    validate_with(value, index, intake, catalog, Conformance::Lenient)
}

/// [`validate`] with the given conformance: [`Conformance::Strict`] requires `specversion` and
/// `source`.
pub fn validate_with(
    value: &Value,
    index: usize,
    intake: &Intake<'_>,
    catalog: &Catalog,
    conformance: Conformance,
) -> Result<(UsageEvent, Measure), Vec<FieldError>> {
    let strict = conformance == Conformance::Strict;
    let mut c = Checker {
        index,
        errors: Vec::new(),
    };
    let Some(obj) = value.as_object() else {
        c.fail(
            "",
            ErrorCode::NotAnObject,
            format!("an event must be a JSON object, got {}", json_type(value)),
        );
        return Err(c.errors);
    };

    match obj.get("specversion") {
        None if strict => c.fail(
            "specversion",
            ErrorCode::Required,
            "`specversion` is required (strict CloudEvents): send \"1.0\"",
        ),
        None => {}
        Some(Value::String(v)) if v == "1.0" => {}
        Some(other) => c.fail(
            "specversion",
            ErrorCode::InvalidValue,
            format!("only CloudEvents specversion \"1.0\" is supported, got {other}"),
        ),
    }
    let id = c.string(obj, "id", true);
    let source = c.string(obj, "source", strict).unwrap_or("api");
    let customer = c.string(obj, "subject", true);
    let meter_key = c.string(obj, "type", true);
    let meter = meter_key.and_then(|k| {
        let m = catalog.meter(k);
        if m.is_none() {
            let known: Vec<&str> = catalog.meters.iter().map(|m| m.key.as_str()).collect();
            c.fail(
                "type",
                ErrorCode::UnknownMeter,
                format!("unknown meter {k:?}; known: {known:?}"),
            );
        }
        m
    });

    if let Some(tenant) = c.string(obj, "tenant", false)
        && tenant != intake.tenant
    {
        c.fail(
            "tenant",
            ErrorCode::TenantMismatch,
            format!("the event names tenant {tenant:?} but the API key belongs to another tenant"),
        );
    }
    if let (Some(scope), Some(customer)) = (intake.customer_scope, customer)
        && scope != customer
    {
        c.fail(
            "subject",
            ErrorCode::CustomerForbidden,
            format!("this API key may only send events for customer {scope:?}"),
        );
    }

    let time = match obj.get("time") {
        None | Some(Value::Null) => Some(intake.received_at),
        Some(Value::String(s)) => match event_time(s, intake) {
            Ok(t) => Some(t),
            Err((code, reason)) => {
                c.fail("time", code, reason);
                None
            }
        },
        Some(other) => {
            c.fail(
                "time",
                ErrorCode::WrongType,
                format!(
                    "`time` must be an RFC 3339 string, got {}",
                    json_type(other)
                ),
            );
            None
        }
    };

    let decoded = attributes::data_base64(&mut c, obj);
    let raw_data = match &decoded {
        Some(d) => d.as_ref(),
        None => obj.get("data"),
    };
    let attributes = attributes::check(&mut c, obj, raw_data.is_some_and(|d| !d.is_null()));

    let empty = Map::new();
    let data = match raw_data {
        None | Some(Value::Null) => Some(&empty),
        Some(Value::Object(d)) => {
            let size = serde_json::to_string(d)
                .map(|s| s.len())
                .unwrap_or(usize::MAX);
            if size > MAX_DATA_BYTES {
                c.fail(
                    "data",
                    ErrorCode::TooLong,
                    format!("`data` is {size} bytes; at most {MAX_DATA_BYTES}"),
                );
                None
            } else {
                Some(d)
            }
        }
        Some(other) => {
            c.fail(
                "data",
                ErrorCode::WrongType,
                format!("`data` must be an object, got {}", json_type(other)),
            );
            None
        }
    };

    let measure = match (meter, data) {
        (Some(meter), Some(data)) => measure(&mut c, meter, data),
        _ => None,
    };

    match (id, customer, meter_key, time, data, measure) {
        (Some(id), Some(customer), Some(meter), Some(time), Some(data), Some(measure))
            if c.errors.is_empty() =>
        {
            Ok((
                UsageEvent {
                    specversion: "1.0".into(),
                    id: id.into(),
                    source: source.into(),
                    meter: meter.into(),
                    customer: customer.into(),
                    time,
                    data: data.clone(),
                    attributes,
                    tenant: intake.tenant.into(),
                    receivedat: intake.received_at,
                },
                measure,
            ))
        }
        _ => Err(c.errors),
    }
}

pub(crate) fn measure(
    c: &mut Checker,
    meter: &crate::catalog::Meter,
    data: &Map<String, Value>,
) -> Option<Measure> {
    let mut ok = true;
    let endpoint = match meter.dimension.as_deref().map(|d| (d, data.get(d))) {
        None | Some((_, None | Some(Value::Null))) => String::new(),
        Some((d, Some(Value::String(s)))) => {
            if s.len() > MAX_DIMENSION_LEN || s.chars().any(char::is_control) {
                c.fail(
                    &format!("data.{d}"),
                    ErrorCode::InvalidValue,
                    format!("`data.{d}` must be at most {MAX_DIMENSION_LEN} bytes without control characters"),
                );
                ok = false;
            }
            s.clone()
        }
        Some((d, Some(other))) => {
            c.fail(
                &format!("data.{d}"),
                ErrorCode::WrongType,
                format!("`data.{d}` must be a string, got {}", json_type(other)),
            );
            ok = false;
            String::new()
        }
    };
    let quantity = match (meter.aggregation, meter.value_property.as_deref()) {
        (Aggregation::Count | Aggregation::UniqueCount, _) | (_, None) => 1.0,
        (_, Some(p)) => {
            match data.get(p) {
                None | Some(Value::Null) => match meter.default_value {
                    Some(v) => v,
                    None => {
                        c.fail(
                            &format!("data.{p}"),
                            ErrorCode::Required,
                            format!("meter {:?} needs `data.{p}`", meter.key),
                        );
                        ok = false;
                        0.0
                    }
                },
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(q) if q.is_finite() && (0.0..=MAX_QUANTITY).contains(&q) => q,
                    _ => {
                        c.fail(
                        &format!("data.{p}"),
                        ErrorCode::InvalidValue,
                        format!("`data.{p}` must be a finite number from 0 to {MAX_QUANTITY:e}, got {n}"),
                    );
                        ok = false;
                        0.0
                    }
                },
                Some(other) => {
                    c.fail(
                        &format!("data.{p}"),
                        ErrorCode::WrongType,
                        format!("`data.{p}` must be a number, got {}", json_type(other)),
                    );
                    ok = false;
                    0.0
                }
            }
        }
    };
    let unique_key = match (meter.aggregation, meter.unique_property.as_deref()) {
        (Aggregation::UniqueCount, Some(p)) => match data.get(p) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                c.fail(
                    &format!("data.{p}"),
                    ErrorCode::Required,
                    format!("meter {:?} needs `data.{p}` (string or number)", meter.key),
                );
                ok = false;
                String::new()
            }
        },
        _ => String::new(),
    };
    ok.then_some(Measure {
        quantity,
        endpoint,
        unique_key,
        aggregation: meter.aggregation,
    })
}

#[cfg(test)]
mod tests;
