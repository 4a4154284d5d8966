//! Addresses in the kernel's form: 16 bytes (IPv4 as v4-mapped IPv6), network byte order.

use std::net::{IpAddr, SocketAddr};

use sluice_common::{
    IPPROTO_TCP,
    maps::{VipKey, v4_mapped},
};

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

/// The service map's key for a virtual address.
pub fn vip_key(a: SocketAddr) -> VipKey {
    VipKey {
        addr: addr_words(a.ip()),
        port: a.port().to_be(),
        proto: IPPROTO_TCP,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
