//! cgroup `sock_release`: the application has released a socket (close, exit). Attached
//! with steering alone: then nothing needs its tag any more. (With signals on, the tag
//! lives until the kernel destroys the socket, see `tcp`, and this program is not attached.)
//! Minimum kernel: 5.9.

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
    // The lookup first: most sockets are not sluice's, and the filter answers for them with
    // one cached read, where `forget` would go to their slot and the hash.
    let cookie = cookie_of(ctx.sock.cast());
    if tag_of(cookie).is_some() {
        forget(cookie);
    }
}
