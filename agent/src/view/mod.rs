//! The words every part of the agent shares: what the kernel holds for a service and its raw
//! counters (from the dataplane), and where a rollout stands and why (from the controller).
//! Plain data, no behaviour: the dataplane, the rollout controller, the exporter, the API and
//! the CLI all import these and none of them imports another for its types.

mod discovery;
mod health;
mod rollout;
mod service;

pub use discovery::{DiscoverySeries, LOOKUP_RESULTS, NameStatus};
pub use health::{AgentHealth, ClusterHealth, ReloadResult};
pub use rollout::{
    Action, Check, CheckResult, Decision, Drained, Phase, RolloutStatus, Unit, Verdict,
    VersionLive, fmt_duration,
};
pub use service::{ClusterNodes, ServiceSample, ServiceStatus, ShareCount};
