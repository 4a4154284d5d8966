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

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_get_socket_cookie,
};
use sluice_common::maps::{SockTag, tag_filter_slot};

use crate::maps::{SLUICE_SOCK_TAGS, SLUICE_TAG_FILTER};

/// The cookie of the socket of a context (or of a kernel socket pointer in tracing
/// programs): the kernel gives each socket one on first use, unique while the machine runs.
/// Zero when there is no socket.
#[inline(always)]
pub fn cookie_of(ctx_or_sk: *mut c_void) -> u64 {
    // SAFETY: a context pointer of a program type whose cookie helper takes its context, or
    // a socket pointer the verifier accepts (tracing).
    unsafe { bpf_get_socket_cookie(ctx_or_sk) }
}

/// The tag of the socket with this cookie, if it was steered. The filter comes first: for
/// most sockets that are not sluice's it answers alone.
#[inline(always)]
pub fn tag_of(cookie: u64) -> Option<&'static mut SockTag> {
    if cookie == 0 || !may_be_tagged(cookie) {
        return None;
    }
    // SAFETY: a map value is valid memory for the program's run. A removed entry may be
    // reused for another socket's tag at once, but a tag is removed only when its socket is
    // done (released, or destroyed by TCP): no other hook then runs for that socket.
    SLUICE_SOCK_TAGS
        .get_ptr_mut(cookie)
        .and_then(|p| unsafe { p.as_mut() })
}

/// Whether the cookie's counter in the filter is non-zero.
#[inline(always)]
fn may_be_tagged(cookie: u64) -> bool {
    let (word, one) = tag_filter_slot(cookie);
    // A 16-bit counter is never above 0xffff: it would take that many live tags on one
    // counter, and there are at most MAX_SOCK_TAGS / 8192 on average.
    SLUICE_TAG_FILTER
        .get(word)
        .is_some_and(|w| w & (one * 0xffff) != 0)
}

/// Adds `delta` (one tag, or minus one as its two's complement) to the cookie's counter.
#[inline(always)]
fn filter_add(cookie: u64, delta: u32) {
    let (word, _) = tag_filter_slot(cookie);
    if let Some(w) = SLUICE_TAG_FILTER.get_ptr_mut(word) {
        // SAFETY: a valid, aligned map value for the program's run.
        unsafe {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                w, delta,
            )
        };
    }
}

/// Writes a socket's tag; false when the map is full. A new tag is counted in the filter
/// after it is in the map, so a lookup that passes the filter finds it.
#[inline(always)]
pub fn set(cookie: u64, tag: &SockTag) -> bool {
    // A socket that connects again (after AF_UNSPEC) has a tag and its count already. A new
    // socket's counter is mostly zero: then there is no tag to replace, one update fewer.
    if may_be_tagged(cookie)
        && SLUICE_SOCK_TAGS
            .insert(cookie, tag, u64::from(BPF_EXIST))
            .is_ok()
    {
        return true;
    }
    if SLUICE_SOCK_TAGS
        .insert(cookie, tag, u64::from(BPF_NOEXIST))
        .is_err()
    {
        return false;
    }
    filter_add(cookie, tag_filter_slot(cookie).1);
    true
}

/// The socket is done: its tag goes, and then its count.
#[inline(always)]
pub fn forget(cookie: u64) {
    // Absent already (removed by the release, then looked for by the destroy): no count to
    // take back.
    if SLUICE_SOCK_TAGS.remove(cookie).is_ok() {
        filter_add(cookie, tag_filter_slot(cookie).1.wrapping_neg());
    }
}
