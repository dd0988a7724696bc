//! Turns one Kafka message into a raw-event row or a dead-letter row (never nothing).

use schemas::Catalog;
use schemas::event::{Intake, Window};
use schemas::quota::{Change, SubscriptionEvent};
use schemas::rows::{DeadLetterRow, RawEventRow, SubscriptionRow};
use schemas::wire::Wire;
use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Broker timestamp (ms), the arrival time when the payload lacks one.
    pub timestamp_ms: Option<i64>,
}

/// What a message becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A countable event.
    Event(RawEventRow),
    /// An event that cannot be counted, with the reason.
    Dead(DeadLetterRow),
    /// A plan change, override or grant.
    Subscription(SubscriptionRow),
}

/// Largest payload kept in a dead letter.
pub const MAX_PAYLOAD: usize = 64 * 1024;

fn arrival(pos: &Position<'_>) -> OffsetDateTime {
    pos.timestamp_ms
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .unwrap_or_else(OffsetDateTime::now_utc)
}

#[allow(clippy::too_many_arguments)] // one flat constructor of a dead-letter row
fn dead(
    pos: &Position<'_>,
    tenant: &str,
    received_at: OffsetDateTime,
    stage: &str,
    code: &str,
    reason: String,
    event_id: &str,
    payload: &[u8],
) -> Decoded {
    let cut = payload.len().min(MAX_PAYLOAD);
    Decoded::Dead(DeadLetterRow {
        tenant: tenant.into(),
        received_at,
        stage: stage.into(),
        reason_code: code.into(),
        reason,
        event_id: event_id.into(),
        payload: String::from_utf8_lossy(&payload[..cut]).into_owned(),
        kafka_topic: pos.topic.into(),
        kafka_partition: pos.partition as u32,
        kafka_offset: pos.offset as u64,
    })
}

/// Decodes a message of the events topic into `out` (appended; the caller reuses one vector, as a
/// fresh one per message of 1,000 events grew by doubling to 300 KiB and faulted in fresh pages
/// every time): a batch (a JSON array of events, as the ingest writes them) gives one row per
/// element, anything else is decoded as one event. A batch that is not valid JSON, or is empty, is
/// one dead letter; an element that fails is a dead letter of its own (all of a message's rows
/// share its position, so a replayed message is recognized whole).
pub fn decode_events_into(
    out: &mut Vec<Decoded>,
    payload: Option<&[u8]>,
    pos: &Position<'_>,
    catalog: &Catalog,
    window: Window,
) {
    let bytes = payload.unwrap_or_default();
    if !schemas::event::is_batch(bytes) {
        out.push(decode_event(payload, pos, catalog, window));
        return;
    }
    // Nearly every batch is plain and valid: read in one pass, each element checked. If any
    // element is not plain or fails its check, the batch is read again element by element below,
    // which says what is wrong with each.
    let start = out.len();
    let read = Wire::each_in_batch(bytes, |wire| match fast(&wire, pos, catalog, window) {
        Some(row) => {
            out.push(row);
            true
        }
        None => false,
    });
    if read.is_some() && out.len() > start {
        return;
    }
    out.truncate(start);
    let elements: Vec<&RawValue> = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            let reason = format!("not a valid JSON batch: {e}");
            out.push(unreadable(pos, "malformed_json", reason, bytes));
            return;
        }
    };
    if elements.is_empty() {
        let reason = "the batch holds no events".to_string();
        out.push(unreadable(pos, "empty_batch", reason, bytes));
        return;
    }
    out.extend(elements.into_iter().map(|raw| {
        Wire::parse(raw.get())
            .and_then(|wire| fast(&wire, pos, catalog, window))
            .unwrap_or_else(|| {
                // Valid JSON (the array parsed), so this cannot fail; a dead letter all the same.
                let value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                decode_value(value, raw.get().as_bytes(), pos, catalog, window)
            })
    }));
}

