//! Everything sluice's kernel programs and its agent must agree on: map key and value layouts,
//! counter indices, limits, and the pure steering decision.
//!
//! Every type here crosses the user/kernel boundary through a BPF map, so each is `#[repr(C)]`
//! with explicit padding and a compile-time size check: pinned maps are an ABI that outlives
//! one agent binary. Bump [`ABI_VERSION`] whenever a layout changes.
#![no_std]

pub mod counters;
pub mod maps;
pub mod metrics;
pub mod slots;
pub mod steer;

/// Version of the pinned-map layout. An agent refuses to adopt pins made with another one.
pub const ABI_VERSION: u32 = 6;

/// Most services one node can steer. Service ids index per-CPU counter arrays.
pub const MAX_SERVICES: u32 = 16_384;

/// Virtual addresses (a service may have several).
pub const MAX_VIPS: u32 = 4 * MAX_SERVICES;

/// Backend slots, summed over all services, versions and live generations.
pub const MAX_SLOTS: u32 = 1 << 20;

/// Slots one version of one service may use (per-backend weights are slot counts).
pub const MAX_SLOTS_PER_VERSION: u32 = 4_096;

/// Steered sockets alive at once whose slot in `SLUICE_TAG_SLOTS` was taken (tags in
/// `SLUICE_SOCK_TAGS`). A connect beyond it is still steered, but counted as `tag_failed`:
/// `getpeername` then shows the backend and the signal hooks do not see the connection.
pub const MAX_SOCK_TAGS: u32 = 262_144;

/// (service, client cgroup) pairs allowed to reach a canary.
pub const MAX_SEGMENT_MEMBERS: u32 = 65_536;

/// Canary shares are parts per million: 0.0001 % resolution, 100 % == `PPM`.
pub const PPM: u32 = 1_000_000;

/// How many cgroup ancestors a segment check walks up from the caller's own cgroup.
pub const MAX_SEGMENT_DEPTH: i32 = 16;

pub const IPPROTO_TCP: u8 = 6;
