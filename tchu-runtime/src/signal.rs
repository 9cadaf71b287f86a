//! Waiting for the process to be told to stop.

use std::future::Future;

/// Completes on SIGINT or SIGTERM (Ctrl-C on other systems): what a service or a tool waits for
/// before shutting down gracefully. The listeners are registered when this is called, not when
/// the future is first polled, so a signal arriving in between is not lost. Call it inside a
/// tokio runtime.
///
/// ```no_run
/// # async fn run() {
/// let stop = tchu_runtime::shutdown_signal();
/// // ... start work ...
/// stop.await;
/// # }
/// ```
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                // Without a signal driver, Ctrl-C is still heard.
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
