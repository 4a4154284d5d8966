//! The desired state without a kernel: what a configuration, a node and rollout decisions
//! put into the maps.

use std::{collections::BTreeMap, path::PathBuf};

use sluice_common::maps::{
    FLAG_HTTP1, FLAG_SEGMENTED, MODE_RANDOM, MODE_STICKY, VERSION_CANARY, VERSION_STABLE,
};

use super::*;
use crate::config::{SegmentMember, Target, parse_str};

fn literal(t: &Target) -> std::net::SocketAddr {
    match t {
        Target::Address(a) => *a,
        Target::Name(n) => panic!("{} is a name", n.name),
    }
}

const CONFIG: &str = r#"
services:
  - name: web
    virtual_addresses: ["10.96.0.10:80", "10.96.0.11:80"]
    l7: http1
    canary_percent: 5
    stable: [{address: "10.0.1.1:8080", weight: 3}, {address: "10.0.1.2:8080"}]
    canary: [{address: "10.0.2.1:8080"}]
  - name: api
    virtual_addresses: ["10.96.0.20:443"]
    selection: sticky
    stable: [{address: "10.0.3.1:8443"}]
    canary: [{address: "10.0.4.1:8443"}]
    segment: [team-a, team-b]
    rollout:
      steps: [10, 50]
"#;

fn node() -> Node {
    let member = |p: &str, id| SegmentMember {
        path: PathBuf::from(p),
        cgroup_id: id,
    };
    Node {
        cgroup2: PathBuf::from("/sys/fs/cgroup"),
        cgroup: PathBuf::from("/sys/fs/cgroup"),
        segments: BTreeMap::from([(
            "api".to_owned(),
            vec![
                member("team-b", 902),
                member("team-a", 901),
                member("team-a", 901),
            ],
        )]),
    }
}

fn versions(table: &[Backend]) -> Vec<u8> {
    table.iter().map(|b| b.version).collect()
}

#[test]
fn the_configuration_alone_gives_its_own_shares_and_sets() {
    let config = parse_str(CONFIG).expect("valid");
    let want = desired_state(
        &config,
        &node(),
        &RolloutShares::new(),
        &Resolved::default(),
    );
    assert_eq!(want.len(), 2);
    let web = &want[0];
    assert_eq!(web.name, "web");
    assert_eq!(
        web.vips,
        vec![
            vip_key(literal(&config.services[0].virtual_addresses[0])),
            vip_key(literal(&config.services[0].virtual_addresses[1]))
        ]
    );
    assert_eq!((web.mode, web.flags), (MODE_RANDOM, FLAG_HTTP1));
    assert_eq!((web.config_ppm, web.forced_ppm), (50_000, None));
    // Weights 3 and 1: four stable slots, the first backend in three of them.
    assert_eq!(versions(&web.stable), vec![VERSION_STABLE; 4]);
    assert_eq!(web.stable.iter().filter(|b| b.index == 0).count(), 3);
    assert_eq!(versions(&web.canary), vec![VERSION_CANARY]);
    assert!(web.segment.is_empty());
    let api = &want[1];
    assert_eq!((api.mode, api.flags), (MODE_STICKY, FLAG_SEGMENTED));
    assert_ne!(api.salt, 0);
    // The node's segment ids, sorted and once each.
    assert_eq!(api.segment, vec![901, 902]);
}

#[test]
fn rollout_decisions_set_the_share_and_a_promotion_swaps_the_sets() {
    let config = parse_str(CONFIG).expect("valid");
    let stepping = RolloutShares::from([(
        "api".to_owned(),
        RolloutShare {
            canary_ppm: 100_000,
            promoted: false,
        },
    )]);
    let want = desired_state(&config, &node(), &stepping, &Resolved::default());
    assert_eq!(want[1].forced_ppm, Some(100_000));
    assert_eq!(
        want[1].stable[0].addr,
        addr_words("10.0.3.1".parse().expect("ip"))
    );
    // A service without a decision keeps its configured share.
    assert_eq!(want[0].forced_ppm, None);

    let promoted = RolloutShares::from([(
        "api".to_owned(),
        RolloutShare {
            canary_ppm: 0,
            promoted: true,
        },
    )]);
    let want = desired_state(&config, &node(), &promoted, &Resolved::default());
    let api = &want[1];
    assert_eq!(api.forced_ppm, Some(0));
    assert_eq!(api.stable.len(), 1);
    assert_eq!(
        api.stable[0].addr,
        addr_words("10.0.4.1".parse().expect("ip"))
    );
    assert_eq!(api.stable[0].version, VERSION_STABLE);
    assert!(api.canary.is_empty());
}

#[test]
fn a_segmented_service_the_node_did_not_bind_lets_nobody_reach_its_canary() {
    let config = parse_str(CONFIG).expect("valid");
    let mut unbound = node();
    unbound.segments.clear();
    let want = desired_state(
        &config,
        &unbound,
        &RolloutShares::new(),
        &Resolved::default(),
    );
    assert_eq!(want[1].flags & FLAG_SEGMENTED, FLAG_SEGMENTED);
    assert!(want[1].segment.is_empty());
}