/// [`decode_events_into`] a vector of its own.
pub fn decode_events(
    payload: Option<&[u8]>,
    pos: &Position<'_>,
    catalog: &Catalog,
    window: Window,
) -> Vec<Decoded> {
    let mut out = Vec::new();
    decode_events_into(&mut out, payload, pos, catalog, window);
    out
}

/// The fast path ([`Wire`]) for one event read: its row, or `None` to decode it with
/// [`schemas::event::validate`] (which explains what is wrong, if anything is).
fn fast(wire: &Wire<'_>, pos: &Position<'_>, catalog: &Catalog, window: Window) -> Option<Decoded> {
    let received_at = wire.received_at().unwrap_or_else(|| arrival(pos));
    let event = wire.check_produced(received_at, window, catalog)?;
    let extensions = event.extensions_json();
    Some(Decoded::Event(RawEventRow {
        tenant: event.tenant.into(),
        customer: event.customer.into(),
        meter: event.meter.into(),
        endpoint: event.measure.endpoint,
        id: event.id.into(),
        source: event.source.into(),
        time: event.time,
        received_at,
        quantity: event.measure.quantity,
        unique_key: event.measure.unique_key,
        data: event.data.into(),
        kafka_topic: pos.topic.into(),
        kafka_partition: pos.partition as u32,
        kafka_offset: pos.offset as u64,
        aggregation: Some(event.measure.aggregation),
        datacontenttype: event.datacontenttype.unwrap_or_default().into(),
        dataschema: event.dataschema.unwrap_or_default().into(),
        time_rfc3339: rfc3339(event.time),
        extensions,
    }))
}

/// An event time as `events_raw.time_rfc3339` keeps it: RFC 3339 in UTC, with its fraction.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The arrival time: the event's `receivedat`, else the broker timestamp.
fn received_at(receivedat: Option<&str>, pos: &Position<'_>) -> OffsetDateTime {
    receivedat
        .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| arrival(pos))
}

/// Decodes a message of the events topic holding one event. The arrival time (`receivedat`, else
/// the broker timestamp) is the reference for the lateness window, so a replay decides exactly as
/// before.
pub fn decode_event(
    payload: Option<&[u8]>,
    pos: &Position<'_>,
    catalog: &Catalog,
    window: Window,
) -> Decoded {
    let bytes = payload.unwrap_or_default();
    if let Some(row) = std::str::from_utf8(bytes)
        .ok()
        .and_then(Wire::parse)
        .and_then(|wire| fast(&wire, pos, catalog, window))
    {
        return row;
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            let reason = format!("not valid JSON: {e}");
            return unreadable(pos, "malformed_json", reason, bytes);
        }
    };
    decode_value(value, bytes, pos, catalog, window)
}

/// A whole message of the events topic that holds no readable event, as a dead letter.
fn unreadable(pos: &Position<'_>, code: &str, reason: String, bytes: &[u8]) -> Decoded {
    dead(pos, "", arrival(pos), "aggregator", code, reason, "", bytes)
}

/// One event's JSON, decoded by [`schemas::event::validate`]: a row, or a dead letter keeping
/// `payload` (the message as received, or this element of a batch).
fn decode_value(
    value: Value,
    payload: &[u8],
    pos: &Position<'_>,
    catalog: &Catalog,
    window: Window,
) -> Decoded {
    let tenant = value
        .get("tenant")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let event_id = value.get("id").and_then(Value::as_str).unwrap_or_default();
    let received_at = received_at(value.get("receivedat").and_then(Value::as_str), pos);
    if !schemas::token::is_token(tenant, 64) {
        let reason = "the event has no valid `tenant`".to_string();
        return dead(
            pos,
            tenant,
            received_at,
            "aggregator",
            "missing_tenant",
            reason,
            event_id,
            payload,
        );
    }
    let intake = Intake {
        tenant,
        customer_scope: None,
        received_at,
        window,
    };
    match schemas::event::validate(&value, 0, &intake, catalog) {
        Ok((event, measure)) => Decoded::Event(RawEventRow {
            time_rfc3339: rfc3339(event.time),
            extensions: event.attributes.extensions_json(),
            datacontenttype: event.attributes.datacontenttype.unwrap_or_default(),
            dataschema: event.attributes.dataschema.unwrap_or_default(),
            tenant: event.tenant,
            customer: event.customer,
            meter: event.meter,
            endpoint: measure.endpoint,
            id: event.id,
            source: event.source,
            time: event.time,
            received_at: event.receivedat,
            quantity: measure.quantity,
            unique_key: measure.unique_key,
            data: serde_json::to_string(&event.data).unwrap_or_default(),
            kafka_topic: pos.topic.into(),
            kafka_partition: pos.partition as u32,
            kafka_offset: pos.offset as u64,
            aggregation: Some(measure.aggregation),
        }),
        Err(errors) => {
            let code = errors.first().map_or("invalid_value", |e| e.code.as_str());
            let reason = serde_json::to_string(&errors).unwrap_or_default();
            dead(
                pos,
                tenant,
                received_at,
                "aggregator",
                code,
                reason,
                event_id,
                payload,
            )
        }
    }
}

