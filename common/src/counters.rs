//! Steering counters: `SLUICE_STEER_COUNTERS` is a per-CPU array of `u64` with
//! [`STEER_COUNTERS`] entries per service, at `service_id * STEER_COUNTERS + counter`.
//! Every way a connection to a virtual address can go is counted, fall-throughs included.

/// Connections steered to a stable backend.
pub const STEERED_STABLE: u32 = 0;
/// Connections steered to a canary backend.
pub const STEERED_CANARY: u32 = 1;
/// The draw picked the canary but its backend set is empty: sent to stable instead.
pub const CANARY_EMPTY_FALLBACK: u32 = 2;
/// No backend in either version: the connect failed with `ECONNREFUSED`.
pub const NO_BACKEND: u32 = 3;
/// A slot the service entry points at was missing (a bug or a torn update): the connect
/// failed with `ECONNREFUSED` rather than going to an address nobody serves.
pub const SLOT_MISSING: u32 = 4;
/// The socket could not be tagged (its slot held by a live socket and `MAX_SOCK_TAGS` more
/// in the hash): steered, but later hooks cannot attribute it.
pub const TAG_FAILED: u32 = 5;
/// A caller outside the service's segment, kept on stable.
pub const SEGMENT_EXCLUDED: u32 = 6;
/// A backend of the wrong address family for the socket (IPv6 backend, IPv4 socket).
pub const FAMILY_MISMATCH: u32 = 7;
/// `getpeername` answered with the virtual address.
pub const PEERNAME_REWRITTEN: u32 = 8;

pub const STEER_COUNTERS: u32 = 9;

/// Names in index order, for export and status.
pub const STEER_COUNTER_NAMES: [&str; STEER_COUNTERS as usize] = [
    "steered_stable",
    "steered_canary",
    "canary_empty_fallback",
    "no_backend",
    "slot_missing",
    "tag_failed",
    "segment_excluded",
    "family_mismatch",
    "peername_rewritten",
];

#[inline(always)]
pub const fn steer_index(service: u32, counter: u32) -> u32 {
    service * STEER_COUNTERS + counter
}
