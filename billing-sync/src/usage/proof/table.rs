//! The proof as text: every customer-hour, then the totals per customer, in aligned columns.

use super::{Proof, utc};
use crate::usage::value_text;

/// Aligned columns: numbers right, text left.
fn columns(head: &[&str], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match (numeric[i], i + 1 == cells.len()) {
                (true, _) => format!("{c:>w$}", w = width[i]),
                (false, true) => (*c).to_string(),
                (false, false) => format!("{c:<w$}", w = width[i]),
            })
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn num(q: f64) -> String {
    if q.fract() == 0.0 {
        value_text(q)
    } else {
        format!("{q:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The proof as text: every customer-hour, then the totals per customer.
pub fn table(p: &Proof) -> String {
    let scope = match (&p.tenant, &p.customer) {
        (Some(t), Some(c)) => format!("tenant {t}, customer {c}"),
        (Some(t), None) => format!("tenant {t}"),
        (None, Some(c)) => format!("customer {c}"),
        (None, None) => "every tenant".into(),
    };
    let mut out = format!(
        "usage proof {} ({scope}): accepted events, rollup, ledger and Stripe per customer-hour (UTC)\n",
        p.month
    );
    let head = [
        "TENANT",
        "CUSTOMER",
        "METER",
        "HOUR",
        "EVENTS",
        "ACCEPTED",
        "ROLLUP",
        "LEDGER",
        "STRIPE",
        "VERDICT",
        "REVISIONS",
        "REASON",
    ];
    let numeric = [
        false, false, false, false, true, true, true, true, true, false, false, false,
    ];
    let rows: Vec<Vec<String>> = p
        .hours
        .iter()
        .map(|h| {
            let revs: Vec<String> = h
                .revisions
                .iter()
                .map(|r| match r.state.as_str() {
                    "sent" => format!("r{}={}", r.revision, r.value),
                    "unbillable" => format!("r{}={}(unbillable)", r.revision, num(r.quantity)),
                    s => format!("r{}={}({s})", r.revision, r.value),
                })
                .collect();
            vec![
                h.tenant.clone(),
                h.customer.clone(),
                h.meter.clone(),
                utc(h.hour, " ", ":00"),
                h.events.to_string(),
                num(h.accepted),
                num(h.rollup),
                num(h.ledger),
                num(h.stripe),
                h.verdict.clone(),
                if revs.is_empty() {
                    "-".into()
                } else {
                    revs.join(" ")
                },
                h.reason.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out += "no usage in this month\n";
    } else {
        out += &columns(&head, &rows, &numeric);
    }
    out += &format!("\ntotals per customer for {}\n", p.month);
    let head = [
        "TENANT",
        "CUSTOMER",
        "METER",
        "HOURS",
        "EVENTS",
        "ACCEPTED",
        "ROLLUP",
        "LEDGER",
        "STRIPE",
        "UNBILLABLE",
        "CORRECTIONS",
        "VERDICT",
    ];
    let numeric = [
        false, false, false, true, true, true, true, true, true, true, true, false,
    ];
    let rows: Vec<Vec<String>> = p
        .totals
        .iter()
        .map(|t| {
            vec![
                t.tenant.clone(),
                t.customer.clone(),
                t.meter.clone(),
                t.hours.to_string(),
                t.events.to_string(),
                num(t.accepted),
                num(t.rollup),
                num(t.ledger),
                num(t.stripe),
                num(t.unbillable),
                t.corrections.to_string(),
                t.verdict.clone(),
            ]
        })
        .collect();
    out += &columns(&head, &rows, &numeric);
    let counts: Vec<String> = p.verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    let state = if p.exact {
        "exact: every hour agrees (ok or unbillable)".to_string()
    } else if p.differences == 0 {
        "not exact yet: no difference, but hours pending or not billed (see REASON)".to_string()
    } else {
        format!(
            "NOT exact: differences in {} of them (see REASON)",
            p.differences
        )
    };
    out += &format!(
        "\n{} customer-hours ({}); {state}\n",
        p.hours.len(),
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{ProofHour, ProofRevision, totals};
    use super::*;

    fn hour(customer: &str, verdict: &str, rollup: f64) -> ProofHour {
        ProofHour {
            tenant: "t".into(),
            customer: customer.into(),
            meter: "m".into(),
            hour: 1_767_225_600,
            hour_utc: String::new(),
            events: rollup as u64,
            accepted: rollup,
            rollup,
            ledger: rollup,
            pending: 0.0,
            unbillable: 0.0,
            covered: rollup,
            stripe: rollup,
            revisions: vec![ProofRevision {
                revision: 0,
                identifier: "t:c:m:0".into(),
                state: "sent".into(),
                quantity: rollup,
                value: rollup as i64,
                reason: String::new(),
            }],
            verdict: verdict.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn every_hour_and_customer_is_one_aligned_line() {
        let hours = vec![
            hour("a", "ok", 5.0),
            hour("a", "ok", 2.5),
            hour("bb", "under_report", 2.0),
        ];
        let totals = totals(&hours);
        let text = table(&Proof {
            month: "2026-01".into(),
            from: 0,
            to: 0,
            tenant: Some("t".into()),
            customer: None,
            window_from: 0,
            window_to: 0,
            hours,
            totals,
            exact: false,
            differences: 1,
            verdicts: BTreeMap::from([("ok".into(), 2), ("under_report".into(), 1)]),
        });
        assert!(
            text.contains(
                "3 customer-hours (2 ok, 1 under_report); NOT exact: differences in 1 of them"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("t ")).collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].contains("2026-01-01 00:00") && lines[0].contains("r0=5"),
            "{text}"
        );
        assert!(lines[1].contains(" 2.5 "), "{text}");
        assert!(lines[4].ends_with("under_report"), "{text}");
        // Columns line up: every hour line has its verdict at the same offset.
        let at: Vec<usize> = lines[..3]
            .iter()
            .filter_map(|l| l.find(" ok").or(l.find(" under")))
            .collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
