//! The desired-state seam: one pure function from a validated configuration, the node it is
//! bound to, and the rollouts' decisions to what the kernel's maps must hold.
//!
//! The daemon's loop is `inputs -> desired_state -> Dataplane::apply`. Rollout decisions
//! enter as a plain value, [`RolloutShares`]: this node's controller provides it; any other
//! source (a cluster-wide rollout) can provide the same value instead, and nothing below
//! this function changes. What names resolved to enters the same way, as [`Resolved`].

mod encode;
mod expand;
mod tables;

use std::collections::BTreeMap;

use sluice_common::maps::{
    Backend, FLAG_HTTP1, FLAG_SEGMENTED, MODE_RANDOM, MODE_STICKY, VERSION_CANARY, VERSION_STABLE,
    VipKey,
};

pub use encode::{addr_words, vip_key, words_addr};
pub use expand::{Resolved, Weighted, addresses_of, expand};
use tables::slot_table;

use crate::config::{Config, Node, Selection, ServiceConfig};

/// What a rollout decided for one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloutShare {
    /// The canary share (ppm) the service must have, whatever the configuration says.
    pub canary_ppm: u32,
    /// The canary set has been promoted: it is the stable set now, and there is no canary.
    pub promoted: bool,
}

/// Rollout decisions by service name. A service without an entry takes its configured share.
pub type RolloutShares = BTreeMap<String, RolloutShare>;

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
    /// runtime share (`sluice weight`) until `config_ppm` changes.
    pub forced_ppm: Option<u32>,
    /// Slot tables, in slot order. `Backend::index` is the backend's position in its list.
    pub stable: Vec<Backend>,
    pub canary: Vec<Backend>,
    /// Client cgroup ids allowed to reach the canary, sorted (segmented services only).
    pub segment: Vec<u64>,
}

/// What the kernel must hold: every configured service, with the rollouts' shares and
/// promoted canary sets in place of the configured ones, and names as what they resolved to.
///
/// An address a name returns that is already a virtual address (of an earlier service, or a
/// literal one of any) is left out: it would steer twice, or take another service's place.
pub fn desired_state(
    config: &Config,
    node: &Node,
    rollouts: &RolloutShares,
    resolved: &Resolved,
) -> Vec<DesiredService> {
    // Literal virtual addresses are the configuration's (unique, checked); a resolved one
    // is taken by the first service that names it and is not already a literal one.
    let mut claimed: std::collections::HashSet<VipKey> = config
        .services
        .iter()
        .flat_map(|s| &s.virtual_addresses)
        .filter_map(|t| match t {
            crate::config::Target::Address(a) => Some(vip_key(*a)),
            crate::config::Target::Name(_) => None,
        })
        .collect();
    let mut out: Vec<DesiredService> = config
        .services
        .iter()
        .map(|s| {
            let mut vips = Vec::new();
            for t in &s.virtual_addresses {
                for a in addresses_of(t, s.family, resolved) {
                    let key = vip_key(a);
                    let literal = matches!(t, crate::config::Target::Address(_));
                    if literal || claimed.insert(key) {
                        vips.push(key);
                    }
                }
            }
            desired_service(s, node, rollouts.get(&s.name), resolved, vips)
        })
        .collect();
    // No backend may be a virtual address (it would be steered again by the next connect):
    // the configuration refuses literal ones, and resolved ones are dropped here.
    let all_vips: std::collections::HashSet<VipKey> =
        out.iter().flat_map(|d| d.vips.iter().copied()).collect();
    for d in &mut out {
        for table in [&mut d.stable, &mut d.canary] {
            let before = table.len();
            table.retain(|b| {
                !all_vips.contains(&VipKey {
                    addr: b.addr,
                    port: b.port,
                    proto: sluice_common::IPPROTO_TCP,
                    _pad: 0,
                })
            });
            if table.len() != before {
                tracing::warn!(service = %d.name, "a resolved backend is a virtual address: left out");
            }
        }
    }
    out
}

fn desired_service(
    s: &ServiceConfig,
    node: &Node,
    rollout: Option<&RolloutShare>,
    resolved: &Resolved,
    vips: Vec<VipKey>,
) -> DesiredService {
    let (mode, salt) = match s.selection {
        Selection::Random => (MODE_RANDOM, 0),
        Selection::Sticky { salt } => (MODE_STICKY, salt),
    };
    let promoted = rollout.is_some_and(|r| r.promoted);
    let (stable, canary) = if promoted {
        (&s.canary[..], &[][..])
    } else {
        (&s.stable[..], &s.canary[..])
    };
    // A segmented service the node could not bind keeps an empty segment: nobody reaches
    // its canary, which is the safe side.
    let mut segment = node.segment_ids(&s.name);
    segment.sort_unstable();
    segment.dedup();
    let segmented = if s.segment.is_some() {
        FLAG_SEGMENTED
    } else {
        0
    };
    DesiredService {
        name: s.name.clone(),
        vips,
        mode,
        salt,
        flags: segmented | if s.http1 { FLAG_HTTP1 } else { 0 },
        config_ppm: s.canary_ppm,
        forced_ppm: rollout.map(|r| r.canary_ppm),
        stable: slot_table(&expand(stable, s.family, resolved), VERSION_STABLE),
        canary: slot_table(&expand(canary, s.family, resolved), VERSION_CANARY),
        segment,
    }
}

#[cfg(test)]
mod tests;
