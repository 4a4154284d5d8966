use std::path::PathBuf;

use super::*;

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// `# expect: A ... B` on a bad config's first line: the error must contain A, then B.
fn expectation(text: &str) -> Vec<&str> {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .map(|e| e.split(" ... ").collect())
        .unwrap_or_default()
}

#[test]
fn example_config_is_valid() {
    let c = parse(&config_dir().join("example.yaml")).expect("config/example.yaml must be valid");
    assert_eq!(c.services.len(), 4);
    let r = c.services[2]
        .rollout
        .as_ref()
        .expect("payments has a rollout");
    assert_eq!(r.steps_ppm, vec![10_000, 50_000, 100_000, 250_000, 500_000]);
    assert_eq!(r.promotion, crate::config::Promotion::Manual);
    assert_eq!(r.interval, std::time::Duration::from_secs(60));
    assert_eq!(c.services[0].canary_ppm, 50_000);
    assert_eq!(c.services[1].canary_ppm, 5_000);
    assert!(matches!(c.services[1].selection, Selection::Sticky { .. }));
    assert_eq!(c.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
}

/// Every file of `config/<dir>`, sorted.
fn files_of(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(config_dir().join(dir))
        .unwrap_or_else(|e| panic!("config/{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

/// Checks that `judge` rejects the file with an error holding its `# expect:` parts in order.
fn assert_rejected(f: &std::path::Path, judge: impl Fn(&str) -> Result<(), ConfigError>) {
    let text = std::fs::read_to_string(f).expect("read bad config");
    let expect = expectation(&text);
    assert!(
        !expect.is_empty(),
        "{} has no `# expect:` line",
        f.display()
    );
    let err = match judge(&text) {
        Ok(()) => panic!("{} was accepted", f.display()),
        Err(e) => e.to_string(),
    };
    let mut rest = err.as_str();
    for part in expect {
        let at = rest
            .find(part)
            .unwrap_or_else(|| panic!("{}: error {err:?} lacks {part:?}", f.display()));
        rest = &rest[at + part.len()..];
    }
}

#[test]
fn every_bad_config_is_rejected_naming_its_key() {
    let files = files_of("bad");
    assert!(
        files.len() >= 15,
        "at least 15 kinds of bad config, found {}",
        files.len()
    );
    for f in files {
        assert_rejected(&f, |text| parse_str(text).map(drop));
    }
}

/// A directory that looks like a cgroup2 tree to the binding step (each cgroup holds a
/// `cgroup.controllers`), removed when dropped.
struct FakeCgroup2(PathBuf);

impl FakeCgroup2 {
    fn new(cgroups: &[&str]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "sluice-fake-cgroup2-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for c in std::iter::once(&"").chain(cgroups) {
            let dir = root.join(c);
            std::fs::create_dir_all(&dir).expect("fake cgroup");
            std::fs::write(dir.join("cgroup.controllers"), "").expect("fake cgroup");
        }
        Self(root)
    }
}

impl Drop for FakeCgroup2 {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fake tree's cgroups: directories holding `cgroup.controllers` (a node's also need to
/// be on cgroup2, which a temporary directory is not).
fn fake_cgroup(p: &std::path::Path) -> bool {
    p.join("cgroup.controllers").is_file()
}

#[test]
fn a_directory_off_cgroup2_is_no_cgroup_whatever_it_holds() {
    let tree = FakeCgroup2::new(&["apps"]);
    assert!(!crate::cgroup::is_cgroup2_dir(&tree.0.join("apps")));
}

#[test]
fn configs_that_name_missing_cgroups_are_valid_but_do_not_bind() {
    let tree = FakeCgroup2::new(&[]);
    let files = files_of("bad-on-node");
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        // The document itself is fine: a laptop can check it for a node.
        let text = std::fs::read_to_string(&f).expect("read");
        parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_rejected(&f, |text| {
            let config = parse_str(text)?;
            crate::config::bind_under(&config, &tree.0, &fake_cgroup).map(drop)
        });
    }
}

#[test]
fn binding_resolves_cgroups_and_segment_ids_on_the_node() {
    let tree = FakeCgroup2::new(&["apps", "apps/team-a", "apps/team-b"]);
    let c = parse_str(
        "cgroup: apps
services:
  - name: web
    virtual_addresses: [\"10.96.0.10:80\"]
    \
         stable: [{address: 10.0.1.1:8080}]
    segment: [apps/team-a, apps/team-b]
",
    )
    .expect("valid");
    assert_eq!(c.cgroup, Some(PathBuf::from("apps")));
    let node = crate::config::bind_under(&c, &tree.0, &fake_cgroup).expect("binds");
    assert_eq!(node.cgroup, tree.0.join("apps"));
    let ids = node.segment_ids("web");
    let inode = |p: &str| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(tree.0.join(p)).expect("stat").ino()
    };
    assert_eq!(ids, vec![inode("apps/team-a"), inode("apps/team-b")]);
    assert!(node.segment_ids("other").is_empty());
    // No cgroup: the mount itself.
    let root = parse_str(
        "services:
  - name: web
    virtual_addresses: [\"10.96.0.10:80\"]
    \
         stable: [{address: 10.0.1.1:8080}]
",
    )
    .expect("valid");
    assert_eq!(
        crate::config::bind_under(&root, &tree.0, &fake_cgroup)
            .expect("binds")
            .cgroup,
        tree.0
    );
}

#[test]
fn names_are_targets_of_the_services_family() {
    let c = parse_str(
        r#"
discovery: {nameservers: ["127.0.0.1:5353"], min_ttl: 1s, max_ttl: 10s, timeout: 1s}
services:
  - name: orders
    virtual_addresses: [{dns: Orders.prod.svc.cluster.local., port: 80}]
    family: ipv6
    stable:
      - {dns: orders-primary.prod, port: 8080, weight: 2}
      - {address: "[fd00::1]:8080"}
    canary: [{dns: orders-canary.prod, port: 8080}]
"#,
    )
    .expect("valid");
    let s = &c.services[0];
    assert_eq!(s.family, Family::V6);
    assert_eq!(
        s.virtual_addresses,
        vec![Target::Name(crate::config::NamedTarget {
            name: "orders.prod.svc.cluster.local.".into(),
            port: 80
        })]
    );
    assert_eq!(s.stable[0].weight, 2);
    let names: Vec<String> = c.names().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec![
            "orders-canary.prod",
            "orders-primary.prod",
            "orders.prod.svc.cluster.local."
        ]
    );
    assert!(c.names().iter().all(|(_, f)| *f == Family::V6));
    assert_eq!(c.discovery.min_ttl, std::time::Duration::from_secs(1));
}

#[test]
fn shares_convert_to_parts_per_million() {
    assert_eq!(percent_to_ppm("k", 0.0001).expect("valid"), 1);
    assert_eq!(percent_to_ppm("k", 12.5).expect("valid"), 125_000);
    assert_eq!(percent_to_ppm("k", 100.0).expect("valid"), PPM);
    assert!(percent_to_ppm("k", f64::NAN).is_err());
}

#[test]
fn sticky_salt_defaults_to_the_name_and_differs_by_salt() {
    let yaml = |salt: &str| {
        format!(
            "services:\n  - name: web\n    virtual_addresses: [\"10.96.0.10:80\"]\n    \
             selection: sticky\n{salt}    stable: [{{address: 10.0.1.1:8080}}]\n"
        )
    };
    let salt = |text: String| match parse_str(&text).expect("valid").services[0].selection {
        Selection::Sticky { salt } => salt,
        Selection::Random => panic!("sticky expected"),
    };
    let by_name = salt(yaml(""));
    assert_eq!(by_name, fnv1a64(b"web"));
    assert_ne!(by_name, salt(yaml("    salt: rollout-2\n")));
}
