//! Memory of the in-memory quota view at 1M customers × 1 meter, against a bare-minimum baseline, plus single-thread quota answers/s. Run: `cargo bench -p ingest --bench quota_memory`.
//!
//! The view is filled through its public API the way production fills it: `usage.state` records
//! (`StateRecord::Usage` for 1 to 5 days of the current month per customer, a `StateRecord::Plan`
//! for one customer in ten, the rest on the default free plan) and, for one customer in a hundred,
//! an event noted from the events tail (`note_event`: a recent id and a pending entry).
//!
//! Live heap bytes come from a counting global allocator wrapping `System`; the RSS delta from
//! `/proc/self/status`. The baseline is the same usage in a `HashMap<(u32, u64), u64>` (customer
//! number, meter and day → events), one entry per usage record: the least any map of it costs.
//!
//! Prints a Markdown table, writes `.data/bench/memory.json` at the workspace root and exits
//! non-zero when the view needs more than [`TARGET_BYTES`] per (customer, meter).

// The counting allocator needs `unsafe impl GlobalAlloc`; the workspace denies `unsafe_code`
// (library and binary crate roots forbid it), and this bench file alone allows it for that impl.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ingest::quota::{QuotaView, UnknownCustomer};
use schemas::Catalog;
use schemas::quota::{Change, PlanState, StateRecord, SubscriptionEvent, UsageState};
use time::macros::datetime;
use time::{Date, Duration, OffsetDateTime};

/// The target: bytes of view per (customer, meter) at 1M customers.
const TARGET_BYTES: f64 = 200.0;
const CUSTOMERS: u32 = 1_000_000;
const TENANTS: u32 = 20;
const PARTITIONS: u32 = 12;
const METER: &str = "api_call";
/// Quota answers timed (single thread).
const QUERIES: usize = 2_000_000;

/// `System`, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the caller's arguments unchanged; the counter
// is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Allocations (and reallocations) so far.
fn allocs() -> usize {
    ALLOCS.load(Ordering::Relaxed)
}

/// Resident set size in bytes (`VmRSS` of /proc/self/status), 0 where unavailable.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// SplitMix64: a deterministic shape, the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn tenant(i: u32) -> String {
    format!("tenant-{:02}", i % TENANTS)
}

fn customer(i: u32) -> String {
    format!("cus_{i:07}")
}

/// Usage days of customer `i`: 1 to 5 distinct days of the month so far, ascending.
fn days(rng: &mut Rng, today: Date) -> Vec<Date> {
    let n = 1 + rng.below(5) as usize;
    let mut days: Vec<Date> = Vec::with_capacity(n);
    while days.len() < n {
        let d = today - Duration::days(rng.below(u64::from(today.day())) as i64);
        if !days.contains(&d) {
            days.push(d);
        }
    }
    days.sort();
    days
}

struct Fill {
    usage_records: usize,
    plan_records: usize,
    events_noted: usize,
}

/// Fills `view` as the state topic (and, for a few customers, the events tail) would.
fn fill(view: &QuotaView, catalog: &Catalog, now: OffsetDateTime) -> Fill {
    let mut rng = Rng(7);
    let mut offsets = [0i64; PARTITIONS as usize];
    let (mut usage_records, mut plan_records, mut events_noted) = (0, 0, 0);
    for i in 0..CUSTOMERS {
        let (tenant, customer) = (tenant(i), customer(i));
        let partition = (i % PARTITIONS) as i32;
        for day in days(&mut rng, now.date()) {
            let events = 1 + rng.below(30);
            offsets[partition as usize] += events as i64;
            view.apply(StateRecord::Usage(UsageState {
                tenant: tenant.clone(),
                customer: customer.clone(),
                meter: METER.into(),
                day,
                quantity: events as f64,
                events,
                partition,
                as_of_offset: offsets[partition as usize],
            }));
            usage_records += 1;
        }
        if rng.below(10) == 0 {
            let mut plan = PlanState::initial(&tenant, &customer, catalog);
            let key = ["starter", "professional", "enterprise"][rng.below(3) as usize];
            let anchored = rng.below(2) == 0;
            plan.apply(&SubscriptionEvent {
                id: format!("sub-{i}"),
                tenant: tenant.clone(),
                customer: customer.clone(),
                time: now - Duration::days(40),
                source: "stripe".into(),
                change: Change::Plan {
                    plan: key.into(),
                    status: "active".into(),
                    period_start: anchored.then(|| now - Duration::days(12)),
                    period_end: anchored.then(|| now + Duration::days(18)),
                    cancel_at_period_end: false,
                },
            });
            if rng.below(20) == 0 {
                plan.apply(&SubscriptionEvent {
                    id: format!("grant-{i}"),
                    tenant: tenant.clone(),
                    customer: customer.clone(),
                    time: now - Duration::days(3),
                    source: "admin".into(),
                    change: Change::Grant {
                        meter: METER.into(),
                        quantity: 1000,
                        expires_at: now + Duration::days(20),
                    },
                });
            }
            plan.partition = partition;
            plan.as_of_offset = i64::from(i);
            view.apply(StateRecord::Plan(plan));
            plan_records += 1;
        }
        if rng.below(100) == 0 {
            // An event another instance accepted, seen on the events tail, not folded yet.
            offsets[partition as usize] += 1;
            let event = schemas::UsageEvent {
                specversion: "1.0".into(),
                id: format!("{:032x}", rng.next()),
                source: "bench".into(),
                meter: METER.into(),
                customer: customer.clone(),
                time: now,
                data: serde_json::Map::new(),
                attributes: Default::default(),
                tenant: tenant.clone(),
                receivedat: now,
            };
            view.note_event(&event, (partition, offsets[partition as usize]));
            events_noted += 1;
        }
    }
    Fill {
        usage_records,
        plan_records,
        events_noted,
    }
}

