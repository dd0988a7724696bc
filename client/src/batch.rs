//! [`Batcher`]: usage events sent to `POST /v1/events` in the background, in batches, retried with
//! the same ids (so a retry counts once), in bounded memory, flushed on shutdown.
//!
//! Calls recorded without an id of their own ([`Batcher::record`]) are folded, while they wait,
//! into one event per customer, meter, endpoint and minute whose `quantity` is their sum (with
//! `aggregate`, the default): a busy service sends a few events per flush instead of one per call.
//! The folded event's id is made when its batch is formed, so its retries count once too.
//!
//! Memory: at most `capacity` events wait in the queue plus one batch in flight; an event that
//! finds the queue full is dropped and counted in [`BatchStats::dropped`] (the API is down for
//! longer than the queue covers). A batch the API refuses as invalid loses only its bad events
//! (named in the error's `details`), counted in [`BatchStats::rejected`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::api::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::types::IncomingEvent;

/// Settings of a [`Batcher`].
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Events that may wait in memory (default 10,000).
    pub capacity: usize,
    /// Events per `POST /v1/events` (default 500, at most 1,000).
    pub max_batch: usize,
    /// How long the first event of a batch waits for others (default 200 ms).
    pub flush_interval: Duration,
    /// First retry delay, doubled each time up to `retry_max` (default 100 ms).
    pub retry_base: Duration,
    /// Longest retry delay (default 5 s).
    pub retry_max: Duration,
    /// How long [`Batcher::shutdown`] keeps retrying what is left (default 10 s).
    pub shutdown_timeout: Duration,
    /// Fold recorded calls into one event per customer, meter, endpoint and minute (default on).
    pub aggregate: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_batch: 500,
            flush_interval: Duration::from_millis(200),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            aggregate: true,
        }
    }
}

/// Counters of a [`Batcher`] (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Events and calls taken into the queue.
    pub enqueued: u64,
    /// Calls folded into a waiting event of the same customer, meter, endpoint and minute.
    pub merged: u64,
    /// Events the API accepted (202).
    pub sent: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events the API refused as invalid (never retried).
    pub rejected: u64,
    /// Batches sent again after a failure (same ids).
    pub retries: u64,
    /// Events still unsent when the shutdown timeout ran out.
    pub lost_at_shutdown: u64,
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    merged: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    lost: AtomicU64,
}

/// One call to fold: `quantity` of `meter` at `endpoint` by `customer`, at `at`.
#[derive(Debug, Clone)]
struct Call {
    customer: String,
    meter: String,
    endpoint: String,
    quantity: f64,
    at: OffsetDateTime,
}

enum Cmd {
    Event(Box<IncomingEvent>),
    Call(Box<Call>),
    Wake,
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle on the background sender; clones share it.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Cmd>,
    counters: Arc<Counters>,
    closed: Arc<AtomicBool>,
    folds: Arc<Mutex<Folds>>,
    aggregate: bool,
    capacity: usize,
}

/// Calls folded where they are recorded (no message, no allocation for a known key): per
/// customer, its (meter, endpoint, minute) slots. The worker takes the whole map per batch.
#[derive(Debug, Default)]
struct Folds {
    by_customer: HashMap<String, Vec<Call>, foldhash::fast::RandomState>,
    slots: usize,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Event(_) => "Event",
            Cmd::Call(_) => "Call",
            Cmd::Wake => "Wake",
            Cmd::Flush(_) => "Flush",
            Cmd::Shutdown(_) => "Shutdown",
        })
    }
}

impl Batcher {
    /// Starts the background sender on the current Tokio runtime.
    pub fn start(client: Client, config: BatchConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let folds = Arc::new(Mutex::new(Folds::default()));
        let (aggregate, capacity) = (config.aggregate, config.capacity.max(1));
        let worker = Worker {
            folds: folds.clone(),
            client,
            config: BatchConfig {
                max_batch: config.max_batch.clamp(1, 1000),
                ..config
            },
            counters: counters.clone(),
        };
        tokio::spawn(worker.run(rx));
        Self {
            tx,
            counters,
            closed: Arc::new(AtomicBool::new(false)),
            folds,
            aggregate,
            capacity,
        }
    }

