//! Running commands, and the binaries under measurement.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Runs a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A command's stdout, if it ran and succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `cargo`, as it invoked us, in the workspace.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

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

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}
