//! cgroup `sock_release`: the application has released a socket (close, exit). With steering
//! alone nothing needs its tag any more; with signals on, TCP may not have closed the
//! connection yet, and the tag stays until it has. Minimum kernel: 5.9.

use aya_ebpf::programs::SockContext;
use sluice_common::{
    IPPROTO_TCP,
    maps::{LIFE_CLOSED, LIFE_RELEASED},
};

use crate::{
    maps::SIGNALS_ON,
    tags::{cookie_of, forget, mark, tag_of},
};

pub fn released(ctx: &SockContext) {
    // SAFETY: a valid context for the program's run.
    let sk = unsafe { &*ctx.sock };
    // UDP and raw sockets of the cgroup are released here too.
    if sk.protocol != u32::from(IPPROTO_TCP) {
        return;
    }
    let cookie = cookie_of(ctx.sock.cast());
    let Some(tag) = tag_of(cookie) else { return };
    // `connect_ns` is set by sock_ops when the SYN went out: such a socket gets its state
    // callbacks, and its move to CLOSE (sock_ops) removes the tag if it comes after this.
    // Without sock_ops attached (signals off, or not yet on at the connect) no callback will.
    if SIGNALS_ON.load() == 0 || tag.connect_ns == 0 || mark(tag, LIFE_RELEASED) & LIFE_CLOSED != 0
    {
        forget(cookie);
    }
}
