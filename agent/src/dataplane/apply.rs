//! Writing a desired state into the maps, all or nothing, and reading it back.
//!
//! Order of writes, so that no connection ever sees half a configuration:
//! 1. new slot tables and segments under a fresh generation (nothing points at them yet);
//! 2. the service entries, one atomic replacement per virtual address, now pointing at the
//!    new generation with the new share;
//! 3. cleanup: virtual addresses no longer configured, generations two changes old.
//!
//! A failure in 1 or 2 undoes what was written, so the maps end exactly as they were.

use std::collections::{HashMap, HashSet};

use aya::maps::{MapError, PerCpuValues};
use sluice_common::{
    MAX_SERVICES,
    counters::{STEER_COUNTERS, steer_index},
    maps::{
        Backend, SegmentKey, Service, SlotKey, VERSION_CANARY, VERSION_STABLE, VIP_PORT_WORDS,
        VipKey, vip_port_bit,
    },
};

use super::{DataplaneError, DesiredService, Maps};

#[derive(Debug, Default)]
pub struct ApplyReport {
    /// The service id assigned to each desired service, in order.
    pub ids: Vec<u32>,
    pub added: usize,
    pub changed: usize,
    pub unchanged: usize,
    pub removed_vips: usize,
}

/// What the kernel holds now, read once per apply.
struct Snapshot {
    services: HashMap<VipKey, Service>,
    /// (service, generation, version) -> slot table in slot order.
    slots: HashMap<(u32, u32, u8), Vec<Backend>>,
    /// (service, generation) -> member cgroup ids, sorted.
    segments: HashMap<(u32, u32), Vec<u64>>,
}

fn snapshot(maps: &Maps) -> Result<Snapshot, MapError> {
    let services = maps.services.iter().collect::<Result<HashMap<_, _>, _>>()?;
    let mut slot_entries: HashMap<(u32, u32, u8), Vec<(u16, Backend)>> = HashMap::new();
    for entry in maps.slots.iter() {
        let (k, v) = entry?;
        slot_entries
            .entry((k.service, k.generation, k.version))
            .or_default()
            .push((k.slot, v));
    }
    let slots = slot_entries
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable_by_key(|(slot, _)| *slot);
            (k, v.into_iter().map(|(_, b)| b).collect())
        })
        .collect();
    let mut segments: HashMap<(u32, u32), Vec<u64>> = HashMap::new();
    for key in maps.segments.keys() {
        let k = key?;
        segments
            .entry((k.service, k.generation))
            .or_default()
            .push(k.cgroup_id);
    }
    segments.values_mut().for_each(|v| v.sort_unstable());
    Ok(Snapshot {
        services,
        slots,
        segments,
    })
}

/// One service's plan: its id, the entry to write, and whether its tables are new.
struct Plan {
    id: u32,
    value: Service,
    previous: Option<Service>,
    new_tables: bool,
}

