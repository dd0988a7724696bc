//! The dispatcher: takes queued emails from the ledger, claims them (once across instances),
//! renders and sends each — SMTP with retries and backoff on 4xx and connection errors, a dead
//! letter with the reason on 5xx — or writes it to the outbox, and records the final row.
//!
//! Once-only: a key with a final row (`sent`, `dead`, `skipped`) is never sent again (restarts).
//! Between instances: each writes a `claimed` row with its clock in nanoseconds, waits
//! `claim_settle_ms`, reads the key's claims back, and only the earliest live claim sends. That
//! holds as long as a claim's insert is visible within `claim_settle_ms` and the instances' clocks
//! differ by less than that. A claim whose instance has written nothing for `claim_lease_secs` is
//! dead (its instance crashed): another instance takes the email over. Not covered: a crash after
//! the relay accepted a message and before the `sent` row is written sends it again after the
//! lease (with the same `Message-ID`).

use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rand::Rng;
use secrecy::ExposeSecret;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::MailerConfig;
use crate::ledger::{ClaimRow, FINAL, Ledger, LedgerRow};
use crate::message::{Envelope, build};
use crate::metrics::Metrics;
use crate::render::{Links, Rendered, Templates, sample};
use crate::token::LinkSigner;
use crate::{Email, Error, Kind, Result, kind};

/// What one dispatch round did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Accepted by the SMTP relay.
    pub sent: u32,
    /// Written to the outbox.
    pub outbox: u32,
    /// Dead letters (5xx, out of attempts, unrenderable).
    pub dead: u32,
    /// Skipped (unsubscribed, no address).
    pub skipped: u32,
    /// Left to another instance (its claim came first).
    pub duplicate: u32,
}

/// What [`Mailer::retry_dead`] did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Retried {
    /// Keys queued again (the next dispatch round sends them).
    pub requeued: Vec<String>,
    /// Keys that were not, and why.
    pub refused: Vec<Refused>,
}

/// A key [`Mailer::retry_dead`] did not requeue.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    /// The key.
    pub key: String,
    /// Why (`no such email`, `not a dead letter: ...`).
    pub reason: String,
}

/// The mailer of one service instance.
pub struct Mailer {
    config: MailerConfig,
    ledger: Ledger,
    templates: Templates,
    signer: LinkSigner,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    metrics: Arc<Metrics>,
    owner: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("owner", &self.owner)
            .field("smtp", &self.smtp.is_some())
            .finish_non_exhaustive()
    }
}

fn now_ns() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = source.and_then(|x| x.source());
    }
    text.chars().take(500).collect()
}

/// One SMTP attempt's result.
enum Attempt {
    Accepted(u16),
    Transient(u16, String),
    Permanent(u16, String),
}

