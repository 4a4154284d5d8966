//! `cargo xtask image`: the agent as a static binary in an OCI image built from scratch (no
//! base image, nothing pulled), with umoci and skopeo from Debian: daemonless, rootful file
//! ownership without a build container, and every timestamp set from the commit, so that the
//! same commit built in the same checkout gives the same digest.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{cargo, output, run, workspace_root};

/// The agent's static build target.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// What was built.
pub struct Image {
    pub dir: PathBuf,
    /// The manifest's digest (`sha256:…`), from the layout's index.
    pub digest: String,
    /// The bytes of its layers and config.
    pub bytes: u64,
}

/// Builds the image into `out` (`oci/` layout, `sluice-oci.tar`, `sluice-docker.tar`).
pub fn build(out: &Path) -> anyhow::Result<Image> {
    let root = workspace_root();
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "sluice",
        "--target",
        TARGET,
    ]))?;
    let binary = root.join(format!("target/{TARGET}/release/sluice"));
    let git = |args: &[&str]| {
        output(Command::new("git").current_dir(&root).args(args))
            .map(|s| s.trim().to_owned())
            .with_context(|| format!("git {}", args.join(" ")))
    };
    let epoch = git(&["log", "-1", "--format=%ct"])?;
    let created = git(&["log", "-1", "--format=%cI"])?;
    let mut revision = git(&["rev-parse", "HEAD"])?;
    if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        revision.push_str("-dirty");
    }
    let version = env!("CARGO_PKG_VERSION");
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let layout = out.join("oci");
    let image = format!("{}:sluice", layout.display());
    let bundle = out.join("bundle");
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let inside = rootfs.join("sluice");
    std::fs::copy(&binary, &inside).context("copying the agent into the image")?;
    run(Command::new("strip").arg("--strip-all").arg(&inside))?;
    // Every file the layer holds dated at the commit, not at this build.
    run(Command::new("find").arg(&rootfs).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        &format!("@{epoch}"),
        "{}",
        "+",
    ]))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image, "--history.created", &created])
        .args(["--history.created_by", "cargo xtask image"])
        .arg(&bundle))?;
    let labels = [
        ("org.opencontainers.image.title", "sluice"),
        (
            "org.opencontainers.image.description",
            "sluice node agent: in-kernel canary steering",
        ),
        ("org.opencontainers.image.version", version),
        ("org.opencontainers.image.revision", &revision),
        (
            "org.opencontainers.image.source",
            env!("CARGO_PKG_REPOSITORY"),
        ),
        (
            "org.opencontainers.image.licenses",
            "Apache-2.0 AND (MIT OR GPL-2.0)",
        ),
        ("org.opencontainers.image.created", &created),
    ];
    let mut config = Command::new("umoci");
    config
        .args(["config", "--image", &image, "--created", &created])
        .args(["--history.created", &created, "--history.created_by"])
        .arg("cargo xtask image")
        .args(["--config.entrypoint", "/sluice"])
        .args(["--config.cmd", "run", "--config.cmd", "--config"])
        .args(["--config.cmd", "/etc/sluice/sluice.yaml"]);
    for (k, v) in labels {
        config.arg("--config.label").arg(format!("{k}={v}"));
    }
    run(&mut config)?;
    run(Command::new("umoci").arg("gc").arg("--layout").arg(&layout))?;
    std::fs::remove_dir_all(&bundle)?;
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{image}"))
        .arg(format!(
            "oci-archive:{}",
            out.join("sluice-oci.tar").display()
        )))?;
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{image}"))
        .arg(format!(
            "docker-archive:{}:sluice:{version}",
            out.join("sluice-docker.tar").display()
        )))?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .context("the layout's index names no manifest")?
        .to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&layout, &digest))?)?;
    let bytes = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&manifest["config"]))
        .filter_map(|d| d["size"].as_u64())
        .sum();
    Ok(Image {
        dir: out.to_owned(),
        digest,
        bytes,
    })
}

/// The path of a blob in an OCI layout.
fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(algorithm).join(hex)
}

/// `cargo xtask image`: builds, then says what.
pub fn image() -> anyhow::Result<()> {
    let built = build(&workspace_root().join("target/image"))?;
    println!(
        "image: {} ({:.1} MB compressed) in {}: oci/, sluice-oci.tar, sluice-docker.tar",
        built.digest,
        built.bytes as f64 / 1e6,
        built.dir.display()
    );
    if built.bytes > 25_000_000 {
        bail!(
            "the image is {} bytes, over the 25 MB it may be",
            built.bytes
        );
    }
    Ok(())
}
