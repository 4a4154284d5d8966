//! Cluster mode: one rollout per service across every node, through etcd v3.
//!
//! Every node holds a session: a lease (its presence, and the life of what it publishes), a
//! watch on the rollouts, and a campaign for leadership. Keys, under `cluster.prefix`:
//!
//! - `leader`: the leader's node name, under its lease, created only if absent. Its create
//!   revision names the term: every write the leader makes is conditioned on it, so a
//!   deposed leader's write fails.
//! - `rollouts/<service>`: the rollout's state (what `state_path` holds on a single host).
//!   Every write is conditioned on the revision it was read at.
//! - `evidence/<service>/<node>`: a node's cumulative counters for a service under an
//!   active rollout, under the node's lease.
//! - `nodes/<node>`: a node's labels, under its lease.
//!
//! [`session`] runs the session on the agent's runtime and reports [`Event`]s; the daemon
//! decides what they mean for the kernel ([`crate::daemon`]). Nothing here touches the
//! kernel: a node that loses etcd keeps steering with what it last applied.

pub mod evidence;
mod session;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{config::ClusterConfig, rollout::RolloutState};
pub use evidence::{NodeBreakdown, NodeEvidence, Tally};

/// Longest wait for one etcd request: beyond it the member is taken as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A rollout's state as etcd holds it, with the revision it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub state: RolloutState,
    pub revision: i64,
    /// The node whose agent wrote it.
    pub by: String,
}

/// What etcd holds under `rollouts/<service>`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StoredValue {
    pub by: String,
    pub state: RolloutState,
}

/// What the session reports to the daemon.
#[derive(Debug)]
pub enum Event {
    /// The session is up (a lease, the rollouts read) or down (fail static).
    Connected(bool),
    /// Who leads now, and whether it is this node.
    Leader { name: Option<String>, me: bool },
    /// Rollouts as etcd now holds them (`None`: deleted). The first after each connect is
    /// every rollout (`snapshot`), so services absent from it have none.
    Rollouts {
        changes: Vec<(String, Option<Stored>)>,
        snapshot: bool,
    },
    /// A write asked for finished: the new revision, or why nothing was written.
    Written {
        service: String,
        result: Result<i64, WriteError>,
        after: After,
    },
}

/// Why a write was made: what the daemon does when it finishes.
#[derive(Debug)]
pub enum After {
    /// The leader's decision (a step, a rollback, a new rollout).
    Decision,
    /// This node's guard tripped.
    Guard,
    /// An operator's command: the answer goes back on the control socket.
    Command(oneshot::Sender<crate::api::Response>),
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "the cluster's rollout state changed since it was read (another node's write won); \
         nothing was written"
    )]
    Conflict,
    #[error("this node is no longer the leader; nothing was written")]
    NotLeader,
    #[error("etcd is unreachable ({0}); nothing was written")]
    Unavailable(String),
}

struct Write {
    service: String,
    state: RolloutState,
    /// The revision the state was read at (0: the key must not exist).
    based_on: i64,
    as_leader: bool,
    after: After,
}

/// Where a read of one service's evidence is answered.
pub(crate) type EvidenceReply = oneshot::Sender<Result<Vec<NodeEvidence>, String>>;

/// What a node publishes: per service under an active rollout, its counters.
pub type Publication = BTreeMap<String, [Vec<u64>; 2]>;

/// Every node's published counters, per service (kept while this node leads).
#[derive(Debug, Default)]
pub struct EvidenceCache {
    pub services: BTreeMap<String, BTreeMap<String, (i64, NodeEvidence)>>,
}

/// The daemon's handle on the session.
pub struct Cluster {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    writes: mpsc::Sender<Write>,
    reads: mpsc::Sender<(String, EvidenceReply)>,
    publish: watch::Sender<Publication>,
    /// Filled while this node leads.
    pub evidence: Arc<Mutex<EvidenceCache>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("reading {what} {path}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Cluster {
    /// Starts the session; events arrive on the receiver.
    pub fn start(config: &ClusterConfig) -> Result<(Self, mpsc::Receiver<Event>), ClusterError> {
        let node = config.node_name()?;
        let options = session::options(config)?;
        let (events_tx, events) = mpsc::channel(256);
        let (writes_tx, writes) = mpsc::channel(64);
        let (reads_tx, reads) = mpsc::channel(16);
        let (publish, published) = watch::channel(Publication::new());
        let evidence = Arc::new(Mutex::new(EvidenceCache::default()));
        let s = session::Session {
            config: config.clone(),
            node: node.clone(),
            options,
            events: events_tx,
            writes,
            reads,
            published,
            evidence: evidence.clone(),
        };
        tokio::spawn(s.run());
        Ok((
            Self {
                node,
                labels: config.labels.clone(),
                writes: writes_tx,
                reads: reads_tx,
                publish,
                evidence,
            },
            events,
        ))
    }

    /// Writes a rollout's state, conditioned on `based_on` (and, `as_leader`, on this node's
    /// term). The outcome comes back as [`Event::Written`]; a write that cannot even be
    /// queued is given back at once with the reason.
    pub fn write(
        &self,
        service: &str,
        state: RolloutState,
        based_on: i64,
        as_leader: bool,
        after: After,
    ) -> Result<(), (WriteError, After)> {
        let w = Write {
            service: service.to_owned(),
            state,
            based_on,
            as_leader,
            after,
        };
        match self.writes.try_send(w) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w)) => {
                Err((
                    WriteError::Unavailable("too many writes waiting".into()),
                    w.after,
                ))
            }
        }
    }

    /// The counters every node published for `service`, read from etcd now.
    pub fn read_evidence(
        &self,
        service: &str,
    ) -> oneshot::Receiver<Result<Vec<NodeEvidence>, String>> {
        let (tx, rx) = oneshot::channel();
        if let Err(
            mpsc::error::TrySendError::Full((_, tx)) | mpsc::error::TrySendError::Closed((_, tx)),
        ) = self.reads.try_send((service.to_owned(), tx))
        {
            let _ = tx.send(Err("too many reads waiting".into()));
        }
        rx
    }

    /// What this node publishes from now on (the session writes it every
    /// `publish_interval`, when it changed).
    pub fn publish(&self, p: Publication) {
        self.publish.send_if_modified(|current| {
            let changed = *current != p;
            if changed {
                *current = p;
            }
            changed
        });
    }
}
