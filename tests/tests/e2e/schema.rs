//! Schema contract on the real ClickHouse: row structs against `system.columns`, binary round trips
//! cross-checked as JSON, migrations (idempotent, recorded, edits refused) and the DDL and analyst
//! queries on modern ClickHouse (chdb) and on the local 18.16 server.

use std::process::Output;

use clickhouse::Row;
use schemas::catalog::Aggregation;
use schemas::config::ClickHouseConfig;
use schemas::migrate::{self, MIGRATIONS};
use schemas::rows::{
    AlertDeliveryRow, AlertRow, ApiKeyRow, DeadLetterRow, OffsetRow, RawEventRow, SubscriptionRow,
    Table,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tests::TestEnv;
use time::OffsetDateTime;
use time::macros::datetime;

/// Every table the non-modern migrations create (the materialized views are not listed here).
const TABLES: &[&str] = &[
    "events_raw",
    "event_ids",
    "dead_letters",
    "consumer_offsets",
    "usage_minute",
    "usage_hourly",
    "usage_daily",
    "usage_monthly",
    "usage_hourly_states",
    "api_keys",
    "alert_deliveries",
    "billing_customers",
    "billing_subscriptions",
    "billing_webhook_events",
    "billing_usage_reports",
    "billing_usage_differences",
    "billing_usage_revisions",
    "schema_migrations",
];

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// Runs `sql` and returns its `JSONEachRow` output, one `Value` per row, 64-bit ints unquoted.
async fn json_rows(client: &clickhouse::Client, sql: &str) -> Vec<Value> {
    let bytes = client
        .query(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = std::str::from_utf8(&bytes).expect("JSONEachRow output is UTF-8");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{sql}: bad JSON line {l:?}: {e}"))
        })
        .collect()
}

/// `(name, type)` of each column of `table` in definition order, from `system.columns`.
///
/// 18.16's `system.columns` has no `position` column: then the natural order is used, and it is
/// checked against `DESCRIBE TABLE` (which lists columns in definition order).
async fn server_columns(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Vec<(String, String)> {
    let has_position: u64 = client
        .query(
            "SELECT count() FROM system.columns \
             WHERE database = 'system' AND table = 'columns' AND name = 'position'",
        )
        .fetch_one()
        .await
        .expect("system.columns has position?");
    let order = if has_position > 0 {
        " ORDER BY position"
    } else {
        ""
    };
    let columns: Vec<(String, String)> = client
        .query(&format!(
            "SELECT name, type FROM system.columns WHERE database = ? AND table = ?{order}"
        ))
        .bind(database)
        .bind(table)
        .fetch_all()
        .await
        .expect("system.columns");
    if has_position == 0 {
        let described: Vec<(String, String)> =
            json_rows(client, &format!("DESCRIBE TABLE `{database}`.`{table}`"))
                .await
                .iter()
                .map(|r| {
                    (
                        r["name"].as_str().expect("DESCRIBE name").to_string(),
                        r["type"].as_str().expect("DESCRIBE type").to_string(),
                    )
                })
                .collect();
        assert_eq!(
            columns, described,
            "{table}: system.columns (no `position` on this server) is not in definition order"
        );
    }
    columns
}

/// Compares a declared `(name, type)` list with the server's columns and the struct's field names.
fn compare_columns(
    table: &str,
    declared: &[(&str, &str)],
    server: &[(String, String)],
    struct_fields: &[&str],
) -> Result<(), String> {
    let declared_owned: Vec<(String, String)> = declared
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    if declared_owned != server {
        return Err(format!(
            "{table}: Table::COLUMNS differs from system.columns\n  declared: {declared_owned:?}\n  server:   {server:?}"
        ));
    }
    let names: Vec<&str> = declared.iter().map(|(n, _)| *n).collect();
    if names != struct_fields {
        return Err(format!(
            "{table}: Table::COLUMNS names differ from the struct fields\n  declared: {names:?}\n  struct:   {struct_fields:?}"
        ));
    }
    Ok(())
}

async fn check_table<T: Table>(env: &TestEnv) {
    let server = server_columns(&env.ch(), &env.clickhouse.database, T::TABLE).await;
    assert!(
        !server.is_empty(),
        "{}: table not found in system.columns",
        T::TABLE
    );
    if let Err(e) = compare_columns(T::TABLE, T::COLUMNS, &server, <T as Row>::COLUMN_NAMES) {
        panic!("{e}");
    }
    // The comparison itself must notice a drift: change the type of the last column.
    let mut drifted: Vec<(&str, &str)> = T::COLUMNS.to_vec();
    let last = drifted.last_mut().expect("a table has columns");
    last.1 = if last.1 == "String" {
        "UInt64"
    } else {
        "String"
    };
    assert!(
        compare_columns(T::TABLE, &drifted, &server, <T as Row>::COLUMN_NAMES).is_err(),
        "{}: a drifted type was not detected",
        T::TABLE
    );
}

async fn insert_one<T>(client: &clickhouse::Client, row: &T)
where
    T: Table + clickhouse::RowOwned + clickhouse::RowWrite,
{
    let mut insert = client.insert::<T>(T::TABLE).await.expect("start insert");
    insert.write(row).await.expect("write row");
    insert.end().await.expect("end insert");
}

async fn read_back<T>(client: &clickhouse::Client) -> Vec<T>
where
    T: Table + clickhouse::RowOwned + clickhouse::RowRead,
{
    client
        .query(&format!("SELECT ?fields FROM {}", T::TABLE))
        .fetch_all::<T>()
        .await
        .unwrap_or_else(|e| panic!("read back {}: {e}", T::TABLE))
}

/// A fresh database that is dropped when the test passes and kept (named on stderr) when it fails.
struct FreshDb {
    config: ClickHouseConfig,
}

impl FreshDb {
    async fn create(prefix: &str) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let config = ClickHouseConfig {
            url: tests::clickhouse_url(),
            database: format!("t_{prefix}_{}", &suffix[..8]),
            ..ClickHouseConfig::default()
        };
        config
            .server_client()
            .query(&format!("CREATE DATABASE `{}`", config.database))
            .execute()
            .await
            .expect("create database");
        Self { config }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: keeping database {}", self.config.database);
            return;
        }
        let client = self.config.server_client();
        let db = self.config.database.clone();
        // Drop runs inside the test's runtime: use a separate thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = client
                        .query(&format!("DROP DATABASE IF EXISTS `{db}`"))
                        .execute()
                        .await;
                });
            }
        })
        .join();
    }
}

