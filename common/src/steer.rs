//! The steering decision as a pure function: the kernel program calls exactly this, and host
//! tests (including property tests) check it.
//!
//! A draw is a 32-bit number, uniform for `MODE_RANDOM` (`bpf_get_prandom_u32`) and a hash of
//! the caller's cgroup id with the service's salt for `MODE_STICKY`. It maps to a bucket in
//! `[0, PPM)`; the canary gets buckets below its share. A sticky caller's bucket never moves,
//! so raising the share only ever adds callers to the canary: cohorts only grow.

use crate::{
    PPM,
    maps::{MODE_STICKY, Service, VERSION_CANARY, VERSION_STABLE},
};

/// splitmix64's finaliser: a bijective mixer with full avalanche, cheap in BPF (no loops).
#[inline(always)]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The sticky draw of a calling workload (its cgroup id) for a service's salt.
#[inline(always)]
pub const fn sticky_draw(cgroup_id: u64, salt: u64) -> u32 {
    (mix64(cgroup_id ^ mix64(salt)) >> 32) as u32
}

/// Maps a uniform 32-bit draw onto `[0, PPM)` by multiply-and-shift (no modulo bias).
#[inline(always)]
pub const fn bucket(draw: u32) -> u32 {
    ((draw as u64 * PPM as u64) >> 32) as u32
}

/// Picks one of `slots` slots from a uniform 32-bit draw. `slots` must be non-zero.
#[inline(always)]
pub const fn slot_of(draw: u32, slots: u16) -> u16 {
    ((draw as u64 * slots as u64) >> 32) as u16
}

/// What the kernel does with one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Look up `slot` of `version`'s table. `canary_fallback` says the draw chose the canary
    /// but the canary set was empty.
    Steer {
        version: u8,
        slot: u16,
        canary_fallback: bool,
    },
    /// Neither version has a backend: refuse the connect.
    NoBackend,
}

/// Everything the decision depends on besides the service entry.
#[derive(Clone, Copy, Debug)]
pub struct Draws {
    /// Uniform random number for this connection.
    pub random: u32,
    /// Second uniform random number for this connection (backend choice).
    pub random_slot: u32,
    /// The caller's cgroup id (used by sticky mode).
    pub cgroup_id: u64,
    /// Whether the caller may reach the canary (always true for unsegmented services).
    pub in_segment: bool,
}

/// The draw that decides the version, per the service's mode.
#[inline(always)]
pub fn version_draw(svc: &Service, draws: &Draws) -> u32 {
    if svc.mode == MODE_STICKY {
        sticky_draw(draws.cgroup_id, svc.salt)
    } else {
        draws.random
    }
}

/// Whether a caller with this version draw goes to the canary at `canary_ppm`.
#[inline(always)]
pub const fn wants_canary(draw: u32, canary_ppm: u32) -> bool {
    bucket(draw) < canary_ppm
}

/// The whole decision for one connection.
#[inline(always)]
pub fn decide(svc: &Service, draws: &Draws) -> Decision {
    let wants_canary = draws.in_segment && wants_canary(version_draw(svc, draws), svc.canary_ppm);
    let (version, slots, canary_fallback) = if wants_canary && svc.canary_slots > 0 {
        (VERSION_CANARY, svc.canary_slots, false)
    } else if svc.stable_slots > 0 {
        (VERSION_STABLE, svc.stable_slots, wants_canary)
    } else if svc.canary_slots > 0 {
        // Stable is empty but the canary is not. Validation never writes this; if it ever
        // happens, serve from the only set there is rather than refuse (fail open).
        (VERSION_CANARY, svc.canary_slots, false)
    } else {
        return Decision::NoBackend;
    };
    Decision::Steer {
        version,
        slot: slot_of(draws.random_slot, slots),
        canary_fallback,
    }
}

#[cfg(test)]
mod tests;
