//! Resets, from the TCP tracepoints (tp_btf): these fire for every socket of the machine, so
//! the socket-tag lookup comes first. Minimum kernel: 5.12 (socket cookies in tracing
//! programs), 6.10 for the reason argument of `tcp_send_reset` (not read here).

use aya_ebpf::{helpers::bpf_skc_to_tcp_sock, programs::BtfTracePointContext};
use sluice_common::metrics::{RESETS_RECEIVED, RESETS_SENT};

use crate::{
    metrics::{bump, metrics_for, metrics_of},
    tags::{cookie_of, recent_close, tag_of, take_recent_close},
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
    let cookie = cookie_of(sk);
    let m = match tag_of(cookie) {
        Some(tag) => metrics_of(tag),
        None => {
            // A reset sent as a released socket closes comes after its tag went (see
            // `tags`). A time-wait socket keeps its full socket's cookie but is not the
            // connection closing: only full sockets count.
            if cookie == 0 {
                return;
            }
            let Some(entry) = recent_close(cookie) else {
                return;
            };
            // SAFETY: a socket pointer from the tracepoint, checked non-null above.
            if unsafe { bpf_skc_to_tcp_sock(sk) }.is_null() {
                return;
            }
            let Some((service, version)) = take_recent_close(entry, cookie) else {
                return;
            };
            metrics_for(service, version)
        }
    };
    if let Some(m) = m {
        bump(m, RESETS_SENT, 1);
    }
}
