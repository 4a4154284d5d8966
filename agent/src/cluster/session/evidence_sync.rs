//! The session's side of the evidence: publishing this node's counters under its lease, and,
//! while this node leads, keeping a copy of every node's.

use etcd_client::{Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchStream};

use super::{Live, MAX_VALUE_BYTES, Session, range_then_watch, timed, watched};
use crate::cluster::{EvidenceCache, NodeEvidence};

impl Session {
    /// The leader's copy of every node's evidence, and a watch that keeps it.
    pub(super) async fn load_evidence(&self, client: &mut Client) -> Result<WatchStream, String> {
        let (r, watch) = range_then_watch(client, self.key("evidence/"), "the evidence").await?;
        let mut cache = self.evidence.lock().map_err(|_| "evidence lock poisoned")?;
        cache.services.clear();
        for kv in r.kvs() {
            self.take_evidence(&mut cache, kv, true);
        }
        Ok(watch)
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

    pub(super) fn evidence_events(
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

    pub(super) async fn read_evidence(
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
    pub(super) async fn publish(&mut self, live: &mut Live) -> Result<(), String> {
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
