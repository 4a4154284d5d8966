//! What a node publishes for the leader's analysis, and how the leader adds it up.
//!
//! A node publishes its cumulative per-version counters for each service under an active
//! rollout: exactly what its `/metrics` show, nonzero slots only. The leader sums them into
//! one cumulative reading per service that never goes back: a node's contribution is what
//! its counters grew by since the leader first saw them, so a node that appears mid-window
//! adds only what its callers did since; a node whose keys vanish (its lease expired) keeps
//! the contribution it had, counted once; a node whose counters restart from zero (a reboot)
//! banks what it had and counts on from zero.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{config::Nodes, rollout::Counts};

/// One node's counters for one service, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvidence {
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Slots per version (the dense length).
    pub slots: u32,
    /// Nonzero slots of stable, then canary: (index, value).
    pub versions: [Vec<(u32, u64)>; 2],
    pub published_unix_ms: u64,
}

/// Most slots a published reading may claim: far above the kernel's, so a corrupt or hostile
/// value cannot make the leader allocate without bound.
const MAX_SLOTS: u32 = 4096;

impl NodeEvidence {
    pub fn new(
        node: &str,
        labels: &BTreeMap<String, String>,
        versions: &[Vec<u64>; 2],
        now_unix_ms: u64,
    ) -> Self {
        let sparse = |v: &[u64]| {
            v.iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(i, n)| (i as u32, *n))
                .collect()
        };
        Self {
            node: node.to_owned(),
            labels: labels.clone(),
            slots: versions[0].len().max(versions[1].len()) as u32,
            versions: [sparse(&versions[0]), sparse(&versions[1])],
            published_unix_ms: now_unix_ms,
        }
    }

    /// The dense counters, or why the value cannot be one.
    pub fn dense(&self) -> Result<[Vec<u64>; 2], String> {
        if self.slots > MAX_SLOTS {
            return Err(format!("{} slots, at most {MAX_SLOTS}", self.slots));
        }
        let mut out = [vec![0; self.slots as usize], vec![0; self.slots as usize]];
        for (v, sparse) in out.iter_mut().zip(&self.versions) {
            for (i, n) in sparse {
                *v.get_mut(*i as usize)
                    .ok_or_else(|| format!("slot {i} beyond {}", self.slots))? = *n;
            }
        }
        Ok(out)
    }
}

/// One node's row of `sluice status`: its callers' cumulative counts per version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeBreakdown {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub stable_samples: u64,
    pub stable_errors: u64,
    pub canary_samples: u64,
    pub canary_errors: u64,
    pub published_unix_ms: u64,
}

impl NodeBreakdown {
    pub fn of(e: &NodeEvidence, http1: bool) -> Option<Self> {
        let d = e.dense().ok()?;
        let s = Counts::of(&d[0], http1);
        let c = Counts::of(&d[1], http1);
        Some(Self {
            node: e.node.clone(),
            labels: e.labels.clone(),
            stable_samples: s.samples,
            stable_errors: s.errors,
            canary_samples: c.samples,
            canary_errors: c.errors,
            published_unix_ms: e.published_unix_ms,
        })
    }
}

#[derive(Clone, Debug)]
struct NodeTally {
    labels: BTreeMap<String, String>,
    /// The counters when first seen (or zero after a restart of them).
    base: [Vec<u64>; 2],
    /// What earlier runs of the counters contributed.
    banked: [Vec<u64>; 2],
    last: [Vec<u64>; 2],
    /// The etcd revision of the value last taken: an unchanged value is not read again.
    revision: i64,
}

impl NodeTally {
    fn contribution(&self) -> [Vec<u64>; 2] {
        let mut out = self.banked.clone();
        for (o, (l, b)) in out.iter_mut().zip(self.last.iter().zip(&self.base)) {
            add(o, l);
            sub(o, b);
        }
        out
    }
}

/// The leader's running sum of one service's evidence over the nodes it has seen.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    nodes: BTreeMap<String, NodeTally>,
    total: [Vec<u64>; 2],
}

impl Tally {
    /// The etcd revision of the value last taken from `node`.
    pub fn revision_of(&self, node: &str) -> Option<i64> {
        self.nodes.get(node).map(|t| t.revision)
    }

