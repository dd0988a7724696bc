//! Connection settings shared by every service (each service embeds these in its own config).

use serde::Deserialize;

/// How to reach the Kafka-API broker.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port`).
    pub brokers: String,
    /// Partitions per topic when the service creates missing topics.
    pub partitions: i32,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Compression of the messages this service produces (`none`, `lz4`, `zstd`, `snappy`, `gzip`;
    /// default `lz4`): the ingest's usage-event batches, the aggregator's quota state and alerts.
    /// Every consumer decompresses what it reads, but the broker handles a quarter of the bytes:
    /// on the local broker `none` cost more CPU in total than `lz4` (see the README's benchmark).
    pub compression: Compression,
    /// Replicas of each topic the service creates (1 for the local broker; 3 for a production
    /// cluster). Checked at start against the cluster's broker count.
    pub replication_factor: i32,
    /// `min.insync.replicas` of each topic the service creates (0: the broker's default). With
    /// the producers' `acks=all`, a write is acknowledged once this many replicas have it; at most
    /// `replication_factor`.
    pub min_insync_replicas: i32,
}

/// A Kafka compression codec (librdkafka's `compression.type`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4: cheap to compress and decompress.
    #[default]
    Lz4,
    /// Zstandard: smaller, costlier.
    Zstd,
    /// Snappy.
    Snappy,
    /// Gzip: smallest, costliest.
    Gzip,
}

impl Compression {
    /// The codec's name in librdkafka's `compression.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
            Self::Snappy => "snappy",
            Self::Gzip => "gzip",
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            partitions: 6,
            create_topics: true,
            compression: Compression::Lz4,
            replication_factor: 1,
            min_insync_replicas: 0,
        }
    }
}

/// How to reach ClickHouse (HTTP interface).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP URL of the server.
    pub url: String,
    /// Database holding the metering tables (created by the migrations).
    pub database: String,
    /// User name.
    pub user: String,
    /// Password (may be empty on a local server).
    pub password: secrecy::SecretString,
    /// Apply pending migrations at start.
    pub migrate: bool,
    /// Compress inserts and results (LZ4). Worth it over a slow network; on loopback or a fast
    /// local network it only costs CPU on both ends (off by default).
    pub compression: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "metering".into(),
            user: "default".into(),
            password: secrecy::SecretString::from(""),
            migrate: true,
            compression: false,
        }
    }
}

impl ClickHouseConfig {
    /// A client for the configured database (validation off: see INFRA.md, 18.16).
    pub fn client(&self) -> clickhouse::Client {
        use secrecy::ExposeSecret;
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_database(&self.database)
            .with_validation(false)
            .with_compression(if self.compression {
                clickhouse::Compression::Lz4
            } else {
                clickhouse::Compression::None
            });
        let password = self.password.expose_secret();
        if !password.is_empty() {
            client = client.with_password(password);
        }
        client
    }

    /// A client without a database, for `CREATE DATABASE`.
    pub fn server_client(&self) -> clickhouse::Client {
        self.client().with_database("default")
    }
}

/// Loads a service config: defaults, then the TOML file (if given), then `PREFIX_*` environment
/// variables with `__` between nesting levels (`INGEST_KAFKA__BROKERS`). Unknown keys are errors.
pub fn load<T: serde::de::DeserializeOwned>(
    env_prefix: &str,
    file: Option<&std::path::Path>,
) -> Result<T, Box<figment::Error>> {
    use figment::providers::{Env, Format, Toml};
    let mut f = figment::Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(Box::new(figment::Error::from(format!(
                "config file {} does not exist",
                path.display()
            ))));
        }
        f = f.merge(Toml::file(path));
    }
    f.merge(Env::prefixed(env_prefix).split("__"))
        .extract()
        .map_err(Box::new)
}
