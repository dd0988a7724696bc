//! The proof per customer-hour of a month: accepted events, rollup, ledger and Stripe side by side with the reconciliation's verdicts, and totals per customer.
//!
//! Served by `billing-sync reconcile --month YYYY-MM` (a table, or `--json`) and
//! `GET /admin/usage/proof?month=YYYY-MM` (the same JSON, the key's tenant only). Read only: nothing
//! is sent or written (the report run and the reconciliation heal). Per (tenant, customer, meter,
//! hour) with anything in one of the columns:
//! - `events`, `accepted`: the rows of `events_raw` with their time in the hour, and their
//!   quantity. *Accepted* means acknowledged by the ingest (202) and written by the aggregator,
//!   exactly once (duplicates dropped, rejects in `dead_letters`); events still on the broker are
//!   not counted yet.
//! - `rollup`: the `usage_hourly` quantity billing bills (the report run's read).
//! - `ledger`: the whole units billing-sync recorded as accepted by Stripe, over every revision
//!   (first report and corrections; a pre-0010 report counts as revision 0), with `pending` and
//!   `unbillable` apart and every revision listed.
//! - `stripe`: Stripe's hourly meter event summary (the reconciliation's read).
//!
//! Verdicts: the reconciliation's (`ok` for an hour that agrees, `unbillable`, `pending`,
//! `settling`, `under_report`, `over_report`, `rejected`, `stripe_mismatch`) with a reason, and `no_customer` (no Stripe
//! customer), `no_meter` (no active Stripe meter) and `rollup_mismatch` (the rollup differs from
//! the accepted events). An hour not closed yet (within `usage.settle_secs` of its end) is
//! `pending`; an hour older than the window is `unbillable`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub mod endpoint;
mod month;
mod table;

pub use month::Month;
pub use table::table;

use super::corrections::{outside_window, rollups};
use super::ledger::{self, HourLedger, State, same};
use super::reconcile::{agrees, meter_ids, settling, settling_reason, summaries, unresolved};
use super::{Cell, customers, hour_start, meters, value_text, window};
use crate::Result;
use crate::billing::Billing;

/// One revision of a customer-hour, as the ledger holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ProofRevision {
    /// 0: the hour's first report; ≥ 1: a correction for late usage.
    pub revision: u32,
    /// The meter event identifier (empty for an unbillable revision, never sent).
    pub identifier: String,
    /// `pending`, `sent`, `cancelling`, `cancelled` or `unbillable`.
    pub state: String,
    /// Rollup quantity it covers.
    pub quantity: f64,
    /// Whole units it sends.
    pub value: i64,
    /// Why it is unbillable, cancelled or carried (empty otherwise).
    pub reason: String,
}

/// One customer-hour of the proof.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ProofHour {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hour start (unix s).
    pub hour: i64,
    /// Hour start, `YYYY-MM-DDTHH:00:00Z`.
    pub hour_utc: String,
    /// Accepted events (rows of `events_raw`).
    pub events: u64,
    /// Their quantity.
    pub accepted: f64,
    /// Quantity in the rollup (`usage_hourly`).
    pub rollup: f64,
    /// Whole units Stripe accepted, per the ledger (every revision).
    pub ledger: f64,
    /// Whole units written, not yet accepted by Stripe.
    pub pending: f64,
    /// Quantity recorded as unbillable.
    pub unbillable: f64,
    /// Quantity the ledger accounts for (billed, pending, carried and unbillable).
    pub covered: f64,
    /// Stripe's meter event summary of the hour.
    pub stripe: f64,
    /// The ledger's revisions of the hour.
    pub revisions: Vec<ProofRevision>,
    /// `ok`, `unbillable`, `pending`, `settling`, `under_report`, `over_report`, `rejected`,
    /// `stripe_mismatch`,
    /// `no_customer`, `no_meter` or `rollup_mismatch`.
    pub verdict: String,
    /// Why (corrections of an `ok` hour; empty when there is nothing to say).
    pub reason: String,
}

/// The month of one customer and meter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ProofTotal {
    /// Tenant.
    pub tenant: String,
    /// Customer.
    pub customer: String,
    /// Meter key.
    pub meter: String,
    /// Hours listed.
    pub hours: usize,
    /// Accepted events.
    pub events: u64,
    /// Their quantity.
    pub accepted: f64,
    /// Rollup quantity.
    pub rollup: f64,
    /// Whole units Stripe accepted, per the ledger.
    pub ledger: f64,
    /// Whole units pending.
    pub pending: f64,
    /// Unbillable quantity.
    pub unbillable: f64,
    /// Stripe's summaries.
    pub stripe: f64,
    /// Correction meter events accepted (late usage).
    pub corrections: usize,
    /// Hours per verdict.
    pub verdicts: BTreeMap<String, usize>,
    /// `ok` when every hour is; otherwise the other verdicts, joined with `+`.
    pub verdict: String,
}

