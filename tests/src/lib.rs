//! Test harness: fresh ClickHouse database, topics and consumer group per test (kept when the test
//! fails), the ingest and aggregator started on port 0, and private server instances for fault tests.
//!
//! # Layout
//! - [`TestEnv`]: per-test resources and app starters.
//! - [`servers`]: private tansu / ClickHouse processes that a test may stop and restart.
//! - [`billing`]: the Stripe fake and billing-sync wired together.
//! - [`stripe_target`]: the Stripe of the contract suite: the fake, or Stripe's test mode with
//!   `STRIPE_TEST_SECRET_KEY`, with a catalog made and removed per test.
//! - [`metered`]: a metered-usage stack (events in past hours, rollups, what Stripe and the ledger
//!   hold per customer-hour), with [`shop`] buying on it (checkout, Stripe reads, the quota).
//! - [`wait_until`]: polling with a deadline instead of fixed sleeps.
//! - [`proxy`]: a TCP proxy that loses ClickHouse's answer to a chosen request.
//! - [`smtp`]: an SMTP sink that records the mail it accepts.
//! - [`emails`]: billing-sync with customer emails to the SMTP sink or an outbox.
//! - [`webhook`]: a webhook receiver that records requests and answers scripted statuses.

#![forbid(unsafe_code)]

