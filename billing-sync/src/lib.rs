//! billing-sync: every Stripe interaction of the metering backend. It sells plans through Stripe
//! Checkout (subscription mode), opens the billing portal, cancels subscriptions, turns Stripe's
//! signed webhooks into plan changes on the subscriptions topic (which the aggregator folds into
//! quota limits), repairs missed webhooks by reconciliation, and reports metered usage from the
//! ClickHouse rollups to Stripe Billing Meters exactly once per customer, meter and hour, late usage
//! included (corrections), with a reconciliation that heals.
//!
//! # Layout
//! - [`config`]: the typed, layered configuration (`BILLING_*`).
//! - [`plans`]: plan ↔ Stripe price mapping.
//! - [`stripe_api`]: async-stripe client with global pacing, idempotency keys and backoff.
//! - [`store`]: billing state in ClickHouse (migrations `0007_billing.sql`,
//!   `0010_usage_revisions.sql`) and rollup reads.
//! - [`billing`]: the subscription → plan change rules (`billing/mod.rs`), how a Stripe
//!   subscription is observed (`observed.rs`), and customers, checkout, portal and cancel
//!   (`sales.rs`), the invoice preview (`preview.rs`), enterprise contracts (`contracts.rs`,
//!   with [`contract_routes`] their admin routes) and purchasable add-ons (`addons.rs`, with
//!   [`addon_routes`] their routes).
//! - [`webhook`]: signature verification and event handling (v1 events, thin events, events of
//!   another API version), with [`webhook_route`] its HTTP route.
//! - [`usage`]: metered usage to Stripe (`usage/mod.rs`: identifiers, window, meters): the revision
//!   ledger (`ledger.rs`), the correction path shared by report and reconciliation
//!   (`corrections.rs`), the report run (`report.rs`), the reconciliation that heals
//!   (`reconcile.rs`) and over-report cancels by meter event adjustment (`cancel.rs`).
//! - [`emails`]: customer emails queued from handled webhooks (receipts, failed payments, plan
//!   changes, cancellations; crate `mailer`), [`reminders`] the renewal reminder job, and
//!   [`email_routes`] their routes (preview, listing, address, the preference API) with
//!   [`email_pages`] the signed unsubscribe and preference pages.
//! - [`http`]: routes (seed endpoints, webhook, health, metrics), with [`admin_routes`] the admin
//!   triggers of the background jobs.
//! - [`ownership`]: which customers this instance bills (the work split by a consumer group over
//!   the work topic, with fencing), when several instances run.
//! - [`metrics`]: Prometheus metrics.
//! - [`app`]: build, serve, background jobs, shut down.
//! - [`error`]: the crate error.

#![forbid(unsafe_code)]

pub mod addon_routes;
pub mod admin_routes;
pub mod app;
pub mod billing;
pub mod config;
pub mod contract_routes;
pub mod email_pages;
pub mod email_routes;
pub mod emails;
pub mod error;
pub mod http;
pub mod metrics;
pub mod ownership;
pub mod plans;
pub mod reminders;
pub mod store;
pub mod stripe_api;
pub mod usage;
pub mod webhook;
pub mod webhook_route;

pub use app::App;
pub use config::Config;
pub use error::{Error, Result};
