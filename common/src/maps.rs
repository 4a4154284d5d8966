//! Map keys and values. Addresses are always 16 bytes: IPv4 is stored v4-mapped
//! (`::ffff:a.b.c.d`), so one map serves `connect4`, `connect6` and v4-mapped IPv6 callers.
//! Address words and ports are in network byte order, as the kernel hands them over.

/// Map names, shared so the agent finds what the kernel object declares.
pub mod names {
    pub const SERVICES: &str = "SLUICE_SERVICES";
    pub const SLOTS: &str = "SLUICE_SLOTS";
    pub const SEGMENTS: &str = "SLUICE_SEGMENTS";
    pub const SOCK_TAGS: &str = "SLUICE_SOCK_TAGS";
    pub const TAG_SLOTS: &str = "SLUICE_TAG_SLOTS";
    pub const TAG_FILTER: &str = "SLUICE_TAG_FILTER";
    pub const STEER_COUNTERS: &str = "SLUICE_STEER_COUNTERS";
    pub const METRICS: &str = "SLUICE_METRICS";
    pub const METRICS_ARRAY: &str = "SLUICE_METRICS_ARRAY";
    pub const VIP_PORTS: &str = "SLUICE_VIP_PORTS";
}

/// `SLUICE_VIP_PORTS`: one bit per port number that some virtual address uses, so that
/// connect4/6 leave a connection to any other port after one inlined array read, before the
/// hash lookup. Ports are indexed as the kernel holds them (network byte order): both sides
/// compute the bit from the same raw 16 bits.
pub const VIP_PORT_WORDS: u32 = 1024;

/// (word index, bit mask) of a port in `SLUICE_VIP_PORTS`.
#[inline(always)]
pub fn vip_port_bit(port_raw: u16) -> (u32, u64) {
    (u32::from(port_raw >> 6), 1u64 << (port_raw & 63))
}

/// Program names (the kernel crate's function names).
pub mod programs {
    pub const CONNECT4: &str = "sluice_connect4";
    pub const CONNECT6: &str = "sluice_connect6";
    pub const GETPEERNAME4: &str = "sluice_getpeername4";
    pub const GETPEERNAME6: &str = "sluice_getpeername6";
    pub const SKB_EGRESS: &str = "sluice_skb_egress";
    pub const SKB_INGRESS: &str = "sluice_skb_ingress";
    pub const SOCK_RELEASE: &str = "sluice_sock_release";
    pub const RESET_RECEIVED: &str = "sluice_reset_received";
    pub const RESET_SENT: &str = "sluice_reset_sent";
    pub const RETRANSMITTED: &str = "sluice_retransmitted";
    pub const SOCK_DESTROYED: &str = "sluice_sock_destroyed";
}

/// Version of a service a connection is steered to.
pub const VERSION_STABLE: u8 = 0;
pub const VERSION_CANARY: u8 = 1;
pub const VERSIONS: u32 = 2;

/// Selection modes ([`Service::mode`]).
pub const MODE_RANDOM: u8 = 0;
pub const MODE_STICKY: u8 = 1;

/// [`Service::flags`]: only callers in the service's segment may reach the canary.
pub const FLAG_SEGMENTED: u8 = 1;
/// [`Service::flags`]: parse HTTP/1.x on this service's connections.
pub const FLAG_HTTP1: u8 = 2;

/// `SLUICE_TAG_FILTER`: a counting filter in front of `SLUICE_SOCK_TAGS`. Each `u32` word
/// holds two 16-bit counters; a socket's counter is chosen by the low bits of its cookie
/// (the kernel hands cookies out in consecutive runs per CPU, so live sockets spread evenly)
/// and counts the live tags that map to it. A zero counter proves a socket untagged with
/// one read of a 16 KiB array that stays cached, where the hash lookup it saves lands on a
/// cold bucket of a 4 MiB table: a cache miss and, on a VM, a nested page walk. With N live
/// tags a lookup still reaches the hash for about 1 − e^(−N/8192) of untagged sockets.
pub const TAG_FILTER_WORDS: u32 = 4096;

/// (word index, amount to add for one tag) of a cookie's counter in `SLUICE_TAG_FILTER`.
#[inline(always)]
pub fn tag_filter_slot(cookie: u64) -> (u32, u32) {
    let counter = (cookie as u32) & (2 * TAG_FILTER_WORDS - 1);
    (counter >> 1, 1 << (16 * (counter & 1)))
}