    /// Takes a node's published counters (at etcd revision `revision`).
    pub fn observe(
        &mut self,
        revision: i64,
        node: &str,
        labels: &BTreeMap<String, String>,
        reading: [Vec<u64>; 2],
    ) {
        match self.nodes.get_mut(node) {
            None => {
                // First sight: what came before is not this leader's to count.
                for (total, r) in self.total.iter_mut().zip(&reading) {
                    if total.len() < r.len() {
                        total.resize(r.len(), 0);
                    }
                }
                self.nodes.insert(
                    node.to_owned(),
                    NodeTally {
                        labels: labels.clone(),
                        banked: [vec![0; reading[0].len()], vec![0; reading[1].len()]],
                        base: reading.clone(),
                        last: reading,
                        revision,
                    },
                );
            }
            Some(t) if t.revision == revision => {}
            Some(t) => {
                let before = t.contribution();
                let went_back = reading.iter().zip(&t.last).any(|(now, then)| {
                    then.iter()
                        .enumerate()
                        .any(|(i, v)| now.get(i).copied().unwrap_or(0) < *v)
                });
                if went_back {
                    t.banked = before.clone();
                    t.base = [vec![0; reading[0].len()], vec![0; reading[1].len()]];
                }
                t.last = reading;
                t.labels = labels.clone();
                t.revision = revision;
                let after = t.contribution();
                for (total, (a, b)) in self.total.iter_mut().zip(after.iter().zip(&before)) {
                    add(total, a);
                    sub(total, b);
                }
            }
        }
    }

    /// The cumulative reading of the nodes `nodes` selects: every node's growth since first
    /// seen, departed nodes' included.
    pub fn reading(&self, nodes: &Nodes) -> [Vec<u64>; 2] {
        if *nodes == Nodes::All {
            return self.total.clone();
        }
        let mut out: [Vec<u64>; 2] = Default::default();
        for t in self.nodes.values().filter(|t| nodes.matches(&t.labels)) {
            for (o, c) in out.iter_mut().zip(t.contribution()) {
                add(o, &c);
            }
        }
        out
    }
}

fn add(into: &mut Vec<u64>, v: &[u64]) {
    if into.len() < v.len() {
        into.resize(v.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(v) {
        *a = a.saturating_add(*b);
    }
}

fn sub(into: &mut [u64], v: &[u64]) {
    for (a, b) in into.iter_mut().zip(v) {
        *a = a.saturating_sub(*b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(stable: u64, canary: u64) -> [Vec<u64>; 2] {
        [vec![stable, 0, 1], vec![canary, 0, 2]]
    }

    #[test]
    fn sparse_round_trip() {
        let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        let e = NodeEvidence::new("n1", &labels, &r(5, 7), 1);
        assert_eq!(e.versions[0], vec![(0, 5), (2, 1)]);
        assert_eq!(e.dense().expect("dense"), r(5, 7));
        let bad = NodeEvidence {
            slots: 2,
            ..e.clone()
        };
        assert!(bad.dense().is_err());
        let huge = NodeEvidence {
            slots: 1 << 30,
            ..e
        };
        assert!(huge.dense().is_err());
    }

    #[test]
    fn growth_is_summed_and_never_goes_back() {
        let none = BTreeMap::new();
        let mut t = Tally::default();
        t.observe(1, "a", &none, r(100, 10));
        t.observe(2, "b", &none, r(50, 5));
        assert_eq!(t.reading(&Nodes::All), [vec![0; 3], vec![0; 3]]);
        t.observe(3, "a", &none, r(110, 12));
        t.observe(4, "b", &none, r(60, 9));
        assert_eq!(t.reading(&Nodes::All)[0][0], 20);
        assert_eq!(t.reading(&Nodes::All)[1][0], 6);
        // The same revision again is not counted twice.
        t.observe(4, "b", &none, r(60, 9));
        assert_eq!(t.reading(&Nodes::All)[1][0], 6);
        // b's keys vanish (nothing more observed): its contribution stays.
        t.observe(5, "a", &none, r(120, 13));
        assert_eq!(t.reading(&Nodes::All)[0][0], 30);
        // a restarts from zero: what it had is banked, the new run adds.
        t.observe(6, "a", &none, r(3, 1));
        let after = t.reading(&Nodes::All);
        assert_eq!(after[0][0], 20 + 10 + 3);
        assert_eq!(after[1][0], 4 + 3 + 1);
    }

    #[test]
    fn a_selector_sums_its_nodes_only() {
        let east = BTreeMap::from([("zone".to_owned(), "east".to_owned())]);
        let west = BTreeMap::from([("zone".to_owned(), "west".to_owned())]);
        let mut t = Tally::default();
        t.observe(1, "e", &east, r(0, 0));
        t.observe(2, "w", &west, r(0, 0));
        t.observe(3, "e", &east, r(10, 1));
        t.observe(4, "w", &west, r(20, 2));
        let sel = Nodes::Labels(east.clone());
        assert_eq!(t.reading(&sel)[0][0], 10);
        assert_eq!(t.reading(&Nodes::All)[0][0], 30);
    }
}
