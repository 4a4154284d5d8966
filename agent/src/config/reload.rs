//! Which keys a running agent takes on reload, and which only a restart can change.

use super::Config;

/// The first key whose change needs a restart, if any. `Config` is destructured without a
/// `..`: a new field does not build until it is classified here.
pub fn restart_only_change(current: &Config, next: &Config) -> Option<&'static str> {
    let Config {
        // Where the programs are attached.
        cgroup,
        cgroup_root,
        // Where the maps and links live.
        pin_path,
        // Bound once at start.
        api_socket,
        metrics_address,
        // Which programs are loaded.
        signals,
        // The controller's state is read once at start.
        state_path,
        // The size of a pinned map.
        socket_tag_slots,
        // Reloadable: the resolver is rebuilt and every name looked up again; the sets
        // found so far are kept until the new lookups answer.
        discovery: _,
        // Reloadable: the drainer takes the new directories at its next look.
        network_namespaces: _,
        // The session with etcd (and this node's name and labels) is made once at start.
        cluster,
        // Reloadable: applied to the kernel transactionally.
        services: _,
    } = next;
    [
        ("cgroup", *cgroup != current.cgroup),
        ("cgroup_root", *cgroup_root != current.cgroup_root),
        ("pin_path", *pin_path != current.pin_path),
        ("api_socket", *api_socket != current.api_socket),
        (
            "metrics_address",
            *metrics_address != current.metrics_address,
        ),
        ("signals", *signals != current.signals),
        ("cluster", *cluster != current.cluster),
        ("state_path", *state_path != current.state_path),
        (
            "socket_tag_slots",
            *socket_tag_slots != current.socket_tag_slots,
        ),
    ]
    .into_iter()
    .find_map(|(key, changed)| changed.then_some(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const BASE: &str = "services:\n  - name: web\n    virtual_addresses: [\"10.96.0.10:80\"]\n    \
                        stable: [{address: 10.0.1.1:8080}]\n";

    #[test]
    fn services_reload_and_the_rest_needs_a_restart() {
        let current = parse_str(BASE).expect("valid");
        let more = parse_str(&BASE.replace("10.0.1.1:8080", "10.0.1.2:8080")).expect("valid");
        assert_eq!(restart_only_change(&current, &more), None);
        for (line, key) in [
            ("cgroup: sluice\n", "cgroup"),
            ("cgroup_root: /host/cgroup\n", "cgroup_root"),
            ("pin_path: /sys/fs/bpf/other\n", "pin_path"),
            ("api_socket: /run/other.sock\n", "api_socket"),
            ("metrics_address: 127.0.0.1:9999\n", "metrics_address"),
            ("signals: false\n", "signals"),
            ("state_path: /var/lib/other.json\n", "state_path"),
            ("socket_tag_slots: 1024\n", "socket_tag_slots"),
        ] {
            let next = parse_str(&format!("{line}{BASE}")).expect("valid");
            assert_eq!(restart_only_change(&current, &next), Some(key), "{line}");
        }
    }
}
