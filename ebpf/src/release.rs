//! cgroup `sock_release`: the application has released a socket (close, exit). With steering
//! alone nothing needs its tag any more. Minimum kernel: 5.9.

use aya_ebpf::programs::SockContext;
use sluice_common::IPPROTO_TCP;

use crate::tags::{cookie_of, forget, tag_of};

pub fn released(ctx: &SockContext) {
    // SAFETY: a valid context for the program's run.
    let sk = unsafe { &*ctx.sock };
    // UDP and raw sockets of the cgroup are released here too.
    if sk.protocol != u32::from(IPPROTO_TCP) {
        return;
    }
    let cookie = cookie_of(ctx.sock.cast());
    let Some(tag) = tag_of(cookie) else { return };
    // `connect_ns` is set by sock_ops (signals on) when the SYN went out. Such a connection
    // still has its close to account and maybe resets to count (a close with unread data or
    // linger 0 resets after the release): the tag goes when TCP destroys the socket.
    if tag.connect_ns == 0 {
        forget(cookie);
    }
}

/// tp_btf `tcp_destroy_sock(struct sock *sk)`: TCP is done with a socket, the last event of
/// its life (after the close, after any reset). Fires for every TCP socket of the machine:
/// the tag lookup comes first.
pub fn destroyed(sk: *mut core::ffi::c_void) {
    if sk.is_null() {
        return;
    }
    let cookie = cookie_of(sk);
    if tag_of(cookie).is_some() {
        forget(cookie);
    }
}
