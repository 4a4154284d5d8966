//! HTTP/1.x on the plaintext connections of services with `l7: http1`, from the payload
//! the cgroup_skb programs see (`skb`). Egress sees a request start (method, time); ingress
//! sees the response's status line (code, time to first byte). Retransmitted segments are
//! recognised by their sequence number and never counted twice; `1xx` interim responses
//! keep the request outstanding. Pipelined requests (a second request before the first
//! response) are not separated: the second one is not counted. Nor is a request sent as
//! TCP Fast Open data in the SYN.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::SkBuffContext};
use sluice_common::{
    maps::SockTag,
    metrics::{
        HIST_TTFB, HTTP_INTERIM, HTTP_UNPARSEABLE_REQUESTS, HTTP_UNPARSEABLE_RESPONSES, Metrics,
        method_of, response_slot, status_of,
    },
};

use crate::{
    metrics::{bump, metrics_of, observe_latency},
    segment::{Segment, before, departure_ns},
    tags::{cookie_of, tag_of},
};

/// The tag of the skb's socket, if it is a steered HTTP/1.x socket.
#[inline(always)]
fn http_tag(ctx: &SkBuffContext) -> Option<&'static mut SockTag> {
    // Zero for a packet without a socket. A request socket's cookie is its own, never
    // tagged; a time-wait socket inherits its full socket's, whose tag went when the kernel
    // destroyed that.
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

/// Payload leaves: a request starts, unless one is outstanding.
#[inline(always)]
pub fn sent(ctx: &SkBuffContext, seg: &Segment) {
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

/// Payload arrives: a response starts, if a request is outstanding.
#[inline(always)]
pub fn received(ctx: &SkBuffContext, seg: &Segment) {
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
                observe_latency(m, HIST_TTFB, now.saturating_sub(tag.request_ns));
            }
        }
    }
}
