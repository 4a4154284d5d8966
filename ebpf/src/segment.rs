//! The TCP segment of a packet a cgroup_skb program sees, read from its headers in place.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::SkBuffContext};
use sluice_common::IPPROTO_TCP;

/// TCP header flags (byte 13).
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// A TCP segment: its sequence numbers, flags, and where its payload lies in the skb (data
/// starts at the IP header).
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub offset: u32,
    pub len: u32,
}

/// The packet's TCP segment; `None` for anything else. The headers are read in place
/// (direct packet access: they are always in the skb's linear part), which saves helper
/// calls: most packets of a connection (ACKs, FINs) leave after these few loads.
#[inline(always)]
pub fn segment(ctx: &SkBuffContext) -> Option<Segment> {
    // SAFETY: a valid context for the program's run; the verifier turns these two fields into
    // packet pointers, and every read below is bounds-checked against `end` first.
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // Twenty bytes: a whole IPv4 header without options, and more than the IPv6 fields read.
    // (A check of `data + 1` would not do: LLVM rewrites it as `data >= end`, from which the
    // verifier derives no readable range.)
    if data + 20 > end {
        return None;
    }
    // SAFETY: checked: twenty bytes from `data` are in the packet.
    let version_ihl = unsafe { *(data as *const u8) };
    let (ip_len, proto_at) = match version_ihl >> 4 {
        4 => (usize::from(version_ihl & 0x0f) * 4, 9),
        6 => (40, 6),
        _ => return None,
    };
    // SAFETY: checked above: `proto_at` is below twenty.
    if unsafe { *((data + proto_at) as *const u8) } != IPPROTO_TCP {
        return None;
    }
    let tcp = data + ip_len;
    if tcp + 14 > end {
        return None;
    }
    // SAFETY: checked: fourteen bytes from `tcp` are in the packet.
    let (seq, ack, data_offset, flags) = unsafe {
        (
            u32::from_be(core::ptr::read_unaligned((tcp + 4) as *const u32)),
            u32::from_be(core::ptr::read_unaligned((tcp + 8) as *const u32)),
            *((tcp + 12) as *const u8),
            *((tcp + 13) as *const u8),
        )
    };
    let offset = ip_len as u32 + u32::from(data_offset >> 4) * 4;
    Some(Segment {
        seq,
        ack,
        flags,
        offset,
        len: ctx.skb.len().saturating_sub(offset),
    })
}

/// Whether `seq` lies before `next` in sequence space (a retransmission or duplicate).
#[inline(always)]
pub fn before(seq: u32, next: u32) -> bool {
    (seq.wrapping_sub(next) as i32) < 0
}

/// When an outgoing segment leaves: TCP stamps every segment it sends with its departure
/// time on the monotonic clock (`skb->tstamp`, from the clock TCP read for this send anyway),
/// which saves a clock read (about 90 ns here). A segment without one (none from TCP) gets
/// the clock.
#[inline(always)]
pub fn departure_ns(ctx: &SkBuffContext) -> u64 {
    // SAFETY: a valid context for the program's run; cgroup_skb programs may read `tstamp`.
    match unsafe { (*ctx.skb.skb).tstamp } {
        // SAFETY: plain helper call.
        0 => unsafe { bpf_ktime_get_ns() },
        stamp => stamp,
    }
}