pub mod billing;
pub mod emails;
pub mod metered;
pub mod proxy;
pub mod servers;
pub mod shop;
pub mod smtp;
pub mod stripe_target;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use platform::principal::Scope;
use rand::Rng;
use schemas::config::{ClickHouseConfig, KafkaConfig};
use schemas::topics::Topics;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Broker address of the shared test servers (`scripts/servers.sh start`).
pub fn kafka_brokers() -> String {
    std::env::var("METERING_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// ClickHouse URL of the shared test servers.
pub fn clickhouse_url() -> String {
    std::env::var("METERING_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A compiled binary of the workspace (`scripts/test.sh` builds them before the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/test-hash -> target/debug/name
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first",
        path.display()
    );
    path
}

/// Starts the workspace binary `name` with `envs` and `RUST_LOG=log`, its stderr appended to
/// `.data/<dir>/<log_name>.log` (kept for inspection).
pub fn spawn_binary(
    name: &str,
    envs: Vec<(String, String)>,
    log: &str,
    dir: &str,
    log_name: &str,
) -> std::process::Child {
    let dir = workspace_root().join(".data").join(dir);
    let _ = std::fs::create_dir_all(&dir);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{log_name}.log")))
        .expect("log file");
    std::process::Command::new(binary(name))
        .envs(envs)
        .env("RUST_LOG", log)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

/// Waits until the service at `url` answers `/readyz` with 200 (30 s at most).
pub async fn wait_ready(http: &reqwest::Client, url: &str) {
    wait_until(Duration::from_secs(30), &format!("{url} ready"), || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rollup tables, finest first.
pub const ROLLUP_TABLES: [&str; 4] = [
    "usage_minute",
    "usage_hourly",
    "usage_daily",
    "usage_monthly",
];

/// Resources of one test. The database is dropped when the test passes and kept when it fails.
#[derive(Debug)]
pub struct TestEnv {
    /// Unique name of this test's resources.
    pub name: String,
    /// Broker settings.
    pub kafka: KafkaConfig,
    /// ClickHouse settings (database `t_<name>`).
    pub clickhouse: ClickHouseConfig,
    /// Topic names (prefix `t_<name>.`).
    pub topics: Topics,
    /// Consumer group id.
    pub group: String,
}

impl TestEnv {
    /// Fresh resources on the shared servers, with migrations applied and topics created.
    pub async fn new(test: &str) -> Self {
        Self::on(test, &kafka_brokers(), &clickhouse_url(), 4).await
    }

    /// Fresh resources on the given servers with `partitions` per topic.
    pub async fn on(test: &str, brokers: &str, clickhouse: &str, partitions: i32) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,aggregator=info,ingest=info".into()),
            )
            .with_test_writer()
            .try_init();
        let suffix: u32 = rand::rng().random_range(0..1_000_000);
        let name = format!("{test}_{suffix:06}");
        let kafka = KafkaConfig {
            brokers: brokers.into(),
            partitions,
            create_topics: true,
            ..KafkaConfig::default()
        };
        let clickhouse = ClickHouseConfig {
            url: clickhouse.into(),
            database: format!("t_{name}"),
            ..ClickHouseConfig::default()
        };
        let topics = Topics::with_prefix(&format!("t_{name}."));
        let env = Self {
            group: format!("g_{name}"),
            name,
            kafka,
            clickhouse,
            topics,
        };
        schemas::migrate::run(&env.clickhouse)
            .await
            .expect("migrations");
        schemas::kafka::ensure_topics(&env.kafka, &env.topics)
            .await
            .expect("topics");
        env
    }

    /// A ClickHouse client on this test's database.
    pub fn ch(&self) -> clickhouse::Client {
        self.clickhouse.client()
    }

    /// Ingest config pointing at this test's resources, on a free port.
    pub fn ingest_config(&self) -> ingest::Config {
        ingest::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            kafka: self.kafka.clone(),
            clickhouse: self.clickhouse.clone(),
            topics: self.topics.clone(),
            produce_timeout_ms: 5_000,
            ..ingest::Config::default()
        }
    }

    /// Aggregator config pointing at this test's resources, on a free port.
    pub fn aggregator_config(&self) -> aggregator::Config {
        aggregator::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            kafka: self.kafka.clone(),
            clickhouse: self.clickhouse.clone(),
            topics: self.topics.clone(),
            group_id: self.group.clone(),
            batch_max_wait_ms: 100,
            max_retry_backoff_ms: 500,
            ..aggregator::Config::default()
        }
    }

    /// Creates an API key for `tenant`.
    pub async fn key(&self, tenant: &str, scopes: &[Scope], customer: Option<&str>) -> String {
        platform::keys::create_key(&self.ch(), tenant, customer, scopes, "test")
            .await
            .expect("create key")
    }

    /// Starts an ingest with `config`.
    pub async fn start_ingest_with(&self, config: ingest::Config) -> Running {
        let app = ingest::App::build(config).await.expect("build ingest");
        let addr = app.local_addr();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { app.run(c).await.map_err(|e| e.to_string()) });
        Running {
            url: format!("http://{addr}"),
            cancel,
            task,
        }
    }

    /// Starts an ingest on this test's resources.
    pub async fn start_ingest(&self) -> Running {
        self.start_ingest_with(self.ingest_config()).await
    }

    /// Starts an in-process aggregator with `config`.
    pub async fn start_aggregator_with(
        &self,
        config: aggregator::Config,
    ) -> (Running, std::sync::Arc<aggregator::metrics::Metrics>) {
        let app = aggregator::App::build(config)
            .await
            .expect("build aggregator");
        let addr = app.local_addr();
        let metrics = app.metrics();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { app.run(c).await.map_err(|e| e.to_string()) });
        (
            Running {
                url: format!("http://{addr}"),
                cancel,
                task,
            },
            metrics,
        )
    }

    /// Starts an in-process aggregator on this test's resources.
    pub async fn start_aggregator(
        &self,
    ) -> (Running, std::sync::Arc<aggregator::metrics::Metrics>) {
        self.start_aggregator_with(self.aggregator_config()).await
    }

    /// Environment variables that point an aggregator process at this test's resources.
    pub fn aggregator_env(&self) -> Vec<(String, String)> {
        let t = &self.topics;
        [
            ("AGGREGATOR_LISTEN", "127.0.0.1:0".to_string()),
            ("AGGREGATOR_KAFKA__BROKERS", self.kafka.brokers.clone()),
            ("AGGREGATOR_CLICKHOUSE__URL", self.clickhouse.url.clone()),
            (
                "AGGREGATOR_CLICKHOUSE__DATABASE",
                self.clickhouse.database.clone(),
            ),
            ("AGGREGATOR_TOPICS__EVENTS", t.events.clone()),
            ("AGGREGATOR_TOPICS__STATE", t.state.clone()),
            ("AGGREGATOR_TOPICS__ALERTS", t.alerts.clone()),
            ("AGGREGATOR_TOPICS__SUBSCRIPTIONS", t.subscriptions.clone()),
            ("AGGREGATOR_TOPICS__REJECTED", t.rejected.clone()),
            ("AGGREGATOR_GROUP_ID", self.group.clone()),
            ("AGGREGATOR_BATCH_MAX_WAIT_MS", "100".to_string()),
            ("AGGREGATOR_MAX_RETRY_BACKOFF_MS", "500".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// [`Self::aggregator_env`] at the aggregator's default batch settings, for benchmarks: the
    /// tests' 100 ms batch wait would flatter history freshness and cost more CPU per event.
    pub fn bench_aggregator_env(&self) -> Vec<(String, String)> {
        let mut envs = self.aggregator_env();
        envs.retain(|(k, _)| k != "AGGREGATOR_BATCH_MAX_WAIT_MS");
        envs
    }

    /// Environment variables that point an ingest process at this test's resources, on `port`.
    pub fn ingest_env(&self, port: u16) -> Vec<(String, String)> {
        let t = &self.topics;
        [
            ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
            ("INGEST_KAFKA__BROKERS", self.kafka.brokers.clone()),
            ("INGEST_CLICKHOUSE__URL", self.clickhouse.url.clone()),
            (
                "INGEST_CLICKHOUSE__DATABASE",
                self.clickhouse.database.clone(),
            ),
            ("INGEST_TOPICS__EVENTS", t.events.clone()),
            ("INGEST_TOPICS__STATE", t.state.clone()),
            ("INGEST_TOPICS__ALERTS", t.alerts.clone()),
            ("INGEST_TOPICS__SUBSCRIPTIONS", t.subscriptions.clone()),
            ("INGEST_TOPICS__REJECTED", t.rejected.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `SELECT count()`-style scalar query on this test's database.
    pub async fn scalar(&self, sql: &str) -> f64 {
        let v: f64 = self
            .ch()
            .query(sql)
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        v
    }

    /// Stores `n` events of `tenant` straight into `events_raw`, as a deployment's 35-day window
    /// holds them: random UUIDs, 10,000 customers, arrivals spread over the last 30 days and the
    /// events topic's partitions (the rollup views count them too). For the benchmarks.
    pub async fn store_random_events(&self, tenant: &str, n: u64) {
        self.ch()
            .query(&format!(
                "INSERT INTO events_raw (tenant, customer, meter, endpoint, id, source, time, \
                 received_at, quantity, unique_key, data, kafka_topic, kafka_partition, \
                 kafka_offset) \
                 SELECT '{tenant}', concat('cust_', toString(number % 10000)), 'api_call', \
                 'analyze', toString(generateUUIDv4()), 'stored', now() - (number % 30) * 86400, \
                 now() - (number % 30) * 86400, 1, '', '{{}}', '{topic}', number % {partitions}, \
                 number FROM numbers({n})",
                topic = self.topics.events,
                partitions = self.kafka.partitions,
            ))
            .execute()
            .await
            .expect("store random events");
    }

    /// Waits until `n` events are stored, then asserts each counts exactly once: in `events_raw`
    /// (as many rows as distinct ids), in every rollup (events and `total` quantity), and in the
    /// quota state published on the state topic (equal to ClickHouse's daily usage).
    pub async fn assert_stored_exactly(&self, n: u64, total: f64) {
        wait_until(Duration::from_secs(60), "every event stored", || async {
            (self.raw_counts().await.0 >= n).then_some(())
        })
        .await;
        // An insert's rows are visible in events_raw before its views have written the rollups (on
        // a loaded machine, for a while): wait for those too, then let the assertions below say
        // what is missing if they never get there.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for table in ROLLUP_TABLES {
            while self.rollup_totals(table).await.0 < n && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Give a wrongly duplicating pipeline the chance to show it.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(self.raw_counts().await, (n, n), "raw rows, distinct ids");
        for table in ROLLUP_TABLES {
            assert_eq!(self.rollup_totals(table).await, (n, total), "{table}");
        }
        // The quota state published on the state topic counts every event once as well.
        let expected = self.daily_usage().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let published = tokio::task::block_in_place(|| self.published_usage());
            if published == expected {
                break;
            }
            if std::time::Instant::now() > deadline {
                let wrong: Vec<String> = expected
                    .iter()
                    .filter(|(k, v)| published.get(*k) != Some(v))
                    .take(5)
                    .map(|(k, v)| format!("{k}: published {:?}, stored {v:?}", published.get(k)))
                    .collect();
                panic!(
                    "published quota state differs from ClickHouse's daily usage ({} keys stored, {} published), e.g. {wrong:?}",
                    expected.len(),
                    published.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Number of distinct (tenant, id) in events_raw and total rows (they must be equal).
    pub async fn raw_counts(&self) -> (u64, u64) {
        let rows: (u64, u64) = self
            .ch()
            .query("SELECT count(), uniqExact(tenant, id) FROM events_raw")
            .fetch_one()
            .await
            .expect("raw counts");
        rows
    }

    /// The quota state as published: the last usage record per (tenant, customer, meter, day) on
    /// the state topic, as "tenant/customer/meter/day" → (events, quantity).
    pub fn published_usage(&self) -> std::collections::BTreeMap<String, (u64, f64)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = schemas::kafka::client_config(&self.kafka)
            .set("group.id", format!("{}-state-reader", self.group))
            .set("enable.auto.commit", "false")
            .create()
            .expect("state reader");
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut remaining = 0;
        let mut highs = std::collections::HashMap::new();
        for p in 0..self.kafka.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topics.state, p, Duration::from_secs(10))
                .expect("state watermarks");
            if high > low {
                tpl.add_partition_offset(&self.topics.state, p, rdkafka::Offset::Offset(low))
                    .expect("partition");
                highs.insert(p, high);
                remaining += 1;
            }
        }
        let mut out = std::collections::BTreeMap::new();
        if remaining == 0 {
            return out;
        }
        consumer.assign(&tpl).expect("assign");
        let mut newest: std::collections::HashMap<String, (i64, (u64, f64))> = Default::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // Past the high watermarks, read on until the topic is quiet: the local broker reports
        // the watermark of a record batch's first record, not its last.
        while std::time::Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(300)) else {
                if remaining == 0 {
                    break;
                }
                continue;
            };
            if let Ok(schemas::quota::StateRecord::Usage(u)) =
                serde_json::from_slice(m.payload().unwrap_or_default())
            {
                // The newest record of a key is the one at the highest offset (the local broker
                // may hand a batch out again after a later one).
                let key = format!("{}/{}/{}/{}", u.tenant, u.customer, u.meter, u.day);
                let slot = newest.entry(key).or_insert((-1, (0, 0.0)));
                if m.offset() > slot.0 {
                    *slot = (m.offset(), (u.events, u.quantity));
                }
            }
            if highs
                .get(&m.partition())
                .is_some_and(|&h| m.offset() + 1 >= h)
            {
                highs.remove(&m.partition());
                remaining -= 1;
            }
        }
        assert_eq!(remaining, 0, "state topic not read to its end");
        out.extend(newest.into_iter().map(|(k, (_, v))| (k, v)));
        out
    }

    /// Daily usage in ClickHouse, keyed like [`Self::published_usage`].
    pub async fn daily_usage(&self) -> std::collections::BTreeMap<String, (u64, f64)> {
        let rows: Vec<(String, u64, f64)> = self
            .ch()
            .query(
                "SELECT concat(tenant, '/', customer, '/', meter, '/', toString(day)) AS k, \
                 sum(events), sum(quantity) FROM usage_daily GROUP BY k",
            )
            .fetch_all()
            .await
            .expect("daily usage");
        rows.into_iter().map(|(k, e, q)| (k, (e, q))).collect()
    }

    /// Sum of `events` and of `quantity` in a rollup table.
    pub async fn rollup_totals(&self, table: &str) -> (u64, f64) {
        let sql = format!("SELECT sum(events), sum(quantity) FROM {table}");
        let t: (u64, f64) = self
            .ch()
            .query(&sql)
            .fetch_one()
            .await
            .expect("rollup totals");
        t
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed: keeping database {} and topics {}* for inspection",
                self.clickhouse.database, self.topics.events
            );
            return;
        }
        let url = self.clickhouse.url.clone();
        let db = self.clickhouse.database.clone();
        // Best effort, on a separate thread: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let c = clickhouse::Client::default()
                        .with_url(url)
                        .with_validation(false);
                    let _ = c
                        .query(&format!("DROP DATABASE IF EXISTS `{db}`"))
                        .execute()
                        .await;
                });
            }
        })
        .join();
    }
}

