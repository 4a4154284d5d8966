//! The socket tag: what a steered socket was steered to, in `SLUICE_SOCK_TAGS` under the
//! socket's cookie. Its life:
//! - connect4/6 write it (replacing the tag of a socket that connects again);
//! - getpeername and every signal hook read it, first thing: a socket without one is none of
//!   sluice's business;
//! - with steering alone, the tag goes when the application releases the socket (cgroup
//!   `sock_release`);
//! - with signals on, the close and any reset come after the release: the tag goes when TCP
//!   destroys the socket (tp_btf `tcp_destroy_sock`).

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_get_socket_cookie};
use sluice_common::maps::SockTag;

use crate::maps::SLUICE_SOCK_TAGS;

/// The cookie of the socket of a context (or of a kernel socket pointer in tracing
/// programs): the kernel gives each socket one on first use, unique while the machine runs.
/// Zero when there is no socket.
#[inline(always)]
pub fn cookie_of(ctx_or_sk: *mut c_void) -> u64 {
    // SAFETY: a context pointer of a program type whose cookie helper takes its context, or
    // a socket pointer the verifier accepts (tracing).
    unsafe { bpf_get_socket_cookie(ctx_or_sk) }
}

/// The tag of the socket with this cookie, if it was steered.
#[inline(always)]
pub fn tag_of(cookie: u64) -> Option<&'static mut SockTag> {
    if cookie == 0 {
        return None;
    }
    // SAFETY: a map value is valid memory for the program's run. A removed entry may be
    // reused for another socket's tag at once, but a tag is removed only when its socket is
    // done (released, or destroyed by TCP): no other hook then runs for that socket.
    SLUICE_SOCK_TAGS
        .get_ptr_mut(cookie)
        .and_then(|p| unsafe { p.as_mut() })
}

/// Writes a socket's tag; false when the map is full.
#[inline(always)]
pub fn set(cookie: u64, tag: &SockTag) -> bool {
    SLUICE_SOCK_TAGS
        .insert(cookie, tag, u64::from(BPF_ANY))
        .is_ok()
}

/// The socket is done: its tag goes.
#[inline(always)]
pub fn forget(cookie: u64) {
    // Absent already is fine (a tag removed by the release, then the destroy).
    let _ = SLUICE_SOCK_TAGS.remove(cookie);
}
