//! sock_ops: the TCP life of steered sockets: handshake outcome and latency, retransmits,
//! RTO expiries, and at close the lifetime, smoothed RTT, bytes, and any HTTP request still
//! outstanding. Minimum kernel: 4.16 (STATE_CB), 5.10 for `bytes_acked` in all states.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG,
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
        bpf_sock_ops,
    },
    helpers::{bpf_ktime_get_ns, bpf_sock_ops_cb_flags_set},
    programs::SockOpsContext,
};
use sluice_common::{
    maps::{LIFE_CLOSED, LIFE_RELEASED, SockTag},
    metrics::{
        BYTES_RECEIVED, BYTES_SENT, CLOSED, ESTABLISHED, FAILED_OTHER, FAILED_REFUSED,
        FAILED_TIMEOUT, HIST_CONNECT, HIST_LIFETIME, HIST_RTT, HTTP_INCOMPLETE, Metrics,
        RETRANSMITS, RTO_EXPIRIES,
    },
};

use crate::{
    metrics::{bump, metrics_of, observe},
    tags::{cookie_of, forget, mark, remember_close, tag_of},
};

pub fn sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    // Most callbacks (RWND_INIT, TIMEOUT_INIT, NEEDS_ECN, ...) are none of our business.
    if !matches!(
        op,
        BPF_SOCK_OPS_TCP_CONNECT_CB
            | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
            | BPF_SOCK_OPS_STATE_CB
            | BPF_SOCK_OPS_RTO_CB
            | BPF_SOCK_OPS_RETRANS_CB
    ) {
        return;
    }
    // Only the move to CLOSE matters of the state changes (two or three more a connection):
    // leave the others before any lookup.
    if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) != BPF_TCP_CLOSE {
        return;
    }
    // SAFETY: a valid context for the program's run.
    let ops = unsafe { &*ctx.ops };
    let cookie = cookie_of(ctx.ops.cast());
    let Some(tag) = tag_of(cookie) else {
        return;
    };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // The SYN is about to go out: the connect latency starts here.
        // SAFETY: plain helper call.
        tag.connect_ns = unsafe { bpf_ktime_get_ns() };
        // Ask for the state, RTO and retransmit callbacks on this socket only.
        let flags =
            BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG;
        // SAFETY: the context pointer the helper expects.
        unsafe { bpf_sock_ops_cb_flags_set(ctx.ops, (ops.bpf_sock_ops_cb_flags | flags) as i32) };
        return;
    }
    if op == BPF_SOCK_OPS_STATE_CB {
        // The move to CLOSE (checked above). Counted only where the service still has its
        // metrics (a service removed from the configuration may not); the tag's life goes on
        // regardless.
        if let Some(m) = metrics_of(tag) {
            count_close(ctx, ops, tag, m);
        }
        // Released already: nothing reads the tag after this but a reset sent as part of
        // this close (unread data, SO_LINGER 0), which finds the service in the recent
        // closes. Not released (a reset received, a failed connect, a disconnect): the
        // release removes it.
        if mark(tag, LIFE_CLOSED) & LIFE_RELEASED != 0 {
            remember_close(cookie, tag);
            forget(cookie);
        }
        return;
    }
    let Some(m) = metrics_of(tag) else {
        return;
    };
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            tag.established = 1;
            tag.established_ns = now;
            tag.tx_next = ops.snd_nxt;
            tag.rx_next = ops.rcv_nxt;
            bump(m, ESTABLISHED, 1);
            // Zero when the SYN left before sock_ops was attached (signals switched on
            // mid-handshake): no start, no latency.
            if tag.connect_ns != 0 {
                observe(m, HIST_CONNECT, now.saturating_sub(tag.connect_ns));
            }
        }
        BPF_SOCK_OPS_RTO_CB => {
            tag.rto = 1;
            bump(m, RTO_EXPIRIES, 1);
        }
        _ => {
            // BPF_SOCK_OPS_RETRANS_CB. args: first seq, segments, result; only
            // retransmissions that went out count.
            if ctx.arg(2) == 0 {
                bump(m, RETRANSMITS, u64::from(ctx.arg(1)));
            }
        }
    }
}

/// A connection moved to CLOSE: its end if it was established (lifetime, RTT, bytes, an
/// HTTP request left without its response), or why its handshake failed.
#[inline(always)]
fn count_close(ctx: &SockOpsContext, ops: &bpf_sock_ops, tag: &mut SockTag, m: *mut Metrics) {
    if tag.established != 0 {
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        bump(m, CLOSED, 1);
        observe(m, HIST_LIFETIME, now.saturating_sub(tag.established_ns));
        // srtt_us holds 8x the smoothed RTT in microseconds.
        observe(m, HIST_RTT, u64::from(ops.srtt_us >> 3) * 1_000);
        // bytes_acked follows snd_una, which the SYN moved by one: not a byte sent.
        // (A FIN, once acknowledged, counts one too, as in tcp_info.)
        bump(m, BYTES_SENT, ops.bytes_acked.saturating_sub(1));
        bump(m, BYTES_RECEIVED, ops.bytes_received);
        if tag.outstanding != 0 {
            tag.outstanding = 0;
            bump(m, HTTP_INCOMPLETE, 1);
        }
    } else if ctx.arg(0) == BPF_TCP_SYN_SENT {
        // args[0] is the old state.
        let reason = if tag.reset_rx != 0 {
            FAILED_REFUSED
        } else if tag.rto != 0 {
            FAILED_TIMEOUT
        } else {
            FAILED_OTHER
        };
        bump(m, reason, 1);
    }
}
