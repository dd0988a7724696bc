//! Reads quota state back from ClickHouse: daily usage per meter and the plan history folded into
//! [`PlanState`]s. The aggregator publishes what it reads; the ingest builds its view's baseline.

use std::collections::HashMap;

use serde::Deserialize;
use time::Date;

use crate::Catalog;
use crate::quota::{PlanState, SubscriptionEvent};
use crate::sql::pairs;

/// One customer's use of one meter on one UTC day.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct DayRow {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter.
    pub meter: String,
    /// The day.
    #[serde(with = "clickhouse::serde::time::date")]
    pub day: Date,
    /// Events.
    pub events: u64,
    /// Quantity (sum).
    pub quantity: f64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct SubRow {
    body: String,
    kafka_partition: u32,
    kafka_offset: u64,
}

/// `WHERE` condition on `(tenant, customer)`: `None` = every customer.
fn customers_filter(customers: Option<&[(String, String)]>) -> String {
    match customers {
        None => "1".into(),
        Some(list) => format!(
            "(tenant, customer) IN {}",
            pairs(list.iter().map(|(t, c)| (t.as_str(), c.as_str())))
        ),
    }
}

/// Daily usage (sum of quantity) over the last `days` days.
pub async fn daily_usage(
    client: &clickhouse::Client,
    customers: Option<&[(String, String)]>,
    days: i64,
) -> crate::Result<Vec<DayRow>> {
    let sql = format!(
        "SELECT tenant, customer, meter, day, sum(events) AS events, sum(quantity) AS quantity \
         FROM usage_daily WHERE {} AND day >= today() - {days} \
         GROUP BY tenant, customer, meter, day",
        customers_filter(customers)
    );
    Ok(client.query(&sql).fetch_all().await?)
}

/// Every listed customer's plan, folded from its subscription events in log order (customers
/// without events get the default plan when listed).
pub async fn plans(
    client: &clickhouse::Client,
    catalog: &Catalog,
    customers: Option<&[(String, String)]>,
) -> crate::Result<HashMap<(String, String), PlanState>> {
    let sql = format!(
        "SELECT body, kafka_partition, kafka_offset FROM subscription_events WHERE {} \
         ORDER BY tenant, customer, kafka_partition, kafka_offset",
        customers_filter(customers)
    );
    let rows: Vec<SubRow> = client.query(&sql).fetch_all().await?;
    let mut out: HashMap<(String, String), PlanState> = customers
        .unwrap_or_default()
        .iter()
        .map(|(t, c)| ((t.clone(), c.clone()), PlanState::initial(t, c, catalog)))
        .collect();
    for row in rows {
        // Decoded before it was stored; an unreadable row cannot happen.
        let Ok(event) = serde_json::from_str::<SubscriptionEvent>(&row.body) else {
            continue;
        };
        let state = out
            .entry((event.tenant.clone(), event.customer.clone()))
            .or_insert_with(|| PlanState::initial(&event.tenant, &event.customer, catalog));
        state.apply(&event);
        state.partition = row.kafka_partition as i32;
        state.as_of_offset = state.as_of_offset.max(row.kafka_offset as i64);
    }
    Ok(out)
}
