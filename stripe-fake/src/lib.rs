//! stripe-fake: a stateful Stripe test double served over HTTP — the subset of the API billing-sync
//! uses, hosted checkout and portal pages, signed webhooks, Idempotency-Key replay, injectable
//! faults and a movable clock. Every response and webhook payload is checked against async-stripe's
//! typed structs by the contract test (`tests/tests/e2e/billing_contract.rs`). The tests run it
//! in-process ([`FakeStripe`]); the `stripe-fake` binary serves it for the demo (`scripts/run.sh`).
//!
//! # Layout
//! - `server`: the handle: [`FakeConfig`], bind, URL, catalog seed, serve until cancelled.
//! - `router`: the routes.
//! - `api`: the `/v1` and `/v2` API (authentication, the rate limiter, faults, the idempotency layer
//!   with Stripe's saving and pruning rules, `Stripe-Should-Retry`, dispatch).
//! - `pages`: the hosted checkout and portal pages.
//! - `admin`: the admin endpoints under `/_fake`.
//! - `webhooks`: webhook signing and delivery.
//! - `shared`: what the handlers share (account lock, webhook target, queue, JSON answers).
//! - `state`: the account (customers, products, prices, meters, meter events and their cancel
//!   adjustments, subscriptions, sessions, invoices, events, faults, logs) and its rules
//!   (identifier dedup for 24 hours, the 35-day window, whole-number values, customers validated
//!   asynchronously with v2 error report events, summaries after a processing lag, cancels within 24
//!   hours, Checkout Sessions that expire, periods), and one-time purchases (`payment`-mode
//!   Checkout Sessions paying a payment intent with one charge) with their refunds
//!   (`POST /v1/refunds`: partial, the rest, `charge_already_refunded`, `amount_too_large`).
//! - `objects`: Stripe-shaped JSON of each object.
//! - `form`: Stripe's bracket form encoding parsed into JSON.
//! - `known`: the parameters each modelled endpoint takes (others are `parameter_unknown`).
//! - `error`: the Stripe-shaped API error.
//!
//! # Admin endpoints (not Stripe's; for tests and demos)
//! - `POST /_fake/faults` `{"kind": "status"|"timeout"|"delay", "status", "ms", "path", "count",
//!   "after"}` (`after`: the operation runs, then fails, and the failure is saved for its
//!   idempotency key), `DELETE /_fake/faults`.
//! - `POST /_fake/settings` `{"rate_limit_per_sec", "summary_lag_secs"}`.
//! - `POST /_fake/clock/advance` `{"seconds": n}`: renewals, period-end cancellations, expired
//!   Checkout Sessions; identifiers and idempotency keys older than 24 hours are forgotten.
//! - `POST /_fake/webhooks` `{"url", "secret", "paused", "api_version"}`: where and whether webhooks
//!   go, and the endpoint's API version (events are rendered in its shape).
//! - `GET /_fake/events`, `POST /_fake/events/{id}/deliver` `{"signature": "valid"|"bad"|"stale"}`.
//! - `POST /_fake/subscriptions/{id}/{payment_failed|invoice_paid|delete|fail_next_payment|update}`.
//! - `GET /_fake/meter_events`, `GET /_fake/requests`, `GET /_fake/deliveries`, `GET /_fake/stats`.

#![forbid(unsafe_code)]
#![recursion_limit = "256"]

mod admin;
mod api;
mod error;
mod form;
mod known;
mod objects;
mod pages;
mod router;
mod server;
mod shared;
mod state;
mod webhooks;

pub use server::{FakeConfig, FakeStripe};
