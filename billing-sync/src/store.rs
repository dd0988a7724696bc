//! billing-sync's ClickHouse state (migrations 0007 and 0010): customer mapping, subscription states,
//! handled webhooks, the usage report ledger and its revisions, usage differences; and the
//! `usage_hourly` rollup reads, and the accepted events per hour (`events_raw`, for the usage proof).

use std::collections::HashSet;

use schemas::rows::{
    BillingCustomerRow, BillingSubscriptionRow, BillingUsageDifferenceRow, BillingUsageReportRow,
    BillingUsageRevisionRow, BillingWebhookEventRow, Table,
};
use serde::Deserialize;

use crate::Result;

/// Reads and writes the billing tables.
#[derive(Clone)]
pub struct Store {
    ch: clickhouse::Client,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// One hour of one customer's meter in `usage_hourly` (re-aggregated).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Deserialize)]
pub struct HourTotal {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hour start (unix seconds).
    pub hour: u32,
    /// Summed quantity.
    pub quantity: f64,
}

/// The accepted events of one customer-hour: rows of `events_raw` (one per event the ingest
/// accepted, written once by the aggregator: duplicates dropped, rejects in `dead_letters`).
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Deserialize)]
pub struct AcceptedHour {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hour start (unix seconds) of the events' time.
    pub hour: u32,
    /// Events.
    pub events: u64,
    /// Their summed quantity.
    pub quantity: f64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ReportedKey {
    tenant: String,
    customer: String,
    meter: String,
    hour: u32,
}

/// A reported hour: (tenant, customer, meter, hour unix seconds).
pub type HourKey = (String, String, String, u32);

/// The sums of one revision state of one customer and meter over the whole ledger.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Deserialize)]
pub struct StateTotal {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Revision state (see `usage::ledger::State`).
    pub state: u8,
    /// Summed covered quantity.
    pub quantity: f64,
    /// Summed whole units sent.
    pub value: i64,
}

async fn insert<T>(ch: &clickhouse::Client, rows: &[T]) -> Result<()>
where
    T: Table + clickhouse::RowOwned + clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = ch.insert::<T>(T::TABLE).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

impl Store {
    /// A store on `ch`.
    pub fn new(ch: clickhouse::Client) -> Self {
        Self { ch }
    }

    /// The ClickHouse client (for the shared readers in `schemas::quota_store`).
    pub fn client(&self) -> &clickhouse::Client {
        &self.ch
    }

    /// Pings ClickHouse (readiness).
    pub async fn ping(&self) -> bool {
        self.ch.query("SELECT 1").fetch_one::<u8>().await.is_ok()
    }

    // --- customers ----------------------------------------------------------------------------

    /// The Stripe customer of (tenant, customer), if any (the oldest stored wins).
    pub async fn stripe_customer(&self, tenant: &str, customer: &str) -> Result<Option<String>> {
        let id: Option<String> = self
            .ch
            .query(
                "SELECT argMin(stripe_customer_id, created_at) FROM billing_customers \
                 WHERE tenant = ? AND customer = ? GROUP BY tenant, customer",
            )
            .bind(tenant)
            .bind(customer)
            .fetch_optional()
            .await?;
        Ok(id)
    }

    /// Whether the tenant knows `customer`: it has a Stripe customer, a subscription, usage, a
    /// plan change, limit or grant, or a customer-scoped API key.
    pub async fn knows_customer(&self, tenant: &str, customer: &str) -> Result<bool> {
        let n: u64 = self
            .ch
            .query(
                "SELECT (SELECT count() FROM billing_customers WHERE tenant = ? AND customer = ?) \
                 + (SELECT count() FROM billing_subscriptions WHERE tenant = ? AND customer = ?) \
                 + (SELECT count() FROM usage_monthly WHERE tenant = ? AND customer = ?) \
                 + (SELECT count() FROM subscription_events WHERE tenant = ? AND customer = ?) \
                 + (SELECT count() FROM api_keys WHERE tenant = ? AND customer = ?)",
            )
            .bind(tenant)
            .bind(customer)
            .bind(tenant)
            .bind(customer)
            .bind(tenant)
            .bind(customer)
            .bind(tenant)
            .bind(customer)
            .bind(tenant)
            .bind(customer)
            .fetch_one()
            .await?;
        Ok(n > 0)
    }

