//! Unit tests of the quota view.

use super::customer::Day;
use super::*;
use std::sync::Arc;
use time::macros::{date, datetime};

fn usage(day: Date, quantity: f64, partition: i32, as_of: i64) -> StateRecord {
    StateRecord::Usage(UsageState {
        tenant: "t".into(),
        customer: "c".into(),
        meter: "api_call".into(),
        day,
        quantity,
        events: quantity as u64,
        partition,
        as_of_offset: as_of,
    })
}

#[test]
fn the_101st_call_of_a_free_customer_is_refused_and_80_percent_warns() {
    let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
    let now = datetime!(2026-03-10 12:00 UTC);
    for i in 1..=100 {
        let (a, r) = view.reserve("t", "c", "api_call", 1.0, now);
        assert!(a.allowed, "call {i}");
        assert_eq!(a.warning, i >= 80, "call {i}");
        view.confirm("t", "c", "api_call", r.expect("reserved"), (0, i));
    }
    let (a, r) = view.reserve("t", "c", "api_call", 1.0, now);
    assert!(!a.allowed && r.is_none());
    assert_eq!(a.reason.as_deref(), Some("limit_reached"));
    assert_eq!(
        (a.used, a.limit, a.remaining),
        (100.0, Some(100), Some(0.0))
    );
    // The state catches up to offset 60: 60 folded + 40 pending = still 100.
    view.apply(usage(now.date(), 60.0, 0, 60));
    assert_eq!(view.pending("t", "c", "api_call"), 40);
    assert_eq!(view.check("t", "c", "api_call", 1.0, now).used, 100.0);
    view.apply(usage(now.date(), 100.0, 0, 100));
    assert_eq!(view.pending("t", "c", "api_call"), 0);
    assert_eq!(view.check("t", "c", "api_call", 1.0, now).used, 100.0);
}

#[test]
fn periods_sum_only_their_days_and_stale_records_never_lower_totals() {
    let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::Deny);
    let now = datetime!(2026-03-10 12:00 UTC);
    assert_eq!(
        view.check("t", "c", "api_call", 1.0, now).reason.as_deref(),
        Some("unknown_customer")
    );
    view.apply(usage(date!(2026 - 02 - 27), 90.0, 1, 5));
    view.apply(usage(date!(2026 - 03 - 01), 30.0, 1, 6));
    view.apply(usage(date!(2026 - 03 - 01), 20.0, 1, 4));
    let a = view.check("t", "c", "api_call", 1.0, now);
    assert_eq!((a.used, a.allowed, a.reason), (30.0, true, None));
    let next = view.check("t", "c", "api_call", 1.0, datetime!(2026-04-01 00:00 UTC));
    assert_eq!(next.used, 0.0);
}

#[test]
fn events_of_one_batch_message_share_its_position_and_each_counts() {
    let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
    let now = datetime!(2026-03-10 12:00 UTC);
    // Two reservations produced in one batch message (one position) both count.
    let (_, r1) = view.reserve("t", "c", "api_call", 1.0, now);
    let (_, r2) = view.reserve("t", "c", "api_call", 1.0, now);
    view.confirm("t", "c", "api_call", r1.expect("reserved"), (3, 7));
    view.confirm("t", "c", "api_call", r2.expect("reserved"), (3, 7));
    assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 2.0);
    // Three events of another instance's batch message arrive through the tail.
    for _ in 0..3 {
        view.track("t", "c", "api_call", 1.0, now.date(), (3, 8));
    }
    assert_eq!(view.pending("t", "c", "api_call"), 5);
    assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 5.0);
    // The state folds through offset 8: nothing is pending and the folded 5 count.
    view.apply(usage(now.date(), 5.0, 3, 8));
    assert_eq!(
        (
            view.pending("t", "c", "api_call"),
            view.check("t", "c", "api_call", 0.0, now).used
        ),
        (0, 5.0)
    );
}

