//! The fake's in-memory Stripe account: every object, meter event, event, fault and log it holds,
//! its clock and its ids. The operations on it live in the submodules, one role each.
//!
//! # Layout
//! - [`params`]: reading form parameters, and list pages.
//! - [`catalog`]: customers, products, prices and meters.
//! - [`seed`]: the catalog seed (plans, usage prices, meters, add-ons).
//! - [`meter_events`]: meter events (identifier dedup, the 35-day window) and their summaries.
//! - [`adjustments`]: meter event adjustments (cancel by identifier within 24 hours).
//! - [`subscriptions`]: subscriptions, their payment outcomes, renewals and the clock's advance.
//! - [`invoices`]: invoice lines (licensed in advance, metered in arrears), the invoice preview.
//! - [`checkout`]: Checkout Sessions and billing portal sessions.
//! - [`payments`]: one-time purchases (the payment intent and charge of a `payment`-mode
//!   session) and their refunds.
//! - [`clocks`]: test clocks (they move the fake's one clock).
//! - [`faults`]: injected API faults.
//! - [`logs`]: the request and delivery logs and the idempotency cache's entries.

mod adjustments;
mod catalog;
mod checkout;
mod clocks;
mod faults;
mod invoices;
mod logs;
mod meter_events;
mod params;
mod payments;
mod seed;
mod subscriptions;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::objects::{
    self, Charge, CheckoutSession, Meter, MeterEvent, PaymentIntent, Price, Refund, Subscription,
};

pub(crate) use faults::Fault;
pub(crate) use logs::{Cached, Delivery, RequestLog};

/// The account.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Seconds added to the real clock (`POST /_fake/clock/advance`).
    pub(crate) offset: i64,
    seq: u64,
    /// Customers by id.
    pub(crate) customers: BTreeMap<String, Value>,
    /// Products by id.
    pub(crate) products: BTreeMap<String, Value>,
    /// Prices by id.
    pub(crate) prices: BTreeMap<String, Price>,
    /// Meters by id.
    pub(crate) meters: BTreeMap<String, Meter>,
    /// Accepted meter events in arrival order.
    pub(crate) meter_events: Vec<MeterEvent>,
    /// Identifier → index into `meter_events`.
    pub(crate) identifiers: HashMap<String, usize>,
    /// Subscriptions by id.
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    /// Creation order of subscriptions (lists are newest first).
    pub(crate) subscription_order: Vec<String>,
    /// Checkout Sessions by id.
    pub(crate) sessions: BTreeMap<String, CheckoutSession>,
    /// Portal sessions by id.
    pub(crate) portal_sessions: BTreeMap<String, Value>,
    /// Invoices by id.
    pub(crate) invoices: BTreeMap<String, Value>,
    /// Payment intents by id (ids sort in creation order).
    pub(crate) payment_intents: BTreeMap<String, PaymentIntent>,
    /// Charges by id (ids sort in creation order).
    pub(crate) charges: BTreeMap<String, Charge>,
    /// Refunds by id (ids sort in creation order).
    pub(crate) refunds: BTreeMap<String, Refund>,
    /// Every event, in creation order.
    pub(crate) events: Vec<Value>,
    /// Test clocks by id.
    pub(crate) test_clocks: BTreeMap<String, Value>,
    /// v2 events (meter error reports) by id, with their data.
    pub(crate) v2_events: BTreeMap<String, Value>,
    /// Idempotency cache.
    pub(crate) idempotency: HashMap<String, Cached>,
    /// Active faults, applied first to last.
    pub(crate) faults: Vec<Fault>,
    /// Request log.
    pub(crate) requests: Vec<RequestLog>,
    /// Delivery log.
    pub(crate) deliveries: Vec<Delivery>,
    /// Meter event calls in flight per (customer, event name), and the most seen at once.
    pub(crate) in_flight: HashMap<String, u32>,
    /// The most meter event calls seen in flight for one (customer, event name).
    pub(crate) max_in_flight: u32,
    /// Idempotency keys of requests in flight (a second request with one gets 409).
    pub(crate) keys_in_flight: HashSet<String>,
    /// The basic rate limit in requests per second (`POST /_fake/settings`); none by default.
    /// Stripe's test mode allows 25 (<https://docs.stripe.com/rate-limits>).
    pub(crate) rate_limit: Option<u32>,
    /// Arrival times (real unix ms) of the requests of the last second, for the rate limit.
    pub(crate) recent: VecDeque<u128>,
    /// Seconds a meter event takes to show in summaries (`POST /_fake/settings`; 0 by default).
    /// Stripe processes meter events asynchronously: "aggregated usage in meter event summaries
    /// and on upcoming invoices might not immediately reflect recently received meter events"
    /// (<https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api>).
    pub(crate) summary_lag: i64,
    /// The code with which the next meter event is dropped after acceptance (a `reject` fault).
    pub(crate) reject_next: Option<String>,
}

/// Real unix time in seconds.
pub(crate) fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl State {
    /// The fake's clock (real time plus the offset).
    pub(crate) fn now(&self) -> i64 {
        real_now() + self.offset
    }

    /// A fresh id with `prefix`.
    pub(crate) fn id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{prefix}_{:06}{}", self.seq, &random[..14])
    }

    fn push_event(&mut self, kind: &str, object: Value, previous: Option<Value>) -> Value {
        let id = self.id("evt");
        let event = objects::event(&id, kind, self.now(), object, previous);
        self.events.push(event.clone());
        event
    }
}
