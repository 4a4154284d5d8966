//! Builds the kernel programs (`ebpf/`) for bpfel-unknown-none with the nightly that
//! `ebpf/rust-toolchain.toml` pins, and bpf-linker (`cargo xtask setup` provides both), and
//! embeds the object in the agent.
//!
//! The object does not depend on the agent's profile or target (the programs are always built
//! `--release` for bpfel-unknown-none), yet aya-build builds them in a target folder under
//! `OUT_DIR`, which is new for every profile and host target: a check, a debug build, a test
//! build and the image's static build would each compile the programs and `core` from
//! scratch. That folder is made a link to one shared folder, `target/sluice-ebpf`, so the
//! first build compiles and the others find it done (cargo's lock on the folder orders
//! builds that run at once). aya-build still copies the object into each `OUT_DIR`.
use std::path::Path;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sluice-ebpf")
        .ok_or_else(|| anyhow!("sluice-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("sluice-ebpf manifest has no parent"))?;
    let toolchain_file = root.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {toolchain_file}"))?;
    let toolchain = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| anyhow!("{toolchain_file} names no channel"))?;
    share_kernel_build(ebpf.name.as_str(), metadata.target_directory.as_std_path())?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

/// Points `OUT_DIR/aya-build/target/<package>`, where aya-build builds, at
/// `<target>/<package>`. That is aya-build 0.2.0's layout (the workspace pins it); under
/// another the link goes unused and every build compiles the programs again, still correct.
fn share_kernel_build(package: &str, target_dir: &Path) -> anyhow::Result<()> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let shared = target_dir.join(package);
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let parent = Path::new(&out_dir).join("aya-build").join("target");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let link = parent.join(package);
    if std::fs::read_link(&link).is_ok_and(|to| to == shared) {
        return Ok(());
    }
    // Whatever is there was made by this script or by aya-build, inside cargo's OUT_DIR.
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link),
        Ok(_) => std::fs::remove_file(&link),
        Err(_) => Ok(()),
    }
    .with_context(|| format!("replacing {}", link.display()))?;
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
}