#[test]
fn recent_ids_are_remembered_for_an_hour() {
    let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
    let now = datetime!(2026-03-10 12:00 UTC);
    assert!(!view.seen("t", "c", "e1", now));
    view.remember("t", "c", "e1", now);
    assert!(view.seen("t", "c", "e1", now + time::Duration::minutes(59)));
    assert!(!view.seen("t", "c", "e1", now + time::Duration::minutes(61)));
    assert!(!view.seen("t", "other", "e1", now) && !view.seen("u", "c", "e1", now));
}

#[test]
fn a_released_reservation_does_not_count() {
    let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
    let now = datetime!(2026-03-10 12:00 UTC);
    let (_, r) = view.reserve("t", "c", "api_call", 5.0, now);
    assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 5.0);
    view.release("t", "c", "api_call", r.expect("reserved"));
    assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 0.0);
}

#[test]
fn the_layout_stays_compact() {
    assert_eq!(std::mem::size_of::<Day>(), 20);
    assert!(std::mem::size_of::<Customer>() <= 56);
}

#[test]
fn plans_borrow_no_names_and_report_the_key() {
    let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::DefaultPlan);
    let mut plan = PlanState::initial("t", "c", view.catalog());
    plan.plan = "starter".into();
    plan.version = 1;
    view.apply(StateRecord::Plan(plan.clone()));
    assert_eq!(view.plan("t", "c"), (plan, true));
    let (p, known) = view.plan("t", "other");
    assert_eq!(
        (p.customer.as_str(), p.plan.as_str(), known),
        ("other", "free", false)
    );
    let now = datetime!(2026-03-10 12:00 UTC);
    assert_eq!(view.check("t", "c", "api_call", 1.0, now).limit, Some(500));
    assert_eq!(
        view.check("t", "other", "api_call", 1.0, now).limit,
        Some(100)
    );
}

#[test]
fn meters_and_partitions_beyond_the_first_are_kept_apart() {
    let catalog = Catalog::default();
    let view = QuotaView::new(Arc::new(catalog), UnknownCustomer::DefaultPlan);
    let now = datetime!(2026-03-10 12:00 UTC);
    let record = |meter: &str, day: Date, q: f64, partition: i32, as_of: i64| {
        StateRecord::Usage(UsageState {
            tenant: "t".into(),
            customer: "c".into(),
            meter: meter.into(),
            day,
            quantity: q,
            events: q as u64,
            partition,
            as_of_offset: as_of,
        })
    };
    view.apply(record("other", now.date(), 7.0, 0, 3));
    view.apply(record("api_call", date!(2026 - 03 - 05), 4.0, 0, 5));
    view.apply(record("api_call", date!(2026 - 03 - 02), 2.0, 0, 5));
    assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 6.0);
    assert_eq!(view.check("t", "c", "other", 0.0, now).used, 7.0);
    // Pending on two partitions; the second partition's offset is folded separately.
    view.track("t", "c", "api_call", 1.0, now.date(), (0, 6));
    view.track("t", "c", "api_call", 1.0, now.date(), (1, 2));
    assert_eq!(view.pending("t", "c", "api_call"), 2);
    assert_eq!(view.pending("t", "c", "other"), 0);
    view.apply(record("api_call", now.date(), 1.0, 1, 2));
    assert_eq!(view.pending("t", "c", "api_call"), 1);
    view.apply(record("api_call", now.date(), 2.0, 0, 6));
    assert_eq!(view.pending("t", "c", "api_call"), 0);
    assert_eq!(view.check("t", "c", "api_call", 0.0, now).used, 8.0);
    assert_eq!(view.customers(), 1);
}

