//! `threat-api`: the example service; settings from the environment (see [`threat_api::Settings`]).

#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> threat_api::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = threat_api::Settings::from_env()?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    threat_api::serve(settings, shutdown).await?;
    Ok(())
}
