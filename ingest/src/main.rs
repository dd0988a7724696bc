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
        } => {
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s.trim()).with_context(|| format!("unknown scope {s:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if config.clickhouse.migrate {
                schemas::migrate::run(&config.clickhouse).await?;
            }
            let key = platform::keys::create_key(
                &config.clickhouse.client(),
                &tenant,
                customer.as_deref(),
                &scopes,
                &name,
            )
            .await?;
            println!("{key}");
        }
        Command::Serve => {
            let app = App::build(config).await?;
            let cancel = platform::shutdown::on_signal();
            app.run(cancel).await?;
        }
    }
    Ok(())
}
