//! Writing a desired state into the maps, all or nothing, and reading it back.
//!
//! Order of writes, so that no connection ever sees half a configuration:
//! 1. new slot tables and segments under a fresh generation (nothing points at them yet);
//! 2. the service entries, one atomic replacement per virtual address, now pointing at the
//!    new generation with the new share;
//! 3. cleanup: virtual addresses no longer configured, generations two changes old.
//!
//! A failure in 1 or 2 undoes what was written, so the maps end exactly as they were.

mod plan;
mod ports;

use std::collections::HashSet;

use aya::maps::{MapError, PerCpuValues};
use sluice_common::{
    counters::{STEER_COUNTERS, steer_index},
    maps::{SegmentKey, Service, SlotKey, VERSION_CANARY, VERSION_STABLE, VipKey},
};

use super::{DataplaneError, Maps};
use crate::desired::DesiredService;
use plan::{Plan, assign_ids, plan, snapshot};
use ports::{port_words, read_port_words, write_port_words};

#[derive(Debug, Default)]
pub struct ApplyReport {
    /// The service id assigned to each desired service, in order.
    pub ids: Vec<u32>,
    pub added: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub removed_vips: usize,
}

pub fn apply(maps: &mut Maps, desired: &[DesiredService]) -> Result<ApplyReport, DataplaneError> {
    // Names can resolve to more addresses than any configuration check could foresee.
    let needed: u64 = desired
        .iter()
        .map(|d| (d.stable.len() + d.canary.len()) as u64)
        .sum();
    let room = u64::from(sluice_common::MAX_SLOTS / 2);
    if needed > room {
        return Err(DataplaneError::TooManySlots { needed, room });
    }
    let snap = snapshot(maps).map_err(|source| DataplaneError::Read {
        what: "the service, slot and segment maps",
        source,
    })?;
    let ids = assign_ids(&snap, desired)?;
    let plans: Vec<Plan> = desired
        .iter()
        .zip(&ids)
        .map(|(d, &id)| plan(&snap, d, id))
        .collect();

    // 1. New tables.
    let mut written_slots = Vec::new();
    let mut written_segments = Vec::new();
    let phase1 = write_tables(
        maps,
        desired,
        &plans,
        &mut written_slots,
        &mut written_segments,
    );
    // The port bitmap gains the new ports before any entry points at them (a stale bit
    // only costs a hash lookup; a missing one would skip a virtual address).
    let wanted_ports = port_words(desired);
    let mut ports_before = Vec::new();
    let mut ports_union = Vec::new();
    let phase1 = phase1.and_then(|()| {
        ports_before = read_port_words(maps)?;
        ports_union = ports_before
            .iter()
            .zip(&wanted_ports)
            .map(|(a, b)| a | b)
            .collect();
        write_port_words(maps, &ports_before, &ports_union)
    });
    if let Err(e) = phase1 {
        // Restores every word that may have been written (a no-op where none was).
        let undo_failures =
            usize::from(write_port_words(maps, &ports_union, &ports_before).is_err())
                + undo_tables(maps, &written_slots, &written_segments);
        return Err(failed(e, undo_failures));
    }

    // 2. Flip the service entries.
    let mut flipped: Vec<(VipKey, Option<Service>)> = Vec::new();
    let phase2 = (|| {
        for (d, p) in desired.iter().zip(&plans) {
            for vip in &d.vips {
                let before = snap.services.get(vip).copied();
                if before != Some(p.value) {
                    flipped.push((*vip, before));
                    maps.services.insert(vip, p.value, 0)?;
                }
            }
        }
        Ok::<_, MapError>(())
    })();
    if let Err(e) = phase2 {
        let mut undo_failures =
            usize::from(write_port_words(maps, &ports_union, &ports_before).is_err());
        for (vip, before) in flipped.iter().rev() {
            let undo = match before {
                Some(s) => maps.services.insert(vip, s, 0),
                None => maps.services.remove(vip),
            };
            if let Err(u) = undo {
                tracing::error!(error = %u, "undoing a service entry failed");
                undo_failures += 1;
            }
        }
        undo_failures += undo_tables(maps, &written_slots, &written_segments);
        return Err(failed(e, undo_failures));
    }

    // 3. Cleanup: best effort, logged; what stays behind is unreachable.
    // Ports no virtual address uses any more leave the bitmap only now.
    log_cleanup(write_port_words(maps, &ports_union, &wanted_ports));
    let wanted: HashSet<&VipKey> = desired.iter().flat_map(|d| &d.vips).collect();
    let mut report = ApplyReport {
        ids,
        ..ApplyReport::default()
    };
    for vip in snap.services.keys().filter(|v| !wanted.contains(v)) {
        log_cleanup(maps.services.remove(vip));
        report.removed_vips += 1;
    }
    let mut keep: HashSet<(u32, u32)> = HashSet::new();
    for p in &plans {
        keep.insert((p.id, p.value.generation));
        // The generation just replaced stays one more round: a connect that read the old
        // service entry a moment ago may still be looking up its slot.
        if let Some(prev) = p.previous {
            keep.insert((p.id, prev.generation));
        }
        match (
            p.previous.is_some(),
            p.new_tables || p.previous != Some(p.value),
        ) {
            (false, _) => report.added += 1,
            (true, true) => report.changed += 1,
            (true, false) => report.unchanged += 1,
        }
    }
    let live: HashSet<u32> = plans.iter().map(|p| p.id).collect();
    for gone in snap
        .services
        .values()
        .map(|s| s.id)
        .filter(|id| !live.contains(id))
    {
        for version in [VERSION_STABLE, VERSION_CANARY] {
            // Absent already when two addresses of one removed service both list it.
            let _ = maps.remove_metrics(gone, version);
        }
    }
    for (service, generation, version) in snap.slots.keys() {
        if !keep.contains(&(*service, *generation)) {
            let n = snap.slots[&(*service, *generation, *version)].len();
            for slot in 0..n as u16 {
                let key = SlotKey {
                    service: *service,
                    generation: *generation,
                    version: *version,
                    _pad: 0,
                    slot,
                };
                log_cleanup(maps.slots.remove(&key));
            }
        }
    }
    for ((service, generation), members) in &snap.segments {
        if !keep.contains(&(*service, *generation)) {
            for cgroup_id in members {
                let key = SegmentKey {
                    service: *service,
                    generation: *generation,
                    cgroup_id: *cgroup_id,
                };
                log_cleanup(maps.segments.remove(&key));
            }
        }
    }
    Ok(report)
}

