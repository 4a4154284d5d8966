//! A version's slot table: each backend repeated by its slot count.

use sluice_common::{
    maps::Backend,
    slots::{divisor, slots_of},
};

use super::addr_words;
use crate::config::BackendConfig;

/// The slot table of one version, interleaved (round-robin over backends) so a table is
/// readable in `bpftool map dump`.
pub fn slot_table(backends: &[BackendConfig], version: u8) -> Vec<Backend> {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    let d = divisor(&weights);
    let mut left: Vec<u32> = weights.iter().map(|w| slots_of(*w, d)).collect();
    let mut table = Vec::with_capacity(left.iter().sum::<u32>() as usize);
    while left.iter().any(|&n| n > 0) {
        for (index, (b, n)) in backends.iter().zip(left.iter_mut()).enumerate() {
            if *n > 0 {
                *n -= 1;
                table.push(Backend {
                    addr: addr_words(b.address.ip()),
                    port: b.address.port().to_be(),
                    version,
                    _pad: 0,
                    index: index as u32,
                });
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use sluice_common::maps::VERSION_STABLE;

    use super::*;

    fn b(addr: &str, weight: u32) -> BackendConfig {
        BackendConfig {
            address: addr.parse().expect("test address"),
            weight,
        }
    }

    #[test]
    fn weights_reduce_by_gcd_and_interleave() {
        let t = slot_table(
            &[b("10.0.0.1:80", 30), b("10.0.0.2:80", 70)],
            VERSION_STABLE,
        );
        assert_eq!(t.len(), 10);
        assert_eq!(t.iter().filter(|s| s.index == 0).count(), 3);
        assert_eq!(t[0].index, 0);
        assert_eq!(t[1].index, 1);
    }
}
