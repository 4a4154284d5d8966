//! Reloading the configuration. Reading, parsing and binding run on a blocking thread, so no
//! file can hold up the loop (the guard, the API, `/live`); at most one runs at a time, and
//! triggers that come meanwhile make one more. The result is applied on the loop: the
//! rollouts are lined up on a copy, the desired state applied, and both kept only if the
//! kernel took it. Any error leaves the running configuration in force.

use std::path::PathBuf;

use tokio::sync::mpsc;

use super::Daemon;
use crate::{
    config::{self, Config, ConfigError, Node, restart_only_change},
    desired::desired_state,
    view::ReloadResult,
};

type Parsed = Result<(Config, Node), ConfigError>;

/// The reloads in flight: one parse at most, and whether another was asked for meanwhile.
pub(super) struct Reloads {
    path: PathBuf,
    tx: mpsc::Sender<(Parsed, &'static str)>,
    rx: mpsc::Receiver<(Parsed, &'static str)>,
    running: bool,
    again: Option<&'static str>,
}

impl Reloads {
    pub fn new(path: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self {
            path,
            tx,
            rx,
            running: false,
            again: None,
        }
    }

    /// Reads and parses the file off the loop (or once the one in flight is done).
    pub fn start(&mut self, why: &'static str) {
        if self.running {
            self.again = Some(why);
            return;
        }
        self.running = true;
        let (path, tx) = (self.path.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let parsed = config::parse(&path).and_then(|c| {
                let node = config::bind(&c)?;
                Ok((c, node))
            });
            let _ = tx.blocking_send((parsed, why));
        });
    }

    /// The next parsed file.
    pub async fn done(&mut self) -> Option<(Parsed, &'static str)> {
        self.rx.recv().await
    }

    /// The parse just received has been handled: start the one asked for meanwhile.
    pub fn finished(&mut self) {
        self.running = false;
        if let Some(why) = self.again.take() {
            self.start(why);
        }
    }
}

impl Daemon {
    pub(super) fn reload(&mut self, parsed: Parsed, why: &str) {
        let result = self.apply_reload(parsed, why);
        self.health.reloaded(result);
    }

    fn apply_reload(&mut self, parsed: Parsed, why: &str) -> ReloadResult {
        let (next, node) = match parsed {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(reason = why, error = %crate::error_chain(&e), "configuration rejected; the previous one stays in force");
                return ReloadResult::Rejected;
            }
        };
        if let Some(key) = restart_only_change(&self.config, &next) {
            tracing::error!(
                reason = why,
                key,
                "cannot change on reload, restart the agent; the previous configuration stays in force"
            );
            return ReloadResult::NeedsRestart;
        }
        // Reconcile a copy: if the kernel refuses the configuration, the rollouts stay as
        // they were.
        let mut rollouts = self.rollouts.clone();
        let outcome = rollouts.reconcile(&next);
        match self
            .dp
            .apply(desired_state(&next, &node, &rollouts.shares()))
        {
            Ok(r) => {
                self.rollouts = rollouts;
                self.config = next;
                self.node = node;
                if outcome.changed {
                    self.save();
                }
                tracing::info!(
                    reason = why,
                    added = r.added,
                    changed = r.changed,
                    unchanged = r.unchanged,
                    removed_addresses = r.removed_vips,
                    "configuration applied"
                );
                ReloadResult::Applied
            }
            Err(e) => {
                tracing::error!(reason = why, error = %crate::error_chain(&e), "applying the configuration failed; the previous one stays in force");
                ReloadResult::Failed
            }
        }
    }
}
