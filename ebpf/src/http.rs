//! cgroup_skb egress/ingress: HTTP/1.x on the plaintext connections of services with
//! `l7: http1`. Egress sees a request start (method, time); ingress sees the response's
//! status line (code, time to first byte). Retransmitted segments are recognised by their
//! sequence number and never counted twice; `1xx` interim responses keep the request
//! outstanding. Pipelined requests (a second request before the first response) are not
//! separated: the second one is not counted. Minimum kernel: 5.2 (socket storage).

use aya_ebpf::{helpers::bpf_ktime_get_ns, helpers::bpf_sk_fullsock, programs::SkBuffContext};
use sluice_common::{
    IPPROTO_TCP,
    maps::SockTag,
    metrics::{
        HIST_TTFB, HTTP_INTERIM, HTTP_UNPARSEABLE_REQUESTS, HTTP_UNPARSEABLE_RESPONSES, Metrics,
        method_of, response_slot, status_of,
    },
};

use crate::metrics::{bump, metrics_of, observe, sk_ptr, tag_of};

/// Where a TCP segment's payload lies in the skb (data starts at the IP header).
struct Segment {
    seq: u32,
    offset: u32,
    len: u32,
}

/// The tag of the skb's socket, if it is a steered HTTP/1.x socket.
#[inline(always)]
fn http_tag(ctx: &SkBuffContext) -> Option<(&'static mut SockTag, *mut Metrics)> {
    // SAFETY: a valid context for the program's run; `sk` may be null.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    let tag = tag_of(sk_ptr(full))?;
    if tag.http1 == 0 {
        return None;
    }
    let m = metrics_of(tag)?;
    Some((tag, m))
}

#[inline(always)]
fn segment(ctx: &SkBuffContext) -> Option<Segment> {
    let first: u8 = ctx.load(0).ok()?;
    let (ip_len, proto): (u32, u8) = match first >> 4 {
        4 => (u32::from(first & 0x0f) * 4, ctx.load(9).ok()?),
        6 => (40, ctx.load(6).ok()?),
        _ => return None,
    };
    if proto != IPPROTO_TCP {
        return None;
    }
    let seq = u32::from_be(ctx.load::<u32>(ip_len as usize + 4).ok()?);
    let data_offset: u8 = ctx.load(ip_len as usize + 12).ok()?;
    let offset = ip_len + u32::from(data_offset >> 4) * 4;
    let total = ctx.skb.len();
    Some(Segment {
        seq,
        offset,
        len: total.saturating_sub(offset),
    })
}

/// Whether `seq` lies before `next` in sequence space (a retransmission or duplicate).
#[inline(always)]
fn before(seq: u32, next: u32) -> bool {
    (seq.wrapping_sub(next) as i32) < 0
}

pub fn egress(ctx: &SkBuffContext) {
    let Some((tag, m)) = http_tag(ctx) else {
        return;
    };
    let Some(seg) = segment(ctx) else { return };
    if seg.len == 0 || before(seg.seq, tag.tx_next) {
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
    let Some(head) = head else {
        bump(m, HTTP_UNPARSEABLE_REQUESTS, 1);
        return;
    };
    match method_of(&head) {
        Some(slot) => {
            bump(m, slot, 1);
            tag.outstanding = 1;
            // SAFETY: plain helper call.
            tag.request_ns = unsafe { bpf_ktime_get_ns() };
        }
        None => bump(m, HTTP_UNPARSEABLE_REQUESTS, 1),
    }
}

pub fn ingress(ctx: &SkBuffContext) {
    let Some((tag, m)) = http_tag(ctx) else {
        return;
    };
    let Some(seg) = segment(ctx) else { return };
    if seg.len == 0 || before(seg.seq, tag.rx_next) {
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
            bump(m, HTTP_UNPARSEABLE_RESPONSES, 1);
        }
        // 100 Continue, 103 Early Hints: the final response is still to come.
        // (101 Switching Protocols is final.)
        Some(code) if code < 200 && code != 101 => bump(m, HTTP_INTERIM, 1),
        Some(code) => {
            tag.outstanding = 0;
            bump(m, response_slot(code), 1);
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            observe(m, HIST_TTFB, now.saturating_sub(tag.request_ns));
        }
    }
}
