//! Numbered ClickHouse migrations and a runner that is safe to run twice (or concurrently).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ClickHouseConfig;
use crate::{Error, Result};

/// One numbered SQL file from `schemas/migrations/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Number from the file name; applied in ascending order.
    pub version: u32,
    /// File name.
    pub name: &'static str,
    /// The SQL: statements separated by `;` at the end of a line.
    pub sql: &'static str,
    /// Production-only DDL (`*.modern.sql`): applied on ClickHouse >= 21 only.
    pub modern_only: bool,
}

macro_rules! migration {
    ($version:literal, $name:literal, $modern:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/", $name)),
            modern_only: $modern,
        }
    };
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_events.sql", false),
    migration!(2, "0002_rollups.sql", false),
    migration!(3, "0003_api_keys.sql", false),
    migration!(4, "0004_retention.modern.sql", true),
    migration!(5, "0005_quota.sql", false),
    migration!(6, "0006_alert_deliveries.sql", false),
    migration!(7, "0007_billing.sql", false),
    migration!(8, "0008_states_by_aggregation.sql", false),
    migration!(9, "0009_dedup_from_raw_events.sql", false),
    migration!(10, "0010_usage_revisions.sql", false),
    migration!(11, "0011_cloudevents_attributes.sql", false),
    migration!(12, "0012_key_lifecycle.sql", false),
    migration!(13, "0013_customer_emails.sql", false),
    migration!(14, "0014_dashboard_link_claims.sql", false),
];

/// Oldest ClickHouse major version that gets the `modern_only` migrations.
pub const MODERN_MAJOR: u32 = 21;

impl Migration {
    /// SHA-256 of the file, recorded when applied; an edited applied migration is an error.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// The statements of the file, comments removed.
    pub fn statements(&self) -> Vec<String> {
        split_statements(self.sql)
    }
}

/// Splits SQL text into statements at `;` line ends, dropping `--` comment lines.
pub fn split_statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
struct Applied {
    version: u32,
    name: String,
    checksum: String,
    #[serde(with = "clickhouse::serde::time::datetime")]
    applied_at: time::OffsetDateTime,
}

/// Checks that a database name is a plain identifier (it is interpolated into DDL).
pub fn check_identifier(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidIdentifier(name.into()))
    }
}

/// The major version of the server (18 for the local 18.16).
pub async fn server_major(client: &clickhouse::Client) -> Result<u32> {
    let version: String = client.query("SELECT version()").fetch_one().await?;
    Ok(version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0))
}

/// Creates the database if needed and applies pending migrations. Returns the versions applied now.
pub async fn run(config: &ClickHouseConfig) -> Result<Vec<u32>> {
    check_identifier(&config.database)?;
    config
        .server_client()
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS `{}`",
            config.database
        ))
        .execute()
        .await?;
    let client = config.client();
    client
        .query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, \
             checksum String, applied_at DateTime('UTC')) ENGINE = MergeTree() ORDER BY version",
        )
        .execute()
        .await?;
    let major = server_major(&client).await?;
    let applied: Vec<Applied> = client
        .query("SELECT version, any(name), any(checksum), min(applied_at) FROM schema_migrations GROUP BY version")
        .fetch_all()
        .await?;
    let mut done = Vec::new();
    for m in MIGRATIONS {
        if let Some(a) = applied.iter().find(|a| a.version == m.version) {
            if a.checksum != m.checksum() {
                return Err(Error::MigrationChanged {
                    version: m.version,
                    name: m.name.into(),
                    applied: a.checksum.clone(),
                    current: m.checksum(),
                });
            }
            continue;
        }
        if m.modern_only && major < MODERN_MAJOR {
            tracing::info!(
                version = m.version,
                name = m.name,
                major,
                "skipping production-only migration"
            );
            continue;
        }
        for statement in m.statements() {
            match client.query(&statement).execute().await {
                Ok(()) => {}
                // Another runner applied this `ADD COLUMN` first (18.16 has no `IF NOT EXISTS`).
                Err(e) if column_added_already(&statement, &e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut insert = client.insert::<Applied>("schema_migrations").await?;
        insert
            .write(&Applied {
                version: m.version,
                name: m.name.into(),
                checksum: m.checksum(),
                applied_at: time::OffsetDateTime::now_utc(),
            })
            .await?;
        insert.end().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        done.push(m.version);
    }
    Ok(done)
}

/// Whether `error` says that the column `statement` adds exists already: a concurrent runner
/// applied the same migration first. Any other failure is a real one.
fn column_added_already(statement: &str, error: &clickhouse::error::Error) -> bool {
    statement.contains(" ADD COLUMN ")
        && error
            .to_string()
            .contains("column with this name already exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_split_cleanly() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
            assert_eq!(m.modern_only, m.name.ends_with(".modern.sql"));
            for s in m.statements() {
                assert!(!s.contains(';'), "unsplit statement in {}: {s}", m.name);
                // Safe to run twice: creations, alterations, and drops only if they exist.
                assert!(
                    s.starts_with("CREATE")
                        || s.starts_with("ALTER")
                        || s.starts_with("DROP TABLE IF EXISTS"),
                    "{}: {s}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("t_abc_123").is_ok());
        for bad in ["", "1abc", "a-b", "a`b", "a b"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