#[test]
fn many_customers_keep_their_own_names_and_usage_through_table_growth() {
    let view = QuotaView::new(Arc::new(Catalog::default()), UnknownCustomer::Deny);
    let now = datetime!(2026-03-10 12:00 UTC);
    let name = |i: u32| format!("c{}", "x".repeat((i % 7) as usize)) + &i.to_string();
    for i in 0..20_000u32 {
        view.apply(StateRecord::Usage(UsageState {
            tenant: format!("t{}", i % 3),
            customer: name(i),
            meter: "api_call".into(),
            day: now.date(),
            quantity: f64::from(i % 50),
            events: u64::from(i % 50),
            partition: (i % 4) as i32,
            as_of_offset: i64::from(i),
        }));
    }
    assert_eq!(view.customers(), 20_000);
    for i in (0..20_000u32).step_by(97) {
        let a = view.check(&format!("t{}", i % 3), &name(i), "api_call", 0.0, now);
        assert_eq!(
            (a.used, a.reason),
            (f64::from(i % 50), None),
            "customer {i}"
        );
        let other = view.check(&format!("t{}", (i + 1) % 3), &name(i), "api_call", 0.0, now);
        assert_eq!(
            other.reason.as_deref(),
            Some("unknown_customer"),
            "customer {i}"
        );
    }
}

#[test]
fn entitlements_follow_the_pinned_version_and_migrations_list_the_subscribers() {
    let catalog = Arc::new(Catalog::default());
    let newer = Catalog::from_toml(&schemas::catalog::DEFAULT_CATALOG_TOML.replacen(
        "\"advanced_analysis\", \"custom_reports\"]",
        "\"advanced_analysis\", \"custom_reports\", \"analytics\"]",
        1,
    ))
    .expect("valid");
    // The view runs the newer catalog; the customers were pinned to the older Starter.
    let view = QuotaView::new(Arc::new(newer.clone()), UnknownCustomer::DefaultPlan);
    let now = datetime!(2026-03-10 12:00 UTC);
    let old_terms = catalog.plan("starter").expect("starter").terms().clone();
    for (i, c) in ["a", "b"].iter().enumerate() {
        let mut plan = PlanState::initial("t", c, &catalog);
        for change in [
            schemas::quota::Change::Plan {
                plan: "starter".into(),
                status: "active".into(),
                period_start: None,
                period_end: None,
                cancel_at_period_end: false,
            },
            schemas::quota::Change::PlanVersion {
                plan: "starter".into(),
                // A copy per record, as decoded from the state topic.
                terms: Arc::new((*old_terms).clone()),
                from_version: None,
            },
        ] {
            plan.apply(&SubscriptionEvent {
                id: format!("e{i}"),
                tenant: "t".into(),
                customer: c.to_string(),
                time: now,
                source: "admin".into(),
                change,
            });
        }
        view.apply(StateRecord::Plan(plan));
    }
    let analytics = newer.feature("analytics").expect("analytics");
    let e = view.entitlement("t", "a", analytics, now);
    assert!(!e.has_access, "the old version has no analytics");
    assert_eq!(e.upgrade.map(|u| u.plan).as_deref(), Some("starter"));
    let all = view.entitlements("t", "a", None, now);
    assert_eq!(all.plan_version, old_terms.version);
    assert_ne!(all.current_version, old_terms.version);
    assert_eq!(all.entitlements.len(), newer.features.len());
    // A customer nobody changed gets the current version.
    let fresh = view.entitlements("t", "z", None, now);
    assert_eq!(fresh.plan, "free");
    assert_eq!(fresh.plan_version, fresh.current_version);
    // One copy of the version for both customers.
    let (a, _) = view.plan("t", "a");
    let (b, _) = view.plan("t", "b");
    assert!(Arc::ptr_eq(
        a.terms.as_ref().expect("a"),
        b.terms.as_ref().expect("b")
    ));
    let subs = view.subscribers("t", "starter");
    assert_eq!(
        subs,
        vec![
            Subscriber {
                customer: "a".into(),
                version: Some(old_terms.version.clone())
            },
            Subscriber {
                customer: "b".into(),
                version: Some(old_terms.version.clone())
            },
        ]
    );
    assert!(view.subscribers("t", "professional").is_empty());
    assert!(view.subscribers("other", "starter").is_empty());
}
