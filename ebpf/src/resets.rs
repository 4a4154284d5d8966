//! Resets, from the TCP tracepoints (tp_btf): these fire for every socket of the machine, so
//! the socket's cookie, read in place, comes first, then the tag lookup. A reset received,
//! or sent to abort a connection, ends it: its end is counted there (see `tcp`). Minimum
//! kernel: 6.10 for active resets in `tcp_send_reset` (its reason argument is not read).

use aya_ebpf::programs::BtfTracePointContext;
use sluice_common::metrics::{RESETS_RECEIVED, RESETS_SENT};

use crate::{
    metrics::{bump, metrics_of},
    tags::{kernel_cookie, tag_of},
    tcp,
};

/// `tcp_receive_reset(struct sock *sk)`.
pub fn received(ctx: &BtfTracePointContext) {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    if sk.is_null() {
        return;
    }
    let Some(tag) = tag_of(kernel_cookie(sk)) else {
        return;
    };
    tag.reset_rx = 1;
    if let Some(m) = metrics_of(tag) {
        bump(m, RESETS_RECEIVED, 1);
    }
    // TCP closes the connection right after (tcp_reset, tcp_done).
    tcp::end(sk, tag);
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, reason)`: `sk` is null
/// for resets answering segments no socket owns. A reset sent as the application closes
/// (unread data, `SO_LINGER` 0) comes before the socket is destroyed: its tag is still there.
/// A time-wait socket keeps its full socket's cookie, but its tag went with that.
pub fn sent(ctx: &BtfTracePointContext) {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    if sk.is_null() {
        return;
    }
    let Some(tag) = tag_of(kernel_cookie(sk)) else {
        return;
    };
    if let Some(m) = metrics_of(tag) {
        bump(m, RESETS_SENT, 1);
    }
    // Without `skb` it is an active reset (`tcp_send_active_reset`), which aborts the
    // connection: a close with unread data or `SO_LINGER` 0, `connect(AF_UNSPEC)`, an
    // orphan's timeout. A reset answering a segment (with `skb`) may leave it open.
    let skb: *const core::ffi::c_void = ctx.arg(1);
    if skb.is_null() {
        tcp::end(sk, tag);
    }
}
