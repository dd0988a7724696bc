//! The end-to-end suite as one test binary (one link instead of thirteen keeps a cold build small):
//! each module is one area, against the real broker and the real ClickHouse server.
//!
//! Layout: `pipeline`, `offsets`, `faults`, `dead_letters`, `bad_input` (the event path),
//! `cloudevents` and `cloudevents_sdk` (the CloudEvents HTTP binding, the official Python and
//! JavaScript SDKs as clients), `schema`
//! and `compose` (DDL and deployment files), `quota` and `notify` (quota API and alerts), `emails` and `emails_once` (customer emails), `entitlements` and
//! `plan_versions` (features of plans, plan versions and migrations), `billing`,
//! `billing_contract`, `billing_usage`, `billing_corrections`, `billing_proof`, `billing_preview`
//! and `billing_ha` (billing-sync and the Stripe fake; `billing_ha`: two instances at once),
//! `stripe_rules` (Stripe's rules the fake keeps, and billing-sync exact under each),
//! `stripe_suite` (the contract suite: the fake, or Stripe's test mode with `STRIPE_TEST_SECRET_KEY`),
//! `billing_invoices` (usage on Stripe's invoices, lagging summaries, the test-mode pace),
//! `keys` (the key lifecycle: revocation on every instance, expiry, rotation, listing, the CLI),
//! `limits` (rate limits per key and tenant),
//! `dashboard` and `dashboard_plans` (headless Chromium; the latter: overage, contracts, add-ons), `client_drift`, `client_layer` and `client_ts` (the Rust client's types against real answers, the Rust layer, the TypeScript
//! client and its React page in Chromium), `openapi`
//! (both services' generated OpenAPI documents against their routes). Run one area with
//! `cargo nextest run -p tests -E 'test(/^quota::/)'`.

mod bad_input;
mod billing;
mod billing_contract;
mod billing_corrections;
mod billing_ha;
mod billing_invoices;
mod billing_preview;
mod billing_proof;
mod billing_usage;
mod client_drift;
mod client_layer;
mod client_ts;
mod cloudevents;
mod cloudevents_sdk;
mod compose;
mod dashboard;
mod dashboard_links;
mod dashboard_plans;
mod dead_letters;
mod emails;
mod emails_once;
mod entitlements;
mod faults;
mod kafka_settings;
mod keys;
mod limits;
mod notify;
mod offsets;
mod openapi;
mod pipeline;
mod plan_versions;
mod plans_addons;
mod plans_pricing;
mod quota;
mod schema;
mod stripe_payments;
mod stripe_rules;
mod stripe_suite;