    /// The (tenant, customer) of a Stripe customer.
    pub async fn customer_of(&self, stripe_customer_id: &str) -> Result<Option<(String, String)>> {
        let row: Option<(String, String)> = self
            .ch
            .query(
                "SELECT tenant, customer FROM billing_customers WHERE stripe_customer_id = ? \
                 ORDER BY created_at LIMIT 1",
            )
            .bind(stripe_customer_id)
            .fetch_optional()
            .await?;
        Ok(row)
    }

    /// Every mapping (the oldest per customer).
    pub async fn customers(&self) -> Result<Vec<(String, String, String)>> {
        let rows: Vec<(String, String, String)> = self
            .ch
            .query(
                "SELECT tenant, customer, argMin(stripe_customer_id, created_at) \
                 FROM billing_customers GROUP BY tenant, customer",
            )
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// Stores a mapping.
    pub async fn save_customer(&self, row: &BillingCustomerRow) -> Result<()> {
        insert(&self.ch, std::slice::from_ref(row)).await
    }

    // --- subscriptions ------------------------------------------------------------------------

    /// The latest state of every subscription of (tenant, customer).
    pub async fn subscriptions_of(
        &self,
        tenant: &str,
        customer: &str,
    ) -> Result<Vec<BillingSubscriptionRow>> {
        let rows = self
            .ch
            .query(
                "SELECT ?fields FROM billing_subscriptions FINAL WHERE tenant = ? AND customer = ?",
            )
            .bind(tenant)
            .bind(customer)
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// The latest state of one subscription.
    pub async fn subscription(
        &self,
        subscription_id: &str,
    ) -> Result<Option<BillingSubscriptionRow>> {
        let row = self
            .ch
            .query(
                "SELECT ?fields FROM billing_subscriptions FINAL WHERE subscription_id = ? LIMIT 1",
            )
            .bind(subscription_id)
            .fetch_optional()
            .await?;
        Ok(row)
    }

    /// The latest state of every subscription.
    pub async fn all_subscriptions(&self) -> Result<Vec<BillingSubscriptionRow>> {
        let rows = self
            .ch
            .query("SELECT ?fields FROM billing_subscriptions FINAL")
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// Stores a subscription state (its `version` must exceed the stored one; an insert with the
    /// same key and version as a stored row replaces it, so two instances writing one webhook's
    /// identical row leave one state).
    pub async fn save_subscription(&self, row: &BillingSubscriptionRow) -> Result<()> {
        insert(&self.ch, std::slice::from_ref(row)).await
    }

    // --- webhooks -----------------------------------------------------------------------------

    /// Whether the event was handled already: a shortcut for redeliveries only (the effects of an
    /// event are idempotent, see `crate::webhook`; a race past this check changes nothing).
    pub async fn webhook_seen(&self, event_id: &str) -> Result<bool> {
        let n: u64 = self
            .ch
            .query("SELECT count() FROM billing_webhook_events WHERE event_id = ?")
            .bind(event_id)
            .fetch_one()
            .await?;
        Ok(n > 0)
    }

    /// Records a handled event (a second record of the same event id replaces the first).
    pub async fn mark_webhook(&self, row: &BillingWebhookEventRow) -> Result<()> {
        insert(&self.ch, std::slice::from_ref(row)).await
    }

    // --- usage --------------------------------------------------------------------------------

    /// Non-zero hourly totals per (tenant, customer, meter, hour) for `meters` with
    /// `from <= hour < to` (unix seconds), re-aggregated from the SummingMergeTree.
    pub async fn hour_totals(
        &self,
        meters: &[String],
        from: i64,
        to: i64,
    ) -> Result<Vec<HourTotal>> {
        if meters.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .ch
            .query(
                "SELECT tenant, customer, meter, toUInt32(hour) AS h, sum(quantity) AS q \
                 FROM usage_hourly WHERE has(?, meter) AND hour >= toDateTime(?) AND hour < toDateTime(?) \
                 GROUP BY tenant, customer, meter, h HAVING q != 0 \
                 ORDER BY tenant, customer, meter, h",
            )
            .bind(meters)
            .bind(from)
            .bind(to)
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// Accepted events per (tenant, customer, meter, hour) for `meters` with `from <= time < to`
    /// (unix seconds), of `tenant` and `customer` only when they are not empty.
    pub async fn accepted_hours(
        &self,
        meters: &[String],
        tenant: &str,
        customer: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<AcceptedHour>> {
        if meters.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .ch
            .query(
                "SELECT tenant, customer, meter, toUInt32(toStartOfHour(time)) AS h, count() AS e, \
                 sum(quantity) AS q FROM events_raw WHERE has(?, meter) AND (? = '' OR tenant = ?) \
                 AND (? = '' OR customer = ?) AND time >= toDateTime(?) AND time < toDateTime(?) \
                 GROUP BY tenant, customer, meter, h ORDER BY tenant, customer, meter, h",
            )
            .bind(meters)
            .bind(tenant)
            .bind(tenant)
            .bind(customer)
            .bind(customer)
            .bind(from)
            .bind(to)
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// Hours already reported with `from <= hour < to`.
    pub async fn reported(&self, from: i64, to: i64) -> Result<HashSet<HourKey>> {
        let rows: Vec<ReportedKey> = self
            .ch
            .query(
                "SELECT DISTINCT tenant, customer, meter, toUInt32(hour) FROM billing_usage_reports \
                 WHERE hour >= toDateTime(?) AND hour < toDateTime(?)",
            )
            .bind(from)
            .bind(to)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.tenant, r.customer, r.meter, r.hour))
            .collect())
    }

    /// Ledger rows with `from <= hour < to` (one per hour).
    pub async fn report_rows(&self, from: i64, to: i64) -> Result<Vec<BillingUsageReportRow>> {
        let rows = self
            .ch
            .query(
                "SELECT ?fields FROM billing_usage_reports FINAL \
                 WHERE hour >= toDateTime(?) AND hour < toDateTime(?)",
            )
            .bind(from)
            .bind(to)
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// Records hours Stripe accepted (one insert).
    pub async fn save_reports(&self, rows: &[BillingUsageReportRow]) -> Result<()> {
        insert(&self.ch, rows).await
    }

    /// The current state of every revision with `from <= hour < to` (newest version wins).
    pub async fn revisions(&self, from: i64, to: i64) -> Result<Vec<BillingUsageRevisionRow>> {
        let rows = self
            .ch
            .query(
                "SELECT ?fields FROM billing_usage_revisions FINAL \
                 WHERE hour >= toDateTime(?) AND hour < toDateTime(?) \
                 ORDER BY tenant, customer, meter, hour, revision",
            )
            .bind(from)
            .bind(to)
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// The current state of the revisions with these meter event identifiers.
    pub async fn revisions_by_identifier(
        &self,
        identifiers: &[String],
    ) -> Result<Vec<BillingUsageRevisionRow>> {
        if identifiers.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .ch
            .query(
                "SELECT ?fields FROM billing_usage_revisions FINAL WHERE has(?, identifier) \
                 ORDER BY tenant, customer, meter, hour, revision",
            )
            .bind(identifiers)
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// Quantity and value per (tenant, customer, meter, state) over every hour of the ledger (the
    /// carried fraction of a customer and meter is their sent quantity minus their sent value).
    pub async fn state_totals(&self) -> Result<Vec<StateTotal>> {
        // GROUP BY after FINAL: the newest state of each revision is summed, never an older one.
        let rows = self
            .ch
            .query(
                "SELECT tenant, customer, meter, state, sum(quantity), sum(value) \
                 FROM billing_usage_revisions FINAL GROUP BY tenant, customer, meter, state",
            )
            .fetch_all()
            .await?;
        Ok(rows)
    }

    /// Records revision states (one insert).
    pub async fn save_revisions(&self, rows: &[BillingUsageRevisionRow]) -> Result<()> {
        insert(&self.ch, rows).await
    }

    /// Records the differences of one usage reconciliation.
    pub async fn save_differences(&self, rows: &[BillingUsageDifferenceRow]) -> Result<()> {
        insert(&self.ch, rows).await
    }
}
