//! Every map the kernel programs use, in one place. Names are the export names the agent
//! looks up (see `sluice_common::maps::names`).

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use sluice_common::{
    MAX_SEGMENT_MEMBERS, MAX_SERVICES, MAX_SLOTS, MAX_SOCK_TAGS, MAX_VIPS,
    counters::{STEER_COUNTERS, steer_index},
    maps::{
        Backend, DEFAULT_TAG_SLOTS, SegmentKey, Service, SlotKey, SockTag, TAG_FILTER_WORDS,
        TagSlot, VIP_PORT_WORDS, VipKey, vip_port_bit,
    },
    metrics::{ARRAY_METRICS_ENTRIES, Metrics, MetricsKey},
};

/// `BPF_F_NO_PREALLOC` makes an update replace the entry under RCU: a reader sees the old
/// value or the new one, never a mix. Preallocated hash maps recycle a slot at once.
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

#[btf_map]
static SLUICE_SERVICES: HashMap<VipKey, Service, { MAX_VIPS as usize }, NO_PREALLOC> =
    HashMap::new();

#[btf_map]
static SLUICE_SLOTS: HashMap<SlotKey, Backend, { MAX_SLOTS as usize }, NO_PREALLOC> =
    HashMap::new();

#[btf_map]
static SLUICE_SEGMENTS: HashMap<SegmentKey, u8, { MAX_SEGMENT_MEMBERS as usize }, NO_PREALLOC> =
    HashMap::new();

/// Ports any virtual address uses (see `sluice_common::maps::VIP_PORT_WORDS`).
#[btf_map]
static SLUICE_VIP_PORTS: Array<u64, { VIP_PORT_WORDS as usize }> = Array::new();

/// What each steered socket was steered to, by the socket's cookie: written by connect4/6,
/// read by getpeername and the signal hooks, gone when the socket is done (see `tags`).
/// Most tags sit in their slot here (see `sluice_common::maps::DEFAULT_TAG_SLOTS`), the rest in
/// `SLUICE_SOCK_TAGS`. Not socket storage: creating that and freeing it took several µs of
/// a connection here (an allocation charged to the memory cgroup, two locks with interrupts
/// off shared by every CPU, an RCU-deferred free).
#[btf_map]
pub static SLUICE_TAG_SLOTS: Array<TagSlot, { DEFAULT_TAG_SLOTS as usize }> = Array::new();

/// `SLUICE_TAG_SLOTS`' size minus one: the agent sets both at load (`socket_tag_slots`).
#[unsafe(no_mangle)]
pub static TAG_SLOT_MASK: Global<u32> = Global::new(DEFAULT_TAG_SLOTS - 1);

/// Offsets of the kernel fields the tracing programs read (a socket's cookie, `struct
/// tcp_sock`'s counters), set by the agent at load from the kernel's BTF (see
/// `sluice_common::maps::kernel_fields`). Frozen read-only data: the verifier knows each
/// value, and checks every read at it against BTF.
#[unsafe(no_mangle)]
pub static SOCK_COOKIE_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TCP_SRTT_US_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TCP_BYTES_ACKED_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TCP_BYTES_RECEIVED_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TCP_TOTAL_RETRANS_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TCP_TOTAL_RTO_OFFSET: Global<u32> = Global::new(0);
/// The tags whose slot was taken by another live socket, keyed by the socket's cookie.
#[btf_map]
pub static SLUICE_SOCK_TAGS: HashMap<u64, SockTag, { MAX_SOCK_TAGS as usize }, NO_PREALLOC> =
    HashMap::new();

/// Live tags by cookie bits (see `sluice_common::maps::TAG_FILTER_WORDS`): kept by `tags`.
#[btf_map]
pub static SLUICE_TAG_FILTER: Array<u32, { TAG_FILTER_WORDS as usize }> = Array::new();

#[btf_map]
static SLUICE_STEER_COUNTERS: PerCpuArray<u64, { (MAX_SERVICES * STEER_COUNTERS) as usize }> =
    PerCpuArray::new();

