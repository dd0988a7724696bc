//! The ClickHouse side (migration `0013_customer_emails.sql`): the once-only ledger
//! (`email_ledger`), the customers' addresses (`email_contacts`) and choices
//! (`email_preferences`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Email, Kind, Result};

/// One row of `email_ledger` (columns in table order).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct LedgerRow {
    /// `tenant:customer:kind:scope`.
    pub key: String,
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Kind's name.
    pub kind: String,
    /// Scope within the kind.
    pub scope: String,
    /// `queued`, `claimed`, `retrying`, `sent`, `dead`, `skipped`, `requeued` (an admin retry
    /// of a dead letter: the rows before it no longer count).
    pub status: String,
    /// The instance that wrote it (claims, attempts, final rows).
    pub owner: String,
    /// The claim's time (ns since the epoch, the writer's clock); also on `retrying`, final and
    /// `requeued` rows (a requeue counts only the final rows written after it).
    pub claimed_ns: u64,
    /// The address (queued: Stripe's if known; final: where it went).
    pub recipient: String,
    /// The template's data as JSON (queued rows).
    pub data: String,
    /// Subject (final rows).
    pub subject: String,
    /// `Message-ID` (final rows).
    pub message_id: String,
    /// Attempt number (retrying and final rows).
    pub attempt: u32,
    /// SMTP reply code (0: none).
    pub code: u16,
    /// Why (dead, skipped, retrying), or the outbox file (sent to the outbox).
    pub reason: String,
    /// When the row was written.
    #[serde(with = "clickhouse::serde::time::datetime")]
    pub at: OffsetDateTime,
}

/// The table and its column types (the e2e test compares them with `system.columns`).
pub const LEDGER_TABLE: &str = "email_ledger";
/// `(column, type)` of [`LedgerRow`], in order.
pub const LEDGER_COLUMNS: &[(&str, &str)] = &[
    ("key", "String"),
    ("tenant", "String"),
    ("customer", "String"),
    ("kind", "String"),
    ("scope", "String"),
    ("status", "String"),
    ("owner", "String"),
    ("claimed_ns", "UInt64"),
    ("recipient", "String"),
    ("data", "String"),
    ("subject", "String"),
    ("message_id", "String"),
    ("attempt", "UInt32"),
    ("code", "UInt16"),
    ("reason", "String"),
    ("at", "DateTime('UTC')"),
];

/// Final statuses: a key with one of them is done (unless a `requeued` row follows it).
pub const FINAL: [&str; 3] = ["sent", "dead", "skipped"];

/// The rows of one key that count now: those after its last `requeued` row (all of them when it
/// was never requeued). A requeue is written only after a `dead` row, and the final rows carry
/// their writer's time, so "after" compares `claimed_ns`.
pub fn since_requeue(rows: Vec<ClaimRow>) -> Vec<ClaimRow> {
    let last = rows
        .iter()
        .filter(|r| r.status == "requeued")
        .map(|r| r.claimed_ns)
        .max();
    match last {
        None => rows,
        Some(t) => rows.into_iter().filter(|r| r.claimed_ns > t).collect(),
    }
}

/// Why a key cannot be requeued, or none.
pub fn requeue_refusal(rows: &[ClaimRow]) -> Option<&'static str> {
    let current = since_requeue(rows.to_vec());
    let last_final = current
        .iter()
        .filter(|r| FINAL.contains(&r.status.as_str()))
        .max_by_key(|r| r.claimed_ns);
    match last_final {
        None if rows.is_empty() => Some("no such email"),
        None => Some("not a dead letter: it is still queued or being sent"),
        Some(r) if r.status != "dead" => Some("not a dead letter: it was sent or skipped"),
        Some(_) => None,
    }
}

impl LedgerRow {
    /// A row about `email` with `status`, everything else empty.
    pub fn of(email: &Email, status: &str) -> Self {
        Self {
            key: email.key(),
            tenant: email.tenant.clone(),
            customer: email.customer.clone(),
            kind: email.kind.as_str().into(),
            scope: email.scope.clone(),
            status: status.into(),
            owner: String::new(),
            claimed_ns: 0,
            recipient: email.recipient.clone(),
            data: String::new(),
            subject: String::new(),
            message_id: String::new(),
            attempt: 0,
            code: 0,
            reason: String::new(),
            at: OffsetDateTime::now_utc(),
        }
    }
}

/// A queued email not yet done.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
struct PendingRow {
    key: String,
    tenant: String,
    customer: String,
    kind: String,
    scope: String,
    recipient: String,
    data: String,
}

