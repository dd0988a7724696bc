//! ClickHouse row structs and the column types each one expects (checked against `system.columns`).
//!
//! The `clickhouse` client runs with validation off (18.16 lacks `RowBinaryWithNamesAndTypes`), so a
//! struct that drifts from its table would decode garbage silently. [`Table::COLUMNS`] is the contract;
//! the schema test compares it with the struct and with the live server.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::catalog::Aggregation;

mod billing;

pub use billing::{
    BillingCustomerRow, BillingSubscriptionRow, BillingUsageDifferenceRow, BillingUsageReportRow,
    BillingUsageRevisionRow, BillingWebhookEventRow,
};

/// A row struct bound to a table, with the ClickHouse type of each field in order.
pub trait Table: clickhouse::Row {
    /// Table name.
    const TABLE: &'static str;
    /// `(column, ClickHouse type)` in struct field order.
    const COLUMNS: &'static [(&'static str, &'static str)];
}

/// One counted usage event.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct RawEventRow {
    /// Tenant.
    pub tenant: String,
    /// Customer (`subject`).
    pub customer: String,
    /// Meter (`type`).
    pub meter: String,
    /// Breakdown dimension.
    pub endpoint: String,
    /// Event id.
    pub id: String,
    /// Event source.
    pub source: String,
    /// Event time.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub time: OffsetDateTime,
    /// Arrival time at the ingest.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub received_at: OffsetDateTime,
    /// Value added to the meter.
    pub quantity: f64,
    /// Distinct value (unique-count meters).
    pub unique_key: String,
    /// `data` as JSON text.
    pub data: String,
    /// Kafka topic the event was read from.
    pub kafka_topic: String,
    /// Kafka partition.
    pub kafka_partition: u32,
    /// Kafka offset.
    pub kafka_offset: u64,
    /// The meter's aggregation when the event was counted (`None`: 'unknown', a row written before
    /// the column existed). Only max and unique-count events feed `usage_hourly_states`.
    #[serde(with = "aggregation_code")]
    pub aggregation: Option<Aggregation>,
    /// CloudEvents `datacontenttype` ("" when absent).
    pub datacontenttype: String,
    /// CloudEvents `dataschema` ("" when absent).
    pub dataschema: String,
    /// `time` with its full precision, RFC 3339 in UTC ("" for rows written before 0011).
    pub time_rfc3339: String,
    /// Extension attributes as one JSON object (`{}` when none).
    pub extensions: String,
}

/// [`RawEventRow::aggregation`] as its `Enum8` code in RowBinary.
mod aggregation_code {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::catalog::Aggregation;

    pub(super) fn serialize<S: Serializer>(
        a: &Option<Aggregation>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_i8(match a {
            None => 0,
            Some(Aggregation::Count) => 1,
            Some(Aggregation::Sum) => 2,
            Some(Aggregation::Max) => 3,
            Some(Aggregation::UniqueCount) => 4,
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Aggregation>, D::Error> {
        Ok(match i8::deserialize(d)? {
            1 => Some(Aggregation::Count),
            2 => Some(Aggregation::Sum),
            3 => Some(Aggregation::Max),
            4 => Some(Aggregation::UniqueCount),
            _ => None,
        })
    }
}

impl Table for RawEventRow {
    const TABLE: &'static str = "events_raw";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("tenant", "String"),
        ("customer", "String"),
        ("meter", "String"),
        ("endpoint", "String"),
        ("id", "String"),
        ("source", "String"),
        ("time", "DateTime('UTC')"),
        ("received_at", "DateTime('UTC')"),
        ("quantity", "Float64"),
        ("unique_key", "String"),
        ("data", "String"),
        ("kafka_topic", "String"),
        ("kafka_partition", "UInt32"),
        ("kafka_offset", "UInt64"),
        (
            "aggregation",
            "Enum8('unknown' = 0, 'count' = 1, 'sum' = 2, 'max' = 3, 'unique_count' = 4)",
        ),
        ("datacontenttype", "String"),
        ("dataschema", "String"),
        ("time_rfc3339", "String"),
        ("extensions", "String"),
    ];
}

/// An event that could not be counted, with the reason.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// Tenant, when known ("" otherwise).
    pub tenant: String,
    /// Arrival time.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub received_at: OffsetDateTime,
    /// Where it was rejected: `intake` or `aggregator`.
    pub stage: String,
    /// Machine-readable reason (`too_late`, `malformed_json`, ...).
    pub reason_code: String,
    /// Human reason.
    pub reason: String,
    /// Event id, when known.
    pub event_id: String,
    /// The payload as received (truncated to 64 KiB).
    pub payload: String,
    /// Kafka topic ("" for intake rejections not read from Kafka).
    pub kafka_topic: String,
    /// Kafka partition.
    pub kafka_partition: u32,
    /// Kafka offset.
    pub kafka_offset: u64,
}

impl Table for DeadLetterRow {
    const TABLE: &'static str = "dead_letters";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("tenant", "String"),
        ("received_at", "DateTime('UTC')"),
        ("stage", "String"),
        ("reason_code", "String"),
        ("reason", "String"),
        ("event_id", "String"),
        ("payload", "String"),
        ("kafka_topic", "String"),
        ("kafka_partition", "UInt32"),
        ("kafka_offset", "UInt64"),
    ];
}

