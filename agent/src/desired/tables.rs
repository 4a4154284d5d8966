//! A version's slot table: each backend repeated by its slot count.

use sluice_common::maps::Backend;

use super::{addr_words, expand::Weighted};

/// The slot table of one version, interleaved (round-robin over backends) so a table is
/// readable in `bpftool map dump`.
pub fn slot_table(backends: &[Weighted], version: u8) -> Vec<Backend> {
    let mut left: Vec<u32> = backends.iter().map(|b| b.slots).collect();
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

    fn b(addr: &str, slots: u32) -> Weighted {
        Weighted {
            address: addr.parse().expect("test address"),
            slots,
        }
    }

    #[test]
    fn backends_take_their_slots_interleaved() {
        let t = slot_table(&[b("10.0.0.1:80", 3), b("10.0.0.2:80", 7)], VERSION_STABLE);
        assert_eq!(t.len(), 10);
        assert_eq!(t.iter().filter(|s| s.index == 0).count(), 3);
        assert_eq!(t[0].index, 0);
        assert_eq!(t[1].index, 1);
    }
}
