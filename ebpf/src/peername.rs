//! `getpeername4`/`getpeername6`: a steered socket reports the virtual address it connected
//! to, so applications (TLS SNI checks, logs, proxies) see the address they asked for.

use aya_ebpf::programs::SockAddrContext;
use sluice_common::{counters::PEERNAME_REWRITTEN, maps::SockTag};

use crate::{maps, tags};

#[inline(always)]
fn tag_of(ctx: &SockAddrContext) -> Option<&SockTag> {
    tags::tag_of(tags::cookie_of(ctx.sock_addr.cast())).map(|t| &*t)
}

pub fn getpeername4(ctx: &SockAddrContext) {
    let Some(tag) = tag_of(ctx) else { return };
    // SAFETY: valid context for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = tag.vip[3];
    sa.user_port = tag.vip_port as u32;
    maps::count(tag.service, PEERNAME_REWRITTEN);
}

pub fn getpeername6(ctx: &SockAddrContext) {
    let Some(tag) = tag_of(ctx) else { return };
    // SAFETY: valid context for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    maps::write_ip6(&mut sa.user_ip6, &tag.vip);
    sa.user_port = tag.vip_port as u32;
    maps::count(tag.service, PEERNAME_REWRITTEN);
}