/// A service running in this process.
#[derive(Debug)]
pub struct Running {
    /// Base URL.
    pub url: String,
    /// Stops it.
    pub cancel: CancellationToken,
    /// Its task.
    pub task: JoinHandle<Result<(), String>>,
}

impl Running {
    /// Cancels and waits for a clean stop.
    pub async fn stop(self) {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        assert!(
            matches!(r, Ok(Ok(Ok(())))),
            "service did not stop cleanly: {r:?}"
        );
    }
}

/// One usage event as a client would send it.
pub fn event(id: &str, customer: &str, endpoint: &str, quantity: u32) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "test",
        "type": "api_call",
        "subject": customer,
        "data": {"endpoint": endpoint, "quantity": quantity},
    })
}

/// `n` distinct events over `customers` customers and the four seed endpoints. Returns them and
/// the total quantity.
pub fn events(prefix: &str, n: usize, customers: usize) -> (Vec<Value>, f64) {
    let endpoints = ["analyze", "redact", "report", "drill"];
    let mut total = 0.0;
    let v = (0..n)
        .map(|i| {
            let q = (i % 3 + 1) as u32;
            total += f64::from(q);
            event(
                &format!("{prefix}-{i}"),
                &format!("cust_{}", i % customers),
                endpoints[i % 4],
                q,
            )
        })
        .collect();
    (v, total)
}

