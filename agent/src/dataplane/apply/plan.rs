//! Reading what the kernel holds and planning each service's entry against it.

use std::collections::{HashMap, HashSet};

use aya::maps::MapError;
use sluice_common::{
    MAX_SERVICES,
    maps::{Backend, Service, VERSION_CANARY, VERSION_STABLE, VipKey},
};

use super::super::{DataplaneError, Maps};
use crate::desired::DesiredService;

/// What the kernel holds now, read once per apply.
pub(super) struct Snapshot {
    pub services: HashMap<VipKey, Service>,
    /// (service, generation, version) -> slot table in slot order.
    pub slots: HashMap<(u32, u32, u8), Vec<Backend>>,
    /// (service, generation) -> member cgroup ids, sorted.
    pub segments: HashMap<(u32, u32), Vec<u64>>,
}

pub(super) fn snapshot(maps: &Maps) -> Result<Snapshot, MapError> {
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
pub(super) struct Plan {
    pub id: u32,
    pub value: Service,
    pub previous: Option<Service>,
    pub new_tables: bool,
}

/// Ids follow virtual addresses: a service keeps the id of the virtual address it had, so a
/// restarted agent continues the same counters. New services get the lowest free id.
pub(super) fn assign_ids(
    snap: &Snapshot,
    desired: &[DesiredService],
) -> Result<Vec<u32>, DataplaneError> {
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

pub(super) fn plan(snap: &Snapshot, d: &DesiredService, id: u32) -> Plan {
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
