//! Per-version counters and histograms (`SLUICE_METRICS_ARRAY`, `SLUICE_METRICS`), and the
//! socket tag lookup every metrics hook starts with.

use core::ffi::c_void;

use aya_ebpf::{bindings::bpf_sock, helpers::bpf_sk_storage_get};
use sluice_common::{
    maps::SockTag,
    metrics::{BUCKETS, METRIC_SLOTS, Metrics, MetricsKey, bucket_of, metrics_array_index},
};

use crate::maps::{SLUICE_METRICS, SLUICE_METRICS_ARRAY, SLUICE_SOCK_TAGS, add};

/// The tag of a steered socket, or `None` for every other socket: the first check of every
/// metrics hook, so that unrelated traffic costs one storage lookup and nothing more.
#[inline(always)]
pub fn tag_of(sk: *mut c_void) -> Option<&'static mut SockTag> {
    if sk.is_null() {
        return None;
    }
    let map = core::ptr::from_ref(&SLUICE_SOCK_TAGS)
        .cast_mut()
        .cast::<c_void>();
    // SAFETY: `sk` is a socket pointer the verifier accepts for this helper; no create flag.
    let tag = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), 0) }.cast::<SockTag>();
    // SAFETY: non-null storage of this socket, valid while the socket is.
    unsafe { tag.as_mut() }
}

/// The metrics slots of a tagged socket's service and version (this CPU's copy).
#[inline(always)]
pub fn metrics_of(tag: &SockTag) -> Option<*mut Metrics> {
    if let Some(index) = metrics_array_index(tag.service, tag.version) {
        return SLUICE_METRICS_ARRAY.get_ptr_mut(index);
    }
    let key = MetricsKey {
        service: tag.service,
        version: tag.version,
        _pad: [0; 3],
    };
    SLUICE_METRICS.get_ptr_mut(key)
}

const _: () = assert!(METRIC_SLOTS.is_power_of_two());

#[inline(always)]
pub fn bump(m: *mut Metrics, slot: u32, n: u64) {
    // Every slot is < METRIC_SLOTS by construction, so LLVM drops any check of it; but the
    // verifier cannot follow that proof. black_box hides the value from LLVM, so the mask (a
    // no-op) stays and gives the verifier its bound.
    let slot = core::hint::black_box(slot) & (METRIC_SLOTS - 1);
    // SAFETY: `m` is a valid map value and `slot` is in bounds.
    add(unsafe { (*m).slots.as_mut_ptr().add(slot as usize) }, n);
}

/// One observation of a duration in a histogram starting at slot `hist`.
#[inline(always)]
pub fn observe(m: *mut Metrics, hist: u32, ns: u64) {
    bump(m, hist + bucket_of(ns), 1);
    bump(m, hist + BUCKETS, ns);
}

/// `bpf_sock` pointers from contexts, as the untyped pointer the storage helper takes.
#[inline(always)]
pub fn sk_ptr(sk: *mut bpf_sock) -> *mut c_void {
    sk.cast()
}
