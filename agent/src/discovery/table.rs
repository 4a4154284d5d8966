//! What every name has resolved to, and how its lookups went. Pure: lookups are recorded
//! here and the rules (a failure keeps the last good set; when to ask again) are tested
//! without a network.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::lookup::{Failure, Lookup};
use crate::{config::Family, desired::Resolved};

/// A name and the family it is looked up in.
pub type NameKey = (String, Family);

/// Bounds on how often a name is asked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refresh {
    pub min: Duration,
    pub max: Duration,
}

impl Refresh {
    /// After an answer: its TTL, within the bounds. After failures: `min`, doubling with
    /// each failure in a row, up to `max` (a server that is down is not hammered, and one
    /// that comes back is asked within `max`).
    pub fn after(&self, lookup: &Lookup, failures_in_a_row: u64) -> Duration {
        match lookup {
            Lookup::Answer { ttl, .. } => (*ttl).clamp(self.min, self.max),
            Lookup::Failed(_) => {
                let doublings = failures_in_a_row.saturating_sub(1).min(16) as u32;
                self.min.saturating_mul(1 << doublings).min(self.max)
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct NameState {
    /// The last good answer (empty: never resolved). A failure never empties it.
    pub addresses: BTreeSet<IpAddr>,
    /// The last lookup's result: `None` before the first, else `Ok` or the failure.
    pub last: Option<Result<(), Failure>>,
    pub failures_in_a_row: u64,
    pub last_good: Option<Instant>,
    pub next_lookup: Option<Instant>,
    pub ok: u64,
    pub failed: BTreeMap<Failure, u64>,
}

impl NameState {
    pub fn result_label(&self) -> &'static str {
        match self.last {
            None => "pending",
            Some(Ok(())) => "ok",
            Some(Err(f)) => f.label(),
        }
    }
}

/// What recording a lookup changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The set steering uses changed: the kernel must be given the new one.
    pub set_changed: bool,
    /// The result differs from the previous lookup's (ok -> servfail, ...): worth a log line.
    pub result_changed: bool,
    /// When to ask again.
    pub next: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Discovered {
    names: BTreeMap<NameKey, NameState>,
}

impl Discovered {
    /// Keeps exactly these names: new ones start pending, dropped ones are forgotten, the
    /// rest keep their sets.
    pub fn retain(&mut self, keys: &BTreeSet<NameKey>) {
        self.names.retain(|k, _| keys.contains(k));
        for k in keys {
            self.names.entry(k.clone()).or_default();
        }
    }

    pub fn record(
        &mut self,
        key: &NameKey,
        lookup: &Lookup,
        refresh: Refresh,
        now: Instant,
    ) -> Recorded {
        let state = self.names.entry(key.clone()).or_default();
        let before = state.last;
        let mut set_changed = false;
        match lookup {
            Lookup::Answer { addresses, .. } => {
                set_changed = *addresses != state.addresses;
                state.addresses.clone_from(addresses);
                state.last = Some(Ok(()));
                state.failures_in_a_row = 0;
                state.last_good = Some(now);
                state.ok += 1;
            }
            Lookup::Failed(f) => {
                state.last = Some(Err(*f));
                state.failures_in_a_row += 1;
                *state.failed.entry(*f).or_default() += 1;
            }
        }
        let next = refresh.after(lookup, state.failures_in_a_row);
        state.next_lookup = Some(now + next);
        Recorded {
            set_changed,
            result_changed: before != state.last,
            next,
        }
    }

    pub fn get(&self, key: &NameKey) -> Option<&NameState> {
        self.names.get(key)
    }

    pub fn names(&self) -> impl Iterator<Item = (&NameKey, &NameState)> {
        self.names.iter()
    }

    /// The sets steering uses: each name's last good answer.
    pub fn resolved(&self) -> Resolved {
        Resolved(
            self.names
                .iter()
                .filter(|(_, s)| !s.addresses.is_empty())
                .map(|(k, s)| (k.clone(), s.addresses.clone()))
                .collect(),
        )
    }

    /// Names that have never resolved.
    pub fn unresolved(&self) -> Vec<&NameKey> {
        self.names
            .iter()
            .filter(|(_, s)| s.addresses.is_empty())
            .map(|(k, _)| k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: Refresh = Refresh {
        min: Duration::from_secs(5),
        max: Duration::from_secs(30),
    };

    fn key() -> NameKey {
        ("app-canary.prod.svc.cluster.local".into(), Family::V4)
    }

    fn answer(ips: &[&str], ttl: u64) -> Lookup {
        Lookup::Answer {
            addresses: ips.iter().map(|i| i.parse().expect("test ip")).collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    #[test]
    fn failures_and_empty_answers_keep_the_last_good_set() {
        let mut d = Discovered::default();
        let now = Instant::now();
        let r = d.record(&key(), &answer(&["10.1.0.1", "10.1.0.2"], 5), REFRESH, now);
        assert!(r.set_changed && r.result_changed);
        for f in Failure::ALL {
            let r = d.record(&key(), &Lookup::Failed(f), REFRESH, now);
            assert!(!r.set_changed, "{f:?}");
        }
        let state = d.get(&key()).expect("recorded");
        assert_eq!(state.addresses.len(), 2);
        assert_eq!(state.failures_in_a_row, Failure::ALL.len() as u64);
        assert_eq!(
            state.failed.values().sum::<u64>(),
            Failure::ALL.len() as u64
        );
        assert_eq!(d.resolved().0[&key()].len(), 2);
        // The same answer again changes no set; a new one does.
        let again = d.record(&key(), &answer(&["10.1.0.1", "10.1.0.2"], 5), REFRESH, now);
        assert!(!again.set_changed && again.result_changed);
        let scaled = answer(&["10.1.0.1", "10.1.0.2", "10.1.0.3"], 5);
        assert!(d.record(&key(), &scaled, REFRESH, now).set_changed);
    }

    #[test]
    fn a_result_change_is_said_once() {
        let mut d = Discovered::default();
        let now = Instant::now();
        d.record(&key(), &answer(&["10.1.0.1"], 5), REFRESH, now);
        let servfail = Lookup::Failed(Failure::ServFail);
        assert!(d.record(&key(), &servfail, REFRESH, now).result_changed);
        assert!(!d.record(&key(), &servfail, REFRESH, now).result_changed);
        let timeout = Lookup::Failed(Failure::Timeout);
        assert!(d.record(&key(), &timeout, REFRESH, now).result_changed);
    }

    #[test]
    fn the_ttl_is_bounded_and_failures_back_off() {
        let mut d = Discovered::default();
        let now = Instant::now();
        let next = |d: &mut Discovered, l: &Lookup| d.record(&key(), l, REFRESH, now).next;
        assert_eq!(next(&mut d, &answer(&["10.1.0.1"], 0)), REFRESH.min);
        assert_eq!(
            next(&mut d, &answer(&["10.1.0.1"], 12)),
            Duration::from_secs(12)
        );
        assert_eq!(next(&mut d, &answer(&["10.1.0.1"], 3600)), REFRESH.max);
        let f = Lookup::Failed(Failure::Timeout);
        let backoff: Vec<u64> = (0..5).map(|_| next(&mut d, &f).as_secs()).collect();
        assert_eq!(backoff, vec![5, 10, 20, 30, 30]);
        assert_eq!(next(&mut d, &answer(&["10.1.0.1"], 5)), REFRESH.min);
    }

    #[test]
    fn retain_keeps_known_sets_and_forgets_dropped_names() {
        let mut d = Discovered::default();
        let now = Instant::now();
        d.record(&key(), &answer(&["10.1.0.1"], 5), REFRESH, now);
        let other: NameKey = ("other".into(), Family::V6);
        d.retain(&[key(), other.clone()].into_iter().collect());
        assert_eq!(d.get(&key()).expect("kept").addresses.len(), 1);
        assert_eq!(d.unresolved(), vec![&other]);
        d.retain(&[other.clone()].into_iter().collect());
        assert!(d.get(&key()).is_none());
    }
}
