//! A rollout tick in cluster mode: every node publishes its counters and runs its guards;
//! the leader creates missing rollouts in etcd and runs the analyses on the cluster's sums.

use crate::daemon::Daemon;
use crate::{
    cluster::{After, Stored},
    view::ServiceSample,
};

/// How long a finished rollout's evidence is still published.
const FINISHED_PUBLISHED_MS: u64 = 60_000;

impl Daemon {
    /// A rollout tick in cluster mode: publish this node's counters, run its guards, and on
    /// the leader, run the analyses on the cluster's sums.
    pub(in crate::daemon) fn cluster_tick(&mut self, samples: &[ServiceSample]) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let node = c.handle.node.clone();
        // Evidence: the services whose rollout the cluster runs and this node shares; a
        // finished one's for a minute more, so `sluice status` still shows which node's
        // callers saw what, up to the end.
        let now = crate::rollout::unix_ms();
        let recent = |st: &Stored| {
            st.state
                .decisions
                .back()
                .is_some_and(|d| now.saturating_sub(d.at_unix_ms) < FINISHED_PUBLISHED_MS)
        };
        let publication = samples
            .iter()
            .filter(|s| {
                c.confirmed.get(&s.name).is_some_and(|st| {
                    (!st.state.phase.is_final() || recent(st))
                        && self
                            .rollouts
                            .state_of(&s.name)
                            .is_some_and(|m| m.fingerprint == st.state.fingerprint)
                })
            })
            .map(|s| (s.name.clone(), s.versions.clone()))
            .collect();
        c.handle.publish(publication);
        let tripped = self.rollouts.guard_tick(samples, &node);
        for service in tripped {
            let Some(c) = self.cluster.as_mut() else {
                return;
            };
            let started = self
                .rollouts
                .state_of(&service)
                .map_or(0, |s| s.started_unix_ms);
            c.lowered.insert(service.clone(), started);
            let based_on = c.confirmed.get(&service).map_or(0, |s| s.revision);
            tracing::error!(
                service,
                node,
                "the guard tripped: this node's canary share is 0 now; rolling the rollout back cluster-wide"
            );
            if !c.pending.contains(&service) {
                self.write(&service, based_on, false, After::Guard);
            }
            if let Err(e) = self.steer() {
                tracing::error!(error = %crate::error_chain(&e), "applying the guard's 0 failed");
            }
        }
        self.lead();
    }

    /// The leader's part of a tick: new rollouts into etcd, then each one's analysis on the
    /// sum of what the nodes its step goes to published.
    fn lead(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !(c.leads && c.connected) {
            return;
        }
        let services: Vec<String> = self.rollouts.active();
        let configured: Vec<String> = self
            .config
            .services
            .iter()
            .filter(|s| self.rollouts.state_of(&s.name).is_some())
            .map(|s| s.name.clone())
            .collect();
        // Rollouts etcd does not hold, or holds for another canary set: this node's fresh
        // one goes in.
        for service in configured {
            let Some(c) = self.cluster.as_ref() else {
                return;
            };
            if c.pending.contains(&service) {
                continue;
            }
            let mine = self
                .rollouts
                .state_of(&service)
                .map(|s| s.fingerprint.clone());
            let stored = c.confirmed.get(&service);
            if stored.is_none_or(|s| Some(&s.state.fingerprint) != mine.as_ref()) {
                let based_on = stored.map_or(0, |s| s.revision);
                self.write(&service, based_on, true, After::Decision);
            }
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let Ok(cache) = c.handle.evidence.lock() {
            for service in &services {
                let tally = c.tallies.entry(service.clone()).or_default();
                for (node, (revision, e)) in cache.services.get(service).into_iter().flatten() {
                    if tally.revision_of(node) == Some(*revision) {
                        continue;
                    }
                    if let Ok(dense) = e.dense() {
                        tally.observe(*revision, node, &e.labels, dense);
                    }
                }
            }
        }
        for service in services {
            let Some(c) = self.cluster.as_ref() else {
                return;
            };
            let in_sync = !c.pending.contains(&service)
                && c.confirmed
                    .get(&service)
                    .is_some_and(|s| Some(&s.state) == self.rollouts.state_of(&service));
            if !in_sync {
                continue;
            }
            let based_on = c.confirmed.get(&service).map_or(0, |s| s.revision);
            let wave = self
                .rollouts
                .step_nodes(&service)
                .cloned()
                .unwrap_or_default();
            let reading = c
                .tallies
                .get(&service)
                .map(|t| t.reading(&wave))
                .unwrap_or_default();
            if reading[0].is_empty() || reading[1].is_empty() {
                continue;
            }
            if self.rollouts.analysis_tick(&service, &reading) {
                if self.rollouts.step_nodes(&service) != Some(&wave) {
                    self.rollouts.restart_window(&service);
                }
                self.write(&service, based_on, true, After::Decision);
            }
        }
    }
}
