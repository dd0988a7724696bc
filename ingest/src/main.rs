//! The ingest binary: serve the API, check the config, run migrations, create API keys.

#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: the intake allocates per event (JSON values, strings), and
/// glibc's allocator was a quarter of the CPU in the throughput benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ingest::{App, Config};
use platform::principal::Scope;

#[derive(Parser)]
#[command(about = "Usage-event intake API")]
struct Cli {
    /// TOML config file (environment variables `INGEST_*` override it).
    #[arg(long, env = "INGEST_CONFIG_FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Validate the configuration and print it (secrets redacted).
    CheckConfig,
    /// Apply ClickHouse migrations.
    Migrate,
    /// Create an API key and print it (shown once).
    CreateKey {
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Scopes: ingest, read, admin (comma separated).
        #[arg(long, value_delimiter = ',', default_value = "ingest,read")]
        scopes: Vec<String>,
        /// Restrict the key to one customer.
        #[arg(long)]
        customer: Option<String>,
        /// A label.
        #[arg(long, default_value = "")]
        name: String,
        /// The key stops working after this many days (never by default).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List a tenant's keys (prefix, scopes, expiry, revocation, last use; never the secret).
    ListKeys {
        /// Tenant (every tenant when absent).
        #[arg(long)]
        tenant: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its prefix (as listed); every instance refuses it within a second.
    RevokeKey {
        /// Tenant of the key.
        #[arg(long)]
        tenant: String,
        /// The key's first 10 characters (`mk_…`), as `list-keys` shows them.
        #[arg(long)]
        prefix: String,
    },
    /// Rotate a key: print a new key with the same tenant, customer, scopes and name; the old one
    /// keeps working for the grace period, then expires.
    RotateKey {
        /// Tenant of the key.
        #[arg(long)]
        tenant: String,
        /// The old key's prefix.
        #[arg(long)]
        prefix: String,
        /// Seconds both keys work (one day by default).
        #[arg(long, default_value_t = 86_400)]
        grace_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::logs::init("info,rdkafka=warn");
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            schemas::Catalog::load(config.catalog.as_deref()).context("loading catalog")?;
            println!("{config:#?}");
            println!("configuration OK");
        }
        Command::Migrate => {
            let applied = schemas::migrate::run(&config.clickhouse).await?;
            println!("applied migrations: {applied:?}");
        }
        Command::CreateKey {
            tenant,
            scopes,
            customer,
            name,
            expires_in_days,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s.trim()).with_context(|| format!("unknown scope {s:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if config.clickhouse.migrate {
                schemas::migrate::run(&config.clickhouse).await?;
            }
            let expires = expires_in_days
                .map(|d| time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(d)));
            let key = platform::keys::create_key_expiring(
                &config.clickhouse.client(),
                &tenant,
                customer.as_deref(),
                &scopes,
                &name,
                expires,
            )
            .await?;
            println!("{key}");
        }
        Command::ListKeys { tenant, json } => {
            let keys =
                platform::keys::list_keys(&config.clickhouse.client(), tenant.as_deref()).await?;
            let when = |t: Option<time::OffsetDateTime>| {
                t.and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| "-".into())
            };
            for k in &keys {
                if json {
                    println!("{}", serde_json::to_string(k)?);
                } else {
                    println!(
                        "{}  {}  {}  {}  {}  expires {}  last used {}  {}",
                        k.prefix,
                        k.tenant,
                        k.customer.as_deref().unwrap_or("*"),
                        k.scopes.join(","),
                        if k.revoked { "revoked" } else { "live" },
                        when(k.expires_at),
                        when(k.last_used_at),
                        k.name
                    );
                }
            }
        }
        Command::RevokeKey { tenant, prefix } => {
            let k =
                platform::keys::revoke_key(&config.clickhouse.client(), &tenant, &prefix).await?;
            println!("revoked {} of tenant {}", k.prefix, k.tenant);
        }
        Command::RotateKey {
            tenant,
            prefix,
            grace_secs,
        } => {
            let key = platform::keys::rotate_key(
                &config.clickhouse.client(),
                &tenant,
                &prefix,
                std::time::Duration::from_secs(grace_secs),
            )
            .await?;
            println!("{key}");
            eprintln!("the old key {prefix} keeps working for {grace_secs} s");
        }
        Command::Serve => {
            let app = App::build(config).await?;
            let cancel = platform::shutdown::on_signal();
            app.run(cancel).await?;
        }
    }
    Ok(())
}
