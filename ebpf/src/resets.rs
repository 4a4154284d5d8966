//! Resets, from the TCP tracepoints (tp_btf): these fire for every socket of the machine, so
//! the socket-tag lookup comes first. Minimum kernel: 5.12 (socket cookies in tracing
//! programs), 6.10 for the reason argument of `tcp_send_reset` (not read here).

use aya_ebpf::programs::BtfTracePointContext;
use sluice_common::metrics::{RESETS_RECEIVED, RESETS_SENT};

use crate::{
    metrics::{bump, metrics_of},
    tags::{cookie_of, tag_of},
};

/// `tcp_receive_reset(struct sock *sk)`.
pub fn received(ctx: &BtfTracePointContext) {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    if sk.is_null() {
        return;
    }
    let Some(tag) = tag_of(cookie_of(sk)) else {
        return;
    };
    tag.reset_rx = 1;
    if let Some(m) = metrics_of(tag) {
        bump(m, RESETS_RECEIVED, 1);
    }
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, reason)`: `sk` is null
/// for resets answering segments no socket owns.
pub fn sent(ctx: &BtfTracePointContext) {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    if sk.is_null() {
        return;
    }
    let Some(tag) = tag_of(cookie_of(sk)) else {
        return;
    };
    if let Some(m) = metrics_of(tag) {
        bump(m, RESETS_SENT, 1);
    }
}
