//! The socket tag: what a steered socket was steered to, under the socket's cookie, in its
//! slot of `SLUICE_TAG_SLOTS` or, when a live socket holds that slot, in `SLUICE_SOCK_TAGS`.
//! Its life:
//! - connect4/6 write it (replacing the tag of a socket that connects again);
//! - getpeername and every signal hook read it, first thing: a socket without one is none of
//!   sluice's business;
//! - with steering alone, the tag goes when the application releases the socket (cgroup
//!   `sock_release`);
//! - with signals on, the tag goes when the kernel destroys the socket (tp_btf
//!   `tcp_destroy_sock`, see `tcp`): after the release and TCP's close, whichever came
//!   last, so the FIN handshake and a reset sent as the socket closes are still counted.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg, atomic_xadd},
    ptr::read_volatile,
};

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_get_socket_cookie,
};
use sluice_common::maps::{SockTag, TagSlot, tag_filter_slot};

use crate::maps::{
    SLUICE_SOCK_TAGS, SLUICE_TAG_FILTER, SLUICE_TAG_SLOTS, SOCK_COOKIE_OFFSET, TAG_SLOT_MASK,
};

/// The cookie of the socket of a (cgroup program's) context: the kernel gives each socket
/// one on first use, unique while the machine runs. Zero when there is no socket.
#[inline(always)]
pub fn cookie_of(ctx: *mut c_void) -> u64 {
    // SAFETY: a context pointer of a program type whose cookie helper takes its context.
    unsafe { bpf_get_socket_cookie(ctx) }
}

/// The cookie a kernel socket (a tracing program's argument, full, request or time-wait)
/// already has, read in place: zero if nothing asked for one yet, and then it is not
/// sluice's (connect4 made one for every steered socket). Unlike the cookie helper, this
/// neither calls out nor makes a cookie (an atomic exchange on a cold line of the socket)
/// for every socket of the machine that passes a tracepoint.
#[inline(always)]
pub fn kernel_cookie(sk: *const c_void) -> u64 {
    // SAFETY: a valid socket pointer for the program's run; the offset is sock_common's
    // skc_cookie (an atomic64_t) in this kernel, from its BTF, and the verifier checks the
    // read against the same BTF.
    unsafe {
        read_volatile(
            sk.cast::<u8>()
                .add(SOCK_COOKIE_OFFSET.load() as usize)
                .cast::<u64>(),
        )
    }
}

/// The tag of the socket with this cookie, if it was steered. The filter comes first: for
/// most sockets that are not sluice's it answers alone; then the cookie's slot, which holds
/// most tags; then the hash.
#[inline(always)]
pub fn tag_of(cookie: u64) -> Option<&'static mut SockTag> {
    if cookie == 0 || !may_be_tagged(cookie) {
        return None;
    }
    let slot = slot_of(cookie)?;
    // SAFETY: a map value is valid memory for the program's run. A slot or hash entry freed
    // may be reused for another socket's tag at once, but a tag goes only when its socket is
    // done (released, and with signals on destroyed): no hook then reads it again.
    unsafe {
        if holder(slot) == cookie {
            return Some(&mut (*slot).tag);
        }
        SLUICE_SOCK_TAGS
            .get_ptr_mut(cookie)
            .and_then(|p| p.as_mut())
    }
}

/// The cookie's slot: its low bits (always one: the mask and the array's size are set
/// together at load).
#[inline(always)]
fn slot_of(cookie: u64) -> Option<*mut TagSlot> {
    SLUICE_TAG_SLOTS.get_ptr_mut(cookie as u32 & TAG_SLOT_MASK.load())
}

/// The cookie of the socket whose tag a slot holds, zero if free. Read once, as written by
/// another CPU's compare-and-swap.
#[inline(always)]
unsafe fn holder(slot: *mut TagSlot) -> u64 {
    // SAFETY: the caller passes a valid, aligned map value.
    unsafe { read_volatile(&raw const (*slot).cookie) }
}

/// Swaps a slot's holder from `from` to `to`; false if another CPU got there first.
#[inline(always)]
unsafe fn swap_holder(slot: *mut TagSlot, from: u64, to: u64) -> bool {
    // SAFETY: the caller passes a valid, aligned map value.
    unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(&raw mut (*slot).cookie, from, to).1 }
}

/// Whether the cookie's counter in the filter is non-zero.
#[inline(always)]
fn may_be_tagged(cookie: u64) -> bool {
    let (word, one) = tag_filter_slot(cookie);
    // A 16-bit counter is never above 0xffff: it would take that many live tags on one
    // counter, and there are at most (slots + MAX_SOCK_TAGS) / 8192 on average.
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
        unsafe { atomic_xadd::<u32, u32, { Relaxed }>(w, delta) };
    }
}

/// Writes a socket's tag; false when its slot is taken and the hash is full. A new tag is
/// counted in the filter after it is written, so a lookup that passes the filter finds it.
#[inline(always)]
pub fn set(cookie: u64, tag: &SockTag) -> bool {
    let Some(slot) = slot_of(cookie) else {
        return false;
    };
    // SAFETY: `slot` is a valid map value for the program's run; a slot this socket holds is
    // written by this socket's hooks only.
    unsafe {
        // A socket that connects again (after AF_UNSPEC) has a tag and its count already. A
        // new socket's counter is mostly zero: then there is no tag to replace.
        if may_be_tagged(cookie) {
            if holder(slot) == cookie {
                (*slot).tag = *tag;
                return true;
            }
            if SLUICE_SOCK_TAGS
                .insert(cookie, tag, u64::from(BPF_EXIST))
                .is_ok()
            {
                return true;
            }
        }
        if holder(slot) == 0 && swap_holder(slot, 0, cookie) {
            (*slot).tag = *tag;
        } else if SLUICE_SOCK_TAGS
            .insert(cookie, tag, u64::from(BPF_NOEXIST))
            .is_err()
        {
            return false;
        }
    }
    filter_add(cookie, tag_filter_slot(cookie).1);
    true
}

/// The socket is done: its tag goes, and then its count. Safe to call twice, even at once
/// on two CPUs: only the call that frees the tag takes its count back.
#[inline(always)]
pub fn forget(cookie: u64) {
    let Some(slot) = slot_of(cookie) else { return };
    // SAFETY: `slot` is a valid map value for the program's run.
    let freed = unsafe { holder(slot) == cookie && swap_holder(slot, cookie, 0) }
        || SLUICE_SOCK_TAGS.remove(cookie).is_ok();
    if freed {
        filter_add(cookie, tag_filter_slot(cookie).1.wrapping_neg());
    }
}
