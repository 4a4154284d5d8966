//! The handshake of steered connections, seen from the caller's side by the cgroup_skb
//! programs that run for every packet anyway: the SYN leaving starts the connect latency,
//! the SYN-ACK that acknowledges it ends it. (sock_ops would see the same, but a sock_ops
//! program runs some nine times a connection, for callbacks sluice has no use for too.)
//! Failed handshakes are counted when the socket is destroyed (`tcp`).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::SkBuffContext};
use sluice_common::metrics::{ESTABLISHED, HIST_CONNECT};

use crate::{
    metrics::{bump, metrics_of, observe_latency},
    segment::{ACK, Segment, departure_ns},
    tags::{cookie_of, tag_of},
};

/// A SYN leaves (egress). Only a connect sends one without ACK; the first of a tagged
/// socket starts its connect latency at its departure and its sequence space out. One sent
/// again changes nothing here: the socket's `total_retrans` counts it.
#[inline(always)]
pub fn syn_sent(ctx: &SkBuffContext, seg: &Segment) {
    if seg.flags & ACK != 0 {
        return;
    }
    let Some(tag) = tag_of(cookie_of(ctx.skb.skb.cast())) else {
        return;
    };
    if tag.connect_ns != 0 {
        return;
    }
    tag.connect_ns = departure_ns(ctx);
    // The SYN takes one sequence number (and Fast Open data, if any, the next ones).
    tag.tx_next = seg.seq.wrapping_add(1).wrapping_add(seg.len);
}

/// A SYN arrives (ingress). With ACK, for a tagged socket whose SYN it acknowledges: the
/// handshake is done (TCP moves the socket to ESTABLISHED right after this program).
#[inline(always)]
pub fn syn_received(ctx: &SkBuffContext, seg: &Segment) {
    // A bare SYN goes to a listener (or is a simultaneous open): no tagged socket's reply.
    if seg.flags & ACK == 0 {
        return;
    }
    let Some(tag) = tag_of(cookie_of(ctx.skb.skb.cast())) else {
        return;
    };
    // Not our SYN's answer (a stale or forged segment TCP will drop), a duplicate, or a
    // handshake whose SYN left before the signals were on: nothing to count.
    if tag.established != 0 || tag.connect_ns == 0 || seg.ack != tag.tx_next {
        return;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    tag.established = 1;
    tag.established_ns = now;
    tag.rx_next = seg.seq.wrapping_add(1);
    if let Some(m) = metrics_of(tag) {
        bump(m, ESTABLISHED, 1);
        observe_latency(m, HIST_CONNECT, now.saturating_sub(tag.connect_ns));
    }
}
