//! The session with etcd: connect, take a lease, read and watch the rollouts, campaign for
//! leadership, publish this node's evidence, and carry out the daemon's conditioned writes
//! (the rollouts' side in `rollouts.rs`, the evidence's in `evidence_sync.rs`).
//! Any failure ends the session (the daemon hears `Connected(false)` and fails static);
//! the next one starts after a short backoff, from a fresh read of every rollout.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, GetResponse, Identity, PutOptions,
    TlsOptions, WatchOptions, WatchStream,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;

use super::{ClusterError, Event, EvidenceCache, Publication, REQUEST_TIMEOUT, Write, WriteError};
use crate::config::ClusterConfig;

mod evidence_sync;
mod rollouts;

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
        let mut t =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read("the etcd CA", &tls.ca)?));
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

    /// A member that requires a client certificate closes the TLS handshake of a client
    /// without one, which the transport reports only as a closed connection.
    fn with_tls_hint(&self, error: String) -> String {
        let tls_without_identity = self
            .config
            .tls
            .as_ref()
            .is_some_and(|t| t.identity.is_none());
        let refused_handshake =
            error.contains("connection closed") || error.contains("BadCertificate");
        if tls_without_identity && refused_handshake {
            format!(
                "{error} (if the members require client certificates, give `cluster.tls.cert` \
                 and `cluster.tls.key`)"
            )
        } else {
            error
        }
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
                tracing::warn!(endpoint, error = %why, "no session with etcd (unreachable, or it refused this node); trying the next member");
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
        .await
        .map_err(|e| self.with_tls_hint(e))?;
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
}

pub(super) fn watched(
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

/// Every key under `prefix` as etcd holds it now, and a watch from just after that read, so
/// that no change falls between the two.
async fn range_then_watch(
    client: &mut Client,
    prefix: String,
    what: &str,
) -> Result<(GetResponse, WatchStream), String> {
    let r = timed(
        &format!("reading {what}"),
        client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = r.header().map_or(0, |h| h.revision());
    let watch = timed(
        &format!("watching {what}"),
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
    Ok((r, watch))
}
