//! Builds the quota view at start (a ClickHouse baseline, then the whole compacted state topic) and
//! keeps it current by following the state topic and tailing the events topic. Only this module reads ClickHouse for quota, and
//! only at start: answers come from memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Catalog;
use schemas::config::KafkaConfig;
use schemas::event::{UsageEvent, Window, is_batch};
use schemas::kafka::ORIGIN_HEADER;
use schemas::quota::{StateRecord, UsageState};
use schemas::topics::Topics;
use schemas::wire::{Checked, Wire};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use platform::notes::{NOTES_HEADER, Noted};

use crate::Result;
use crate::quota::QuotaView;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct RecentId {
    tenant: String,
    customer: String,
    id: String,
    at: u32,
}

/// Loads the last 40 days of daily usage and every customer's plan history from ClickHouse.
/// Returns the number of records applied.
pub async fn load_baseline(client: &clickhouse::Client, view: &QuotaView) -> Result<usize> {
    let rows = schemas::quota_store::daily_usage(client, None, 40).await?;
    // Ids accepted in the last hour: a client retrying one after this restart is not counted twice.
    let recent: Vec<RecentId> = client
        .query(&format!(
            "SELECT tenant, customer, id, toUInt32(received_at) AS at FROM events_raw \
             WHERE received_at >= now() - {}",
            crate::quota::RECENT_IDS_SECS
        ))
        .fetch_all()
        .await?;
    for r in &recent {
        let at = time::OffsetDateTime::from_unix_timestamp(i64::from(r.at))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        view.remember(&r.tenant, &r.customer, &r.id, at);
    }
    let plans = schemas::quota_store::plans(client, view.catalog(), None).await?;
    let n = rows.len() + plans.len();
    for r in rows {
        view.apply(StateRecord::Usage(UsageState {
            tenant: r.tenant,
            customer: r.customer,
            meter: r.meter,
            day: r.day,
            quantity: r.quantity,
            events: r.events,
            partition: -1,
            as_of_offset: -1,
        }));
    }
    for p in plans.into_values() {
        view.apply(StateRecord::Plan(p));
    }
    Ok(n)
}

