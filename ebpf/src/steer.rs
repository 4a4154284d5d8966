//! `connect4`/`connect6`: match the destination against the virtual addresses, decide the
//! version and backend (the pure `sluice_common::steer::decide`), rewrite the destination,
//! tag the socket.

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_prandom_u32,
        bpf_set_retval,
    },
    programs::SockAddrContext,
};
use sluice_common::{
    IPPROTO_TCP, MAX_SEGMENT_DEPTH,
    counters::{
        CANARY_EMPTY_FALLBACK, FAMILY_MISMATCH, NO_BACKEND, SEGMENT_EXCLUDED, SLOT_MISSING,
        STEERED_CANARY, STEERED_STABLE, TAG_FAILED,
    },
    maps::{
        Backend, FLAG_HTTP1, FLAG_SEGMENTED, MODE_STICKY, SegmentKey, Service, SlotKey, SockTag,
        VERSION_CANARY, VipKey, is_v4_mapped, v4_mapped,
    },
    steer::{Decision, Draws, decide},
};

use crate::{maps, tags};

const PASS: i32 = 1;
const REFUSE: i32 = 0;
/// What a caller sees when a service has no backend: the errno of a closed port, at once,
/// like kube-proxy's reject rule — never a hang.
const ECONNREFUSED: i32 = 111;

pub fn connect4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP as u32 || !maps::port_may_be_vip(sa.user_port as u16) {
        return PASS;
    }
    let key = vip_key(v4_mapped(sa.user_ip4), sa.user_port);
    match route(&key) {
        Route::NotOurs => PASS,
        Route::Refuse => refuse(),
        Route::To(svc, backend) if !is_v4_mapped(&backend.addr) => {
            maps::count(svc.id, FAMILY_MISMATCH);
            refuse()
        }
        Route::To(svc, backend) => {
            sa.user_ip4 = backend.addr[3];
            sa.user_port = backend.port as u32;
            steered(ctx, &key, svc, &backend);
            PASS
        }
    }
}

pub fn connect6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP as u32 || !maps::port_may_be_vip(sa.user_port as u16) {
        return PASS;
    }
    let key = vip_key(maps::read_ip6(&sa.user_ip6), sa.user_port);
    match route(&key) {
        Route::NotOurs => PASS,
        Route::Refuse => refuse(),
        Route::To(svc, backend) => {
            // An IPv6 socket reaches an IPv4 backend through its v4-mapped form (unless it
            // is IPV6_V6ONLY, in which case the kernel refuses the connect itself).
            maps::write_ip6(&mut sa.user_ip6, &backend.addr);
            sa.user_port = backend.port as u32;
            steered(ctx, &key, svc, &backend);
            PASS
        }
    }
}

#[inline(always)]
fn vip_key(addr: [u32; 4], user_port: u32) -> VipKey {
    VipKey {
        addr,
        port: user_port as u16,
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

enum Route<'a> {
    /// Not a virtual address: leave the connect alone.
    NotOurs,
    /// A virtual address with nowhere to go: fail the connect.
    Refuse,
    /// Rewrite to this backend.
    To(&'a Service, Backend),
}

/// First check, before any other work: is the destination a virtual address at all?
#[inline(always)]
fn route(key: &VipKey) -> Route<'_> {
    let Some(svc) = maps::service(key) else {
        return Route::NotOurs;
    };
    match choose(svc) {
        Some(backend) => Route::To(svc, backend),
        None => Route::Refuse,
    }
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain helper call; cgroup sock_addr programs may set the syscall's errno.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}

/// Picks the backend for one connection, counting the outcome. `None` refuses the connect.
#[inline(always)]
fn choose(svc: &Service) -> Option<Backend> {
    // The caller's cgroup only when the service looks at it: the helper walks from the task
    // to its cgroup's id through lines that are cold here, about 150 ns of a steered connect.
    let cgroup_id = if svc.mode == MODE_STICKY || svc.flags & FLAG_SEGMENTED != 0 {
        // SAFETY: plain helper call without arguments.
        unsafe { bpf_get_current_cgroup_id() }
    } else {
        0
    };
    // SAFETY: plain helper calls without arguments.
    let draws = unsafe {
        Draws {
            random: bpf_get_prandom_u32(),
            random_slot: bpf_get_prandom_u32(),
            cgroup_id,
            in_segment: true,
        }
    };
    let draws = Draws {
        in_segment: caller_in_segment(svc, draws.cgroup_id),
        ..draws
    };
    match decide(svc, &draws) {
        Decision::NoBackend => {
            maps::count(svc.id, NO_BACKEND);
            None
        }
        Decision::Steer {
            version,
            slot,
            canary_fallback,
        } => {
            let key = SlotKey {
                service: svc.id,
                generation: svc.generation,
                version,
                _pad: 0,
                slot,
            };
            let Some(backend) = maps::slot(&key) else {
                maps::count(svc.id, SLOT_MISSING);
                return None;
            };
            if canary_fallback {
                maps::count(svc.id, CANARY_EMPTY_FALLBACK);
            }
            Some(*backend)
        }
    }
}

/// Whether the caller may reach the canary: always for unsegmented services; otherwise if its
/// cgroup or one of its ancestors is a listed segment member.
#[inline(always)]
fn caller_in_segment(svc: &Service, cgroup_id: u64) -> bool {
    if svc.flags & FLAG_SEGMENTED == 0 {
        return true;
    }
    let mut key = SegmentKey {
        service: svc.id,
        generation: svc.generation,
        cgroup_id,
    };
    if maps::in_segment(&key) {
        return true;
    }
    for level in 1..MAX_SEGMENT_DEPTH {
        // SAFETY: plain helper call; returns 0 past the caller's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == cgroup_id {
            break;
        }
        key.cgroup_id = id;
        if maps::in_segment(&key) {
            return true;
        }
    }
    maps::count(svc.id, SEGMENT_EXCLUDED);
    false
}

/// Counts a connection whose destination was rewritten, and tags its socket.
#[inline(always)]
fn steered(ctx: &SockAddrContext, vip: &VipKey, svc: &Service, backend: &Backend) {
    maps::count(
        svc.id,
        if backend.version == VERSION_CANARY {
            STEERED_CANARY
        } else {
            STEERED_STABLE
        },
    );
    tag(ctx, vip, svc, backend);
}

/// Records on the socket what it was steered to, for `getpeername` and the metrics hooks.
#[inline(always)]
fn tag(ctx: &SockAddrContext, vip: &VipKey, svc: &Service, backend: &Backend) {
    let init = SockTag {
        vip: vip.addr,
        vip_port: vip.port,
        version: backend.version,
        http1: u8::from(svc.flags & FLAG_HTTP1 != 0),
        service: svc.id,
        backend: backend.index,
        // The connect latency starts at the SYN's departure stamp (cgroup_skb egress), with
        // signals on: no clock read here (about 90 ns).
        ..SockTag::default()
    };
    // A socket that connects again (after AF_UNSPEC disconnect) gets its old tag replaced.
    let cookie = tags::cookie_of(ctx.sock_addr.cast());
    if cookie == 0 || !tags::set(cookie, &init) {
        maps::count(svc.id, TAG_FAILED);
    }
}
