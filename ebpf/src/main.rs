//! sluice's kernel programs. Entry points only: each is a thin wrapper over a function in a
//! module per concern.
//!
//! Minimum kernel: 5.9 (sock_release hooks), 5.8 (getpeername hooks), 5.7 (bpf_link for
//! cgroups); `bpf_set_retval` (5.18) gives a refused connect its errno; 6.7 for the signal
//! programs (`tcp_sock.total_rto`).
#![no_std]
#![no_main]
// Atomic adds on map values (see maps::add); the kernel crate always builds with nightly.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd for BPF atomic adds"
)]

mod handshake;
mod http;
mod maps;
mod metrics;
mod peername;
mod release;
mod resets;
mod segment;
mod skb;
mod steer;
mod tags;
mod tcp;

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock, cgroup_sock_addr},
    programs::{BtfTracePointContext, SkBuffContext, SockAddrContext, SockContext},
};

/// Allow the syscall to continue. Returning 0 instead fails it (errno from `bpf_set_retval`).
const PASS: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    steer::connect4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sluice_connect6(ctx: SockAddrContext) -> i32 {
    steer::connect6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sluice_getpeername4(ctx: SockAddrContext) -> i32 {
    peername::getpeername4(&ctx);
    PASS
}

#[cgroup_sock_addr(getpeername6)]
pub fn sluice_getpeername6(ctx: SockAddrContext) -> i32 {
    peername::getpeername6(&ctx);
    PASS
}

/// Forgets the tags of released sockets, with steering alone (see `tags`); 1 lets the
/// release go on.
#[cgroup_sock(sock_release)]
pub fn sluice_sock_release(ctx: SockContext) -> i32 {
    release::released(&ctx);
    PASS
}

/// cgroup_skb programs only observe: 1 lets every packet through.
#[cgroup_skb(egress)]
pub fn sluice_skb_egress(ctx: SkBuffContext) -> i32 {
    skb::egress(&ctx);
    1
}

#[cgroup_skb(ingress)]
pub fn sluice_skb_ingress(ctx: SkBuffContext) -> i32 {
    skb::ingress(&ctx);
    1
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn sluice_reset_received(ctx: BtfTracePointContext) -> i32 {
    resets::received(&ctx);
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn sluice_reset_sent(ctx: BtfTracePointContext) -> i32 {
    resets::sent(&ctx);
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn sluice_retransmitted(ctx: BtfTracePointContext) -> i32 {
    tcp::retransmitted(&ctx);
    0
}

/// The kernel frees a TCP socket: the end of a steered connection, and of its tag.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn sluice_sock_destroyed(ctx: BtfTracePointContext) -> i32 {
    tcp::destroyed(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
