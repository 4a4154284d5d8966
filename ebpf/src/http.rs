//! cgroup_skb egress/ingress: HTTP/1.x on the plaintext connections of services with
//! `l7: http1`. Egress sees a request start (method, time); ingress sees the response's
//! status line (code, time to first byte). Retransmitted segments are recognised by their
//! sequence number and never counted twice; `1xx` interim responses keep the request
//! outstanding. Pipelined requests (a second request before the first response) are not
//! separated: the second one is not counted.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::SkBuffContext};
use sluice_common::{
    IPPROTO_TCP,
    maps::SockTag,
    metrics::{
        HIST_TTFB, HTTP_INTERIM, HTTP_UNPARSEABLE_REQUESTS, HTTP_UNPARSEABLE_RESPONSES, Metrics,
        method_of, response_slot, status_of,
    },
};

use crate::{
    metrics::{bump, metrics_of, observe},
    tags::{cookie_of, tag_of},
};

/// Where a TCP segment's payload lies in the skb (data starts at the IP header).
struct Segment {
    seq: u32,
    offset: u32,
    len: u32,
}

/// The tag of the skb's socket, if it is a steered HTTP/1.x socket.
#[inline(always)]
fn http_tag(ctx: &SkBuffContext) -> Option<&'static mut SockTag> {
    // Zero for a packet without a socket. A request socket's cookie is its own, never
    // tagged; a time-wait socket inherits its full socket's, whose tag went when that
    // closed (or at its release).
    let tag = tag_of(cookie_of(ctx.skb.skb.cast()))?;
    (tag.http1 != 0).then_some(tag)
}

/// Adds to a counter of the tag's service and version. The metrics lookup happens only
/// here, when there is something to count: most packets (ACKs, bodies) never need it.
#[inline(always)]
fn count(tag: &SockTag, slot: u32) -> Option<*mut Metrics> {
    let m = metrics_of(tag)?;
    bump(m, slot, 1);
    Some(m)
}

/// Where a TCP segment's payload lies. The headers are read in place (direct packet access:
/// they are always in the skb's linear part), which saves two helper calls a packet; the
/// payload itself usually sits in page fragments, so `head` loads it with the helper.
#[inline(always)]
fn segment(ctx: &SkBuffContext) -> Option<Segment> {
    // SAFETY: a valid context for the program's run; the verifier turns these two fields into
    // packet pointers, and every read below is bounds-checked against `end` first.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // Twenty bytes: a whole IPv4 header without options, and more than the IPv6 fields read.
    // (A check of `data + 1` would not do: LLVM rewrites it as `data >= end`, from which the
    // verifier derives no readable range.)
    if data + 20 > end {
        return None;
    }
    // SAFETY: checked: twenty bytes from `data` are in the packet.
    let version_ihl = unsafe { *(data as *const u8) };
    let (ip_len, proto_at) = match version_ihl >> 4 {
        4 => (usize::from(version_ihl & 0x0f) * 4, 9),
        6 => (40, 6),
        _ => return None,
    };
    // SAFETY: checked above: `proto_at` is below twenty.
    if unsafe { *((data + proto_at) as *const u8) } != IPPROTO_TCP {
        return None;
    }
    let tcp = data + ip_len;
    if tcp + 13 > end {
        return None;
    }
    // SAFETY: checked: thirteen bytes from `tcp` are in the packet.
    let (seq, data_offset) = unsafe {
        (
            u32::from_be(core::ptr::read_unaligned((tcp + 4) as *const u32)),
            *((tcp + 12) as *const u8),
        )
    };
    let offset = ip_len as u32 + u32::from(data_offset >> 4) * 4;
    Some(Segment {
        seq,
        offset,
        len: ctx.skb.len().saturating_sub(offset),
    })
}

/// The TCP segment of a packet that carries payload; `None` for everything else. This is
/// every skb hook's first check, before the socket's tag: most packets of a connection
/// (handshake, ACKs, FINs) carry none, and a few direct loads from the packet's headers
/// leave them, the tagged sockets' and all others', without a single helper call.
#[inline(always)]
fn payload(ctx: &SkBuffContext) -> Option<Segment> {
    segment(ctx).filter(|seg| seg.len != 0)
}

/// Whether `seq` lies before `next` in sequence space (a retransmission or duplicate).
#[inline(always)]
fn before(seq: u32, next: u32) -> bool {
    (seq.wrapping_sub(next) as i32) < 0
}

/// When an outgoing segment leaves: TCP stamps every segment it sends with its departure
/// time on the monotonic clock (`skb->tstamp`, from the clock TCP read for this send anyway),
/// which saves a clock read (about 90 ns here) per request. A segment without one (none
/// from TCP) gets the clock.
#[inline(always)]
fn departure_ns(ctx: &SkBuffContext) -> u64 {
    // SAFETY: a valid context for the program's run; cgroup_skb programs may read `tstamp`.
    match unsafe { (*ctx.skb.skb).tstamp } {
        // SAFETY: plain helper call.
        0 => unsafe { bpf_ktime_get_ns() },
        stamp => stamp,
    }
}

pub fn egress(ctx: &SkBuffContext) {
    let Some(seg) = payload(ctx) else { return };
    let Some(tag) = http_tag(ctx) else { return };
    if before(seg.seq, tag.tx_next) {
        return;
    }
    tag.tx_next = seg.seq.wrapping_add(seg.len);
    if tag.outstanding != 0 {
        // Request body (or a pipelined request, which is not counted).
        return;
    }
    let head = if seg.len >= 8 {
        ctx.load::<[u8; 8]>(seg.offset as usize).ok()
    } else {
        None
    };
    match head.and_then(|h| method_of(&h)) {
        Some(slot) => {
            tag.outstanding = 1;
            tag.request_ns = departure_ns(ctx);
            count(tag, slot);
        }
        None => {
            count(tag, HTTP_UNPARSEABLE_REQUESTS);
        }
    }
}

pub fn ingress(ctx: &SkBuffContext) {
    let Some(seg) = payload(ctx) else { return };
    let Some(tag) = http_tag(ctx) else { return };
    if before(seg.seq, tag.rx_next) {
        return;
    }
    tag.rx_next = seg.seq.wrapping_add(seg.len);
    if tag.outstanding == 0 {
        // The rest of a response body.
        return;
    }
    let status = if seg.len >= 12 {
        ctx.load::<[u8; 12]>(seg.offset as usize)
            .ok()
            .and_then(|head| status_of(&head))
    } else {
        None
    };
    match status {
        None => {
            tag.outstanding = 0;
            count(tag, HTTP_UNPARSEABLE_RESPONSES);
        }
        // 100 Continue, 103 Early Hints: the final response is still to come.
        // (101 Switching Protocols is final.)
        Some(code) if code < 200 && code != 101 => {
            count(tag, HTTP_INTERIM);
        }
        Some(code) => {
            tag.outstanding = 0;
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            if let Some(m) = count(tag, response_slot(code)) {
                observe(m, HIST_TTFB, now.saturating_sub(tag.request_ns));
            }
        }
    }
}
