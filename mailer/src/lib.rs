//! mailer: emails to the metering customers themselves (usage warnings, payment receipts, renewal
//! reminders, failed payments, plan changes and cancellations), each sent at most once per
//! (tenant, customer, kind, scope), persisted in ClickHouse; the aggregator and billing-sync queue
//! them, billing-sync's dispatcher sends them (see `docs/emails.md`).
//!
//! # Layout
//! Imports run one way, from the top of this list down to its bottom.
//! - `bin/outbox.rs`: the `outbox` CLI (lists the local outbox).
//! - [`dispatch`]: the [`Mailer`]: claims, sends with retries, dead letters, the outbox fallback.
//! - [`message`]: the MIME message and its headers (`List-Unsubscribe`, `Message-ID`, ...).
//! - [`render`]: the templates (`templates/`, minijinja) and the preview's sample data.
//! - [`outbox`]: `.eml` files when no SMTP relay is configured.
//! - [`ledger`]: the ClickHouse tables (migration `0013_customer_emails.sql`).
//! - [`token`]: signed unsubscribe and preference links.
//! - [`metrics`]: `customer_emails_total{kind, outcome}`.
//! - [`config`]: the settings.
//! - [`kind`]: the kinds, one [`Email`], its once-only key and `Message-ID`.
//! - `error.rs`: the crate's [`Error`].

#![forbid(unsafe_code)]

pub mod config;
pub mod dispatch;
mod error;
pub mod kind;
pub mod ledger;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod render;
pub mod token;

pub use config::{Branding, MailerConfig, SmtpConfig, WarningConfig};
pub use dispatch::{Mailer, Refused, Retried, Summary};
pub use error::{Error, Result};
pub use kind::{Email, Kind};
