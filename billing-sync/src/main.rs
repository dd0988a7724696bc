//! The billing-sync binary: serve (the default), check the config, or run migrations.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use billing_sync::{App, Config};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Stripe billing sync: subscriptions, checkout, portal, webhooks, metered usage")]
struct Cli {
    /// TOML config file (environment variables `BILLING_*` override it).
    #[arg(long, env = "BILLING_CONFIG_FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run the background jobs (the default).
    Serve,
    /// Validate the configuration and print it (secrets redacted).
    CheckConfig,
    /// Apply ClickHouse migrations.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::logs::init("info,rdkafka=warn");
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            let catalog =
                schemas::Catalog::load(config.catalog.as_deref()).context("loading catalog")?;
            let plans = billing_sync::plans::Plans::from_env(&catalog, &config.stripe.prices)?;
            println!("{config:#?}");
            println!("plan prices: {:?}", plans.all());
            if let Err(e) = config.check_secrets() {
                println!("warning: {e}");
            }
            println!("configuration OK");
        }
        Command::Migrate => {
            let applied = schemas::migrate::run(&config.clickhouse).await?;
            println!("applied migrations: {applied:?}");
        }
        Command::Serve => {
            let app = App::build(config).await?;
            let cancel = platform::shutdown::on_signal();
            app.run(cancel).await?;
        }
    }
    Ok(())
}
