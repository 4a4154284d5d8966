//! What the kernel maps should hold for a configuration: pure, host-testable.

use std::net::{IpAddr, SocketAddr};

use sluice_common::{
    IPPROTO_TCP,
    maps::{
        Backend, FLAG_HTTP1, FLAG_SEGMENTED, MODE_RANDOM, MODE_STICKY, VERSION_CANARY,
        VERSION_STABLE, VipKey, v4_mapped,
    },
};

use crate::config::{BackendConfig, Selection, ServiceConfig};

/// One service as the kernel will see it, minus the id and generation (assigned on apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub vips: Vec<VipKey>,
    pub mode: u8,
    pub salt: u64,
    pub flags: u8,
    pub config_ppm: u32,
    /// The share to write whatever the kernel holds now (a rollout's weight); `None` keeps a
    /// runtime share until `config_ppm` changes.
    pub forced_ppm: Option<u32>,
    /// Slot tables, in slot order. `Backend::index` is the backend's position in the config.
    pub stable: Vec<Backend>,
    pub canary: Vec<Backend>,
    pub segment: Vec<u64>,
}

impl DesiredService {
    pub fn from_config(s: &ServiceConfig, forced_ppm: Option<u32>) -> Self {
        let (mode, salt) = match s.selection {
            Selection::Random => (MODE_RANDOM, 0),
            Selection::Sticky { salt } => (MODE_STICKY, salt),
        };
        let mut segment: Vec<u64> = s.segment.iter().flatten().map(|m| m.cgroup_id).collect();
        segment.sort_unstable();
        segment.dedup();
        Self {
            name: s.name.clone(),
            vips: s.virtual_addresses.iter().map(|a| vip_key(*a)).collect(),
            mode,
            salt,
            flags: if s.segment.is_some() {
                FLAG_SEGMENTED
            } else {
                0
            } | if s.http1 { FLAG_HTTP1 } else { 0 },
            config_ppm: s.canary_ppm,
            forced_ppm,
            stable: slot_table(&s.stable, VERSION_STABLE),
            canary: slot_table(&s.canary, VERSION_CANARY),
            segment,
        }
    }
}

/// The 16-byte form of an address (IPv4 v4-mapped), network byte order words.
pub fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// Back from the 16-byte form (v4-mapped shown as IPv4).
pub fn words_addr(words: [u32; 4]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = std::net::Ipv6Addr::from(o);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

pub fn vip_key(a: SocketAddr) -> VipKey {
    VipKey {
        addr: addr_words(a.ip()),
        port: a.port().to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

/// Slots per backend: the weights divided by their greatest common divisor, so weights
/// 30/70 take 10 slots, not 100.
pub fn slot_counts(backends: &[BackendConfig]) -> Vec<u32> {
    let g = backends.iter().fold(0, |g, b| gcd(g, b.weight));
    backends.iter().map(|b| b.weight / g.max(1)).collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The slot table of one version: each backend repeated by its slot count, interleaved
/// (round-robin over backends) so a table is readable in `bpftool map dump`.
fn slot_table(backends: &[BackendConfig], version: u8) -> Vec<Backend> {
    let mut left = slot_counts(backends);
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

    #[test]
    fn addresses_round_trip_in_network_order() {
        for a in ["10.1.2.3", "::1", "fd00::abcd:1"] {
            let ip: IpAddr = a.parse().expect("test address");
            assert_eq!(words_addr(addr_words(ip)), ip);
        }
        // 10.1.2.3 as the kernel stores user_ip4: the first octet at the lowest address.
        let w = addr_words("10.1.2.3".parse().expect("test address"));
        assert_eq!(w[3].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(w[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
    }

    #[test]
    fn vip_port_is_network_order() {
        let k = vip_key("10.0.0.1:8080".parse().expect("test address"));
        assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
    }
}
