//! cgroup_skb egress/ingress: every packet of every socket in the cgroup passes here, so
//! the segment's headers decide first, from the packet alone, whether there is anything to
//! do: a SYN (the handshake of a steered connection) or payload (HTTP/1.x). Everything else
//! (ACKs, FINs, resets; other protocols) leaves without a lookup.

use aya_ebpf::programs::SkBuffContext;

use crate::{
    handshake, http,
    segment::{SYN, segment},
};

pub fn egress(ctx: &SkBuffContext) {
    let Some(seg) = segment(ctx) else { return };
    if seg.flags & SYN != 0 {
        handshake::syn_sent(ctx, &seg);
    } else if seg.len != 0 {
        http::sent(ctx, &seg);
    }
}

pub fn ingress(ctx: &SkBuffContext) {
    let Some(seg) = segment(ctx) else { return };
    if seg.flags & SYN != 0 {
        handshake::syn_received(ctx, &seg);
    } else if seg.len != 0 {
        http::received(ctx, &seg);
    }
}
