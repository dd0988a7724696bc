//! The aggregator binary: consume, check the config, or run migrations.

#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: the intake allocates per event (JSON values, strings), and
/// glibc's allocator was a quarter of the CPU in the throughput benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use aggregator::{App, Config};
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Folds usage events from Kafka into ClickHouse")]
struct Cli {
    /// TOML config file (environment variables `AGGREGATOR_*` override it).
    #[arg(long, env = "AGGREGATOR_CONFIG_FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and aggregate (the default).
    Serve,
    /// Validate the configuration and print it (secrets redacted).
    CheckConfig,
    /// Apply ClickHouse migrations.
    Migrate,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    schemas::logs::init("info,rdkafka=warn");
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
        Command::Serve => {
            let app = App::build(config).await?;
            let cancel = schemas::shutdown::on_signal();
            app.run(cancel).await?;
        }
    }
    Ok(())
}
