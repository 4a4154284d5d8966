//! sluice's kernel programs. Entry points only: each is a thin wrapper over a function in a
//! module per concern.
//!
//! Minimum kernel: 5.7 (bpf_link for cgroups), 5.2 (socket storage in sock_addr hooks),
//! 5.8 (getpeername hooks); `bpf_set_retval` (5.18) gives a refused connect its errno.
#![no_std]
#![no_main]
// Atomic adds on map values (see maps::add); the kernel crate always builds with nightly.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd for BPF atomic adds"
)]

mod maps;
mod peername;
mod steer;

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
