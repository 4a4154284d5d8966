//! The binaries under measurement; the command helpers are xtask's.

use std::path::PathBuf;

pub use xtask::util::{cargo, is_root, output, run, workspace_root};

/// Builds the agent and the kit's probe (the measuring client) in release mode; their paths.
pub fn build_release_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    build_binaries(true)
}

/// As [`build_release_binaries`], or in the dev profile: a smoke run whose numbers mean
/// nothing takes the builds the tests already made instead of building everything again.
pub fn build_binaries(release: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    run(cargo()
        .arg("build")
        .args(profile)
        .args(["--package", "sluice"]))?;
    run(cargo().arg("build").args(profile).args([
        "--package",
        "sluice-tests",
        "--bin",
        "sluice-probe",
    ]))?;
    let dir = workspace_root().join(if release {
        "target/release"
    } else {
        "target/debug"
    });
    Ok((dir.join("sluice"), dir.join("sluice-probe")))
}