/// The claim-relevant rows of one key.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct ClaimRow {
    /// Status.
    pub status: String,
    /// Instance.
    pub owner: String,
    /// Claim or attempt time (ns).
    pub claimed_ns: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct SourceEmail {
    source: String,
    email: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct KindChoice {
    kind: String,
    subscribed: u8,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct ContactRow {
    tenant: String,
    customer: String,
    source: String,
    email: String,
    version: u64,
    #[serde(with = "clickhouse::serde::time::datetime")]
    updated_at: OffsetDateTime,
}

#[derive(Debug, clickhouse::Row, Serialize)]
struct PreferenceRow {
    tenant: String,
    customer: String,
    kind: String,
    subscribed: u8,
    version: u64,
    #[serde(with = "clickhouse::serde::time::datetime")]
    updated_at: OffsetDateTime,
}

fn now_ns() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0)
}

fn version_now() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as u64
}

/// The three tables in one ClickHouse database.
#[derive(Clone)]
pub struct Ledger {
    client: clickhouse::Client,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger(..)")
    }
}

impl Ledger {
    /// The ledger in `client`'s database.
    pub fn new(client: clickhouse::Client) -> Self {
        Self { client }
    }

    /// Writes rows.
    pub async fn write(&self, rows: &[LedgerRow]) -> Result<()> {
        let mut insert = self.client.insert::<LedgerRow>(LEDGER_TABLE).await?;
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Queues `email` (idempotent: one key is sent at most once however often it is queued).
    pub async fn enqueue(&self, email: &Email) -> Result<()> {
        let mut row = LedgerRow::of(email, "queued");
        row.data = serde_json::to_string(&email.data).unwrap_or_default();
        self.write(&[row]).await
    }

    /// Queued emails without a final row (of the last 35 days), oldest first, at most `limit`.
    pub async fn pending(&self, limit: u64) -> Result<Vec<Email>> {
        let rows: Vec<PendingRow> = self
            .client
            .query(
                "SELECT key, any(tenant), any(customer), any(kind), any(scope), \
                 anyIf(recipient, status = 'queued'), anyIf(data, status = 'queued') \
                 FROM email_ledger WHERE at >= now() - 3024000 GROUP BY key \
                 HAVING maxIf(claimed_ns, status IN ('sent', 'dead', 'skipped')) \
                 <= maxIf(claimed_ns, status = 'requeued') \
                 AND countIf(status = 'queued') > 0 ORDER BY min(at) LIMIT ?",
            )
            .bind(limit)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let kind = Kind::parse(&r.kind).ok()?;
                Some(Email {
                    tenant: r.tenant,
                    customer: r.customer,
                    kind,
                    scope: r.scope,
                    recipient: r.recipient,
                    data: serde_json::from_str(&r.data).unwrap_or_default(),
                })
                .filter(|e| e.key() == r.key)
            })
            .collect())
    }

    /// The claim, attempt, final and requeue rows of `key`, all of them (see [`since_requeue`]).
    pub async fn all_claims(&self, key: &str) -> Result<Vec<ClaimRow>> {
        Ok(self
            .client
            .query(
                "SELECT status, owner, claimed_ns FROM email_ledger \
                 WHERE key = ? AND status != 'queued'",
            )
            .bind(key)
            .fetch_all()
            .await?)
    }

    /// The claim, attempt and final rows of `key` that count (after its last requeue).
    pub async fn claims(&self, key: &str) -> Result<Vec<ClaimRow>> {
        Ok(since_requeue(self.all_claims(key).await?))
    }

    /// The keys of (tenant)'s dead letters (of the last 35 days, not requeued since), newest first.
    pub async fn dead_keys(&self, tenant: &str, limit: u64) -> Result<Vec<String>> {
        #[derive(Debug, clickhouse::Row, Deserialize)]
        struct KeyRow {
            key: String,
        }
        let rows: Vec<KeyRow> = self
            .client
            .query(
                "SELECT key FROM email_ledger WHERE tenant = ? AND at >= now() - 3024000 \
                 GROUP BY key HAVING argMaxIf(status, claimed_ns, \
                 status IN ('sent', 'dead', 'skipped', 'requeued')) = 'dead' \
                 ORDER BY max(claimed_ns) DESC LIMIT ?",
            )
            .bind(tenant)
            .bind(limit)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|r| r.key).collect())
    }

    /// Requeues the dead letter `key` of `tenant` (its queued data is sent again, with the same
    /// `Message-ID`); `Err` with the reason when it is not a dead letter of the tenant.
    pub async fn requeue(
        &self,
        tenant: &str,
        key: &str,
        owner: &str,
    ) -> Result<std::result::Result<(), &'static str>> {
        if !key.starts_with(&format!("{tenant}:")) {
            return Ok(Err("no such email"));
        }
        let rows = self.all_claims(key).await?;
        if let Some(why) = requeue_refusal(&rows) {
            return Ok(Err(why));
        }
        let mut parts = key.splitn(4, ':');
        let (t, c, k, scope) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let Ok(kind) = Kind::parse(k) else {
            return Ok(Err("no such email"));
        };
        let email = Email {
            tenant: t.into(),
            customer: c.into(),
            kind,
            scope: scope.into(),
            recipient: String::new(),
            data: serde_json::Value::Null,
        };
        let mut row = LedgerRow::of(&email, "requeued");
        row.owner = owner.into();
        // After every row of the key as far as this clock can tell (the dead row's writer may
        // run ahead: never before it).
        let newest = rows.iter().map(|r| r.claimed_ns).max().unwrap_or(0);
        row.claimed_ns = now_ns().max(newest + 1);
        row.reason = "retry of a dead letter (admin)".into();
        self.write(&[row]).await?;
        Ok(Ok(()))
    }

    /// Every row of (tenant), newest first, at most `limit` (the admin listing).
    pub async fn recent(&self, tenant: &str, limit: u64) -> Result<Vec<LedgerRow>> {
        Ok(self
            .client
            .query(
                "SELECT ?fields FROM email_ledger WHERE tenant = ? ORDER BY at DESC, key LIMIT ?",
            )
            .bind(tenant)
            .bind(limit)
            .fetch_all()
            .await?)
    }

    /// Sets the customer's address from `source` (`admin` or `stripe`).
    pub async fn set_contact(
        &self,
        tenant: &str,
        customer: &str,
        source: &str,
        email: &str,
    ) -> Result<()> {
        let mut insert = self.client.insert::<ContactRow>("email_contacts").await?;
        insert
            .write(&ContactRow {
                tenant: tenant.into(),
                customer: customer.into(),
                source: source.into(),
                email: email.into(),
                version: version_now(),
                updated_at: OffsetDateTime::now_utc(),
            })
            .await?;
        insert.end().await?;
        Ok(())
    }

    /// The customer's address: the admin's, else Stripe's, else none.
    pub async fn contact(&self, tenant: &str, customer: &str) -> Result<Option<String>> {
        let rows: Vec<SourceEmail> = self
            .client
            .query(
                "SELECT source, argMax(email, version) FROM email_contacts \
                 WHERE tenant = ? AND customer = ? GROUP BY source",
            )
            .bind(tenant)
            .bind(customer)
            .fetch_all()
            .await?;
        let pick = |s: &str| {
            rows.iter()
                .find(|r| r.source == s && !r.email.is_empty())
                .map(|r| r.email.clone())
        };
        Ok(pick("admin").or_else(|| pick("stripe")))
    }

    /// The customer's choices (kinds missing: subscribed).
    pub async fn preferences(&self, tenant: &str, customer: &str) -> Result<BTreeMap<Kind, bool>> {
        let rows: Vec<KindChoice> = self
            .client
            .query(
                "SELECT kind, argMax(subscribed, version) FROM email_preferences \
                 WHERE tenant = ? AND customer = ? GROUP BY kind",
            )
            .bind(tenant)
            .bind(customer)
            .fetch_all()
            .await?;
        let mut out: BTreeMap<Kind, bool> = Kind::ALL.into_iter().map(|k| (k, true)).collect();
        for r in rows {
            if let Ok(k) = Kind::parse(&r.kind) {
                out.insert(k, r.subscribed == 1 || !k.can_unsubscribe());
            }
        }
        Ok(out)
    }

    /// Records the customer's choice for `kind` (receipts stay on whatever is asked).
    pub async fn set_preference(
        &self,
        tenant: &str,
        customer: &str,
        kind: Kind,
        subscribed: bool,
    ) -> Result<()> {
        let mut insert = self
            .client
            .insert::<PreferenceRow>("email_preferences")
            .await?;
        insert
            .write(&PreferenceRow {
                tenant: tenant.into(),
                customer: customer.into(),
                kind: kind.as_str().into(),
                subscribed: u8::from(subscribed || !kind.can_unsubscribe()),
                version: version_now(),
                updated_at: OffsetDateTime::now_utc(),
            })
            .await?;
        insert.end().await?;
        Ok(())
    }
}
