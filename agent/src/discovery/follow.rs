//! The followers: one task that keeps every name's next lookup in a schedule, starts the
//! lookups that are due (a bounded number at a time) and sends each result to the loop.
//! One task rather than one per name: a lookup's state is large, and it exists only while
//! the lookup is in flight, so memory follows the lookups under way, not the names.
//! Dropping the handle stops it.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tokio::{
    sync::mpsc,
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use super::{Failure, Lookup, NameKey, Refresh, Resolver};

/// Most lookups in flight at once: enough for thousands of names at a 5 s TTL on a healthy
/// server, and a bound on what a struggling one is sent.
const MAX_IN_FLIGHT: usize = 64;

/// A name to follow: when it is first due, and its failures in a row so far (the back-off
/// carries over from the followers this one replaces).
pub struct Follow {
    pub key: NameKey,
    pub delay: Duration,
    pub failures_in_a_row: u64,
}

pub struct Followers(JoinHandle<()>);

impl Followers {
    pub fn spawn(
        names: Vec<Follow>,
        resolver: Resolver,
        refresh: Refresh,
        tx: mpsc::Sender<(NameKey, Lookup)>,
    ) -> Self {
        Self(tokio::spawn(follow(names, resolver, refresh, tx)))
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn follow(
    names: Vec<Follow>,
    resolver: Resolver,
    refresh: Refresh,
    tx: mpsc::Sender<(NameKey, Lookup)>,
) {
    // Due time (with a sequence number, so two names due at once both stay) -> name.
    let mut due: BTreeMap<(Instant, u64), (NameKey, u64)> = BTreeMap::new();
    let mut seq = 0u64;
    let now = Instant::now();
    for f in names {
        due.insert((now + f.delay, seq), (f.key, f.failures_in_a_row));
        seq += 1;
    }
    let mut in_flight = JoinSet::new();
    // Which name each lookup in flight is for, so that a lookup that panicked is still
    // rescheduled (as a failure) and its name never silently dropped.
    let mut asked: HashMap<tokio::task::Id, (NameKey, u64)> = HashMap::new();
    loop {
        let next = due.first_key_value().map(|((at, _), _)| *at);
        let room = in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if room && next.is_some() => {
                let now = Instant::now();
                while in_flight.len() < MAX_IN_FLIGHT
                    && let Some(entry) = due.first_entry()
                    && entry.key().0 <= now
                {
                    let (key, failures) = entry.remove();
                    let (r, name) = (resolver.clone(), key.clone());
                    let task = in_flight.spawn(async move { r.lookup(&name.0, name.1).await });
                    asked.insert(task.id(), (key, failures));
                }
            }
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                let (id, lookup) = match done {
                    Ok((id, lookup)) => (id, lookup),
                    Err(e) => (e.id(), Lookup::Failed(Failure::Error)),
                };
                let Some((key, failures)) = asked.remove(&id) else { continue };
                let failures = match lookup {
                    Lookup::Answer { .. } => 0,
                    Lookup::Failed(_) => failures + 1,
                };
                let at = Instant::now() + refresh.after(&lookup, failures);
                due.insert((at, seq), (key.clone(), failures));
                seq += 1;
                if tx.send((key, lookup)).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}