/// Posts `events` in batches of `batch` until each batch is accepted (retrying 503s like a client).
pub async fn send_all(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    events: &[Value],
    batch: usize,
) {
    for chunk in events.chunks(batch) {
        let body = serde_json::to_vec(chunk).expect("events as JSON");
        post_until_accepted(http, url, key, bytes::Bytes::from(body)).await;
    }
}

/// Posts one JSON body to `/v1/events` until it is accepted (202), retrying 503s and transport
/// errors like a client does (same body, so the same ids count once).
pub async fn post_until_accepted(http: &reqwest::Client, url: &str, key: &str, body: bytes::Bytes) {
    let mut tries = 0;
    loop {
        tries += 1;
        let r = http
            .post(format!("{url}/v1/events"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 202 => break,
            Ok(r) if r.status() == 503 && tries < 600 => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(_) if tries < 600 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("batch not accepted: {other:?}"),
        }
    }
}

/// Writes a benchmark's results as JSON to `.data/bench/<name>.json` and says where.
pub fn bench_output(name: &str, value: &Value) {
    let dir = workspace_root().join(".data/bench");
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => println!("results written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

/// A workspace binary run as its own process by a benchmark, its log under `.data/bench-logs/`
/// (`RUST_LOG` from `BENCH_SERVICE_LOG`, default `warn`); stopped with SIGTERM, killed if dropped
/// while still running.
#[derive(Debug)]
pub struct Service {
    /// The binary's name (`ingest`, `aggregator`).
    pub name: &'static str,
    child: std::process::Child,
    /// The highest peak RSS (kB) sampled so far.
    pub peak_rss_kb: u64,
}

impl Service {
    /// Starts the binary `name` with `envs`.
    pub fn spawn(name: &'static str, envs: Vec<(String, String)>) -> Self {
        let log = std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into());
        let child = spawn_binary(
            name,
            envs,
            &log,
            "bench-logs",
            &format!("{name}-{}", servers::free_port()),
        );
        Self {
            name,
            child,
            peak_rss_kb: 0,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Samples the peak resident set size (kB).
    pub fn sample(&mut self) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("VmHWM:") {
                let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                self.peak_rss_kb = self.peak_rss_kb.max(kb);
            }
        }
    }

    /// Sends SIGTERM, waits for the exit and returns (name, peak RSS in kB).
    pub fn stop(mut self) -> (String, u64) {
        self.sample();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        (self.name.to_string(), self.peak_rss_kb)
    }
}

/// A benchmark that panics (or returns early) must not leave its services running: they would
/// skew the next benchmark's CPU figures.
impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time (user + system, in clock ticks of 10 ms) the process `pid` has used so far.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesized command name: state is the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}