/// Follows the state topic from its beginning; marks the view ready once it has read what the
/// topic held at start. Also tails the events topic from its end: usage accepted by other ingest
/// instances counts as pending here within a fetch, long before the aggregator folds it (this
/// bounds the overshoot across instances); batches whose origin header is `origin` (this
/// instance's producer) are skipped, they were counted at intake. Runs until `cancel`.
pub async fn follow(
    kafka: &KafkaConfig,
    topics: &Topics,
    origin: &str,
    view: Arc<QuotaView>,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    let consumer: StreamConsumer = schemas::kafka::client_config(kafka)
        .set("group.id", format!("quota-view-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A fetch returns at 256 KiB (fewer, fuller fetches under load) or after 5 ms: the wait is
        // what another instance's usage takes to count here at low rates, so it bounds the
        // overshoot across instances (20 ms gave 25 ms p50 freshness and 40-96 calls over a limit
        // of 100 in the quota benchmark; 5 ms gives 16 ms and 20).
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "262144")
        .create()?;
    let topic = topics.state.clone();
    let (consumer, targets) = {
        let c = consumer;
        let t = topic.clone();
        let events = topics.events.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let md = c.fetch_metadata(Some(&t), Duration::from_secs(10))?;
            let partitions: Vec<i32> = md
                .topics()
                .iter()
                .flat_map(|mt| mt.partitions().iter().map(|p| p.id()))
                .collect();
            let mut tpl = TopicPartitionList::new();
            let mut targets = HashMap::new();
            for p in partitions {
                let (_, high) = c.fetch_watermarks(&t, p, Duration::from_secs(10))?;
                tpl.add_partition_offset(&t, p, Offset::Beginning)?;
                if high > 0 {
                    targets.insert(p, high);
                }
            }
            let md = c.fetch_metadata(Some(&events), Duration::from_secs(10))?;
            for mt in md.topics() {
                for p in mt.partitions() {
                    tpl.add_partition_offset(&events, p.id(), Offset::End)?;
                }
            }
            c.assign(&tpl)?;
            Ok((c, targets))
        })
        .await
        .map_err(|e| crate::Error::Config(format!("state follower: {e}")))??
    };
    let mut waiting = targets;
    if waiting.is_empty() {
        view.set_ready();
    }
    tracing::info!(topic = %topic, partitions_to_catch_up = waiting.len(), "following quota state");
    loop {
        let msg = tokio::select! {
            () = cancel.cancelled() => break,
            m = consumer.recv() => m,
        };
        match msg {
            Ok(m) if m.topic() == topics.events => {
                let position = (m.partition(), m.offset());
                let (mut own, mut notes) = (false, None);
                for h in m.headers().into_iter().flat_map(|h| h.iter()) {
                    // Batches this instance produced were counted when the broker acknowledged
                    // them (its origin header comes before its notes).
                    if h.key == ORIGIN_HEADER && h.value == Some(origin.as_bytes()) {
                        own = true;
                        break;
                    }
                    if h.key == NOTES_HEADER {
                        notes = h.value;
                    }
                }
                if !own {
                    let read = note_batch(&view, notes, m.payload().unwrap_or_default(), position);
                    metrics
                        .tail_batches
                        .get_or_create(&crate::metrics::ReadLabels { read })
                        .inc();
                }
            }
            Ok(m) => {
                if let Some(payload) = m.payload() {
                    match serde_json::from_slice::<StateRecord>(payload) {
                        Ok(record) => view.apply(record),
                        Err(e) => {
                            tracing::warn!(error = %e, offset = m.offset(), "unreadable state record")
                        }
                    }
                }
                if !waiting.is_empty() {
                    if waiting
                        .get(&m.partition())
                        .is_some_and(|&h| m.offset() + 1 >= h)
                    {
                        waiting.remove(&m.partition());
                    }
                    if waiting.is_empty() {
                        view.set_ready();
                        tracing::info!(customers = view.customers(), "quota view caught up");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "state follower error"),
        }
    }
    Ok(())
}

/// Notes the events of a batch message another instance produced: from its notes header when it
/// has one that reads back, else from its JSON ([`note_message`]). Returns which it read
/// (`notes` or `json`).
fn note_batch(
    view: &QuotaView,
    notes: Option<&[u8]>,
    payload: &[u8],
    position: (i32, i64),
) -> &'static str {
    match notes.and_then(platform::notes::decode) {
        Some(notes) => {
            for n in notes {
                view.note(n, position);
            }
            "notes"
        }
        None => {
            note_message(view, payload, position);
            "json"
        }
    }
}

