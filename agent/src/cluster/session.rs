//! The session with etcd: connect, take a lease, read and watch the rollouts, campaign for
//! leadership, publish this node's evidence, and carry out the daemon's conditioned writes.
//! Any failure ends the session (the daemon hears `Connected(false)` and fails static);
//! the next one starts after a short backoff, from a fresh read of every rollout.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;

use super::{
    ClusterError, Event, EvidenceCache, NodeEvidence, Publication, REQUEST_TIMEOUT, Stored,
    StoredValue, Write, WriteError,
};
use crate::config::ClusterConfig;

/// Longest wait between two tries to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Largest value read from etcd: a rollout's state with its 20 decisions is well under.
const MAX_VALUE_BYTES: usize = 1 << 20;

pub(super) struct Session {
    pub config: ClusterConfig,
    pub node: String,
    pub options: ConnectOptions,
    pub events: mpsc::Sender<Event>,
    pub writes: mpsc::Receiver<Write>,
    pub reads: mpsc::Receiver<(String, super::EvidenceReply)>,
    pub published: watch::Receiver<Publication>,
    pub evidence: Arc<Mutex<EvidenceCache>>,
}

/// Connection options from `cluster:`: TLS material and the password are read here, once.
pub(super) fn options(c: &ClusterConfig) -> Result<ConnectOptions, ClusterError> {
    let read = |what: &'static str, path: &std::path::Path| {
        crate::config::read_regular_file(path, 1 << 20).map_err(|source| ClusterError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let mut o = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        // HTTP/2 pings find a member that went silent without closing the connection.
        .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = &c.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(read("the etcd CA", ca)?));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(
                read("the etcd client certificate", cert)?,
                read("the etcd client key", key)?,
            ));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name.clone());
        }
        o = o.with_tls(t);
    }
    if let Some(auth) = &c.auth {
        let password = read("the etcd password", &auth.password_file)?;
        let password = String::from_utf8_lossy(&password).trim_end().to_owned();
        o = o.with_user(auth.username.clone(), password);
    }
    Ok(o)
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// What one connected session knows.
struct Live {
    client: Client,
    lease: i64,
    /// This node's term (the leader key's create revision) while it leads.
    term: Option<i64>,
    evidence_watch: Option<WatchStream>,
    /// What was last written of each service's evidence.
    written: Publication,
}

