//! Ports for the servers a test starts later (etcd members, metrics, DNS) and for virtual
//! addresses. A port the kernel hands out for `bind(0)` is an ephemeral one: once released,
//! any process's next `connect()` may take it as its source port before the test's server
//! binds it (this machine carries other TCP traffic, and an etcd member dials its peers while
//! they are still starting). Ports below the ephemeral range are never taken that way, so
//! they are handed out from there, each once per test process.

use std::{
    net::{TcpListener, UdpSocket},
    sync::atomic::{AtomicU32, Ordering},
};

/// The lowest port handed out; below it sit the well-known and registered services a
/// machine may run.
const FIRST: u32 = 10_000;

/// A port nothing listens on at `ip` (TCP or UDP) right now, outside the ephemeral range.
pub fn unused_port(ip: &str) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_start().min(u32::from(u16::MAX) + 1);
    if end <= FIRST {
        // No room below the ephemeral range: take the kernel's choice.
        let l = TcpListener::bind((ip, 0)).expect("bind for a free port");
        return l.local_addr().expect("local addr").port();
    }
    let span = end - FIRST;
    // Test binaries run one after another; start each at its own place in the range so a
    // port one left in TIME_WAIT or to a lingering server is not the next one's first pick.
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % span) as u16;
        if TcpListener::bind((ip, port)).is_ok() && UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {FIRST}..{end}");
}

/// The first port of `net.ipv4.ip_local_port_range` (IPv6 shares it).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
