//! Per-version counters and histograms (`SLUICE_METRICS_ARRAY`, `SLUICE_METRICS`).

use sluice_common::{
    maps::SockTag,
    metrics::{
        BUCKETS, LATENCY_BUCKETS, METRIC_SLOTS, Metrics, MetricsKey, bucket_of, latency_bucket_of,
        metrics_array_index,
    },
};

use crate::maps::{SLUICE_METRICS, SLUICE_METRICS_ARRAY, add};

/// The metrics slots of a tagged socket's service and version (this CPU's copy).
#[inline(always)]
pub fn metrics_of(tag: &SockTag) -> Option<*mut Metrics> {
    metrics_for(tag.service, tag.version)
}

/// The metrics slots of a service and version (this CPU's copy).
#[inline(always)]
fn metrics_for(service: u32, version: u8) -> Option<*mut Metrics> {
    if let Some(index) = metrics_array_index(service, version) {
        return SLUICE_METRICS_ARRAY.get_ptr_mut(index);
    }
    let key = MetricsKey {
        service,
        version,
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

/// One observation of a duration in a classic histogram starting at slot `hist`.
#[inline(always)]
pub fn observe(m: *mut Metrics, hist: u32, ns: u64) {
    bump(m, hist + bucket_of(ns), 1);
    bump(m, hist + BUCKETS, ns);
}

/// One observation of a duration in a log-linear latency histogram starting at slot `hist`.
#[inline(always)]
pub fn observe_latency(m: *mut Metrics, hist: u32, ns: u64) {
    bump(m, hist + latency_bucket_of(ns), 1);
    bump(m, hist + LATENCY_BUCKETS, ns);
}