pub fn apply(maps: &mut Maps, desired: &[DesiredService]) -> Result<ApplyReport, DataplaneError> {
    let snap = snapshot(maps).map_err(DataplaneError::Apply)?;
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
        let _ = write_port_words(maps, &ports_union, &ports_before);
        undo_tables(maps, &written_slots, &written_segments);
        return Err(DataplaneError::Apply(e));
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
        let _ = write_port_words(maps, &ports_union, &ports_before);
        for (vip, before) in flipped.iter().rev() {
            let undo = match before {
                Some(s) => maps.services.insert(vip, s, 0),
                None => maps.services.remove(vip),
            };
            if let Err(u) = undo {
                tracing::error!(error = %u, "undoing a service entry failed");
            }
        }
        undo_tables(maps, &written_slots, &written_segments);
        return Err(DataplaneError::Apply(e));
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

/// Ids follow virtual addresses: a service keeps the id of the virtual address it had, so a
/// restarted agent continues the same counters. New services get the lowest free id.
fn assign_ids(snap: &Snapshot, desired: &[DesiredService]) -> Result<Vec<u32>, DataplaneError> {
    let in_kernel: HashSet<u32> = snap.services.values().map(|s| s.id).collect();
    let mut taken = HashSet::new();
    let mut ids: Vec<Option<u32>> = desired
        .iter()
        .map(|d| {
            let id = d
                .vips
                .iter()
                .find_map(|v| snap.services.get(v).map(|s| s.id))?;
            taken.insert(id).then_some(id)
        })
        .collect();
    let mut free = (0..MAX_SERVICES).filter(|id| !in_kernel.contains(id) && !taken.contains(id));
    for id in ids.iter_mut().filter(|id| id.is_none()) {
        *id = Some(
            free.next()
                .ok_or(DataplaneError::IdsExhausted(MAX_SERVICES))?,
        );
    }
    Ok(ids.into_iter().flatten().collect())
}

fn plan(snap: &Snapshot, d: &DesiredService, id: u32) -> Plan {
    let previous = d
        .vips
        .iter()
        .find_map(|v| snap.services.get(v).filter(|s| s.id == id).copied());
    let tables_equal = |gen_: u32| {
        let table = |version| {
            snap.slots
                .get(&(id, gen_, version))
                .map_or(&[][..], Vec::as_slice)
        };
        table(VERSION_STABLE) == d.stable.as_slice()
            && table(VERSION_CANARY) == d.canary.as_slice()
            && snap
                .segments
                .get(&(id, gen_))
                .map_or(&[][..], Vec::as_slice)
                == d.segment.as_slice()
    };
    let (generation, new_tables) = match previous {
        Some(p) if tables_equal(p.generation) => (p.generation, false),
        _ => {
            // A generation no key of this id uses yet.
            let newest = snap
                .slots
                .keys()
                .map(|(s, g, _)| (*s, *g))
                .chain(snap.segments.keys().copied())
                .filter(|(s, _)| *s == id)
                .map(|(_, g)| g)
                .chain(previous.map(|p| p.generation))
                .max();
            (newest.map_or(1, |g| g.wrapping_add(1)), true)
        }
    };
    // Keep a runtime share (`sluice weight`) unless the configuration's share changed.
    let canary_ppm = match (d.forced_ppm, previous) {
        (Some(forced), _) => forced,
        (None, Some(p)) if p.config_ppm == d.config_ppm => p.canary_ppm,
        (None, _) => d.config_ppm,
    };
    Plan {
        id,
        previous,
        new_tables,
        value: Service {
            id,
            canary_ppm,
            salt: d.salt,
            generation,
            stable_slots: d.stable.len() as u16,
            canary_slots: d.canary.len() as u16,
            mode: d.mode,
            flags: d.flags,
            _pad: 0,
            config_ppm: d.config_ppm,
        },
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

/// The port bitmap of a desired state: a bit for each virtual address's port.
fn port_words(desired: &[DesiredService]) -> Vec<u64> {
    let mut words = vec![0u64; VIP_PORT_WORDS as usize];
    for vip in desired.iter().flat_map(|d| &d.vips) {
        let (word, bit) = vip_port_bit(vip.port);
        words[word as usize] |= bit;
    }
    words
}

fn read_port_words(maps: &Maps) -> Result<Vec<u64>, MapError> {
    (0..VIP_PORT_WORDS)
        .map(|i| maps.vip_ports.get(&i, 0))
        .collect()
}

/// Writes the words of `new` that differ from `old`.
fn write_port_words(maps: &mut Maps, old: &[u64], new: &[u64]) -> Result<(), MapError> {
    for (i, (a, b)) in old.iter().zip(new).enumerate() {
        if a != b {
            maps.vip_ports.set(i as u32, b, 0)?;
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

fn undo_tables(maps: &mut Maps, slots: &[SlotKey], segments: &[SegmentKey]) {
    for k in slots {
        log_cleanup(maps.slots.remove(k));
    }
    for k in segments {
        log_cleanup(maps.segments.remove(k));
    }
}

/// Sets the share on every virtual address of a service; returns the previous share.
pub fn set_weight(maps: &mut Maps, vips: &[VipKey], ppm: u32) -> Result<u32, DataplaneError> {
    let mut previous = None;
    for vip in vips {
        let mut s = maps.services.get(vip, 0).map_err(DataplaneError::Apply)?;
        previous.get_or_insert(s.canary_ppm);
        s.canary_ppm = ppm;
        maps.services
            .insert(vip, s, 0)
            .map_err(DataplaneError::Apply)?;
    }
    Ok(previous.unwrap_or_default())
}
