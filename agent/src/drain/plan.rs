//! What to do with one steered connection, decided from what the kernel says of it: pure,
//! so every rule is tested without a kernel.

use std::{net::SocketAddr, time::Duration};

use sluice_common::maps::{SockTag, VERSION_CANARY, VipKey};

use super::diag::TcpSocket;

/// One service, as the drainer needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub name: String,
    /// The kernel's id of the service (the tags carry it).
    pub id: u32,
    /// One of its virtual addresses: where the kernel's share is read.
    pub vip: VipKey,
    pub http1: bool,
    /// End canary connections when the canary's share is 0.
    pub on_rollback: bool,
    pub grace: Duration,
    pub max_age: Option<Duration>,
    /// The canary backends the kernel holds now. A canary-tagged connection to anything else
    /// (a promoted canary is the stable set) is not drained.
    pub canary_backends: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The canary's share went to 0 (rollback, abort, `sluice weight S 0`, a configuration).
    Rollback,
    /// Older than the service's `max_connection_age`.
    MaxAge,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Rollback => "rollback",
            Reason::MaxAge => "max_connection_age",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum How {
    /// Between requests: nothing the application would lose.
    Idle,
    /// At the grace deadline, whatever it was doing.
    Grace,
}

impl How {
    pub fn name(self) -> &'static str {
        match self {
            How::Idle => "idle",
            How::Grace => "grace",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not this rule's connection.
    Skip,
    /// This rule's, but not now: ask again at the next scan.
    Wait,
    End(Reason, How),
}

/// A response this recent (ms, as `tcp_info` gives it: in whole ticks of the kernel's clock,
/// up to 10 ms at 100 Hz) means the connection was answered a moment ago.
pub const JUST_ANSWERED_MS: u32 = 10;
/// Nothing sent for this long (ms) is an idle connection: a client whose next request
/// falls in the microseconds between its check and its send is one sending less often
/// than 4 times a second, and then only for that fraction of its pause.
pub const IDLE_MS: u32 = 250;

/// Whether a connection rests between exchanges at a moment when ending it is safe:
/// nothing unread by the application, nothing unacknowledged by the peer, and
/// - with HTTP parsing (the service's `l7: http1`, with signals on), no request waiting for
///   its response (an HTTP/1.1 client sends its next request only after reading the whole
///   previous one), and either the answer came a moment ago or nothing was sent for a
///   second. Ending it at a random moment of its rest would race the client's next
///   request: a pool checks a connection, then sends, and an end between the two loses
///   that request. Right after an answer the client is reading it, far from its next check;
///   after a quarter of a second of silence its next request is unlikely to fall in that
///   gap.
/// - without it, the peer spoke last (a client's request was answered), and no data for two
///   round trips (at least a millisecond, the kernel's resolution).
///
/// Races are bounded, not excluded: a client that sends at once after reading an answer,
/// as a pool in constant use does, can still lose one request.
pub fn at_rest(s: &TcpSocket, tag: &SockTag, http1: bool) -> bool {
    if s.unread != 0 || s.unacked != 0 {
        return false;
    }
    if http1 {
        return tag.outstanding == 0
            && (s.last_received_ms <= JUST_ANSWERED_MS || s.last_sent_ms >= IDLE_MS);
    }
    let quiet_ms = (2 * u64::from(s.rtt_us)).div_ceil(1000).max(1);
    u64::from(s.last_received_ms) >= quiet_ms
        && u64::from(s.last_sent_ms) >= quiet_ms
        && s.last_received_ms <= s.last_sent_ms
}

/// A canary connection of a service whose canary share is 0, `elapsed` into its drain.
pub fn rollback(
    p: &Policy,
    s: &TcpSocket,
    tag: &SockTag,
    destination: SocketAddr,
    elapsed: Duration,
) -> Verdict {
    if tag.version != VERSION_CANARY || !p.canary_backends.contains(&destination) {
        return Verdict::Skip;
    }
    if p.http1 && at_rest(s, tag, true) {
        Verdict::End(Reason::Rollback, How::Idle)
    } else if elapsed >= p.grace {
        Verdict::End(Reason::Rollback, How::Grace)
    } else {
        Verdict::Wait
    }
}

/// A steered connection of a service with a maximum age, `age` old. Ended only at rest:
/// a pool reconnects on its next request and is steered afresh.
pub fn max_age(p: &Policy, s: &TcpSocket, tag: &SockTag, age: Duration) -> Verdict {
    let Some(limit) = p.max_age else {
        return Verdict::Skip;
    };
    if age < limit {
        Verdict::Skip
    } else if at_rest(s, tag, p.http1) {
        Verdict::End(Reason::MaxAge, How::Idle)
    } else {
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::diag::SockId;
    use sluice_common::maps::VERSION_STABLE;

    const CANARY: &str = "127.0.0.1:9001";

    fn policy(http1: bool) -> Policy {
        Policy {
            name: "web".into(),
            id: 3,
            vip: VipKey::default(),
            http1,
            on_rollback: true,
            grace: Duration::from_secs(10),
            max_age: Some(Duration::from_secs(5)),
            canary_backends: vec![CANARY.parse().expect("test setup")],
        }
    }

    /// Answered 4 ms ago, its request sent 5 ms ago.
    fn resting() -> TcpSocket {
        TcpSocket {
            family: libc::AF_INET as u8,
            state: 1,
            id: SockId([0; 48]),
            unread: 0,
            unacked: 0,
            last_sent_ms: 5,
            last_received_ms: 4,
            rtt_us: 50,
        }
    }

    fn tag(version: u8, http1: bool, outstanding: bool) -> SockTag {
        SockTag {
            version,
            http1: u8::from(http1),
            outstanding: u8::from(outstanding),
            ..SockTag::default()
        }
    }

    #[test]
    fn an_idle_http_canary_connection_ends_at_once_a_busy_one_at_the_grace() {
        let p = policy(true);
        let at = CANARY.parse().expect("test setup");
        let now = Duration::ZERO;
        let idle = tag(VERSION_CANARY, true, false);
        let busy = tag(VERSION_CANARY, true, true);
        assert_eq!(
            rollback(&p, &resting(), &idle, at, now),
            Verdict::End(Reason::Rollback, How::Idle)
        );
        assert_eq!(rollback(&p, &resting(), &busy, at, now), Verdict::Wait);
        assert_eq!(
            rollback(&p, &resting(), &busy, at, Duration::from_secs(10)),
            Verdict::End(Reason::Rollback, How::Grace)
        );
        // Bytes unread or unacknowledged: not at rest.
        for s in [
            TcpSocket {
                unread: 1,
                ..resting()
            },
            TcpSocket {
                unacked: 1,
                ..resting()
            },
        ] {
            assert_eq!(rollback(&p, &s, &idle, at, now), Verdict::Wait);
        }
    }

    #[test]
    fn an_http_connection_ends_right_after_an_answer_or_when_idle_not_in_between() {
        let p = policy(true);
        let at = CANARY.parse().expect("test setup");
        let idle = tag(VERSION_CANARY, true, false);
        let now = Duration::ZERO;
        // 30 ms into the pause between two requests: the next one may be near.
        let between = TcpSocket {
            last_sent_ms: 31,
            last_received_ms: 30,
            ..resting()
        };
        assert_eq!(rollback(&p, &between, &idle, at, now), Verdict::Wait);
        let quiet = TcpSocket {
            last_sent_ms: 300,
            last_received_ms: 299,
            ..resting()
        };
        assert_eq!(
            rollback(&p, &quiet, &idle, at, now),
            Verdict::End(Reason::Rollback, How::Idle)
        );
    }

    #[test]
    fn without_http_a_canary_connection_ends_at_the_grace() {
        let p = policy(false);
        let at = CANARY.parse().expect("test setup");
        let t = tag(VERSION_CANARY, false, false);
        assert_eq!(
            rollback(&p, &resting(), &t, at, Duration::from_secs(9)),
            Verdict::Wait
        );
        assert_eq!(
            rollback(&p, &resting(), &t, at, Duration::from_secs(10)),
            Verdict::End(Reason::Rollback, How::Grace)
        );
    }

    #[test]
    fn stable_and_promoted_connections_are_never_drained_on_rollback() {
        let p = policy(true);
        let stable = tag(VERSION_STABLE, true, false);
        let canary = tag(VERSION_CANARY, true, false);
        let forever = Duration::from_secs(3600);
        let at = CANARY.parse().expect("test setup");
        assert_eq!(
            rollback(&p, &resting(), &stable, at, forever),
            Verdict::Skip
        );
        // Tagged canary, to a backend that is no canary now (the promoted set).
        let elsewhere = "127.0.0.1:9002".parse().expect("test setup");
        assert_eq!(
            rollback(&p, &resting(), &canary, elsewhere, forever),
            Verdict::Skip
        );
    }

    #[test]
    fn an_old_connection_ends_only_at_rest() {
        let p = policy(false);
        let t = tag(VERSION_STABLE, false, false);
        let old = Duration::from_secs(6);
        assert_eq!(
            max_age(&p, &resting(), &t, Duration::from_secs(4)),
            Verdict::Skip
        );
        assert_eq!(
            max_age(&p, &resting(), &t, old),
            Verdict::End(Reason::MaxAge, How::Idle)
        );
        // Without HTTP parsing, at rest means the peer spoke last.
        let waiting = TcpSocket {
            last_sent_ms: 1,
            last_received_ms: 3,
            ..resting()
        };
        assert_eq!(max_age(&p, &waiting, &t, old), Verdict::Wait);
        // Nor with data a moment ago.
        let just_now = TcpSocket {
            last_received_ms: 0,
            ..resting()
        };
        assert_eq!(max_age(&p, &just_now, &t, old), Verdict::Wait);
        // With it, no request outstanding.
        let h = policy(true);
        let busy = tag(VERSION_STABLE, true, true);
        assert_eq!(max_age(&h, &resting(), &busy, old), Verdict::Wait);
        assert_eq!(
            max_age(&policy_without_age(), &resting(), &t, old),
            Verdict::Skip
        );
    }

    fn policy_without_age() -> Policy {
        Policy {
            max_age: None,
            ..policy(false)
        }
    }
}