impl Session {
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.config.prefix)
    }

    async fn tell(&self, e: Event) {
        let _ = self.events.send(e).await;
    }

    pub async fn run(mut self) {
        // One member at a time, each session on the next: a client balanced over every
        // member keeps sending some requests to a dead one. Nodes start on different
        // members, by their names.
        let mut member = self
            .node
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let mut backoff = Duration::from_millis(250);
        let mut last_error = String::new();
        let mut previous_lease = None;
        loop {
            let started = Instant::now();
            let mut up = false;
            let endpoint = self.config.endpoints[member % self.config.endpoints.len()].clone();
            member = member.wrapping_add(1);
            let why = self.session(&endpoint, &mut up, &mut previous_lease).await;
            if up {
                self.tell(Event::Connected(false)).await;
                self.tell(Event::Leader {
                    name: None,
                    me: false,
                })
                .await;
                if let Ok(mut cache) = self.evidence.lock() {
                    cache.services.clear();
                }
                tracing::error!(endpoint, error = %why, "lost etcd: this node keeps its shares as they are (it lowers them only through its guards) until it is back");
                backoff = Duration::from_millis(250);
            } else if why != last_error {
                tracing::warn!(endpoint, error = %why, "cannot reach etcd; trying the next member");
            }
            last_error = why;
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(250);
            }
            self.refuse_for(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Answers writes and reads with "unavailable" for `d`.
    async fn refuse_for(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                Some(w) = self.writes.recv() => {
                    self.tell(Event::Written {
                        service: w.service,
                        result: Err(WriteError::Unavailable("not connected".into())),
                        after: w.after,
                    }).await;
                }
                Some((_, reply)) = self.reads.recv() => {
                    let _ = reply.send(Err("etcd is unreachable from this node".into()));
                }
            }
        }
    }

    /// One session, until something fails: why.
    async fn session(
        &mut self,
        endpoint: &str,
        up: &mut bool,
        previous_lease: &mut Option<i64>,
    ) -> String {
        match self.connected(endpoint, up, previous_lease).await {
            Ok(()) => "the session ended".into(),
            Err(e) => e,
        }
    }

    async fn connected(
        &mut self,
        endpoint: &str,
        up: &mut bool,
        previous_lease: &mut Option<i64>,
    ) -> Result<(), String> {
        let client = timed(
            "connecting",
            Client::connect([endpoint], Some(self.options.clone())),
        )
        .await?;
        let mut live = Live {
            client,
            lease: 0,
            term: None,
            evidence_watch: None,
            written: Publication::new(),
        };
        // A lease left from a session that ended: what it holds (the leader key among them)
        // goes now rather than at its expiry.
        if let Some(old) = previous_lease.take() {
            let _ = timed("revoking the last lease", live.client.lease_revoke(old)).await;
        }
        let ttl = self.config.lease_ttl.as_secs() as i64;
        live.lease = timed("granting a lease", live.client.lease_grant(ttl, None))
            .await?
            .id();
        *previous_lease = Some(live.lease);
        let (mut keeper, mut kept) = timed(
            "keeping the lease",
            live.client.lease_keep_alive(live.lease),
        )
        .await?;
        let node_value = serde_json::json!({ "labels": self.config.labels }).to_string();
        let node_key = self.key(&format!("nodes/{}", self.node));
        timed(
            "registering the node",
            live.client.put(
                node_key,
                node_value,
                Some(PutOptions::new().with_lease(live.lease)),
            ),
        )
        .await?;
        let (mut rollouts, revision) = self.snapshot(&mut live.client).await?;
        let mut leader_watch = timed(
            "watching the leader",
            live.client.watch(
                self.key("leader"),
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            ),
        )
        .await?;
        self.campaign(&mut live).await?;
        self.tell(Event::Connected(true)).await;
        *up = true;
        tracing::info!(node = %self.node, endpoint, lease = live.lease, "connected to etcd");
        let beat = (self.config.lease_ttl / 4).max(Duration::from_millis(500));
        let mut keepalive = tokio::time::interval(beat);
        let mut answered = Instant::now();
        let mut publish = tokio::time::interval(self.config.publish_interval);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    // Half the lease without an answer: the lease may be gone by the time
                    // one comes, so this session is over.
                    if answered.elapsed() > self.config.lease_ttl / 2 {
                        return Err(format!("the lease was not renewed for {:?}", answered.elapsed()));
                    }
                    keeper.keep_alive().await.map_err(|e| format!("renewing the lease: {e}"))?;
                }
                r = kept.next() => match r {
                    Some(Ok(r)) if r.ttl() > 0 => answered = Instant::now(),
                    Some(Ok(_)) => return Err("the lease expired".into()),
                    Some(Err(e)) => return Err(format!("renewing the lease: {e}")),
                    None => return Err("the lease renewal stream ended".into()),
                },
                r = rollouts.next() => {
                    let changes = self.rollout_events(r)?;
                    if !changes.is_empty() {
                        self.tell(Event::Rollouts { changes, snapshot: false }).await;
                    }
                }
                r = leader_watch.next() => {
                    let r = watched("the leader", r)?;
                    let deleted = r.events().iter().any(|e| e.event_type() == EventType::Delete);
                    if deleted {
                        self.campaign(&mut live).await?;
                    }
                }
                r = next_evidence(&mut live.evidence_watch) => self.evidence_events(r)?,
                Some(w) = self.writes.recv() => {
                    let service = w.service.clone();
                    let result = self.write(&mut live, &w).await;
                    let lost = matches!(result, Err(WriteError::Unavailable(_)));
                    let why = result.as_ref().err().map(ToString::to_string);
                    self.tell(Event::Written { service, result, after: w.after }).await;
                    if lost {
                        return Err(why.unwrap_or_default());
                    }
                }
                Some((service, reply)) = self.reads.recv() => {
                    let _ = reply.send(self.read_evidence(&mut live.client, &service).await);
                }
                _ = publish.tick() => self.publish(&mut live).await?,
            }
        }
    }

    /// Every rollout as etcd holds it now, and a watch from just after.
    async fn snapshot(&self, client: &mut Client) -> Result<(WatchStream, i64), String> {
        let prefix = self.key("rollouts/");
        let r = timed(
            "reading the rollouts",
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        let changes = r
            .kvs()
            .iter()
            .filter_map(|kv| self.rollout_of(kv.key(), Some(kv)))
            .collect();
        self.tell(Event::Rollouts {
            changes,
            snapshot: true,
        })
        .await;
        let watch = timed(
            "watching the rollouts",
            client.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        Ok((watch, revision))
    }

    /// A rollout key and value as the daemon takes it; a value that is not one is logged
    /// and skipped (the daemon keeps what it had).
    fn rollout_of(
        &self,
        key: &[u8],
        kv: Option<&etcd_client::KeyValue>,
    ) -> Option<(String, Option<Stored>)> {
        let key = std::str::from_utf8(key).ok()?;
        let service = key.strip_prefix(&self.key("rollouts/"))?.to_owned();
        let Some(kv) = kv else {
            return Some((service, None));
        };
        if kv.value().len() > MAX_VALUE_BYTES {
            tracing::error!(
                key,
                bytes = kv.value().len(),
                "a rollout value in etcd is too large; ignored"
            );
            return None;
        }
        match serde_json::from_slice::<StoredValue>(kv.value()) {
            Ok(v) => Some((
                service,
                Some(Stored {
                    state: v.state,
                    revision: kv.mod_revision(),
                    by: v.by,
                }),
            )),
            Err(e) => {
                tracing::error!(key, error = %e, "a rollout value in etcd is not one sluice wrote; ignored");
                None
            }
        }
    }

    fn rollout_events(
        &self,
        r: Option<Result<etcd_client::WatchResponse, etcd_client::Error>>,
    ) -> Result<Vec<(String, Option<Stored>)>, String> {
        let r = watched("the rollouts", r)?;
        Ok(r.events()
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                match e.event_type() {
                    EventType::Put => self.rollout_of(kv.key(), Some(kv)),
                    EventType::Delete => self.rollout_of(kv.key(), None),
                }
            })
            .collect())
    }

    /// Becomes the leader if there is none; says who leads either way.
    async fn campaign(&mut self, live: &mut Live) -> Result<(), String> {
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.node.clone(),
                Some(PutOptions::new().with_lease(live.lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let r = timed("campaigning", live.client.txn(txn)).await?;
        let was = live.term.is_some();
        let (name, term) = if r.succeeded() {
            (Some(self.node.clone()), r.header().map(|h| h.revision()))
        } else {
            let held = r.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                    let ours = kv.lease() == live.lease;
                    (
                        String::from_utf8_lossy(kv.value()).into_owned(),
                        ours.then(|| kv.create_revision()),
                    )
                }),
                _ => None,
            });
            match held {
                Some((name, term)) => (Some(name), term),
                None => (None, None),
            }
        };
        live.term = term;
        let me = term.is_some();
        if me && !was {
            tracing::info!(node = %self.node, term = term.unwrap_or(0), "this node leads the cluster's rollouts");
            live.evidence_watch = Some(self.load_evidence(&mut live.client).await?);
        } else if !me && was {
            tracing::warn!(node = %self.node, "this node no longer leads");
            live.evidence_watch = None;
            if let Ok(mut cache) = self.evidence.lock() {
                cache.services.clear();
            }
        }
        self.tell(Event::Leader { name, me }).await;
        Ok(())
    }

    /// The leader's copy of every node's evidence, and a watch that keeps it.
    async fn load_evidence(&self, client: &mut Client) -> Result<WatchStream, String> {
        let prefix = self.key("evidence/");
        let r = timed(
            "reading the evidence",
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        {
            let mut cache = self.evidence.lock().map_err(|_| "evidence lock poisoned")?;
            cache.services.clear();
            for kv in r.kvs() {
                self.take_evidence(&mut cache, kv, true);
            }
        }
        timed(
            "watching the evidence",
            client.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await
    }

    fn take_evidence(&self, cache: &mut EvidenceCache, kv: &etcd_client::KeyValue, put: bool) {
        let Some((service, node)) = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(&self.key("evidence/")))
            .and_then(|rest| rest.split_once('/'))
        else {
            return;
        };
        let nodes = cache.services.entry(service.to_owned()).or_default();
        if !put {
            nodes.remove(node);
            return;
        }
        if kv.value().len() > MAX_VALUE_BYTES {
            return;
        }
        match serde_json::from_slice::<NodeEvidence>(kv.value()) {
            Ok(e) if e.node == node && e.dense().is_ok() => {
                nodes.insert(node.to_owned(), (kv.mod_revision(), e));
            }
            _ => tracing::warn!(
                service,
                node,
                "evidence in etcd that is not a node's counters; ignored"
            ),
        }
    }

    fn evidence_events(
        &self,
        r: Option<Result<etcd_client::WatchResponse, etcd_client::Error>>,
    ) -> Result<(), String> {
        let r = watched("the evidence", r)?;
        let mut cache = self.evidence.lock().map_err(|_| "evidence lock poisoned")?;
        for e in r.events() {
            if let Some(kv) = e.kv() {
                self.take_evidence(&mut cache, kv, e.event_type() == EventType::Put);
            }
        }
        Ok(())
    }

    /// A conditioned write of a rollout's state.
    async fn write(&self, live: &mut Live, w: &Write) -> Result<i64, WriteError> {
        let key = self.key(&format!("rollouts/{}", w.service));
        let leader = self.key("leader");
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            w.based_on,
        )];
        if w.as_leader {
            let Some(term) = live.term else {
                return Err(WriteError::NotLeader);
            };
            when.push(Compare::create_revision(
                leader.clone(),
                CompareOp::Equal,
                term,
            ));
        }
        let value = serde_json::to_string(&StoredValue {
            by: self.node.clone(),
            state: w.state.clone(),
        })
        .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(leader, None)]);
        let r = timed("writing a rollout", live.client.txn(txn))
            .await
            .map_err(WriteError::Unavailable)?;
        if r.succeeded() {
            return Ok(r.header().map_or(0, |h| h.revision()));
        }
        let still_leads = r.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .is_some_and(|kv| Some(kv.create_revision()) == live.term),
            _ => false,
        });
        if w.as_leader && !still_leads {
            return Err(WriteError::NotLeader);
        }
        Err(WriteError::Conflict)
    }

    async fn read_evidence(
        &self,
        client: &mut Client,
        service: &str,
    ) -> Result<Vec<NodeEvidence>, String> {
        let r = timed(
            "reading the evidence",
            client.get(
                self.key(&format!("evidence/{service}/")),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await?;
        Ok(r.kvs()
            .iter()
            .filter(|kv| kv.value().len() <= MAX_VALUE_BYTES)
            .filter_map(|kv| serde_json::from_slice::<NodeEvidence>(kv.value()).ok())
            .collect())
    }

    /// Writes what changed of this node's evidence since the last publication, and deletes
    /// what is no longer published; all under the lease.
    async fn publish(&mut self, live: &mut Live) -> Result<(), String> {
        let now = self.published.borrow_and_update().clone();
        let mut ops = Vec::new();
        let unix_ms = crate::rollout::unix_ms();
        for (service, reading) in &now {
            if live.written.get(service) == Some(reading) {
                continue;
            }
            let e = NodeEvidence::new(&self.node, &self.config.labels, reading, unix_ms);
            let value = serde_json::to_string(&e).map_err(|e| e.to_string())?;
            ops.push(TxnOp::put(
                self.key(&format!("evidence/{service}/{}", self.node)),
                value,
                Some(PutOptions::new().with_lease(live.lease)),
            ));
        }
        for service in live.written.keys().filter(|s| !now.contains_key(*s)) {
            ops.push(TxnOp::delete(
                self.key(&format!("evidence/{service}/{}", self.node)),
                None,
            ));
        }
        // etcd takes at most 128 operations in one transaction.
        for chunk in ops.chunks(100) {
            timed(
                "publishing evidence",
                live.client.txn(Txn::new().and_then(chunk.to_vec())),
            )
            .await?;
        }
        live.written = now;
        Ok(())
    }
}

fn watched(
    what: &str,
    r: Option<Result<etcd_client::WatchResponse, etcd_client::Error>>,
) -> Result<etcd_client::WatchResponse, String> {
    match r {
        Some(Ok(r)) if r.canceled() => Err(format!(
            "the watch on {what} was cancelled ({})",
            r.cancel_reason()
        )),
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => Err(format!("watching {what}: {e}")),
        None => Err(format!("the watch on {what} ended")),
    }
}

async fn next_evidence(
    w: &mut Option<WatchStream>,
) -> Option<Result<etcd_client::WatchResponse, etcd_client::Error>> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