/// The proof of one month.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Proof {
    /// The month, `YYYY-MM`.
    pub month: String,
    /// Its start (unix s).
    pub from: i64,
    /// Its end (unix s, exclusive).
    pub to: i64,
    /// The tenant listed (all when absent).
    pub tenant: Option<String>,
    /// The customer listed (all when absent).
    pub customer: Option<String>,
    /// The report window's start at the time of the proof (unix s): older hours are unbillable.
    pub window_from: i64,
    /// The window's end (unix s, exclusive): later hours are not closed yet.
    pub window_to: i64,
    /// Every customer-hour with accepted events, rollup, ledger or Stripe usage, in order.
    pub hours: Vec<ProofHour>,
    /// Per customer and meter.
    pub totals: Vec<ProofTotal>,
    /// Every hour is `ok` or `unbillable`: nothing owed, nothing billed twice.
    pub exact: bool,
    /// Hours whose columns disagree (every verdict but `ok`, `unbillable`, `pending` and
    /// `no_customer`): what the reconciliation reports.
    pub differences: usize,
    /// Hours per verdict.
    pub verdicts: BTreeMap<String, usize>,
}

/// Verdicts that are not a difference: agreed, never billable, on their way, or not billed here.
const SETTLED: [&str; 5] = ["ok", "unbillable", "pending", "settling", "no_customer"];

/// The name of a revision state.
fn state_name(s: State) -> &'static str {
    match s {
        State::Pending => "pending",
        State::Sent => "sent",
        State::Cancelling => "cancelling",
        State::Cancelled => "cancelled",
        State::Unbillable => "unbillable",
        State::Rejected => "rejected",
    }
}

fn revisions(h: &HourLedger) -> Vec<ProofRevision> {
    let mut out: Vec<ProofRevision> = h
        .revisions
        .iter()
        .map(|r| ProofRevision {
            revision: r.revision,
            identifier: r.identifier.clone(),
            state: state_name(State::of(r.state)).into(),
            quantity: r.quantity,
            value: r.value,
            reason: r.reason.clone(),
        })
        .collect();
    if let Some(l) = h
        .legacy
        .as_ref()
        .filter(|_| !out.iter().any(|r| r.revision == 0))
    {
        out.insert(
            0,
            ProofRevision {
                revision: 0,
                identifier: l.identifier.clone(),
                state: "sent".into(),
                quantity: l.quantity,
                value: l.quantity as i64,
                reason: String::new(),
            },
        );
    }
    out
}

/// Accepted correction meter events of an hour.
fn corrections(revs: &[ProofRevision]) -> usize {
    revs.iter()
        .filter(|r| r.revision > 0 && r.state == "sent" && r.value > 0)
        .count()
}

/// What the verdicts depend on besides the cell.
struct Context<'a> {
    billing: &'a Billing,
    customers: &'a HashMap<(String, String), String>,
    meters: &'a BTreeMap<String, String>,
    ids: &'a HashMap<String, String>,
    window: (i64, i64),
    now: i64,
}

const OVER_REPORT: &str = "the ledger bills more than the rollup: the reconciliation cancels it \
    with meter event adjustments where Stripe allows (within 24 hours of receipt) and reports the rest";

