//! `cargo xtask test`: lint, build the agent, and run every test in one go.

use anyhow::Context as _;

use crate::util::{cargo, is_root, run, workspace_root};

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !is_root() {
        if ci {
            anyhow::bail!("CI=true but not root: the kernel tests must run in CI, not skip");
        }
        eprintln!("test: not root: the kernel tests will report themselves SKIPPED");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"])).context("cargo fmt --check")?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
        .context("cargo clippy")?;
    run(cargo().args(["build", "--package", "sluice"]))?;
    let bin = workspace_root().join("target/debug/sluice");
    // One test thread: the kernel tests measure splits and count connections; running them
    // side by side only adds noise on two cores.
    run(cargo()
        .args(["test"])
        .args(extra)
        .args(["--", "--test-threads=1"])
        .env("SLUICE_BIN", &bin))
}
