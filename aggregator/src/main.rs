//! The aggregator binary: consume, check the config, or run migrations.

#![deny(unsafe_code)]

use std::path::PathBuf;

use aggregator::{App, Config};
use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the intake allocates per event (JSON values, strings), and
/// glibc's allocator was a quarter of the CPU in the throughput benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, mimalloc.h; the enum keeps
/// deprecated entries so that places do not move).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc gives it back to the OS (its
/// default is 1 s). Each batch's rows are freed when the batch is written and the same amount is
/// allocated again for the next batch about a second later: given back in between, every page of it
/// was faulted in and zeroed again, 10% of the aggregator's CPU under steady load in the throughput
/// benchmark's profile (4% when never given back). `MIMALLOC_PURGE_DELAY` still decides if set.
const PURGE_DELAY_MS: std::ffi::c_long = 5_000;

#[allow(unsafe_code)]
fn keep_freed_memory_a_while() -> std::ffi::c_long {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option value; mimalloc reads it each time it considers purging.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    // SAFETY: reads an option value.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

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
    let purge_delay_ms = keep_freed_memory_a_while();
    platform::logs::init("info,rdkafka=warn");
    tracing::debug!(purge_delay_ms, "allocator");
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
            let cancel = platform::shutdown::on_signal();
            app.run(cancel).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_is_kept_for_the_purge_delay() {
        // The option's place is right: mimalloc's default for it is 1 s, and setting it sticks.
        // SAFETY: reads an option value.
        #[allow(unsafe_code)]
        let before = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(before, 1_000, "not mimalloc's purge_delay option");
            assert_eq!(super::keep_freed_memory_a_while(), super::PURGE_DELAY_MS);
        }
    }
}
