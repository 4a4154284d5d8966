//! Reading the kernel's state back: `sluice status` and the exporter's samples.

use std::collections::BTreeMap;

use aya::maps::MapError;
use sluice_common::{
    counters::{STEER_COUNTER_NAMES, STEER_COUNTERS, STEERED_CANARY, STEERED_STABLE, steer_index},
    maps::{Backend, MODE_STICKY, VERSION_CANARY, VERSION_STABLE},
};

use super::{DataplaneError, Maps};
use crate::{
    config::ppm_to_percent,
    desired::{DesiredService, words_addr},
    view::{ServiceSample, ServiceStatus, ShareCount},
};

fn read_error(what: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Read { what, source }
}

/// A service's steering counters, summed over CPUs.
fn steer_counts(maps: &Maps, id: u32) -> Result<[u64; STEER_COUNTERS as usize], DataplaneError> {
    let mut counts = [0u64; STEER_COUNTERS as usize];
    for (c, v) in counts.iter_mut().enumerate() {
        let values = maps
            .steer_counters
            .get(&steer_index(id, c as u32), 0)
            .map_err(read_error("the steering counters"))?;
        *v = values.iter().sum();
    }
    Ok(counts)
}

/// What the kernel holds for each applied service, with its steering counters.
pub fn status(
    maps: &Maps,
    applied: &[(DesiredService, u32)],
) -> Result<Vec<ServiceStatus>, DataplaneError> {
    applied
        .iter()
        .map(|(d, id)| {
            let entry = maps
                .services
                .get(&d.vips[0], 0)
                .map_err(read_error("the service entry"))?;
            let counts = steer_counts(maps, *id)?;
            let counters: BTreeMap<String, u64> = STEER_COUNTER_NAMES
                .iter()
                .zip(counts)
                .map(|(name, n)| ((*name).to_owned(), n))
                .collect();
            let stable = counters[STEER_COUNTER_NAMES[STEERED_STABLE as usize]];
            let canary = counters[STEER_COUNTER_NAMES[STEERED_CANARY as usize]];
            let addr = |b: &Backend| {
                std::net::SocketAddr::new(words_addr(b.addr), u16::from_be(b.port)).to_string()
            };
            let list = |t: &[Backend]| {
                // A weighted backend fills several slots: list it once.
                let mut v: Vec<String> = t.iter().map(addr).collect();
                v.sort();
                v.dedup();
                v
            };
            Ok(ServiceStatus {
                name: d.name.clone(),
                id: *id,
                virtual_addresses: d
                    .vips
                    .iter()
                    .map(|v| {
                        std::net::SocketAddr::new(words_addr(v.addr), u16::from_be(v.port))
                            .to_string()
                    })
                    .collect(),
                selection: if entry.mode == MODE_STICKY {
                    "sticky"
                } else {
                    "random"
                }
                .into(),
                canary_percent: ppm_to_percent(entry.canary_ppm),
                config_canary_percent: ppm_to_percent(entry.config_ppm),
                generation: entry.generation,
                stable: list(&d.stable),
                canary: list(&d.canary),
                segmented: entry.flags & sluice_common::maps::FLAG_SEGMENTED != 0,
                counters,
                measured_canary_percent: (stable + canary > 0)
                    .then(|| 100.0 * canary as f64 / (stable + canary) as f64),
                rollout: None,
                names: Vec::new(),
                cluster_nodes: None,
            })
        })
        .collect()
}

/// Raw counters of the given services, summed over CPUs.
pub fn samples<'a>(
    maps: &Maps,
    applied: impl Iterator<Item = &'a (DesiredService, u32)>,
) -> Result<Vec<ServiceSample>, DataplaneError> {
    applied
        .map(|(d, id)| {
            let entry = maps
                .services
                .get(&d.vips[0], 0)
                .map_err(read_error("the service entry"))?;
            let steer = steer_counts(maps, *id)?;
            let version = |v: u8| -> Result<Vec<u64>, DataplaneError> {
                let mut sum = vec![0u64; sluice_common::metrics::METRIC_SLOTS as usize];
                // A missing entry (an id whose metrics were never created) reads as zeros.
                if let Ok(per_cpu) = maps.metrics(*id, v) {
                    for cpu in per_cpu.iter() {
                        for (s, x) in sum.iter_mut().zip(cpu.slots.iter()) {
                            *s += x;
                        }
                    }
                }
                Ok(sum)
            };
            Ok(ServiceSample {
                name: d.name.clone(),
                canary_ppm: entry.canary_ppm,
                config_ppm: entry.config_ppm,
                http1: entry.flags & sluice_common::maps::FLAG_HTTP1 != 0,
                steer,
                backends: [distinct(&d.stable), distinct(&d.canary)],
                versions: [version(VERSION_STABLE)?, version(VERSION_CANARY)?],
            })
        })
        .collect()
}

/// Two small reads a service, two more for HTTP ones: the share sampler runs every few
/// seconds over every service, and a full sample (eleven reads, two of them a KiB per CPU)
/// is too much on large nodes.
pub fn share_counts(
    maps: &Maps,
    applied: &[(DesiredService, u32)],
) -> Result<Vec<ShareCount>, DataplaneError> {
    use sluice_common::metrics::{HTTP_METHODS, HTTP_REQUESTS};
    let counter = |id: u32, c: u32| -> Result<u64, DataplaneError> {
        let values = maps
            .steer_counters
            .get(&steer_index(id, c), 0)
            .map_err(read_error("the steering counters"))?;
        Ok(values.iter().sum())
    };
    let requests = |id: u32, v: u8| -> u64 {
        let start = HTTP_REQUESTS as usize;
        maps.metrics(id, v).map_or(0, |per_cpu| {
            per_cpu
                .iter()
                .map(|m| {
                    m.slots[start..start + HTTP_METHODS.len()]
                        .iter()
                        .sum::<u64>()
                })
                .sum()
        })
    };
    applied
        .iter()
        .map(|(d, id)| {
            let http1 = d.flags & sluice_common::maps::FLAG_HTTP1 != 0;
            Ok(ShareCount {
                name: d.name.clone(),
                connections: (counter(*id, STEERED_STABLE)?, counter(*id, STEERED_CANARY)?),
                requests: http1
                    .then(|| (requests(*id, VERSION_STABLE), requests(*id, VERSION_CANARY))),
            })
        })
        .collect()
}

/// Backends of a slot table, each once (a weighted one fills several slots).
fn distinct(table: &[Backend]) -> u32 {
    let set: std::collections::BTreeSet<([u32; 4], u16)> =
        table.iter().map(|b| (b.addr, b.port)).collect();
    set.len() as u32
}
