//! Reading the kernel's state back: `sluice status` and the exporter's samples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_common::{
    counters::{STEER_COUNTER_NAMES, STEER_COUNTERS, STEERED_CANARY, STEERED_STABLE, steer_index},
    maps::{Backend, MODE_STICKY, VERSION_CANARY, VERSION_STABLE},
};

use super::{DataplaneError, DesiredService, Maps, words_addr};
use crate::config::ppm_to_percent;

/// A service's steering counters, summed over CPUs.
fn steer_counts(maps: &Maps, id: u32) -> Result<[u64; STEER_COUNTERS as usize], DataplaneError> {
    let mut counts = [0u64; STEER_COUNTERS as usize];
    for (c, v) in counts.iter_mut().enumerate() {
        let values = maps
            .steer_counters
            .get(&steer_index(id, c as u32), 0)
            .map_err(DataplaneError::Apply)?;
        *v = values.iter().sum();
    }
    Ok(counts)
}

/// One service as `sluice status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub id: u32,
    pub virtual_addresses: Vec<String>,
    pub selection: String,
    /// The share in force in the kernel now.
    pub canary_percent: f64,
    /// The share the configuration asks for.
    pub config_canary_percent: f64,
    pub generation: u32,
    pub stable: Vec<String>,
    pub canary: Vec<String>,
    pub segmented: bool,
    /// Steering counters since the service was first configured (they survive restarts).
    pub counters: BTreeMap<String, u64>,
    /// Share of steered connections that went to the canary, over the counters' lifetime.
    pub measured_canary_percent: Option<f64>,
    /// The rollout controller's view, for services with a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Box<crate::rollout::RolloutStatus>>,
}

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
                .map_err(DataplaneError::Apply)?;
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
            })
        })
        .collect()
}

/// Raw kernel numbers of one service, summed over CPUs, for the exporter.
#[derive(Clone, Debug)]
pub struct ServiceSample {
    pub name: String,
    pub canary_ppm: u32,
    pub config_ppm: u32,
    pub http1: bool,
    pub steer: [u64; STEER_COUNTERS as usize],
    /// Metric slots of stable, then canary.
    pub versions: [Vec<u64>; 2],
}

pub fn samples<'a>(
    maps: &Maps,
    applied: impl Iterator<Item = &'a (DesiredService, u32)>,
) -> Result<Vec<ServiceSample>, DataplaneError> {
    applied
        .map(|(d, id)| {
            let entry = maps
                .services
                .get(&d.vips[0], 0)
                .map_err(DataplaneError::Apply)?;
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
                versions: [version(VERSION_STABLE)?, version(VERSION_CANARY)?],
            })
        })
        .collect()
}

/// What the share windows need of one service: steered connections and, for `l7: http1`
/// services, requests, per version (stable, canary). Two small reads a service, two more for
/// HTTP ones: the sampler runs every few seconds over every service, and a full sample
/// (eleven reads, two of them a KiB per CPU) is too much on large nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareCount {
    pub name: String,
    pub connections: (u64, u64),
    pub requests: Option<(u64, u64)>,
}

pub fn share_counts(
    maps: &Maps,
    applied: &[(DesiredService, u32)],
) -> Result<Vec<ShareCount>, DataplaneError> {
    use sluice_common::metrics::{HTTP_METHODS, HTTP_REQUESTS};
    let counter = |id: u32, c: u32| -> Result<u64, DataplaneError> {
        let values = maps
            .steer_counters
            .get(&steer_index(id, c), 0)
            .map_err(DataplaneError::Apply)?;
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
