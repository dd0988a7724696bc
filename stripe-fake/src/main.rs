//! The Stripe test double as a program: `stripe-fake --listen 127.0.0.1:12111 --seed` serves the fake
//! API, creates the catalog's products, prices (`price_<plan>`), meters (`mtr_<meter>`) and the
//! meters' metered prices at 0 (`price_<meter>_usage`), and prints the `STRIPE_PRICE_ID_*` and
//! `STRIPE_METER_PRICE_ID_*` lines to use, so the demo upgrade flow works offline.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use stripe_fake::{FakeConfig, FakeStripe};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "A stateful Stripe test double (meters, checkout, portal, signed webhooks)")]
struct Cli {
    /// Listen address.
    #[arg(long, env = "STRIPE_FAKE_LISTEN", default_value = "127.0.0.1:12111")]
    listen: SocketAddr,
    /// Secret key callers must send (any key when absent).
    #[arg(long, env = "STRIPE_FAKE_API_KEY")]
    api_key: Option<String>,
    /// Where webhooks are delivered (`http://127.0.0.1:8090/webhooks/stripe`).
    #[arg(long, env = "STRIPE_FAKE_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Webhook signing secret.
    #[arg(long, env = "STRIPE_FAKE_WEBHOOK_SECRET", default_value = "whsec_fake")]
    webhook_secret: String,
    /// Create the catalog's products, prices and meters at start.
    #[arg(long)]
    seed: bool,
    /// Catalog file for `--seed` (the built-in catalog when absent).
    #[arg(long)]
    catalog: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::logs::init("info");
    let cli = Cli::parse();
    let fake = FakeStripe::bind(FakeConfig {
        listen: cli.listen,
        api_key: cli.api_key,
        webhook_url: cli.webhook_url,
        webhook_secret: cli.webhook_secret,
    })
    .await?;
    if cli.seed {
        let catalog = schemas::Catalog::load(cli.catalog.as_deref())?;
        for (env, price) in fake.seed_catalog(&catalog) {
            println!("{env}={price}");
        }
    }
    eprintln!("stripe-fake listening on {}", fake.url());
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    fake.run(cancel).await?;
    Ok(())
}
