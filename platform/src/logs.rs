//! Log set-up shared by the binaries: to stderr, filtered by `RUST_LOG` or a default.

/// Installs the global subscriber: `RUST_LOG` when set, else `default` (e.g. `info,rdkafka=warn`).
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}
