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
    discovery::{Known, Prepared, ResolverError},
    view::ReloadResult,
};

/// A configuration ready to apply: validated, bound to this node, its names looked up.
type Parsed = Result<(Config, Node, Prepared), ReloadError>;

#[derive(Debug, thiserror::Error)]
pub(super) enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    #[error("the reload was cut short")]
    Interrupted,
}

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

    /// Reads and parses the file off the loop (or once the one in flight is done), then
    /// looks up the names the running configuration does not follow yet.
    pub fn start(&mut self, why: &'static str, known: Known) {
        if self.running {
            self.again = Some(why);
            return;
        }
        self.running = true;
        let (path, tx) = (self.path.clone(), self.tx.clone());
        tokio::spawn(async move {
            let parsed = tokio::task::spawn_blocking(move || {
                config::parse(&path).and_then(|c| {
                    let node = config::bind(&c)?;
                    crate::rollout::log_warnings(&c);
                    Ok((c, node))
                })
            })
            .await;
            let parsed = match parsed {
                Err(_) => Err(ReloadError::Interrupted),
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok((c, node))) => match Prepared::new(&c, Some(&known)).await {
                    Ok(p) => Ok((c, node, p)),
                    Err(e) => Err(e.into()),
                },
            };
            let _ = tx.send((parsed, why)).await;
        });
    }

    /// The next parsed file.
    pub async fn done(&mut self) -> Option<(Parsed, &'static str)> {
        self.rx.recv().await
    }

    /// The parse just received has been handled: start the one asked for meanwhile.
    pub fn finished(&mut self, known: Known) {
        self.running = false;
        if let Some(why) = self.again.take() {
            self.start(why, known);
        }
    }
}

impl Daemon {
    pub(super) fn reload(&mut self, parsed: Parsed, why: &str) {
        let result = self.apply_reload(parsed, why);
        self.health.reloaded(result);
    }

    fn apply_reload(&mut self, parsed: Parsed, why: &str) -> ReloadResult {
        let (next, node, prepared) = match parsed {
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
        let resolved = prepared.resolved_over(&self.discovery);
        if next.discovery.unresolved_at_start == config::Unresolved::Refuse {
            let missing: Vec<String> = next
                .names()
                .into_iter()
                .filter(|(name, family)| resolved.addresses(name, *family).next().is_none())
                .map(|(name, _)| name)
                .collect();
            if !missing.is_empty() {
                tracing::error!(reason = why, names = %missing.join(","), "configuration rejected: names did not resolve and discovery.unresolved_at_start is refuse; the previous one stays in force");
                return ReloadResult::Rejected;
            }
        }
        match self
            .dp
            .apply(desired_state(&next, &node, &rollouts.shares(), &resolved))
        {
            Ok(r) => {
                self.discovery.adopt(prepared);
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
