//! Reloading the configuration: validate, bind, reconcile a copy of the rollouts, apply, and
//! keep the result only if the kernel took it. Any error leaves the running one in force.

use super::Daemon;
use crate::{
    config::{self, restart_only_change},
    desired::desired_state,
};

impl Daemon {
    pub(super) fn reload(&mut self, why: &str) {
        let next = match config::parse(&self.config_path).and_then(|c| {
            let node = config::bind(&c)?;
            Ok((c, node))
        }) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(reason = why, error = %crate::error_chain(&e), "configuration rejected; the previous one stays in force");
                return;
            }
        };
        let (next, node) = next;
        if let Some(key) = restart_only_change(&self.config, &next) {
            tracing::error!(
                reason = why,
                key,
                "cannot change on reload, restart the agent; the previous configuration stays in force"
            );
            return;
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
            }
            Err(e) => {
                tracing::error!(reason = why, error = %crate::error_chain(&e), "applying the configuration failed; the previous one stays in force")
            }
        }
    }
}
