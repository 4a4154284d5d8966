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
    assert_eq!(c.services.len(), 3);
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

#[test]
fn every_bad_config_is_rejected_naming_its_key() {
    let mut files: Vec<_> = std::fs::read_dir(config_dir().join("bad"))
        .expect("config/bad")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "at least 15 kinds of bad config, found {}",
        files.len()
    );
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read bad config");
        let expect = expectation(&text);
        assert!(
            !expect.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        let err = match parse_str(&text) {
            Ok(_) => panic!("{} was accepted", f.display()),
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