impl Context<'_> {
    /// The verdict and reason of one customer-hour.
    fn verdict(
        &self,
        cell: &Cell,
        accepted: f64,
        r: f64,
        h: &HourLedger,
        s: f64,
    ) -> (String, String) {
        let (tenant, customer, meter, hour) = cell;
        let u = &self.billing.config.usage;
        let (verdict, mut reason) = if !self
            .customers
            .contains_key(&(tenant.clone(), customer.clone()))
        {
            let why = if u.create_customers {
                "no Stripe customer yet: the next report run creates one and bills the hour"
            } else {
                "no Stripe customer (no Checkout, and usage.create_customers is off): the usage is not billed"
            };
            ("no_customer".to_string(), why.to_string())
        } else if !self
            .meters
            .get(meter)
            .is_some_and(|e| self.ids.contains_key(e))
        {
            let event = self
                .meters
                .get(meter)
                .map_or(meter.as_str(), String::as_str);
            (
                "no_meter".to_string(),
                format!("Stripe has no active meter with event name {event:?}"),
            )
        } else if agrees(r, h, s) && h.unbillable() > 0.0 {
            ("unbillable".to_string(), h.unbillable_reasons())
        } else if agrees(r, h, s) {
            let n = corrections(&revisions(h));
            let why = match n {
                0 => String::new(),
                1 => "late usage billed by 1 correction".to_string(),
                n => format!("late usage billed by {n} corrections"),
            };
            ("ok".to_string(), why)
        } else if r > h.covered() && *hour >= self.window.1 {
            let why = format!(
                "the hour is not reported yet: hours are reported usage.settle_secs = {} s after they end",
                u.settle_secs
            );
            ("pending".to_string(), why)
        } else if r > h.covered() && *hour < self.window.0 {
            let why = format!(
                "{} (recorded by the next report run)",
                outside_window(self.billing)
            );
            ("unbillable".to_string(), why)
        } else if settling(r, h, s, self.now, u.summary_settle_secs) {
            (
                "settling".to_string(),
                settling_reason(h, s, u.summary_settle_secs),
            )
        } else {
            let (v, why) = unresolved(r, h, s, OVER_REPORT);
            let why = if v == "under_report" {
                format!(
                    "the rollup holds {} more than the ledger covers (usage that arrived after the hour was reported): the next report run sends it as a correction",
                    value_text(r - h.covered())
                )
            } else {
                why
            };
            (v, why)
        };
        if !same(accepted, r) {
            let why = format!(
                "the rollup holds {}, the accepted events {}: usage_hourly was changed outside the pipeline (an operator's adjustment); billing follows the rollup",
                value_text(r),
                value_text(accepted)
            );
            if verdict == "ok" {
                return ("rollup_mismatch".into(), why);
            }
            reason = if reason.is_empty() {
                why
            } else {
                format!("{reason}; {why}")
            };
        }
        (verdict, reason)
    }
}

/// The proof of `month`, for `tenant` and `customer` when given (all otherwise).
pub async fn proof(
    billing: &Billing,
    month: Month,
    tenant: Option<&str>,
    customer: Option<&str>,
) -> Result<Proof> {
    let (from, to) = month.range();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let wanted = |c: &Cell| tenant.is_none_or(|t| t == c.0) && customer.is_none_or(|x| x == c.1);
    let meters = meters(billing);
    let keys: Vec<String> = meters.keys().cloned().collect();
    let mut rollup = rollups(billing, from, to).await?;
    rollup.retain(|c, _| wanted(c));
    let mut book = ledger::read(billing, from, to).await?;
    book.retain(|c, _| wanted(c));
    let (t, c) = (tenant.unwrap_or(""), customer.unwrap_or(""));
    let accepted: BTreeMap<Cell, (u64, f64)> = billing
        .store
        .accepted_hours(&keys, t, c, from, to)
        .await?
        .into_iter()
        .map(|a| {
            (
                (a.tenant, a.customer, a.meter, i64::from(a.hour)),
                (a.events, a.quantity),
            )
        })
        .collect();
    let customers = customers(billing).await?;
    let pairs: BTreeSet<(String, String, String)> = rollup
        .keys()
        .chain(book.keys())
        .chain(accepted.keys())
        .map(|(t, c, m, _)| (t.clone(), c.clone(), m.clone()))
        .collect();
    let ids = if pairs.is_empty() {
        HashMap::new()
    } else {
        meter_ids(billing).await?
    };
    // Stripe's summaries up to the current hour (later ones hold nothing).
    let stripe_to = to.min(hour_start(now) + 3_600);
    let mut stripe: BTreeMap<Cell, f64> = BTreeMap::new();
    for (tenant, customer, meter) in &pairs {
        let (Some(stripe_customer), Some(meter_id)) = (
            customers.get(&(tenant.clone(), customer.clone())),
            meters.get(meter).and_then(|e| ids.get(e)),
        ) else {
            continue;
        };
        if stripe_to <= from {
            continue;
        }
        for (hour, v) in summaries(billing, meter_id, stripe_customer, from, stripe_to).await? {
            *stripe
                .entry((tenant.clone(), customer.clone(), meter.clone(), hour))
                .or_default() += v;
        }
    }
    let ctx = Context {
        billing,
        customers: &customers,
        meters: &meters,
        ids: &ids,
        window: window(billing, now),
        now,
    };
    let cells: BTreeSet<&Cell> = rollup
        .keys()
        .chain(book.keys())
        .chain(accepted.keys())
        .chain(stripe.keys())
        .collect();
    let mut hours = Vec::with_capacity(cells.len());
    for cell in cells {
        let (events, acc) = accepted.get(cell).copied().unwrap_or((0, 0.0));
        let r = rollup.get(cell).copied().unwrap_or(0.0);
        let h = book.get(cell).cloned().unwrap_or_default();
        let s = stripe.get(cell).copied().unwrap_or(0.0);
        let (verdict, reason) = ctx.verdict(cell, acc, r, &h, s);
        hours.push(ProofHour {
            tenant: cell.0.clone(),
            customer: cell.1.clone(),
            meter: cell.2.clone(),
            hour: cell.3,
            hour_utc: utc(cell.3, "T", ":00Z"),
            events,
            accepted: acc,
            rollup: r,
            // `+ 0.0`: an empty sum is -0.0.
            ledger: h.sent() + 0.0,
            pending: h.pending() + 0.0,
            unbillable: h.unbillable() + 0.0,
            covered: h.covered() + 0.0,
            stripe: s,
            revisions: revisions(&h),
            verdict,
            reason,
        });
    }
    let totals = totals(&hours);
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for h in &hours {
        *verdicts.entry(h.verdict.clone()).or_default() += 1;
    }
    Ok(Proof {
        month: month.to_string(),
        from,
        to,
        tenant: tenant.map(String::from),
        customer: customer.map(String::from),
        window_from: ctx.window.0,
        window_to: ctx.window.1,
        exact: hours
            .iter()
            .all(|h| matches!(h.verdict.as_str(), "ok" | "unbillable")),
        differences: hours
            .iter()
            .filter(|h| !SETTLED.contains(&h.verdict.as_str()))
            .count(),
        verdicts,
        hours,
        totals,
    })
}