fn log_cleanup(r: Result<(), MapError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "cleanup of an unused map entry failed");
    }
}

fn write_tables(
    maps: &mut Maps,
    desired: &[DesiredService],
    plans: &[Plan],
    written_slots: &mut Vec<SlotKey>,
    written_segments: &mut Vec<SegmentKey>,
) -> Result<(), MapError> {
    for (d, p) in desired.iter().zip(plans).filter(|(_, p)| p.new_tables) {
        if p.previous.is_none() {
            // A fresh id: counters left by an earlier owner of the id start again from zero.
            for version in [VERSION_STABLE, VERSION_CANARY] {
                retrying_enomem(|| maps.reset_metrics(p.id, version))?;
            }
            for c in 0..STEER_COUNTERS {
                // Cannot fail: the length is the possible-CPU count the map was made with.
                let zeros =
                    PerCpuValues::try_from(vec![0u64; maps.ncpus]).map_err(MapError::IoError)?;
                maps.steer_counters.set(steer_index(p.id, c), zeros, 0)?;
            }
        }
        for (version, table) in [(VERSION_STABLE, &d.stable), (VERSION_CANARY, &d.canary)] {
            for (slot, backend) in table.iter().enumerate() {
                let key = SlotKey {
                    service: p.id,
                    generation: p.value.generation,
                    version,
                    _pad: 0,
                    slot: slot as u16,
                };
                maps.slots.insert(key, backend, 0)?;
                written_slots.push(key);
            }
        }
        for cgroup_id in &d.segment {
            let key = SegmentKey {
                service: p.id,
                generation: p.value.generation,
                cgroup_id: *cgroup_id,
            };
            maps.segments.insert(key, 1, 0)?;
            written_segments.push(key);
        }
    }
    Ok(())
}

/// Retries an update that failed for want of memory. The kernel hands out the per-CPU
/// values of a non-preallocated hash from a cache it refills in the background; thousands of
/// new services in one apply drain it faster than that, and the update fails with ENOMEM
/// until the refill has run. A short pause lets it.
fn retrying_enomem(mut update: impl FnMut() -> Result<(), MapError>) -> Result<(), MapError> {
    const ATTEMPTS: u32 = 200;
    let mut attempt = 0;
    loop {
        match update() {
            Err(MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOMEM) && attempt < ATTEMPTS =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// Removes the table entries an apply wrote; returns how many could not be removed. Left
/// behind they are unreachable (no service entry points at their generation).
fn undo_tables(maps: &mut Maps, slots: &[SlotKey], segments: &[SegmentKey]) -> usize {
    let mut failures = 0;
    for r in slots
        .iter()
        .map(|k| maps.slots.remove(k))
        .chain(segments.iter().map(|k| maps.segments.remove(k)))
    {
        if let Err(e) = r {
            tracing::error!(error = %e, "undoing a table entry failed");
            failures += 1;
        }
    }
    failures
}

/// The error of a failed apply, saying whether the undo left the kernel as it was.
fn failed(source: MapError, undo_failures: usize) -> DataplaneError {
    if undo_failures == 0 {
        DataplaneError::Apply(source)
    } else {
        DataplaneError::ApplyHalfUndone {
            undo_failures,
            source,
        }
    }
}
