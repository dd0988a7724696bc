//! Usage alerts: the thresholds the customers of a batch crossed in their current period, each
//! fired once (published on the alerts topic, then written to the `alerts` table).

use std::collections::{HashMap, HashSet};

use schemas::quota::{Alert, PlanState, crossed};
use schemas::rows::AlertRow;
use schemas::sql::quote;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{Customer, CustomerRef, Publisher};
use crate::Result;
use crate::sync::lock;

/// Most alert ids remembered as fired; past it the set starts over (ClickHouse still knows).
pub const FIRED_CACHE_IDS: usize = 1_000_000;

#[derive(Debug, clickhouse::Row, Deserialize)]
struct IdRow {
    id: String,
}

impl Publisher {
    /// The thresholds `customers` crossed in their current period (from the usage cache, which
    /// [`Self::load_usage`] filled), in (tenant, customer, meter, threshold) order.
    fn crossed_thresholds(
        &self,
        customers: &[CustomerRef<'_>],
        loaded: &HashMap<Customer, PlanState>,
        now: OffsetDateTime,
    ) -> Vec<Alert> {
        let thresholds = &self.catalog.alert_thresholds;
        let usage = lock(&self.usage);
        let plans = lock(&self.plans);
        let mut candidates = Vec::new();
        let mut used: Vec<(usize, f64)> = Vec::new();
        for k in customers {
            let (Some(days), Some(plan)) = (
                usage.get(k),
                plans.get(k).or_else(|| loaded.get(&k.owned())),
            ) else {
                continue;
            };
            let period = plan.period(now);
            used.clear();
            for d in days.iter().filter(|d| period.contains(d.day)) {
                let max = self.is_max(d.meter);
                match used.iter_mut().find(|(m, _)| *m == d.meter) {
                    Some((_, u)) => {
                        *u = if max {
                            u.max(d.quantity)
                        } else {
                            *u + d.quantity
                        }
                    }
                    None => used.push((d.meter, d.quantity)),
                }
            }
            for &(meter, used) in &used {
                let meter = self.catalog.meters[meter].key.as_str();
                let Some(limit) = plan.limit(&self.catalog, meter, now) else {
                    continue; // unlimited
                };
                let hits = crossed(thresholds, used, limit);
                if hits.is_empty() {
                    continue;
                }
                let plan_key = plan
                    .effective_plan(&self.catalog)
                    .map_or_else(|| plan.plan.clone(), |p| p.key.clone());
                for t in hits {
                    candidates.push(Alert {
                        id: Alert::make_id(k.0, k.1, meter, period.start, t),
                        tenant: k.0.to_owned(),
                        customer: k.1.to_owned(),
                        meter: meter.to_owned(),
                        threshold: t,
                        used,
                        limit,
                        plan: plan_key.clone(),
                        period_start: period.start,
                        period_end: period.end,
                        fired_at: now,
                    });
                }
            }
        }
        candidates.sort_by(|a, b| {
            (&a.tenant, &a.customer, &a.meter, a.threshold).cmp(&(
                &b.tenant,
                &b.customer,
                &b.meter,
                b.threshold,
            ))
        });
        candidates
    }

    /// Fires the thresholds crossed in the current period that have not fired yet.
    pub(super) async fn fire_alerts(
        &self,
        customers: &[CustomerRef<'_>],
        now: OffsetDateTime,
    ) -> Result<usize> {
        if self.catalog.alert_thresholds.is_empty() {
            return Ok(0);
        }
        let loaded = self.plans_for(customers).await?;
        let mut candidates = self.crossed_thresholds(customers, &loaded, now);
        // Alerts known to have fired are not looked up again.
        {
            let fired = lock(&self.fired);
            candidates.retain(|a| !fired.contains(&a.id));
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut sql = String::from("SELECT id FROM alerts WHERE id IN (");
        for (i, a) in candidates.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            quote(&mut sql, &a.id);
        }
        sql.push(')');
        let fired: HashSet<String> = self
            .client
            .query_raw(&sql)
            .fetch_all::<IdRow>()
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let fresh: Vec<Alert> = candidates
            .into_iter()
            .filter(|a| !fired.contains(&a.id))
            .collect();
        self.remember_fired(fired);
        if fresh.is_empty() {
            return Ok(0);
        }
        // Topic first, then the table: a crash in between re-publishes (the notifier dedups by id)
        // rather than losing the alert.
        let records: Vec<_> = fresh
            .iter()
            .map(|a| {
                let payload = serde_json::to_vec(a).unwrap_or_default();
                (self.topics.alerts.as_str(), None, a.id.clone(), payload)
            })
            .collect();
        self.send_all(&records).await?;
        let mut insert = self.client.insert::<AlertRow>("alerts").await?;
        for a in &fresh {
            insert
                .write(&AlertRow {
                    id: a.id.clone(),
                    tenant: a.tenant.clone(),
                    customer: a.customer.clone(),
                    meter: a.meter.clone(),
                    threshold: a.threshold,
                    used: a.used,
                    limit_value: a.limit,
                    plan: a.plan.clone(),
                    period_start: a.period_start,
                    period_end: a.period_end,
                    fired_at: a.fired_at,
                })
                .await?;
        }
        insert.end().await?;
        for a in &fresh {
            tracing::info!(alert = %a.id, used = a.used, limit = a.limit, "usage threshold reached");
        }
        self.remember_fired(fresh.iter().map(|a| a.id.clone()));
        Ok(fresh.len())
    }

    /// Remembers alert ids that are in the alerts table.
    fn remember_fired(&self, ids: impl IntoIterator<Item = String>) {
        let mut fired = lock(&self.fired);
        if fired.len() > FIRED_CACHE_IDS {
            fired.clear();
        }
        fired.extend(ids);
    }
}
