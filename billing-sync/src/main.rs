//! The billing-sync binary: serve (the default), check the config, run migrations, or print the
//! usage proof of a month (`reconcile --month YYYY-MM`).

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
    /// Print the usage proof of a month, per customer-hour: accepted events, rollup, ledger,
    /// Stripe's meter event summary and the verdict, then totals per customer (read only: the
    /// report run and `GET /admin/usage/reconcile` heal).
    Reconcile(ReconcileArgs),
}

#[derive(clap::Args)]
struct ReconcileArgs {
    /// The month, `YYYY-MM` (UTC); the current month when absent.
    #[arg(long)]
    month: Option<String>,
    /// Only this tenant's customers.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this customer.
    #[arg(long)]
    customer: Option<String>,
    /// JSON (what `GET /admin/usage/proof` answers) instead of a table.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The proof's output is stdout; its logs (stderr) are warnings only.
    let quiet = matches!(cli.command, Some(Command::Reconcile(_)));
    platform::logs::init(if quiet {
        "warn,rdkafka=error"
    } else {
        "info,rdkafka=warn"
    });
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
        Command::Reconcile(args) => {
            let month = match &args.month {
                Some(m) => m.parse().map_err(anyhow::Error::msg)?,
                None => billing_sync::usage::proof::Month::current(),
            };
            // The service's configuration and services, without taking its port.
            let mut config = config;
            config.listen = ([127, 0, 0, 1], 0).into();
            let billing = App::build(config).await?.billing();
            let proof = billing_sync::usage::proof::proof(
                &billing,
                month,
                args.tenant.as_deref(),
                args.customer.as_deref(),
            )
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&proof)?);
            } else {
                print!("{}", billing_sync::usage::proof::table(&proof));
            }
        }
        Command::Serve => {
            let app = App::build(config).await?;
            let cancel = platform::shutdown::on_signal();
            app.run(cancel).await?;
        }
    }
    Ok(())
}