async fn show_tables(client: &clickhouse::Client) -> Vec<String> {
    client
        .query("SHOW TABLES")
        .fetch_all::<String>()
        .await
        .expect("SHOW TABLES")
}

async fn show_columns(client: &clickhouse::Client, table: &str) -> Vec<String> {
    client
        .query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = ?")
        .bind(table)
        .fetch_all::<String>()
        .await
        .expect("system.columns")
}

fn report(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_structs_match_system_columns() {
    let env = TestEnv::new("schema_cols").await;
    check_table::<RawEventRow>(&env).await;
    check_table::<DeadLetterRow>(&env).await;
    check_table::<OffsetRow>(&env).await;
    check_table::<ApiKeyRow>(&env).await;
    check_table::<schemas::rows::ApiKeyUsageRow>(&env).await;
    check_table::<SubscriptionRow>(&env).await;
    check_table::<AlertRow>(&env).await;
    check_table::<AlertDeliveryRow>(&env).await;
    check_table::<schemas::rows::BillingCustomerRow>(&env).await;
    check_table::<schemas::rows::BillingSubscriptionRow>(&env).await;
    check_table::<schemas::rows::BillingWebhookEventRow>(&env).await;
    check_table::<schemas::rows::BillingUsageReportRow>(&env).await;
    check_table::<schemas::rows::BillingUsageDifferenceRow>(&env).await;
    check_table::<schemas::rows::BillingUsageRevisionRow>(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_round_trip_through_clickhouse() {
    let env = TestEnv::new("schema_roundtrip").await;
    let client = env.ch();
    let text = "Zoë \"quoted\" 'single' \\ back\tslash\nnew line — 日本語 ✓";
    let t1: OffsetDateTime = datetime!(2031-07-15 12:34:56 UTC);
    let t2: OffsetDateTime = datetime!(2031-07-15 12:35:07 UTC);

    let raw = RawEventRow {
        tenant: "tenant_ü".into(),
        customer: "cust \"ß\"".into(),
        meter: "api_call".into(),
        endpoint: "/v1/séarch?q='x'".into(),
        id: "evt_0123456789abcdef".into(),
        source: text.into(),
        time: t1,
        received_at: t2,
        quantity: 1234.5678,
        unique_key: "user_ключ".into(),
        data: r#"{"endpoint":"/v1/séarch","quantity":1234.5678,"note":"it's \"fine\""}"#.into(),
        kafka_topic: "usage-events".into(),
        kafka_partition: u32::MAX - 1,
        kafka_offset: u64::MAX - 1,
        aggregation: Some(Aggregation::UniqueCount),
        datacontenttype: "application/vnd.acme+json; charset=utf-8".into(),
        dataschema: "https://acme.example/schemas/usage-ü.json".into(),
        time_rfc3339: "2031-07-15T12:34:56.123456789Z".into(),
        extensions: r#"{"note":"it's \"fine\"","priority":3,"urgent":true}"#.into(),
    };
    let dead = DeadLetterRow {
        tenant: "tenant_ü".into(),
        received_at: t2,
        stage: "aggregator".into(),
        reason_code: "malformed_json".into(),
        reason: text.into(),
        event_id: "evt_dead_☠".into(),
        payload: r#"{"broken": "'\"}"#.into(),
        kafka_topic: "usage-rejected".into(),
        kafka_partition: u32::MAX - 2,
        kafka_offset: u64::MAX - 3,
    };
    let offset = OffsetRow {
        kafka_topic: "usage-events".into(),
        kafka_partition: u32::MAX - 4,
        kafka_offset: 9_007_199_254_740_993, // 2^53 + 1: not representable as f64
    };
    let key = ApiKeyRow {
        key_hash: "ab".repeat(32),
        key_prefix: "mk_live_Zx".into(),
        tenant: "tenant_ü".into(),
        customer: "cust \"ß\"".into(),
        scopes: vec!["ingest".into(), "ad'min \"✓\"".into()],
        name: text.into(),
        revoked: 1,
        updated_at: t1,
        expires_at: t1,
    };

    insert_one(&client, &raw).await;
    insert_one(&client, &dead).await;
    insert_one(&client, &offset).await;
    insert_one(&client, &key).await;

    assert_eq!(read_back::<RawEventRow>(&client).await, vec![raw.clone()]);
    assert_eq!(
        read_back::<DeadLetterRow>(&client).await,
        vec![dead.clone()]
    );
    assert_eq!(read_back::<OffsetRow>(&client).await, vec![offset.clone()]);
    assert_eq!(read_back::<ApiKeyRow>(&client).await, vec![key.clone()]);

    // The same rows as JSON: a binary misdecode that happens to round-trip would show here.
    let raw_json = json_rows(&client, "SELECT * FROM events_raw").await;
    assert_eq!(
        raw_json,
        vec![json!({
            "tenant": raw.tenant,
            "customer": raw.customer,
            "meter": raw.meter,
            "endpoint": raw.endpoint,
            "id": raw.id,
            "source": text,
            "time": "2031-07-15 12:34:56",
            "received_at": "2031-07-15 12:35:07",
            "quantity": 1234.5678,
            "unique_key": raw.unique_key,
            "data": raw.data,
            "kafka_topic": "usage-events",
            "kafka_partition": u32::MAX - 1,
            "kafka_offset": u64::MAX - 1,
            "aggregation": "unique_count",
            "datacontenttype": raw.datacontenttype,
            "dataschema": raw.dataschema,
            "time_rfc3339": raw.time_rfc3339,
            "extensions": raw.extensions,
        })],
        "events_raw as JSON"
    );
    let dead_json = json_rows(&client, "SELECT * FROM dead_letters").await;
    assert_eq!(
        dead_json,
        vec![json!({
            "tenant": dead.tenant,
            "received_at": "2031-07-15 12:35:07",
            "stage": "aggregator",
            "reason_code": "malformed_json",
            "reason": text,
            "event_id": dead.event_id,
            "payload": dead.payload,
            "kafka_topic": "usage-rejected",
            "kafka_partition": u32::MAX - 2,
            "kafka_offset": u64::MAX - 3,
        })],
        "dead_letters as JSON"
    );
    let offset_json = json_rows(&client, "SELECT * FROM consumer_offsets").await;
    assert_eq!(
        offset_json,
        vec![json!({
            "kafka_topic": "usage-events",
            "kafka_partition": u32::MAX - 4,
            "kafka_offset": 9_007_199_254_740_993_u64,
        })],
        "consumer_offsets as JSON"
    );
    let key_json = json_rows(&client, "SELECT * FROM api_keys").await;
    assert_eq!(
        key_json,
        vec![json!({
            "key_hash": key.key_hash,
            "key_prefix": "mk_live_Zx",
            "tenant": key.tenant,
            "customer": key.customer,
            "scopes": ["ingest", "ad'min \"✓\""],
            "name": text,
            "revoked": 1,
            "updated_at": "2031-07-15 12:34:56",
            "expires_at": "2031-07-15 12:34:56",
        })],
        "api_keys as JSON"
    );

    // The old dedup index's view is gone (0009): the aggregator loads its index from events_raw.
    let ids = json_rows(&client, "SELECT * FROM event_ids").await;
    assert!(ids.is_empty(), "event_ids is no longer fed: {ids:?}");
}

#[derive(Debug, Row, Deserialize)]
struct Recorded {
    version: u32,
    name: String,
    checksum: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_concurrently_on_a_fresh_database() {
    let env = TestEnv::new("schema_concurrent").await;
    // Three services starting at once on a database none of them has seen.
    let fresh = ClickHouseConfig {
        database: format!("{}_fresh", env.clickhouse.database),
        ..env.clickhouse.clone()
    };
    let (a, b, c) = tokio::join!(
        migrate::run(&fresh),
        migrate::run(&fresh),
        migrate::run(&fresh)
    );
    for (i, r) in [a, b, c].into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("runner {i}: {e}"));
    }
    let client = fresh.client();
    let versions: Vec<u32> = client
        .query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .expect("schema_migrations");
    let major = migrate::server_major(&client).await.expect("version");
    let expected: Vec<u32> = MIGRATIONS
        .iter()
        .filter(|m| !m.modern_only || major >= migrate::MODERN_MAJOR)
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, expected);
    let columns = show_columns(&client, "events_raw").await;
    assert!(columns.iter().any(|c| c == "aggregation"), "{columns:?}");
    fresh
        .server_client()
        .query(&format!("DROP DATABASE `{}`", fresh.database))
        .execute()
        .await
        .expect("drop the fresh database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_recorded() {
    let env = TestEnv::new("schema_migrate").await;
    let client = env.ch();
    let major = migrate::server_major(&client)
        .await
        .expect("server version");

    let again = migrate::run(&env.clickhouse).await.expect("second run");
    assert_eq!(
        again,
        Vec::<u32>::new(),
        "a second run applied migrations again"
    );

    let recorded: Vec<Recorded> = client
        .query("SELECT ?fields FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .expect("schema_migrations");
    let expected: Vec<(u32, String, String)> = MIGRATIONS
        .iter()
        .filter(|m| !m.modern_only || major >= migrate::MODERN_MAJOR)
        .map(|m| (m.version, m.name.to_string(), m.checksum()))
        .collect();
    let got: Vec<(u32, String, String)> = recorded
        .into_iter()
        .map(|r| (r.version, r.name, r.checksum))
        .collect();
    assert_eq!(
        got, expected,
        "schema_migrations rows (server major {major})"
    );
    for m in MIGRATIONS {
        assert_eq!(m.checksum().len(), 64, "{}: SHA-256 hex", m.name);
    }

    let tables = show_tables(&client).await;
    for t in TABLES {
        assert!(
            tables.iter().any(|x| x == t),
            "table {t} missing: {tables:?}"
        );
    }
}

#[derive(Debug, Row, Serialize)]
struct AppliedRow {
    version: u32,
    name: String,
    checksum: String,
    #[serde(with = "clickhouse::serde::time::datetime")]
    applied_at: OffsetDateTime,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_applied_migration_is_refused() {
    let db = FreshDb::create("schema_edited").await;
    let client = db.config.client();
    // Exactly the table migrate.rs creates.
    client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, \
             checksum String, applied_at DateTime('UTC')) ENGINE = MergeTree() ORDER BY version",
        )
        .execute()
        .await
        .expect("create schema_migrations");
    let first = &MIGRATIONS[0];
    let wrong = "0".repeat(64);
    assert_ne!(first.checksum(), wrong);
    let mut insert = client
        .insert::<AppliedRow>("schema_migrations")
        .await
        .expect("start insert");
    insert
        .write(&AppliedRow {
            version: first.version,
            name: first.name.into(),
            checksum: wrong.clone(),
            applied_at: OffsetDateTime::now_utc(),
        })
        .await
        .expect("write");
    insert.end().await.expect("end insert");

    let result = migrate::run(&db.config).await;
    match result {
        Err(schemas::Error::MigrationChanged {
            version,
            name,
            applied,
            current,
        }) => {
            assert_eq!(version, first.version);
            assert_eq!(name, first.name);
            assert_eq!(applied, wrong);
            assert_eq!(current, first.checksum());
        }
        other => panic!("expected MigrationChanged for version 1, got {other:?}"),
    }
    // Refused before any DDL ran.
    assert_eq!(
        show_tables(&client).await,
        vec!["schema_migrations".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_and_analyst_queries_run_on_modern_clickhouse_and_on_18_16() {
    let root = tests::workspace_root();
    let url = tests::clickhouse_url();
    for args in [vec![], vec!["--server".to_string(), url]] {
        let what = format!("python3 scripts/chdb_check.py {}", args.join(" "));
        let out = tokio::process::Command::new("python3")
            .arg("scripts/chdb_check.py")
            .args(&args)
            .current_dir(&root)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(out.status.success(), "{}", report(&what, &out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("# all migrations and"),
            "{}",
            report(&format!("{what}: no success line"), &out)
        );
    }
}
