//! The binaries under measurement; the command helpers are xtask's.

use std::path::PathBuf;

pub use xtask::util::{cargo, is_root, output, run, workspace_root};

/// Builds the agent and the kit's probe (the measuring client) in release mode; their paths.
pub fn build_release_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    run(cargo().args(["build", "--release", "--package", "sluice"]))?;
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "sluice-tests",
        "--bin",
        "sluice-probe",
    ]))?;
    let dir = workspace_root().join("target/release");
    Ok((dir.join("sluice"), dir.join("sluice-probe")))
}