/// Last stored offset of a partition.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct OffsetRow {
    /// Topic.
    pub kafka_topic: String,
    /// Partition.
    pub kafka_partition: u32,
    /// Last offset whose data is stored.
    pub kafka_offset: u64,
}

impl Table for OffsetRow {
    const TABLE: &'static str = "consumer_offsets";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("kafka_topic", "String"),
        ("kafka_partition", "UInt32"),
        ("kafka_offset", "UInt64"),
    ];
}

/// An API key (hash only).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct ApiKeyRow {
    /// Hex SHA-256 of the key.
    pub key_hash: String,
    /// First characters of the key, to recognize it in listings.
    pub key_prefix: String,
    /// Tenant.
    pub tenant: String,
    /// Customer scope ("" = the whole tenant).
    pub customer: String,
    /// Scopes: `ingest`, `read`, `admin`.
    pub scopes: Vec<String>,
    /// Label.
    pub name: String,
    /// 1 when revoked.
    pub revoked: u8,
    /// Version: the newest row per key wins.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub updated_at: OffsetDateTime,
    /// When it stops working (the Unix epoch = never).
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub expires_at: OffsetDateTime,
}

/// When a key was last used (written in batches; the newest time per key wins).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct ApiKeyUsageRow {
    /// Hex SHA-256 of the key.
    pub key_hash: String,
    /// Its tenant.
    pub tenant: String,
    /// Last use seen.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub last_used_at: OffsetDateTime,
}

impl Table for ApiKeyUsageRow {
    const TABLE: &'static str = "api_key_usage";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("key_hash", "String"),
        ("tenant", "String"),
        ("last_used_at", "DateTime('UTC')"),
    ];
}

impl Table for ApiKeyRow {
    const TABLE: &'static str = "api_keys";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("key_hash", "String"),
        ("key_prefix", "String"),
        ("tenant", "String"),
        ("customer", "String"),
        ("scopes", "Array(String)"),
        ("name", "String"),
        ("revoked", "UInt8"),
        ("updated_at", "DateTime('UTC')"),
        ("expires_at", "DateTime('UTC')"),
    ];
}

/// A plan change, override or grant consumed from `subscription.events`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct SubscriptionRow {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Event id ((tenant, id) is stored once).
    pub id: String,
    /// When the change took effect.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub time: OffsetDateTime,
    /// Who made it.
    pub source: String,
    /// `plan`, `limit_override` or `grant`.
    pub kind: String,
    /// The whole event as JSON (`schemas::quota::SubscriptionEvent`).
    pub body: String,
    /// When the aggregator read it.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub received_at: OffsetDateTime,
    /// Kafka topic.
    pub kafka_topic: String,
    /// Kafka partition.
    pub kafka_partition: u32,
    /// Kafka offset.
    pub kafka_offset: u64,
}

impl Table for SubscriptionRow {
    const TABLE: &'static str = "subscription_events";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("tenant", "String"),
        ("customer", "String"),
        ("id", "String"),
        ("time", "DateTime('UTC')"),
        ("source", "String"),
        ("kind", "String"),
        ("body", "String"),
        ("received_at", "DateTime('UTC')"),
        ("kafka_topic", "String"),
        ("kafka_partition", "UInt32"),
        ("kafka_offset", "UInt64"),
    ];
}