/// Notes the events of a message another instance produced: plain events through the fast path
/// ([`Wire`], checked against their own tenant and arrival time), the others decoded whole; an
/// element that does not decode at all is skipped (the aggregator dead-letters it).
fn note_message(view: &QuotaView, payload: &[u8], position: (i32, i64)) {
    fn check<'a>(wire: &Wire<'a>, catalog: &Catalog) -> Option<Checked<'a>> {
        wire.check_produced(wire.received_at()?, Window::default(), catalog)
    }
    let catalog = view.catalog();
    let batch = is_batch(payload);
    // Nearly every batch is plain: read in one pass and noted when every element passes its
    // check; otherwise read again element by element below.
    if batch
        && let Some(events) = Wire::parse_batch(payload).and_then(|wires| {
            wires
                .iter()
                .map(|w| check(w, catalog))
                .collect::<Option<Vec<_>>>()
        })
    {
        for event in &events {
            view.note(Noted::of_checked(event), position);
        }
        return;
    }
    let elements: Vec<&RawValue> = if batch {
        serde_json::from_slice(payload).unwrap_or_default()
    } else {
        serde_json::from_slice(payload)
            .map(|e| vec![e])
            .unwrap_or_default()
    };
    for raw in elements {
        match Wire::parse(raw.get()).and_then(|wire| check(&wire, catalog)) {
            Some(event) => view.note(Noted::of_checked(&event), position),
            None => {
                if let Ok(event) = serde_json::from_str::<UsageEvent>(raw.get()) {
                    view.note_event(&event, position);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::UnknownCustomer;

    #[test]
    fn a_batch_of_another_instance_counts_each_new_event_once_read_in_one_pass_or_not() {
        let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let at = "2026-03-10T12:00:00Z";
        let event = |id: &str, customer: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"api","type":"api_call","subject":"{customer}","time":"{at}","data":{{"endpoint":"analyze"}},"tenant":"t","receivedat":"{at}"}}"#
            )
        };
        let pending = |customer: &str| view.pending("t", customer, "api_call");
        // Plain: one pass.
        let plain = format!(
            "[{},{},{}]",
            event("e1", "c"),
            event("e2", "c"),
            event("e3", "d")
        );
        note_message(&view, plain.as_bytes(), (0, 1));
        assert_eq!((pending("c"), pending("d")), (2, 1));
        // An escaped id (e4) is not plain: the batch is read element by element; e1 is a retry.
        let mixed = format!(
            "[{},{},{}]",
            event(r"e\u0034", "c"),
            event("e1", "c"),
            event("e5", "c")
        );
        note_message(&view, mixed.as_bytes(), (0, 2));
        assert_eq!(pending("c"), 4);
        // So is a batch with an element that fails its check (an unknown meter): the others count.
        let unknown = event("e6", "d").replace("api_call", "nope");
        note_message(
            &view,
            format!("[{unknown},{}]", event("e7", "d")).as_bytes(),
            (0, 3),
        );
        assert_eq!(pending("d"), 2);
    }

    #[test]
    fn a_batch_with_a_notes_header_counts_as_its_json_does_and_a_bad_header_falls_back() {
        let catalog = Catalog::default();
        let at = "2026-03-10T12:00:00Z";
        let events: Vec<UsageEvent> = [("e1", "c"), ("e2", "c"), ("e3", "d")]
            .iter()
            .map(|(id, customer)| {
                serde_json::from_value(serde_json::json!({
                    "specversion": "1.0", "id": id, "source": "api", "type": "api_call",
                    "subject": customer, "time": at, "data": {"endpoint": "analyze"},
                    "tenant": "t", "receivedat": at
                }))
                .expect("event")
            })
            .collect();
        let notes: Vec<Noted<'_>> = events
            .iter()
            .map(|e| Noted::of_event(e, &catalog))
            .collect();
        let batches =
            platform::producer::EventProducer::batches(&events, &notes, 1).expect("batches");
        let [batch] = &batches[..] else {
            panic!("one partition, one message: {batches:?}")
        };
        let view = || QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
        let counts = |v: &QuotaView| {
            (
                v.pending("t", "c", "api_call"),
                v.pending("t", "d", "api_call"),
            )
        };

        let from_json = view();
        assert_eq!(note_batch(&from_json, None, &batch.payload, (0, 1)), "json");
        assert_eq!(counts(&from_json), (2, 1));
        // The header alone is read: the payload is not even JSON here.
        let from_notes = view();
        let read = note_batch(&from_notes, Some(&batch.notes), b"not json", (0, 1));
        assert_eq!(read, "notes");
        assert_eq!(counts(&from_notes), counts(&from_json));
        // A retry of the same ids at a later offset counts once, as from the JSON.
        note_batch(&from_notes, Some(&batch.notes), b"not json", (0, 2));
        assert_eq!(counts(&from_notes), (2, 1));
        // A header that does not read back: the JSON is read instead.
        let cut = view();
        let short = &batch.notes[..batch.notes.len() - 1];
        assert_eq!(
            note_batch(&cut, Some(short), &batch.payload, (0, 1)),
            "json"
        );
        assert_eq!(counts(&cut), (2, 1));
    }
}
