//! A name's follower: a task that looks the name up whenever its last answer expires and
//! sends what it found to the loop. Dropping it stops it.

use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle};

use super::{Lookup, NameKey, Refresh, Resolver};

pub struct Follower(JoinHandle<()>);

impl Follower {
    /// Follows `key`, first looking it up after `delay`; `failures_in_a_row` carries the
    /// back-off over from a follower this one replaces.
    pub fn spawn(
        key: NameKey,
        resolver: Resolver,
        refresh: Refresh,
        delay: Duration,
        failures_in_a_row: u64,
        tx: mpsc::Sender<(NameKey, Lookup)>,
    ) -> Self {
        Self(tokio::spawn(async move {
            let (mut delay, mut failures) = (delay, failures_in_a_row);
            loop {
                tokio::time::sleep(delay).await;
                let lookup = resolver.lookup(&key.0, key.1).await;
                failures = match lookup {
                    Lookup::Answer { .. } => 0,
                    Lookup::Failed(_) => failures + 1,
                };
                delay = refresh.after(&lookup, failures);
                if tx.send((key.clone(), lookup)).await.is_err() {
                    return;
                }
            }
        }))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}