impl Mailer {
    /// A mailer writing to `client`'s database as instance `owner` (unique per process).
    pub fn new(config: MailerConfig, client: clickhouse::Client, owner: String) -> Result<Self> {
        config.validate()?;
        let templates = Templates::load(config.templates_dir.as_deref())?;
        let smtp = match &config.smtp {
            None => None,
            Some(s) => {
                let mut b = if s.tls {
                    AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                        .map_err(|e| Error::Config(format!("emails.smtp: {e}")))?
                } else {
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
                };
                b = b
                    .port(s.port)
                    .timeout(Some(Duration::from_millis(config.timeout_ms)));
                if let Some(user) = &s.username {
                    b = b.credentials(Credentials::new(
                        user.clone(),
                        s.password.expose_secret().to_string(),
                    ));
                }
                Some(b.build())
            }
        };
        Ok(Self {
            signer: LinkSigner::new(&config.unsubscribe_secret),
            ledger: Ledger::new(client),
            templates,
            smtp,
            metrics: Arc::new(Metrics::default()),
            owner,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MailerConfig {
        &self.config
    }

    /// The ClickHouse tables.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The link signer.
    pub fn signer(&self) -> &LinkSigner {
        &self.signer
    }

    /// Requeues dead letters of `tenant`: `keys`, or every one (of the last 35 days) when empty.
    /// Returns the keys requeued and the refused ones with the reason.
    pub async fn retry_dead(&self, tenant: &str, keys: &[String]) -> Result<Retried> {
        let keys = if keys.is_empty() {
            self.ledger.dead_keys(tenant, 1_000).await?
        } else {
            keys.to_vec()
        };
        let mut out = Retried::default();
        for key in keys {
            match self.ledger.requeue(tenant, &key, &self.owner).await? {
                Ok(()) => {
                    tracing::info!(key = %key, "dead letter requeued");
                    out.requeued.push(key);
                }
                Err(reason) => out.refused.push(Refused {
                    key,
                    reason: reason.into(),
                }),
            }
        }
        Ok(out)
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Queues `email` (sent at most once per key, however often queued).
    pub async fn enqueue(&self, email: &Email) -> Result<()> {
        self.ledger.enqueue(email).await
    }

    /// The links of an email of `kind` to (tenant, customer).
    pub fn links(&self, tenant: &str, customer: &str, kind: Kind) -> Links {
        let base = &self.config.public_url;
        Links {
            unsubscribe: kind
                .can_unsubscribe()
                .then(|| self.signer.unsubscribe_url(base, tenant, customer, kind)),
            preferences: self.signer.preferences_url(base, tenant, customer),
        }
    }

    /// `kind` rendered with sample data for `tenant` (its branding).
    pub fn preview(&self, tenant: &str, kind: Kind) -> Result<Rendered> {
        let customer = "cust_sample";
        self.templates.render(
            kind,
            customer,
            &self.config.branding(tenant),
            &self.links(tenant, customer, kind),
            &sample(kind),
        )
    }

    /// Runs dispatch rounds every `poll_ms` until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let every = Duration::from_millis(self.config.poll_ms);
        loop {
            if let Err(e) = self.dispatch_once(&cancel).await {
                tracing::warn!(error = %e, "email dispatch round failed; retrying");
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Live claims of a key: (claimed_ns of the owner's first claim, owner), for owners that
    /// wrote within the lease.
    fn live(&self, rows: &[ClaimRow], now: u64) -> Vec<(u64, String)> {
        let lease = self.config.claim_lease_secs.saturating_mul(1_000_000_000);
        let mut owners: Vec<(u64, String)> = Vec::new();
        for r in rows.iter().filter(|r| r.status == "claimed") {
            let last = rows
                .iter()
                .filter(|x| {
                    x.owner == r.owner && matches!(x.status.as_str(), "claimed" | "retrying")
                })
                .map(|x| x.claimed_ns)
                .max()
                .unwrap_or(r.claimed_ns);
            if last.saturating_add(lease) > now {
                owners.push((r.claimed_ns, r.owner.clone()));
            }
        }
        owners.sort();
        owners
    }

    /// One round: claims what is queued, waits for the claims to settle, sends what it won.
    pub async fn dispatch_once(&self, cancel: &CancellationToken) -> Result<Summary> {
        let mut summary = Summary::default();
        let pending = self.ledger.pending(200).await?;
        let mut mine = Vec::new();
        let mut claims = Vec::new();
        for email in pending {
            let rows = self.ledger.claims(&email.key()).await?;
            if rows.iter().any(|r| FINAL.contains(&r.status.as_str())) {
                continue;
            }
            let live = self.live(&rows, now_ns());
            if live.iter().any(|(_, o)| *o == self.owner) {
                mine.push(email);
            } else if live.is_empty() {
                let mut row = LedgerRow::of(&email, "claimed");
                row.owner = self.owner.clone();
                row.claimed_ns = now_ns();
                claims.push(row);
                mine.push(email);
            }
            // Else another instance works on it; it is looked at again next round.
        }
        if mine.is_empty() {
            return Ok(summary);
        }
        if !claims.is_empty() {
            self.ledger.write(&claims).await?;
            tokio::select! {
                () = cancel.cancelled() => return Ok(summary),
                () = tokio::time::sleep(Duration::from_millis(self.config.claim_settle_ms)) => {}
            }
        }
        for email in mine {
            if cancel.is_cancelled() {
                break;
            }
            let rows = self.ledger.claims(&email.key()).await?;
            let done = rows.iter().any(|r| FINAL.contains(&r.status.as_str()));
            let first = self.live(&rows, now_ns()).into_iter().next();
            if done || first.as_ref().is_none_or(|(_, o)| *o != self.owner) {
                self.metrics.count(email.kind.as_str(), "duplicate");
                summary.duplicate += 1;
                tracing::info!(key = %email.key(), "email claimed by another instance first; left to it");
                continue;
            }
            match self.deliver(&email, cancel).await? {
                Some("sent") => summary.sent += 1,
                Some("outbox") => summary.outbox += 1,
                Some("dead") => summary.dead += 1,
                Some("skipped") => summary.skipped += 1,
                _ => {}
            }
        }
        Ok(summary)
    }

    async fn finish(
        &self,
        email: &Email,
        mut row: LedgerRow,
        outcome: &str,
    ) -> Result<Option<&'static str>> {
        row.owner = self.owner.clone();
        row.claimed_ns = now_ns();
        row.at = OffsetDateTime::now_utc();
        self.ledger.write(&[row.clone()]).await?;
        self.metrics.count(email.kind.as_str(), outcome);
        tracing::info!(key = %email.key(), status = %row.status, outcome, recipient = %row.recipient, reason = %row.reason, "customer email done");
        Ok(match outcome {
            "sent" => Some("sent"),
            "outbox" => Some("outbox"),
            "dead" => Some("dead"),
            _ => Some("skipped"),
        })
    }

    /// Sends one email this instance won. None when interrupted by shutdown (the claim lapses).
    async fn deliver(
        &self,
        email: &Email,
        cancel: &CancellationToken,
    ) -> Result<Option<&'static str>> {
        let kind_name = email.kind.as_str();
        let prefs = self
            .ledger
            .preferences(&email.tenant, &email.customer)
            .await?;
        if !prefs.get(&email.kind).copied().unwrap_or(true) {
            let mut row = LedgerRow::of(email, "skipped");
            row.reason = "unsubscribed".into();
            return self.finish(email, row, "skipped").await;
        }
        let to = match self.ledger.contact(&email.tenant, &email.customer).await? {
            Some(a) => a,
            None if !email.recipient.is_empty() => email.recipient.clone(),
            None => {
                let mut row = LedgerRow::of(email, "skipped");
                row.reason =
                    "no address: set one with PUT /admin/customers/{customer}/email".into();
                return self.finish(email, row, "skipped").await;
            }
        };
        let branding = self.config.branding(&email.tenant);
        let links = self.links(&email.tenant, &email.customer, email.kind);
        let key = email.key();
        let domain = self
            .config
            .from
            .rsplit_once('@')
            .map_or("metering.local", |(_, d)| d.trim_end_matches('>'));
        let message_id = kind::message_id(&key, domain);
        let mut row = LedgerRow::of(email, "dead");
        row.recipient = to.clone();
        row.message_id = message_id.clone();
        let built = self
            .templates
            .render(email.kind, &email.customer, &branding, &links, &email.data)
            .and_then(|r| {
                row.subject = r.subject.clone();
                let env = Envelope {
                    from: &self.config.from,
                    to: &to,
                    branding: &branding,
                    message_id: &message_id,
                    key: &key,
                    kind: kind_name,
                    unsubscribe: links.unsubscribe.as_deref(),
                };
                build(&env, &r)
            });
        let message = match built {
            Ok(m) => m,
            Err(e) => {
                row.reason = format!("cannot build the email: {e}");
                return self.finish(email, row, "dead").await;
            }
        };
        let Some(transport) = &self.smtp else {
            let path = crate::outbox::write(
                &self.config.outbox_dir,
                kind_name,
                &message_id,
                &message.formatted(),
            )?;
            row.status = "sent".into();
            row.reason = format!("outbox: {}", path.display());
            return self.finish(email, row, "outbox").await;
        };
        let mut attempt = 1;
        loop {
            row.attempt = attempt;
            let result = match transport.send(message.clone()).await {
                Ok(r) => Attempt::Accepted(u16::from(r.code())),
                Err(e) => {
                    let code = e.status().map_or(0, u16::from);
                    if e.is_permanent() {
                        Attempt::Permanent(code, error_chain(&e))
                    } else {
                        Attempt::Transient(code, error_chain(&e))
                    }
                }
            };
            match result {
                Attempt::Accepted(code) => {
                    row.status = "sent".into();
                    row.code = code;
                    return self.finish(email, row, "sent").await;
                }
                Attempt::Permanent(code, reason) => {
                    row.code = code;
                    row.reason = reason;
                    return self.finish(email, row, "dead").await;
                }
                Attempt::Transient(code, reason) if attempt >= self.config.max_attempts => {
                    row.code = code;
                    row.reason = format!("gave up after {attempt} attempts: {reason}");
                    return self.finish(email, row, "dead").await;
                }
                Attempt::Transient(code, reason) => {
                    let mut retry = row.clone();
                    retry.status = "retrying".into();
                    retry.owner = self.owner.clone();
                    retry.claimed_ns = now_ns();
                    retry.code = code;
                    retry.reason = reason.clone();
                    retry.at = OffsetDateTime::now_utc();
                    self.ledger.write(&[retry]).await?;
                    self.metrics.count(kind_name, "retried");
                    tracing::info!(key = %key, attempt, code, reason = %reason, "customer email deferred; retrying");
                }
            }
            let wait = self.backoff(attempt);
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(wait) => {}
            }
            attempt += 1;
        }
    }

    /// Wait after attempt `n`: `initial * 2^(n-1)`, capped, jittered in its upper half.
    fn backoff(&self, n: u32) -> Duration {
        let full = self
            .config
            .initial_backoff_ms
            .saturating_mul(1u64 << n.saturating_sub(1).min(32))
            .min(self.config.max_backoff_ms);
        Duration::from_millis(rand::rng().random_range(full / 2..=full))
    }
}
