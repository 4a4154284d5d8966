//! The virtual-address port bitmap: a bit per port any virtual address uses, so connects to
//! other ports leave the hook after one array load.

use aya::maps::MapError;
use sluice_common::maps::{VIP_PORT_WORDS, vip_port_bit};

use super::super::Maps;
use crate::desired::DesiredService;

/// The port bitmap of a desired state: a bit for each virtual address's port.
pub(super) fn port_words(desired: &[DesiredService]) -> Vec<u64> {
    let mut words = vec![0u64; VIP_PORT_WORDS as usize];
    for vip in desired.iter().flat_map(|d| &d.vips) {
        let (word, bit) = vip_port_bit(vip.port);
        words[word as usize] |= bit;
    }
    words
}

pub(super) fn read_port_words(maps: &Maps) -> Result<Vec<u64>, MapError> {
    (0..VIP_PORT_WORDS)
        .map(|i| maps.vip_ports.get(&i, 0))
        .collect()
}

/// Writes the words of `new` that differ from `old`.
pub(super) fn write_port_words(maps: &mut Maps, old: &[u64], new: &[u64]) -> Result<(), MapError> {
    for (i, (a, b)) in old.iter().zip(new).enumerate() {
        if a != b {
            maps.vip_ports.set(i as u32, b, 0)?;
        }
    }
    Ok(())
}
