//! Customer email test helpers: a mailer configuration that sends to the project's SMTP sink (or
//! to an outbox folder), and billing-sync started with it, its mailer at hand.

use std::path::PathBuf;
use std::sync::Arc;

use mailer::{Branding, Mailer, MailerConfig, SmtpConfig};
use tokio_util::sync::CancellationToken;

use crate::billing::{BillingSync, Fake};
use crate::smtp::SmtpSink;
use crate::{Running, workspace_root};

/// The secret that signs the tests' unsubscribe links.
pub const UNSUBSCRIBE_SECRET: &str = "emails-test-unsubscribe-secret";
/// The sender of the tests' emails.
pub const FROM: &str = "Metering <billing@metering.test>";

/// An SMTP config that sends to `sink` in plain text.
pub fn smtp(sink: &SmtpSink) -> SmtpConfig {
    SmtpConfig {
        host: sink.host(),
        port: sink.port(),
        username: None,
        password: String::new().into(),
        tls: false,
    }
}

/// A fresh outbox folder under `.data/test-outbox/<name>`.
pub fn outbox_dir(name: &str) -> PathBuf {
    let dir = workspace_root().join(".data/test-outbox").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Emails on, fast rounds and retries, tenant `acme` branded; to `sink`, or to the outbox
/// `outbox` when none.
pub fn mailer_config(sink: Option<&SmtpSink>, outbox: PathBuf) -> MailerConfig {
    let mut c = MailerConfig {
        enabled: true,
        smtp: sink.map(smtp),
        outbox_dir: outbox,
        from: FROM.into(),
        unsubscribe_secret: UNSUBSCRIBE_SECRET.to_string().into(),
        poll_ms: 100,
        max_attempts: 3,
        initial_backoff_ms: 50,
        max_backoff_ms: 200,
        timeout_ms: 2_000,
        claim_settle_ms: 300,
        claim_lease_secs: 30,
        ..MailerConfig::default()
    };
    c.tenants.insert(
        "acme".into(),
        Branding {
            sender_name: "Acme Billing".into(),
            reply_to: Some("support@acme.test".into()),
            brand_color: "#ff5500".into(),
            product_name: "Acme Threat API".into(),
        },
    );
    c
}

/// Starts billing-sync with `config`, points the fake's webhooks at it, and returns its mailer.
pub async fn start_billing_mailer(
    fake: &Fake,
    mut config: billing_sync::Config,
    emails: MailerConfig,
) -> (BillingSync, Arc<Mailer>) {
    config.emails = emails;
    let app = billing_sync::App::build(config)
        .await
        .expect("build billing-sync");
    let addr = app.local_addr();
    let billing = app.billing();
    let mailer = app.mailer();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move { app.run(c).await.map_err(|e| e.to_string()) });
    let sync = BillingSync {
        running: Running {
            url: format!("http://{addr}"),
            cancel,
            task,
        },
        billing,
    };
    fake.deliver_to(&sync.webhook_url()).await;
    crate::wait_ready(&reqwest::Client::new(), &sync.running.url).await;
    (sync, mailer)
}