/// A usage threshold that fired.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct AlertRow {
    /// Deterministic alert id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter.
    pub meter: String,
    /// Percent of the limit.
    pub threshold: u8,
    /// Usage when it fired.
    pub used: f64,
    /// The limit then.
    pub limit_value: u64,
    /// Plan then.
    pub plan: String,
    /// Period start.
    #[serde(with = "clickhouse::serde::time::date")]
    pub period_start: time::Date,
    /// Period end (exclusive).
    #[serde(with = "clickhouse::serde::time::date")]
    pub period_end: time::Date,
    /// When it fired.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub fired_at: OffsetDateTime,
}

impl Table for AlertRow {
    const TABLE: &'static str = "alerts";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("id", "String"),
        ("tenant", "String"),
        ("customer", "String"),
        ("meter", "String"),
        ("threshold", "UInt8"),
        ("used", "Float64"),
        ("limit_value", "UInt64"),
        ("plan", "String"),
        ("period_start", "Date"),
        ("period_end", "Date"),
        ("fired_at", "DateTime('UTC')"),
    ];
}

/// One attempt to deliver an alert notification (`alert_deliveries`).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct AlertDeliveryRow {
    /// Alert id (`schemas::quota::Alert::id`).
    pub alert_id: String,
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// `webhook` or `email`.
    pub channel: String,
    /// Webhook URL, or the email recipients (comma separated).
    pub target: String,
    /// Attempt number for (alert, channel), from 1.
    pub attempt: u32,
    /// `delivered`, `retrying` (failed, will be retried) or `failed` (given up).
    pub status: String,
    /// HTTP status (webhook) or SMTP reply code (email); 0 when there was no answer.
    pub http_status: u16,
    /// Error text ("" when delivered).
    pub error: String,
    /// When the attempt ended.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub at: OffsetDateTime,
}

impl Table for AlertDeliveryRow {
    const TABLE: &'static str = "alert_deliveries";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("alert_id", "String"),
        ("tenant", "String"),
        ("customer", "String"),
        ("channel", "String"),
        ("target", "String"),
        ("attempt", "UInt32"),
        ("status", "String"),
        ("http_status", "UInt16"),
        ("error", "String"),
        ("at", "DateTime('UTC')"),
    ];
}

/// A sum rollup row (any granularity; the time column is named after the grain).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct RollupRow {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter.
    pub meter: String,
    /// Dimension.
    pub endpoint: String,
    /// Bucket start (seconds since epoch).
    pub bucket: u32,
    /// Events in the bucket.
    pub events: u64,
    /// Sum of quantities.
    pub quantity: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::Row;

    fn names<T: Table>() -> Vec<&'static str> {
        T::COLUMNS.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn declared_columns_follow_the_struct_fields() {
        assert_eq!(names::<RawEventRow>(), RawEventRow::COLUMN_NAMES);
        assert_eq!(names::<DeadLetterRow>(), DeadLetterRow::COLUMN_NAMES);
        assert_eq!(names::<OffsetRow>(), OffsetRow::COLUMN_NAMES);
        assert_eq!(names::<ApiKeyRow>(), ApiKeyRow::COLUMN_NAMES);
        assert_eq!(names::<AlertDeliveryRow>(), AlertDeliveryRow::COLUMN_NAMES);
        assert_eq!(names::<SubscriptionRow>(), SubscriptionRow::COLUMN_NAMES);
        assert_eq!(names::<AlertRow>(), AlertRow::COLUMN_NAMES);
        assert_eq!(
            names::<BillingCustomerRow>(),
            BillingCustomerRow::COLUMN_NAMES
        );
        assert_eq!(
            names::<BillingSubscriptionRow>(),
            BillingSubscriptionRow::COLUMN_NAMES
        );
        assert_eq!(
            names::<BillingWebhookEventRow>(),
            BillingWebhookEventRow::COLUMN_NAMES
        );
        assert_eq!(
            names::<BillingUsageReportRow>(),
            BillingUsageReportRow::COLUMN_NAMES
        );
        assert_eq!(
            names::<BillingUsageDifferenceRow>(),
            BillingUsageDifferenceRow::COLUMN_NAMES
        );
        assert_eq!(
            names::<BillingUsageRevisionRow>(),
            BillingUsageRevisionRow::COLUMN_NAMES
        );
    }
}
