//! The agent's own health, for `/metrics` and `/ready`: how its reloads and state saves
//! went, and whether the cgroup it steers is there.

/// How one reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// In force now.
    Applied,
    /// The file was not a valid configuration (or not one for this node).
    Rejected,
    /// It changes a key only a restart can change.
    NeedsRestart,
    /// The kernel refused it.
    Failed,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 4] = [
        ReloadResult::Applied,
        ReloadResult::Rejected,
        ReloadResult::NeedsRestart,
        ReloadResult::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
            ReloadResult::NeedsRestart => "needs_restart",
            ReloadResult::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentHealth {
    /// Reloads by result, in [`ReloadResult::ALL`]'s order.
    pub reloads: [u64; 4],
    /// State saves that succeeded, and that failed.
    pub state_saves: [u64; 2],
    /// Why the attach cgroup is not steered now, if it is not.
    pub cgroup_missing: Option<String>,
    /// Cluster mode: whether etcd is reachable, and whether this node leads.
    pub cluster: Option<ClusterHealth>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    pub connected: bool,
    pub leader: bool,
}

impl AgentHealth {
    pub fn reloaded(&mut self, result: ReloadResult) {
        self.reloads[result as usize] += 1;
    }

    pub fn saved(&mut self, ok: bool) {
        self.state_saves[usize::from(!ok)] += 1;
    }
}