/// Per (service, version): golden signals of the services whose id is too high for
/// `SLUICE_METRICS_ARRAY`. The agent creates an entry per live service and version; a
/// missing entry means the hook counts nothing (never a fault).
#[btf_map]
pub static SLUICE_METRICS: PerCpuHashMap<
    MetricsKey,
    Metrics,
    { (2 * MAX_SERVICES) as usize },
    NO_PREALLOC,
> = PerCpuHashMap::new();

/// Per (service, version): golden signals of the lowest service ids (see
/// `sluice_common::metrics::ARRAY_METRICS_SERVICES`).
#[btf_map]
pub static SLUICE_METRICS_ARRAY: PerCpuArray<Metrics, { ARRAY_METRICS_ENTRIES as usize }> =
    PerCpuArray::new();

#[inline(always)]
pub fn service(key: &VipKey) -> Option<&Service> {
    // SAFETY: entries are replaced, never mutated in place, and NO_PREALLOC frees a replaced
    // entry only after an RCU grace period, so the reference stays valid for this run.
    unsafe { SLUICE_SERVICES.get(key) }
}

/// Whether some virtual address uses this port (raw, network order). An array lookup the
/// verifier inlines: the cheap first check for the many connects that are not to a VIP.
#[inline(always)]
pub fn port_may_be_vip(port_raw: u16) -> bool {
    let (word, bit) = vip_port_bit(port_raw);
    SLUICE_VIP_PORTS.get(word).is_some_and(|w| w & bit != 0)
}

#[inline(always)]
pub fn slot(key: &SlotKey) -> Option<&Backend> {
    // SAFETY: as for `service`.
    unsafe { SLUICE_SLOTS.get(key) }
}

#[inline(always)]
pub fn in_segment(key: &SegmentKey) -> bool {
    // SAFETY: as for `service`; only presence is read.
    unsafe { SLUICE_SEGMENTS.get(key) }.is_some()
}

/// Adds one to a steering counter of a service.
#[inline(always)]
pub fn count(service: u32, counter: u32) {
    if let Some(c) = SLUICE_STEER_COUNTERS.get_ptr_mut(steer_index(service, counter)) {
        // Atomic even though the slot is per-CPU: programs run with migration, not
        // preemption, disabled, so another program on this CPU can interleave a plain +=.
        // SAFETY: a valid, 8-byte aligned per-CPU slot for the program's run.
        add(c, 1);
    }
}

/// Context fields must be accessed one aligned word at a time (the verifier rejects the byte
/// loop an array copy compiles to), hence these two helpers for `user_ip6`.
#[inline(always)]
pub fn read_ip6(words: &[u32; 4]) -> [u32; 4] {
    // SAFETY: in-bounds, aligned reads of a context field.
    unsafe {
        [
            core::ptr::read_volatile(&words[0]),
            core::ptr::read_volatile(&words[1]),
            core::ptr::read_volatile(&words[2]),
            core::ptr::read_volatile(&words[3]),
        ]
    }
}

#[inline(always)]
pub fn write_ip6(words: &mut [u32; 4], addr: &[u32; 4]) {
    // SAFETY: in-bounds, aligned writes of a context field.
    unsafe {
        core::ptr::write_volatile(&mut words[0], addr[0]);
        core::ptr::write_volatile(&mut words[1], addr[1]);
        core::ptr::write_volatile(&mut words[2], addr[2]);
        core::ptr::write_volatile(&mut words[3], addr[3]);
    }
}

/// `*counter += n` as one BPF atomic add (`lock xadd`). The BPF target has no 64-bit
/// `AtomicU64::fetch_add`, but the intrinsic compiles to exactly that instruction.
#[inline(always)]
pub fn add(counter: *mut u64, n: u64) {
    // SAFETY: callers pass a valid, aligned pointer into a map value.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, n,
        )
    };
}
