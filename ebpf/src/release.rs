//! cgroup `sock_release`: the application has released a socket (close, exit). Attached
//! with steering alone: then nothing needs its tag any more. (With signals on, the tag
//! lives until the kernel destroys the socket, see `tcp`, and this program is not attached.)
//! Minimum kernel: 5.9.

use aya_ebpf::programs::SockContext;
use sluice_common::IPPROTO_TCP;

use crate::tags::{cookie_of, forget};

pub fn released(ctx: &SockContext) {
    // SAFETY: a valid context for the program's run.
    let sk = unsafe { &*ctx.sock };
    // UDP and raw sockets of the cgroup are released here too.
    if sk.protocol != u32::from(IPPROTO_TCP) {
        return;
    }
    forget(cookie_of(ctx.sock.cast()));
}