/// The totals per (tenant, customer, meter) of the hours (in order).
pub(super) fn totals(hours: &[ProofHour]) -> Vec<ProofTotal> {
    let mut out: Vec<ProofTotal> = Vec::new();
    for h in hours {
        let same_group = out.last().is_some_and(|t| {
            (&t.tenant, &t.customer, &t.meter) == (&h.tenant, &h.customer, &h.meter)
        });
        if !same_group {
            out.push(ProofTotal {
                tenant: h.tenant.clone(),
                customer: h.customer.clone(),
                meter: h.meter.clone(),
                hours: 0,
                events: 0,
                accepted: 0.0,
                rollup: 0.0,
                ledger: 0.0,
                pending: 0.0,
                unbillable: 0.0,
                stripe: 0.0,
                corrections: 0,
                verdicts: BTreeMap::new(),
                verdict: String::new(),
            });
        }
        let Some(t) = out.last_mut() else { continue };
        t.hours += 1;
        t.events += h.events;
        t.accepted += h.accepted;
        t.rollup += h.rollup;
        t.ledger += h.ledger;
        t.pending += h.pending;
        t.unbillable += h.unbillable;
        t.stripe += h.stripe;
        t.corrections += corrections(&h.revisions);
        *t.verdicts.entry(h.verdict.clone()).or_default() += 1;
    }
    for t in &mut out {
        let off: Vec<&str> = t
            .verdicts
            .keys()
            .map(String::as_str)
            .filter(|v| *v != "ok")
            .collect();
        t.verdict = if off.is_empty() {
            "ok".into()
        } else {
            off.join("+")
        };
    }
    out
}

/// `t` (unix s) as `YYYY-MM-DD<sep>HH<end>` in UTC.
pub(super) fn utc(t: i64, sep: &str, end: &str) -> String {
    let d = OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}{sep}{:02}{end}",
        d.year(),
        d.month() as u8,
        d.day(),
        d.hour()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(customer: &str, verdict: &str, rollup: f64) -> ProofHour {
        ProofHour {
            tenant: "t".into(),
            customer: customer.into(),
            meter: "m".into(),
            hour: 0,
            hour_utc: String::new(),
            events: rollup as u64,
            accepted: rollup,
            rollup,
            ledger: rollup,
            pending: 0.0,
            unbillable: 0.0,
            covered: rollup,
            stripe: rollup,
            revisions: Vec::new(),
            verdict: verdict.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn totals_sum_per_customer_and_name_what_is_off() {
        let hours = [
            hour("a", "ok", 5.0),
            hour("a", "ok", 3.0),
            hour("b", "ok", 1.0),
            hour("b", "under_report", 2.0),
            hour("b", "pending", 2.0),
        ];
        let t = totals(&hours);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].hours, t[0].rollup, t[0].verdict.as_str()),
            (2, 8.0, "ok")
        );
        assert_eq!(
            (t[1].hours, t[1].events, t[1].verdict.as_str()),
            (3, 5, "pending+under_report")
        );
    }
}
