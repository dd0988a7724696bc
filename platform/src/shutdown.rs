//! Graceful shutdown for the service binaries: a token cancelled on Ctrl-C or SIGTERM.

use tokio_util::sync::CancellationToken;

/// Waits for Ctrl-C or (on Unix) SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A token that is cancelled when the process is asked to stop.
pub fn on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        signal().await;
        token.cancel();
    });
    cancel
}
