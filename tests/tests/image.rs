//! The OCI image `cargo xtask image` builds (and `cargo xtask test` builds before the tests):
//! from scratch, one layer holding only the static agent, its entrypoint and OCI labels, under
//! 25 MB, and a docker-archive beside it. Reads target/image; without it the test skips, and
//! under CI=true it fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn image_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image")
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let (algorithm, hex) = digest.split_once(':').expect("digest");
    std::fs::read(layout.join("blobs").join(algorithm).join(hex)).expect("blob")
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

#[test]
fn the_image_holds_only_the_static_agent_with_its_labels() {
    let layout = image_dir().join("oci");
    if !layout.join("index.json").exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "no image at {}: `cargo xtask test` builds it as root",
                layout.display()
            );
        }
        eprintln!(
            "SKIPPED the_image_holds_only_the_static_agent_with_its_labels: no image (run `cargo xtask image` as root)"
        );
        return;
    }
    let index = json(&std::fs::read(layout.join("index.json")).expect("index"));
    let manifest = json(&blob(
        &layout,
        index["manifests"][0]["digest"].as_str().expect("digest"),
    ));
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("config"),
    ));
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer, no base image");
    let total: u64 = layers
        .iter()
        .chain([&manifest["config"]])
        .filter_map(|d| d["size"].as_u64())
        .sum();
    assert!(total < 25_000_000, "{total} bytes");
    assert_eq!(config["os"].as_str(), Some("linux"));
    assert_eq!(config["config"]["Entrypoint"][0].as_str(), Some("/sluice"));
    let labels = &config["config"]["Labels"];
    for key in [
        "version", "revision", "source", "licenses", "created", "title",
    ] {
        let v = labels[format!("org.opencontainers.image.{key}")]
            .as_str()
            .unwrap_or("");
        assert!(!v.is_empty(), "label {key}: {labels}");
    }
    assert_eq!(
        labels["org.opencontainers.image.version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // The layer: the agent and nothing else.
    let tar = image_dir().join("layer.tar.gz");
    std::fs::write(
        &tar,
        blob(&layout, layers[0]["digest"].as_str().expect("layer")),
    )
    .expect("write");
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(&tar)
        .output()
        .expect("tar");
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_owned())
        // The root directory's own entry.
        .filter(|l| !l.is_empty() && l != ".")
        .collect();
    assert_eq!(names, ["sluice"], "{names:?}");
    let unpacked = image_dir().join("unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked).expect("dir");
    let ok = Command::new("tar")
        .arg("xzf")
        .arg(&tar)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar");
    assert!(ok.success());
    let agent = unpacked.join("sluice");
    let file = Command::new("file").arg(&agent).output().expect("file");
    let kind = String::from_utf8_lossy(&file.stdout);
    assert!(kind.contains("static"), "a static binary: {kind}");
    let version = Command::new(&agent)
        .arg("--version")
        .output()
        .expect("run the agent");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
    let _ = std::fs::remove_dir_all(&unpacked);
    let _ = std::fs::remove_file(&tar);
    // The docker-archive loads where a docker-compatible loader is used.
    let archive = image_dir().join("sluice-docker.tar");
    let list = Command::new("tar")
        .arg("tf")
        .arg(&archive)
        .output()
        .expect("tar");
    assert!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l == "manifest.json")
    );
    assert!(image_dir().join("sluice-oci.tar").exists());
}
