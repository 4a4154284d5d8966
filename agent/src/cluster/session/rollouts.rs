//! The session's side of the rollouts: reading and watching them, the campaign for
//! leadership, and the conditioned writes that keep a deposed leader from overwriting.

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchStream,
};

use super::{Live, MAX_VALUE_BYTES, Session, range_then_watch, timed, watched};
use crate::cluster::{Event, Stored, StoredValue, Write, WriteError};

impl Session {
    /// Every rollout as etcd holds it now, told to the daemon, and a watch from just after.
    pub(super) async fn snapshot(&self, client: &mut Client) -> Result<(WatchStream, i64), String> {
        let (r, watch) = range_then_watch(client, self.key("rollouts/"), "the rollouts").await?;
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

    pub(super) fn rollout_events(
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
    pub(super) async fn campaign(&mut self, live: &mut Live) -> Result<(), String> {
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

    /// A conditioned write of a rollout's state.
    pub(super) async fn write(&self, live: &mut Live, w: &Write) -> Result<i64, WriteError> {
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
}