/// `SLUICE_TAG_SLOTS`: where most tags live, an array of [`TagSlot`] indexed by the low bits
/// of the socket's cookie (direct-mapped, like a CPU cache). The kernel hands cookies out in
/// consecutive runs per CPU, so a CPU's new sockets take consecutive slots: writing a tag
/// touches memory next to the last one written, where an insert into the hash landed on a
/// random cold bucket of a 4 MiB table (about 350 ns a connect here). A slot still held by
/// a live socket sends the newcomer to the hash (`SLUICE_SOCK_TAGS`), which holds the rest.
/// The count is a power of two, set at load (config `socket_tag_slots`).
pub const DEFAULT_TAG_SLOTS: u32 = 65_536;
/// Largest `socket_tag_slots` (80 MiB of slots).
pub const MAX_TAG_SLOTS: u32 = 1 << 20;
/// The kernel object's global holding the slot count minus one.
pub const TAG_SLOT_MASK: &str = "TAG_SLOT_MASK";
/// The kernel object's globals holding where the kernel fields the tracing programs read
/// lie in this kernel: the agent reads the offsets from the kernel's BTF at load (a
/// field-by-name lookup, what CO-RE relocations do for C programs), and the verifier checks
/// every read against the same BTF. Each field's size is fixed by the program's read; the
/// agent refuses a kernel whose field has another.
pub mod kernel_fields {
    /// (global, struct, field, size in bytes).
    pub const ALL: [(&str, &str, &str, u32); 6] = [
        (SOCK_COOKIE, "sock_common", "skc_cookie", 8),
        (SRTT_US, "tcp_sock", "srtt_us", 4),
        (BYTES_ACKED, "tcp_sock", "bytes_acked", 8),
        (BYTES_RECEIVED, "tcp_sock", "bytes_received", 8),
        (TOTAL_RETRANS, "tcp_sock", "total_retrans", 4),
        (TOTAL_RTO, "tcp_sock", "total_rto", 2),
    ];
    /// A socket's cookie as the kernel holds it: zero until something asked for it. Every
    /// tagged socket has one (connect4 made it).
    pub const SOCK_COOKIE: &str = "SOCK_COOKIE_OFFSET";
    pub const SRTT_US: &str = "TCP_SRTT_US_OFFSET";
    pub const BYTES_ACKED: &str = "TCP_BYTES_ACKED_OFFSET";
    pub const BYTES_RECEIVED: &str = "TCP_BYTES_RECEIVED_OFFSET";
    pub const TOTAL_RETRANS: &str = "TCP_TOTAL_RETRANS_OFFSET";
    pub const TOTAL_RTO: &str = "TCP_TOTAL_RTO_OFFSET";
}

/// Value of `SLUICE_TAG_SLOTS`: a tag and the cookie of the socket it belongs to; a zero
/// cookie marks a free slot (the kernel never hands out cookie 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TagSlot {
    pub cookie: u64,
    pub tag: SockTag,
}
const _: () = assert!(size_of::<TagSlot>() == 80);

#[cfg(test)]
mod tag_filter_tests {
    use super::*;

