//! Watching busy HTTP connections one by one, to end each right after an answer.

use std::{
    thread,
    time::{Duration, Instant},
};

use super::{
    diag::{Diag, Ended, TcpSocket},
    kernel::Kernel,
    plan::{self, How, Reason},
};

/// While a drain waits on busy HTTP connections, each is looked at on its own this often,
/// for up to `WATCH_BUDGET` a scan, to catch it right after an answer ([`plan::at_rest`]):
/// a pooled connection in constant use rests between a response and the next request for
/// as little as a millisecond.
const WATCH_EVERY: Duration = Duration::from_micros(500);
pub(super) const WATCH_BUDGET: Duration = Duration::from_millis(250);
/// At most this many busy connections are watched one by one (a pass over them takes
/// about 15 µs each); the rest wait for the scans.
pub(super) const WATCH_MAX: usize = 1_024;

/// Looks at each busy HTTP connection (to drain, or past its age) on its own until it rests
/// (then ends it), closes by itself, or `until` passes. What is left in `busy` still waits.
pub(super) fn watch_busy(
    kernel: &Kernel,
    diag: &mut Diag,
    busy: &mut Vec<(TcpSocket, String, Reason)>,
    until: Instant,
    ended: &mut Vec<(String, Reason, How, bool)>,
) {
    while !busy.is_empty() && Instant::now() < until {
        busy.retain(|(s, name, reason)| {
            let Ok(Some(now)) = diag.one(s) else {
                return false;
            };
            let Some(tag) = kernel.tag(s.id.cookie()) else {
                return false;
            };
            if !plan::at_rest(&now, &tag, true) {
                return true;
            }
            match diag.destroy(&[now]) {
                Ok(a) if a[0] == Ended::Yes => {
                    ended.push((name.clone(), *reason, How::Idle, false));
                }
                Ok(a) => a[0].warn_if_refused(name),
                Err(e) => tracing::warn!(service = %name, error = %e, "ending a connection failed"),
            }
            false
        });
        thread::sleep(WATCH_EVERY);
    }
}