    /// Queues `event` without waiting. `false` (and [`BatchStats::dropped`] + 1) when the queue
    /// is full or the batcher has shut down.
    pub fn enqueue(&self, event: IncomingEvent) -> bool {
        if self.closed.load(Ordering::Acquire) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.tx.try_send(Cmd::Event(Box::new(event))) {
            Ok(()) => {
                self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records `quantity` calls of `customer` at `endpoint` now, folded with others of the same
    /// minute (see the module documentation); without `aggregate`, one event with a new id.
    /// `false` (and [`BatchStats::dropped`] + 1) when the queue is full or shut down.
    pub fn record(&self, customer: &str, meter: &str, endpoint: &str, quantity: f64) -> bool {
        if self.aggregate {
            return self.fold(customer, meter, endpoint, quantity);
        }
        let call = Call {
            customer: customer.into(),
            meter: meter.into(),
            endpoint: endpoint.into(),
            quantity,
            at: OffsetDateTime::now_utc(),
        };
        if self.closed.load(Ordering::Acquire) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.tx.try_send(Cmd::Call(Box::new(call))) {
            Ok(()) => {
                self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn fold(&self, customer: &str, meter: &str, endpoint: &str, quantity: f64) -> bool {
        let c = &self.counters;
        if self.closed.load(Ordering::Acquire) {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let at = OffsetDateTime::now_utc();
        let minute = at.unix_timestamp().div_euclid(60);
        let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = folds.slots == 0;
        if let Some(slot) = folds.by_customer.get_mut(customer).and_then(|v| {
            v.iter_mut().find(|s| {
                s.meter == meter
                    && s.endpoint == endpoint
                    && s.at.unix_timestamp().div_euclid(60) == minute
            })
        }) {
            slot.quantity += quantity;
            drop(folds);
            c.enqueued.fetch_add(1, Ordering::Relaxed);
            c.merged.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if folds.slots >= self.capacity {
            drop(folds);
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        folds.slots += 1;
        folds
            .by_customer
            .entry(customer.to_string())
            .or_default()
            .push(Call {
                customer: customer.into(),
                meter: meter.into(),
                endpoint: endpoint.into(),
                quantity,
                at,
            });
        drop(folds);
        c.enqueued.fetch_add(1, Ordering::Relaxed);
        if was_empty {
            // Wake the worker; when the queue is full it is busy and looks at the folds anyway.
            let _ = self.tx.try_send(Cmd::Wake);
        }
        true
    }

    /// Waits until every event queued before this call was sent (or refused).
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Stops taking events, sends what is queued (retrying up to `shutdown_timeout`) and
    /// answers the final counters. Later calls answer at once.
    pub async fn shutdown(&self) -> BatchStats {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Cmd::Shutdown(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
        self.stats()
    }

    /// The counters so far.
    pub fn stats(&self) -> BatchStats {
        let c = &self.counters;
        BatchStats {
            enqueued: c.enqueued.load(Ordering::Relaxed),
            merged: c.merged.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            lost_at_shutdown: c.lost.load(Ordering::Relaxed),
        }
    }

    /// Events waiting in the queue (not counting the batch in flight).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

struct Worker {
    folds: Arc<Mutex<Folds>>,
    client: Client,
    config: BatchConfig,
    counters: Arc<Counters>,
}

impl Worker {
    fn folds_empty(&self) -> bool {
        self.folds.lock().unwrap_or_else(|p| p.into_inner()).slots == 0
    }

    /// What waits: the queued events, then every folded call as one event each (its id made
    /// here, once, and kept across retries).
    fn take_all(&self, buf: &mut Vec<IncomingEvent>) -> Vec<IncomingEvent> {
        let mut out = std::mem::take(buf);
        let folds = std::mem::take(&mut *self.folds.lock().unwrap_or_else(|p| p.into_inner()));
        out.extend(folds.by_customer.into_values().flatten().map(event_of));
        out
    }

    async fn run(self, mut rx: mpsc::Receiver<Cmd>) {
        let max = self.config.max_batch;
        let mut buf: Vec<IncomingEvent> = Vec::with_capacity(max);
        let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
        let mut deadline: Option<Instant> = None; // set once shutting down
        loop {
            // Wait for the first command, then gather a batch for at most flush_interval.
            if buf.is_empty() && waiters.is_empty() && deadline.is_none() && self.folds_empty() {
                match rx.recv().await {
                    Some(cmd) => self.take(cmd, &mut buf, &mut waiters, &mut deadline, &mut rx),
                    None => deadline = Some(Instant::now() + self.config.shutdown_timeout),
                }
            }
            let gather_until = Instant::now() + self.config.flush_interval;
            while buf.len() < max && waiters.is_empty() && deadline.is_none() {
                match tokio::time::timeout_at(gather_until, rx.recv()).await {
                    Err(_) => break,
                    Ok(None) => deadline = Some(Instant::now() + self.config.shutdown_timeout),
                    Ok(Some(cmd)) => self.take(cmd, &mut buf, &mut waiters, &mut deadline, &mut rx),
                }
            }
            // Flushing or shutting down: take everything already queued, up to a batch.
            while buf.len() < max && (deadline.is_some() || !waiters.is_empty()) {
                match rx.try_recv() {
                    Ok(cmd) => self.take(cmd, &mut buf, &mut waiters, &mut deadline, &mut rx),
                    Err(_) => break,
                }
            }
            let mut all = self.take_all(&mut buf);
            while !all.is_empty() {
                let mut batch: Vec<IncomingEvent> = all.drain(..all.len().min(max)).collect();
                let n = batch.len() + all.len();
                if !self.send(&mut batch, deadline).await {
                    // Shutdown timeout: what is left is lost (counted).
                    self.counters.lost.fetch_add(n as u64, Ordering::Relaxed);
                    all.clear();
                    while let Ok(cmd) = rx.try_recv() {
                        match cmd {
                            Cmd::Event(_) | Cmd::Call(_) => {
                                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                            }
                            Cmd::Wake => {}
                            Cmd::Flush(w) | Cmd::Shutdown(w) => waiters.push(w),
                        }
                    }
                    let lost = self.take_all(&mut Vec::new()).len();
                    self.counters.lost.fetch_add(lost as u64, Ordering::Relaxed);
                }
            }
            if buf.is_empty() && rx.is_empty() && self.folds_empty() {
                for w in waiters.drain(..) {
                    let _ = w.send(());
                }
                if deadline.is_some() {
                    return;
                }
            }
        }
    }

    fn take(
        &self,
        cmd: Cmd,
        buf: &mut Vec<IncomingEvent>,
        waiters: &mut Vec<oneshot::Sender<()>>,
        deadline: &mut Option<Instant>,
        rx: &mut mpsc::Receiver<Cmd>,
    ) {
        match cmd {
            Cmd::Event(e) => buf.push(*e),
            Cmd::Call(c) => buf.push(event_of(*c)),
            Cmd::Wake => {}
            Cmd::Flush(w) => waiters.push(w),
            Cmd::Shutdown(w) => {
                waiters.push(w);
                // No new commands; what is already queued is still drained.
                rx.close();
                *deadline = Some(Instant::now() + self.config.shutdown_timeout);
            }
        }
    }

    /// Sends `buf` until the API accepts it (same ids every time), dropping only events it
    /// refuses as invalid. `false` when `deadline` passed first.
    async fn send(&self, buf: &mut Vec<IncomingEvent>, deadline: Option<Instant>) -> bool {
        let mut delay = self.config.retry_base;
        loop {
            match self.client.send_events(buf).await {
                Ok(a) => {
                    self.counters
                        .sent
                        .fetch_add(a.accepted as u64, Ordering::Relaxed);
                    buf.clear();
                    return true;
                }
                Err(e) if !e.is_retryable() => {
                    let bad = invalid_indexes(&e, buf.len());
                    if bad.is_empty() {
                        tracing::warn!(error = %e, events = buf.len(), "metering: batch refused");
                        self.counters
                            .rejected
                            .fetch_add(buf.len() as u64, Ordering::Relaxed);
                        buf.clear();
                        return true;
                    }
                    tracing::warn!(error = %e, bad = bad.len(), "metering: invalid events dropped");
                    self.counters
                        .rejected
                        .fetch_add(bad.len() as u64, Ordering::Relaxed);
                    let mut i = 0;
                    buf.retain(|_| {
                        i += 1;
                        !bad.contains(&(i - 1))
                    });
                    if buf.is_empty() {
                        return true;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, events = buf.len(), "metering: batch retried");
                    if deadline.is_some_and(|d| Instant::now() + delay > d) {
                        return false;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.config.retry_max);
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The usage event of a (folded) call, with a new id.
fn event_of(c: Call) -> IncomingEvent {
    let mut data = Map::new();
    data.insert("endpoint".into(), Value::String(c.endpoint));
    data.insert("quantity".into(), json!(c.quantity));
    IncomingEvent {
        specversion: None,
        id: uuid::Uuid::new_v4().to_string(),
        meter: c.meter,
        subject: c.customer,
        source: Some("metering-layer".into()),
        time: Some(c.at),
        data: Some(data),
        tenant: None,
    }
}

/// The indexes of the events an `invalid_events` answer names.
fn invalid_indexes(e: &Error, len: usize) -> Vec<usize> {
    if e.code() != Some(&ErrorCode::InvalidEvents) {
        return Vec::new();
    }
    let mut v: Vec<usize> = e
        .details()
        .iter()
        .map(|d| d.index)
        .filter(|&i| i < len)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}