/// The baseline: the same usage records in the smallest plain map of them.
fn baseline(now: OffsetDateTime) -> HashMap<(u32, u64), u64> {
    let mut rng = Rng(7);
    let mut map = HashMap::new();
    for i in 0..CUSTOMERS {
        for day in days(&mut rng, now.date()) {
            let events = 1 + rng.below(30);
            // Meter 0 in the high half, the day in the low half.
            map.insert((i, day.to_julian_day() as u32 as u64), events);
        }
        // Keep the draws in step with `fill` (plan, grant and tail choices are not stored).
        if rng.below(10) == 0 {
            rng.below(3);
            rng.below(2);
            rng.below(20);
        }
        if rng.below(100) == 0 {
            rng.next();
        }
    }
    map
}

fn per_sec(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn main() {
    let now = datetime!(2026-03-20 12:00 UTC);
    let catalog = Arc::new(Catalog::default());
    let pairs = f64::from(CUSTOMERS);

    // Baseline first; it stays alive, so the view's RSS delta is its own.
    let (heap0, rss0) = (live(), rss());
    let base = baseline(now);
    let (heap1, rss1) = (live(), rss());
    let base_heap = (heap1 - heap0) as f64 / pairs;
    let base_rss = rss1.saturating_sub(rss0) as f64 / pairs;

    let view = QuotaView::new(catalog.clone(), UnknownCustomer::DefaultPlan);
    let (heap2, rss2) = (live(), rss());
    let started = Instant::now();
    let filled = fill(&view, &catalog, now);
    let fill_secs = started.elapsed().as_secs_f64();
    let (heap3, rss3) = (live(), rss());
    assert_eq!(
        view.customers(),
        CUSTOMERS as usize,
        "every customer is in the view"
    );
    let view_heap = (heap3 - heap2) as f64 / pairs;
    let view_rss = rss3.saturating_sub(rss2) as f64 / pairs;

    // Timing: the same random customers for both, names made before the clock starts.
    let mut rng = Rng(11);
    let picks: Vec<u32> = (0..QUERIES)
        .map(|_| rng.below(u64::from(CUSTOMERS)) as u32)
        .collect();
    let names: Vec<(String, String)> = picks.iter().map(|&i| (tenant(i), customer(i))).collect();
    let (started, allocs0) = (Instant::now(), allocs());
    let mut allowed = 0usize;
    for (t, c) in &names {
        allowed += usize::from(black_box(view.check(t, c, METER, 1.0, now)).allowed);
    }
    let view_qps = per_sec(QUERIES, started.elapsed().as_secs_f64());
    let view_allocs = (allocs() - allocs0) as f64 / QUERIES as f64;
    let today = u64::from(now.date().to_julian_day() as u32);
    let (started, allocs0) = (Instant::now(), allocs());
    let mut found = 0u64;
    for &i in &picks {
        found += black_box(base.get(&(i, today)).copied().unwrap_or(0));
    }
    let base_qps = per_sec(QUERIES, started.elapsed().as_secs_f64());
    let base_allocs = (allocs() - allocs0) as f64 / QUERIES as f64;
    black_box((allowed, found));

    let pass = view_heap <= TARGET_BYTES;
    println!(
        "\nQuota view memory: {CUSTOMERS} customers × 1 meter ({} usage records, {} plan records, {} tail events; filled in {fill_secs:.1} s)\n",
        filled.usage_records, filled.plan_records, filled.events_noted
    );
    println!(
        "| | heap B/(customer, meter) | RSS B/(customer, meter) | quota answers/s (1 thread) | allocations per answer |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!("| QuotaView | {view_heap:.1} | {view_rss:.1} | {view_qps:.0} | {view_allocs:.2} |");
    println!(
        "| baseline `HashMap<(u32, u64), u64>` | {base_heap:.1} | {base_rss:.1} | {base_qps:.0} | {base_allocs:.2} |"
    );
    println!(
        "| ratio view / baseline | {:.2} | {:.2} | {:.2} | |",
        view_heap / base_heap,
        view_rss / base_rss.max(1.0),
        view_qps / base_qps.max(1.0)
    );
    println!("\nTarget: ≤ {TARGET_BYTES} heap bytes per (customer, meter).");

    let json = serde_json::json!({
        "customers": CUSTOMERS,
        "meters": 1,
        "usage_records": filled.usage_records,
        "plan_records": filled.plan_records,
        "events_noted": filled.events_noted,
        "target_bytes_per_customer_meter": TARGET_BYTES,
        "view": {
            "heap_bytes": heap3 - heap2,
            "heap_bytes_per_customer_meter": view_heap,
            "rss_bytes_per_customer_meter": view_rss,
            "quota_answers_per_sec": view_qps,
            "allocations_per_answer": view_allocs,
            "fill_secs": fill_secs,
        },
        "baseline": {
            "kind": "HashMap<(u32, u64), u64>, one entry per usage record",
            "heap_bytes": heap1 - heap0,
            "heap_bytes_per_customer_meter": base_heap,
            "rss_bytes_per_customer_meter": base_rss,
            "lookups_per_sec": base_qps,
            "allocations_per_lookup": base_allocs,
        },
        "pass": pass,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.data/bench");
    let path = dir.join("memory.json");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        )
    });
    match written {
        Ok(()) => println!("Wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
    if !pass {
        eprintln!(
            "FAIL: the quota view needs {view_heap:.1} heap bytes per (customer, meter), above the target of {TARGET_BYTES}"
        );
        std::process::exit(1);
    }
}
