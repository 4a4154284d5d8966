//! TCP tracepoints (tp_btf) for the end of steered connections and their retransmissions.
//! Both fire for every TCP socket of the machine, so the socket's cookie, read in place,
//! comes first (zero: never sluice's), then the tag lookup.
//!
//! A connection's end is counted once (lifetime, smoothed RTT, bytes, an HTTP request left
//! without its response, or why its handshake failed), at the first of:
//! - a reset received, or one sent to abort it (`resets`): TCP closes it right after, and a
//!   close with `SO_LINGER` 0 (`tcp_disconnect`) zeroes the counters before the socket goes;
//! - `tcp_destroy_sock`: the kernel frees the socket, after the application released it and
//!   TCP closed it, whichever came last. The tag goes then: every hook that can see the
//!   socket (a FIN retransmitted after the release, a reset sent as it closes) has run.
//!
//! `struct tcp_sock`'s counters are read in place at the offsets the agent found in the
//! kernel's BTF (see `sluice_common::maps::kernel_fields`). Minimum kernel: 6.7
//! (`total_rto`).

use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, bpf_skc_to_tcp_sock},
    programs::BtfTracePointContext,
};
use sluice_common::{
    maps::SockTag,
    metrics::{
        BYTES_RECEIVED, BYTES_SENT, CLOSED, FAILED_OTHER, FAILED_REFUSED, FAILED_TIMEOUT,
        HIST_LIFETIME, HIST_RTT, HTTP_INCOMPLETE, Metrics, RETRANSMITS, RTO_EXPIRIES,
    },
};

use crate::{
    maps::{
        TCP_BYTES_ACKED_OFFSET, TCP_BYTES_RECEIVED_OFFSET, TCP_SRTT_US_OFFSET,
        TCP_TOTAL_RETRANS_OFFSET, TCP_TOTAL_RTO_OFFSET,
    },
    metrics::{bump, metrics_of, observe},
    tags::{forget, kernel_cookie, tag_of},
};

/// A `struct tcp_sock` of the running kernel.
#[derive(Clone, Copy)]
struct TcpSock(*const u8);

impl TcpSock {
    /// The TCP socket of a tracepoint's socket argument (null for other sockets).
    #[inline(always)]
    fn of(sk: *mut core::ffi::c_void) -> Option<Self> {
        // SAFETY: a socket pointer from a tracepoint, checked non-null by the caller.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
        (!tp.is_null()).then_some(Self(tp.cast()))
    }

    /// The field at the offset in `at`, of the size the agent checked it has.
    #[inline(always)]
    fn field<T: Copy>(self, at: &Global<u32>) -> T {
        // SAFETY: a valid tcp_sock for the program's run; the offset and size are the
        // kernel's own (from its BTF), and the verifier checks the read against the same.
        unsafe { core::ptr::read_volatile(self.0.add(at.load() as usize).cast::<T>()) }
    }
}

/// `tcp_destroy_sock(struct sock *sk)`.
pub fn destroyed(ctx: &BtfTracePointContext) {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    if sk.is_null() {
        return;
    }
    let cookie = kernel_cookie(sk);
    let Some(tag) = tag_of(cookie) else {
        return;
    };
    end(sk, tag);
    forget(cookie);
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...)`: counted as
/// it happens, so that a long-lived connection's retransmissions show before it ends.
pub fn retransmitted(ctx: &BtfTracePointContext) {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    if sk.is_null() {
        return;
    }
    let Some(tag) = tag_of(kernel_cookie(sk)) else {
        return;
    };
    if let (Some(m), Some(tp)) = (metrics_of(tag), TcpSock::of(sk)) {
        count_retransmits(tp, tag, m);
    }
}

/// Counts the end of a tagged socket's connection, unless it was counted already. Every
/// caller holds the socket's lock: no two run at once for one socket.
#[inline(always)]
pub fn end(sk: *mut core::ffi::c_void, tag: &mut SockTag) {
    if tag.ended != 0 {
        return;
    }
    tag.ended = 1;
    // Counted only where the service still has its metrics (a service removed from the
    // configuration may not).
    if let (Some(m), Some(tp)) = (metrics_of(tag), TcpSock::of(sk)) {
        count_end(tp, tag, m);
    }
}

/// Adds what the socket's retransmission counters gained since last counted. TCP updates
/// them before the tracepoint. `tcp_disconnect` zeroes them: a smaller value adds nothing.
#[inline(always)]
fn count_retransmits(tp: TcpSock, tag: &mut SockTag, m: *mut Metrics) {
    let retransmits: u32 = tp.field(&TCP_TOTAL_RETRANS_OFFSET);
    let rtos = u32::from(tp.field::<u16>(&TCP_TOTAL_RTO_OFFSET));
    if retransmits > tag.retransmits_counted {
        bump(
            m,
            RETRANSMITS,
            u64::from(retransmits - tag.retransmits_counted),
        );
        tag.retransmits_counted = retransmits;
    }
    if rtos > tag.rtos_counted {
        bump(m, RTO_EXPIRIES, u64::from(rtos - tag.rtos_counted));
        tag.rtos_counted = rtos;
    }
}

/// A connection's end if it was established (lifetime, RTT, bytes, an HTTP request left
/// without its response), or why its handshake failed.
#[inline(always)]
fn count_end(tp: TcpSock, tag: &mut SockTag, m: *mut Metrics) {
    count_retransmits(tp, tag, m);
    if tag.established != 0 {
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        bump(m, CLOSED, 1);
        observe(m, HIST_LIFETIME, now.saturating_sub(tag.established_ns));
        // srtt_us holds 8x the smoothed RTT in microseconds; zero is no RTT: no sample yet
        // (a SYN retransmitted without timestamps, no data since), or zeroed by
        // tcp_disconnect.
        let srtt_us = tp.field::<u32>(&TCP_SRTT_US_OFFSET);
        if srtt_us != 0 {
            observe(m, HIST_RTT, u64::from(srtt_us >> 3) * 1_000);
        }
        // bytes_acked follows snd_una, which the SYN moved by one: not a byte sent.
        // (A FIN, once acknowledged, counts one too, as in tcp_info.)
        let acked: u64 = tp.field(&TCP_BYTES_ACKED_OFFSET);
        bump(m, BYTES_SENT, acked.saturating_sub(1));
        bump(m, BYTES_RECEIVED, tp.field(&TCP_BYTES_RECEIVED_OFFSET));
        if tag.outstanding != 0 {
            tag.outstanding = 0;
            bump(m, HTTP_INCOMPLETE, 1);
        }
    } else if tag.connect_ns != 0 {
        // The SYN left and no SYN-ACK answered it. TCP never gives up on a SYN before
        // sending it again (TCP_SYNCNT is at least 1): a timeout has retransmissions.
        let reason = if tag.reset_rx != 0 {
            FAILED_REFUSED
        } else if tag.retransmits_counted != 0 {
            FAILED_TIMEOUT
        } else {
            FAILED_OTHER
        };
        bump(m, reason, 1);
    }
}