    #[test]
    fn consecutive_cookies_use_every_counter_once() {
        let mut seen = [0u32; 2 * TAG_FILTER_WORDS as usize];
        for cookie in 1_000..1_000 + 2 * u64::from(TAG_FILTER_WORDS) {
            let (word, one) = tag_filter_slot(cookie);
            assert!(word < TAG_FILTER_WORDS);
            assert!(one == 1 || one == 1 << 16);
            seen[(2 * word + u32::from(one != 1)) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn taking_one_back_leaves_the_other_counter_alone() {
        let (_, low) = tag_filter_slot(2);
        let (_, high) = tag_filter_slot(3);
        let word = 5 * low + 7 * high;
        assert_eq!(word.wrapping_add(low.wrapping_neg()), 4 * low + 7 * high);
        assert_eq!(word.wrapping_add(high.wrapping_neg()), 5 * low + 6 * high);
    }
}

/// Key of `SLUICE_SERVICES`: a virtual address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// Value of `SLUICE_SERVICES`: everything one steering decision needs, in one entry, so
/// that replacing it (a `BPF_F_NO_PREALLOC` hash map swaps entries under RCU) changes the
/// share, the mode and the backend generation for the next connection all at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Index into counters and the key prefix of this service's slots and segment.
    pub id: u32,
    /// Share of new connections that go to the canary, in parts per million.
    pub canary_ppm: u32,
    /// Salt of the sticky hash: a new salt is a new cohort.
    pub salt: u64,
    /// Generation of the slot table and segment this entry points at.
    pub generation: u32,
    pub stable_slots: u16,
    pub canary_slots: u16,
    pub mode: u8,
    pub flags: u8,
    pub _pad: u16,
    /// The share the configuration asked for when this entry was last written from it. Not
    /// read by the kernel: it lets an agent tell a runtime override (`sluice weight`) from
    /// a configuration change, also across restarts.
    pub config_ppm: u32,
}
const _: () = assert!(size_of::<Service>() == 32);

/// Key of `SLUICE_SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SlotKey {
    pub service: u32,
    pub generation: u32,
    pub version: u8,
    pub _pad: u8,
    pub slot: u16,
}
const _: () = assert!(size_of::<SlotKey>() == 12);

/// Value of `SLUICE_SLOTS`: one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    pub addr: [u32; 4],
    pub port: u16,
    /// The version whose table holds this slot (copied onto the socket's tag).
    pub version: u8,
    pub _pad: u8,
    /// Index of this backend within its service and version (stable in the config's order).
    pub index: u32,
}
const _: () = assert!(size_of::<Backend>() == 24);

/// Key of `SLUICE_SEGMENTS`: a client cgroup allowed to reach a service's canary.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SegmentKey {
    pub service: u32,
    pub generation: u32,
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<SegmentKey>() == 16);

/// A steered socket's tag, in `SLUICE_TAG_SLOTS` or `SLUICE_SOCK_TAGS` (keyed by the socket's
/// cookie): what it was steered to. Later hooks read the version from here,
/// never from addresses (they were rewritten, and ports are reused). Fields that different
/// hooks write (process context, softirq) are separate bytes, never bits of one byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockTag {
    /// The virtual address the application connected to (what `getpeername` must return).
    pub vip: [u32; 4],
    pub vip_port: u16,
    pub version: u8,
    /// 1 when the service parses HTTP/1.x (`l7: http1`).
    pub http1: u8,
    pub service: u32,
    pub backend: u32,
    /// Next sequence numbers expected out and in: earlier ones are retransmissions. Set
    /// from the SYN (out) and the SYN-ACK (in).
    pub tx_next: u32,
    pub rx_next: u32,
    /// An HTTP request was sent and its response has not started yet.
    pub outstanding: u8,
    /// The SYN-ACK arrived (the handshake completed, from the caller's side).
    pub established: u8,
    /// A reset was received (a reset answering a SYN means the port was closed).
    pub reset_rx: u8,
    /// The connection's end was counted (at a reset, or when the kernel destroyed the
    /// socket, whichever came first).
    pub ended: u8,
    /// When the first SYN left (its departure stamp), when the SYN-ACK arrived, when the
    /// outstanding request left. `connect_ns` is zero until a SYN was seen (signals off, or
    /// switched on after the handshake): such a socket's handshake is not counted.
    pub connect_ns: u64,
    pub established_ns: u64,
    pub request_ns: u64,
    /// The socket's `total_retrans` and `total_rto` already counted (the retransmit
    /// tracepoint counts the difference as it goes, the socket's destruction the rest).
    pub retransmits_counted: u32,
    pub rtos_counted: u32,
}
const _: () = assert!(size_of::<SockTag>() == 72);

/// The v4-mapped form of an IPv4 address given in network byte order.
#[inline(always)]
pub const fn v4_mapped(ip4_be: u32) -> [u32; 4] {
    [0, 0, u32::from_be(0x0000_ffff), ip4_be]
}

/// Whether a 16-byte address (network order words) is v4-mapped.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_be(0x0000_ffff)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no pointers, so any
    // byte pattern is a valid value and none has uninitialised bytes.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for SegmentKey {}
    unsafe impl aya::Pod for SockTag {}
    unsafe impl aya::Pod for TagSlot {}
}
