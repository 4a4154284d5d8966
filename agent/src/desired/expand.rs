//! A version's backends as addresses: literal ones as written, names as what they
//! resolved to, each name's weight shared by its addresses.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use sluice_common::{
    MAX_SLOTS_PER_VERSION,
    slots::{divisor, gcd},
};

use crate::config::{BackendConfig, Family, Target};

/// What each name resolved to on this node: its last good answer. A name with no entry (or
/// an empty one) has not resolved yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved(pub BTreeMap<(String, Family), BTreeSet<IpAddr>>);

impl Resolved {
    pub fn addresses(&self, name: &str, family: Family) -> impl Iterator<Item = IpAddr> + '_ {
        self.0
            .get(&(name.to_owned(), family))
            .into_iter()
            .flatten()
            .copied()
            .filter(move |ip| Family::of(*ip) == family)
    }
}

/// The addresses a target stands for now.
pub fn addresses_of(target: &Target, family: Family, resolved: &Resolved) -> Vec<SocketAddr> {
    match target {
        Target::Address(a) => vec![*a],
        Target::Name(n) => resolved
            .addresses(&n.name, family)
            .map(|ip| SocketAddr::new(ip, n.port))
            .collect(),
    }
}

/// One address of a version and the slots it takes in the version's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weighted {
    pub address: SocketAddr,
    pub slots: u32,
}

/// A version's addresses with their slot counts, in address order. An entry of weight `w`
/// whose name returned `n` addresses gives each `w / n` of the version; an address that
/// two entries give is one backend with both shares. The counts are exact (the least common
/// multiple of the answers' sizes, reduced) when the table fits in
/// [`MAX_SLOTS_PER_VERSION`], and otherwise apportioned into it (largest remainders, every
/// address at least one slot).
pub fn expand(backends: &[BackendConfig], family: Family, resolved: &Resolved) -> Vec<Weighted> {
    let entries: Vec<(Vec<SocketAddr>, u32)> = backends
        .iter()
        .map(|b| (addresses_of(&b.target, family, resolved), b.weight))
        .filter(|(a, _)| !a.is_empty())
        .collect();
    // Exact shares are `weight * lcm / n`; the lcm is kept in u128 and, past any table's
    // size, stops mattering: the shares are apportioned then.
    let lcm = entries.iter().fold(1u128, |l, (a, _)| {
        let n = a.len() as u128;
        let l = l / gcd_u128(l, n) * n;
        l.min(u128::from(u64::MAX))
    });
    let mut share: BTreeMap<SocketAddr, u128> = BTreeMap::new();
    for (addresses, weight) in &entries {
        let each = u128::from(*weight) * lcm / addresses.len() as u128;
        for a in addresses {
            *share.entry(*a).or_default() += each;
        }
    }
    if share.is_empty() {
        return Vec::new();
    }
    let g = share.values().fold(0u128, |g, s| gcd_u128(g, *s));
    let total: u128 = share.values().map(|s| s / g).sum();
    let max = u128::from(MAX_SLOTS_PER_VERSION);
    if total <= max {
        return share
            .into_iter()
            .map(|(address, s)| Weighted {
                address,
                slots: (s / g) as u32,
            })
            .collect();
    }
    apportion(share, MAX_SLOTS_PER_VERSION)
}

/// Largest-remainder apportionment of `share` into `seats` slots, each address at least
/// one (more addresses than seats keeps the first `seats`, in address order).
fn apportion(share: BTreeMap<SocketAddr, u128>, seats: u32) -> Vec<Weighted> {
    let share: Vec<(SocketAddr, u128)> = share.into_iter().take(seats as usize).collect();
    let total: u128 = share.iter().map(|(_, s)| *s).sum();
    // Each address has its one seat first; the rest go by share.
    let rest = u128::from(seats) - share.len() as u128;
    let mut out: Vec<(Weighted, u128)> = share
        .iter()
        .map(|(address, s)| {
            let exact = rest * s;
            let slots = 1 + (exact / total) as u32;
            (
                Weighted {
                    address: *address,
                    slots,
                },
                exact % total,
            )
        })
        .collect();
    let given: u32 = out.iter().map(|(w, _)| w.slots).sum();
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|a, b| out[*b].1.cmp(&out[*a].1).then(a.cmp(b)));
    for i in order.into_iter().take((seats - given) as usize) {
        out[i].0.slots += 1;
    }
    let slots: Vec<u32> = out.iter().map(|(w, _)| w.slots).collect();
    let d = divisor(&slots);
    out.into_iter()
        .map(|(w, _)| Weighted {
            slots: w.slots / d,
            ..w
        })
        .collect()
}

