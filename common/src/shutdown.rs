//! Graceful shutdown: one [`CancellationToken`] per process, cancelled on SIGINT or SIGTERM.
//! Every long-running task watches it, stops taking new work, finishes what it holds and exits;
//! the HTTP servers stop accepting and drain in-flight requests.

pub use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled when the process receives SIGINT or SIGTERM.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
            _ = terminate => tracing::info!("SIGTERM received, shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// The clock of a periodic task that stops at shutdown: `while ticker.tick().await { ... }`
/// runs the body every `every` (the first time at once; a late tick is delayed, not bunched)
/// and ends when `shutdown` is cancelled.
pub struct Ticker {
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticker {
    pub fn new(every: std::time::Duration, shutdown: CancellationToken) -> Ticker {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { interval, shutdown }
    }

    /// Waits for the next tick; `false` once shutdown was asked for.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}
