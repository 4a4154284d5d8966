//! Bounds shared by the agent's two servers (the control socket and `/metrics`): how many
//! connections at once, how long a read or a write may take, and how accepting backs off
//! when the process is out of file descriptors.

use std::time::Duration;

/// Connections served at once by each server; more wait in the listen queue.
pub const CONNECTIONS: usize = 64;

/// Longest a client may take to send its request, or to take its response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Accept failures (EMFILE, ENFILE, ENOMEM) back off instead of spinning: 10 ms doubling to
/// 1 s, one log line when a burst begins and one when it ends.
pub struct Backoff {
    server: &'static str,
    delay: Option<Duration>,
    failures: u64,
}

impl Backoff {
    pub fn new(server: &'static str) -> Self {
        Self {
            server,
            delay: None,
            failures: 0,
        }
    }

    pub async fn failed(&mut self, e: &std::io::Error) {
        let delay = match self.delay {
            None => {
                tracing::warn!(server = self.server, error = %e, "accepting connections fails; backing off until it works again");
                Duration::from_millis(10)
            }
            Some(d) => (d * 2).min(Duration::from_secs(1)),
        };
        self.delay = Some(delay);
        self.failures += 1;
        tokio::time::sleep(delay).await;
    }

    pub fn reset(&mut self) {
        if self.delay.take().is_some() {
            tracing::info!(
                server = self.server,
                failures = self.failures,
                "accepting connections works again"
            );
            self.failures = 0;
        }
    }
}