fn gcd_u128(a: u128, b: u128) -> u128 {
    if a <= u128::from(u32::MAX) && b <= u128::from(u32::MAX) {
        return u128::from(gcd(a as u32, b as u32));
    }
    let (mut a, mut b) = (a, b);
    while b != 0 {
        let r = a % b;
        a = b;
        b = r;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamedTarget;

    fn literal(a: &str, weight: u32) -> BackendConfig {
        BackendConfig {
            target: Target::Address(a.parse().expect("test address")),
            weight,
        }
    }

    fn name(n: &str, weight: u32) -> BackendConfig {
        BackendConfig {
            target: Target::Name(NamedTarget {
                name: n.into(),
                port: 8080,
            }),
            weight,
        }
    }

    fn resolved(entries: &[(&str, &[&str])]) -> Resolved {
        Resolved(
            entries
                .iter()
                .map(|(n, ips)| {
                    let set = ips.iter().map(|i| i.parse().expect("test ip")).collect();
                    (((*n).to_owned(), Family::V4), set)
                })
                .collect(),
        )
    }

    fn slots(w: &[Weighted]) -> Vec<(String, u32)> {
        w.iter().map(|w| (w.address.to_string(), w.slots)).collect()
    }

    #[test]
    fn literal_weights_reduce_as_written() {
        let w = expand(
            &[literal("10.0.0.1:80", 30), literal("10.0.0.2:80", 70)],
            Family::V4,
            &Resolved::default(),
        );
        assert_eq!(
            slots(&w),
            vec![("10.0.0.1:80".into(), 3), ("10.0.0.2:80".into(), 7)]
        );
    }

    #[test]
    fn a_names_weight_is_shared_by_its_addresses() {
        let r = resolved(&[("app", &["10.1.0.1", "10.1.0.2", "10.1.0.3"])]);
        let w = expand(&[literal("10.0.0.1:80", 1), name("app", 1)], Family::V4, &r);
        // Half to the literal, half shared by three: 3 slots against 1, 1, 1.
        assert_eq!(
            slots(&w),
            vec![
                ("10.0.0.1:80".into(), 3),
                ("10.1.0.1:8080".into(), 1),
                ("10.1.0.2:8080".into(), 1),
                ("10.1.0.3:8080".into(), 1)
            ]
        );
    }

    #[test]
    fn unresolved_names_and_other_families_give_nothing() {
        let r = resolved(&[("app", &["fd00::1"])]);
        assert!(expand(&[name("app", 1), name("gone", 1)], Family::V4, &r).is_empty());
    }

    #[test]
    fn an_address_two_entries_give_is_one_backend() {
        let r = resolved(&[("a", &["10.1.0.1", "10.1.0.2"]), ("b", &["10.1.0.2"])]);
        let w = expand(&[name("a", 1), name("b", 1)], Family::V4, &r);
        assert_eq!(
            slots(&w),
            vec![("10.1.0.1:8080".into(), 1), ("10.1.0.2:8080".into(), 3)]
        );
    }

    #[test]
    fn tables_too_large_are_apportioned_within_the_limit() {
        // Answers of 7, 11 and 13 addresses need 1001 slots per entry share: exact tables
        // would take 3003 * 1000 / ... slots; apportioned, they fit and keep the shares.
        let ips = |base: u8, n: u8| -> Vec<String> {
            (1..=n).map(|i| format!("10.{base}.0.{i}")).collect()
        };
        let (a, b, c) = (ips(1, 7), ips(2, 11), ips(3, 13));
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let (ra, rb, rc) = (refs(&a), refs(&b), refs(&c));
        let r = resolved(&[("a", &ra), ("b", &rb), ("c", &rc)]);
        let w = expand(
            &[name("a", 1000), name("b", 999), name("c", 998)],
            Family::V4,
            &r,
        );
        let total: u32 = w.iter().map(|w| w.slots).sum();
        assert!(total <= MAX_SLOTS_PER_VERSION, "{total}");
        assert_eq!(w.len(), 31);
        let share_of = |prefix: &str| {
            let s: u32 = w
                .iter()
                .filter(|w| w.address.to_string().starts_with(prefix))
                .map(|w| w.slots)
                .sum();
            f64::from(s) / f64::from(total)
        };
        // Each entry's share within half a percent of weight / total weight.
        for (prefix, weight) in [("10.1.", 1000.0), ("10.2.", 999.0), ("10.3.", 998.0)] {
            let want = weight / 2997.0;
            assert!((share_of(prefix) - want).abs() < 0.005, "{prefix}");
        }
    }
}