/// A batch refused at intake, as the ingest writes it to the rejected topic.
#[derive(Debug, serde::Deserialize)]
struct Rejection {
    tenant: String,
    #[serde(with = "time::serde::rfc3339")]
    receivedat: OffsetDateTime,
    reason_code: String,
    reason: String,
    payload: String,
}

/// Decodes a message of the rejected topic into a dead letter of stage `intake`.
pub fn decode_rejection(payload: Option<&[u8]>, pos: &Position<'_>) -> Decoded {
    let bytes = payload.unwrap_or_default();
    match serde_json::from_slice::<Rejection>(bytes) {
        Ok(r) => dead(
            pos,
            &r.tenant,
            r.receivedat,
            "intake",
            &r.reason_code,
            r.reason,
            "",
            r.payload.as_bytes(),
        ),
        Err(e) => dead(
            pos,
            "",
            arrival(pos),
            "intake",
            "malformed_json",
            format!("unreadable rejection: {e}"),
            "",
            bytes,
        ),
    }
}

/// Decodes a message of `subscription.events`: unknown plans and meters are dead letters.
pub fn decode_subscription(
    payload: Option<&[u8]>,
    pos: &Position<'_>,
    catalog: &Catalog,
) -> Decoded {
    let bytes = payload.unwrap_or_default();
    let received_at = arrival(pos);
    let event: SubscriptionEvent = match serde_json::from_slice(bytes) {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("not a subscription event: {e}");
            return dead(
                pos,
                "",
                received_at,
                "aggregator",
                "malformed_subscription",
                reason,
                "",
                bytes,
            );
        }
    };
    let problem = if !schemas::token::is_token(&event.tenant, 64) {
        Some((
            "missing_tenant",
            "the event has no valid `tenant`".to_string(),
        ))
    } else if event.id.trim().is_empty() || event.customer.trim().is_empty() {
        Some((
            "required",
            "`id` and `customer` must not be empty".to_string(),
        ))
    } else {
        match &event.change {
            Change::Plan { plan, .. } | Change::PlanVersion { plan, .. }
                if catalog.plan(plan).is_none() =>
            {
                Some(("unknown_plan", format!("unknown plan {plan:?}")))
            }
            Change::LimitOverride { meter, .. } | Change::Grant { meter, .. }
                if catalog.meter(meter).is_none() =>
            {
                Some(("unknown_meter", format!("unknown meter {meter:?}")))
            }
            Change::Addon { addon }
                if addon
                    .grant
                    .as_ref()
                    .is_some_and(|g| catalog.meter(&g.meter).is_none()) =>
            {
                Some((
                    "unknown_meter",
                    format!("add-on {:?} grants an unknown meter", addon.addon),
                ))
            }
            Change::Contract { contract } if catalog.plan(&contract.terms.plan).is_none() => {
                Some((
                    "unknown_plan",
                    format!("contract sold as unknown plan {:?}", contract.terms.plan),
                ))
            }
            _ => None,
        }
    };
    if let Some((code, reason)) = problem {
        return dead(
            pos,
            &event.tenant,
            received_at,
            "aggregator",
            code,
            reason,
            &event.id,
            bytes,
        );
    }
    let kind = match event.change {
        Change::Plan { .. } => "plan",
        Change::PlanVersion { .. } => "plan_version",
        Change::LimitOverride { .. } => "limit_override",
        Change::Grant { .. } => "grant",
        Change::Contract { .. } => "contract",
        Change::ContractEnded { .. } => "contract_ended",
        Change::Addon { .. } => "addon",
        Change::AddonRemoved { .. } => "addon_removed",
    };
    Decoded::Subscription(SubscriptionRow {
        tenant: event.tenant.clone(),
        customer: event.customer.clone(),
        id: event.id.clone(),
        time: event.time,
        source: event.source.clone(),
        kind: kind.into(),
        body: String::from_utf8_lossy(bytes).into_owned(),
        received_at,
        kafka_topic: pos.topic.into(),
        kafka_partition: pos.partition as u32,
        kafka_offset: pos.offset as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos() -> Position<'static> {
        Position {
            topic: "t",
            partition: 2,
            offset: 7,
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn messages_become_rows_or_dead_letters() {
        let cat = Catalog::default();
        let w = Window::default();
        let ok = br#"{"id":"e1","type":"api_call","subject":"c","tenant":"acme","data":{"endpoint":"redact","quantity":3}}"#;
        let Decoded::Event(row) = decode_event(Some(ok), &pos(), &cat, w) else {
            panic!("not an event")
        };
        assert_eq!(
            (row.endpoint.as_str(), row.quantity, row.kafka_offset),
            ("redact", 3.0, 7)
        );
        assert_eq!(row.received_at.unix_timestamp(), 1_700_000_000);

        let cases: [(&[u8], &str); 4] = [
            (b"{nope", "malformed_json"),
            (br#"{"id":"e1","type":"api_call","subject":"c"}"#, "missing_tenant"),
            (br#"{"id":"e1","type":"tokens","subject":"c","tenant":"acme"}"#, "unknown_meter"),
            (br#"{"id":"e1","type":"api_call","subject":"c","tenant":"acme","time":"2020-01-01T00:00:00Z"}"#, "too_late"),
        ];
        for (payload, code) in cases {
            let Decoded::Dead(d) = decode_event(Some(payload), &pos(), &cat, w) else {
                panic!("counted {code}")
            };
            assert_eq!(d.reason_code, code);
            assert_eq!((d.kafka_partition, d.kafka_offset), (2, 7));
        }
    }

    #[test]
    fn a_batch_message_gives_a_row_per_element_and_bad_elements_are_dead_letters() {
        let cat = Catalog::default();
        let w = Window::default();
        let batch = br#" [{"id":"e1","type":"api_call","subject":"c","tenant":"acme","data":{"endpoint":"redact"}},
            {"id":"e2","type":"tokens","subject":"c","tenant":"acme"},
            {"id":"e3","type":"api_call","subject":"d","tenant":"acme","data":{"endpoint":"drill"}}]"#;
        let rows = decode_events(Some(batch), &pos(), &cat, w);
        let kinds: Vec<String> = rows
            .iter()
            .map(|r| match r {
                Decoded::Event(e) => format!("{}@{}", e.id, e.kafka_offset),
                Decoded::Dead(d) => format!(
                    "{}:{}:{}",
                    d.reason_code,
                    d.event_id,
                    d.payload.contains("tokens")
                ),
                Decoded::Subscription(_) => "sub".into(),
            })
            .collect();
        assert_eq!(kinds, vec!["e1@7", "unknown_meter:e2:true", "e3@7"]);
        for (payload, code) in [(&b"[{nope"[..], "malformed_json"), (b"[]", "empty_batch")] {
            let rows = decode_events(Some(payload), &pos(), &cat, w);
            assert!(
                matches!(&rows[..], [Decoded::Dead(d)] if d.reason_code == code),
                "{code}: {rows:?}"
            );
        }
        // A plain batch (read in one pass) gives each element's row as decoded alone; so does a
        // batch that one pass does not take (a string with an escape).
        let plain = [
            r#"{"id":"e1","type":"api_call","subject":"c","tenant":"acme","data":{"endpoint":"redact"}}"#,
            r#"{"id":"e3","type":"api_call","subject":"d","tenant":"acme","time":"2026-03-10T12:00:00Z","receivedat":"2026-03-10T12:00:01Z"}"#,
        ];
        let escaped = r#"{"id":"e\u0034","type":"api_call","subject":"c","tenant":"acme"}"#;
        for elements in [&plain[..], &[plain[0], escaped, plain[1]]] {
            let batch = format!("[{}]", elements.join(","));
            let alone: Vec<String> = elements
                .iter()
                .map(|e| format!("{:?}", decode_event(Some(e.as_bytes()), &pos(), &cat, w)))
                .collect();
            let together: Vec<String> = decode_events(Some(batch.as_bytes()), &pos(), &cat, w)
                .iter()
                .map(|r| format!("{r:?}"))
                .collect();
            assert_eq!(together, alone, "{batch}");
            assert!(
                together.iter().all(|r| r.starts_with("Event")),
                "{together:?}"
            );
        }
        // Into a vector that holds rows already (the loop reuses one): appended after them, and a
        // batch the one pass gave up on half way leaves none of its rows from that pass behind.
        let first = format!("[{}]", plain[0]);
        let mixed = format!("[{},{escaped},{}]", plain[0], plain[1]);
        let mut out = Vec::new();
        decode_events_into(&mut out, Some(first.as_bytes()), &pos(), &cat, w);
        decode_events_into(&mut out, Some(mixed.as_bytes()), &pos(), &cat, w);
        let ids: Vec<&str> = out
            .iter()
            .map(|r| match r {
                Decoded::Event(e) => e.id.as_str(),
                _ => "not an event",
            })
            .collect();
        assert_eq!(ids, ["e1", "e1", "e4", "e3"]);
        // A single event object is still one row.
        let one = br#"{"id":"e1","type":"api_call","subject":"c","tenant":"acme"}"#;
        assert!(matches!(
            &decode_events(Some(one), &pos(), &cat, w)[..],
            [Decoded::Event(_)]
        ));
    }

    #[test]
    fn cloudevents_attributes_go_into_their_columns_on_both_paths() {
        let cat = Catalog::default();
        let w = Window::default();
        let fast = r#"{"id":"e1","type":"api_call","subject":"c","tenant":"acme","time":"2026-03-10T12:00:00.250Z","receivedat":"2026-03-10T12:00:01Z","datacontenttype":"application/json","dataschema":"https://acme.example/s.json","region":"eu","priority":3,"data":{"endpoint":"redact"}}"#;
        // An escaped string is not read by the fast path: the full validation gives the same row.
        let slow = fast.replace(r#""eu""#, r#""\u0065u""#);
        for payload in [fast.to_string(), slow] {
            let Decoded::Event(row) = decode_event(Some(payload.as_bytes()), &pos(), &cat, w)
            else {
                panic!("not an event: {payload}")
            };
            assert_eq!(
                (
                    row.datacontenttype.as_str(),
                    row.dataschema.as_str(),
                    row.time_rfc3339.as_str(),
                    row.extensions.as_str()
                ),
                (
                    "application/json",
                    "https://acme.example/s.json",
                    "2026-03-10T12:00:00.25Z",
                    r#"{"priority":3,"region":"eu"}"#
                ),
                "{payload}"
            );
        }
        let plain = br#"{"id":"e1","type":"api_call","subject":"c","tenant":"acme"}"#;
        let Decoded::Event(row) = decode_event(Some(plain), &pos(), &cat, w) else {
            panic!("not an event")
        };
        assert_eq!(
            (row.datacontenttype.as_str(), row.extensions.as_str()),
            ("", "{}")
        );
    }
}
