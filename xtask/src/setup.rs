//! Idempotent set-up. Each step checks first and only acts when something is missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{is_root, output, run, workspace_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The nightly the kernel crate is pinned to (ebpf/rust-toolchain.toml names it).
const PINNED_NIGHTLY_COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";

pub fn setup() -> anyhow::Result<()> {
    nightly_components()?;
    let toolchain = pinned_toolchain()?;
    bpf_linker(&toolchain)?;
    if is_root() {
        bpffs()?;
        debian_tools()?;
    } else {
        eprintln!(
            "setup: not root: skipping the bpffs mount and bpftool (tests that need root will skip)"
        );
    }
    Ok(())
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// The nightly's rust-src (build-std) and clippy (the kernel crate is linted too).
fn nightly_components() -> anyhow::Result<()> {
    let installed = output(rustup().args(["component", "list", "--installed", "--toolchain", "nightly"]))
        .context("no nightly toolchain: the kernel programs build with nightly (`rustup toolchain install nightly`)")?;
    for component in ["rust-src", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("setup: adding {component} to the nightly toolchain");
            run(rustup().args(["component", "add", component, "--toolchain", "nightly"]))?;
        }
    }
    Ok(())
}

/// The toolchain ebpf/rust-toolchain.toml pins: the machine's nightly, checked to be the
/// pinned build and linked under the pinned name. Returns that name.
fn pinned_toolchain() -> anyhow::Result<String> {
    let file = workspace_root().join("ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let name = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .with_context(|| format!("{} names no channel", file.display()))?;
    let commit_of = |toolchain: &str| {
        output(rustup().args(["run", toolchain, "rustc", "-vV"])).and_then(|vv| {
            vv.lines()
                .find_map(|l| l.strip_prefix("commit-hash: "))
                .map(str::to_owned)
        })
    };
    if commit_of(&name).as_deref() == Some(PINNED_NIGHTLY_COMMIT) {
        return Ok(name);
    }
    let nightly = commit_of("nightly").unwrap_or_default();
    if nightly != PINNED_NIGHTLY_COMMIT {
        bail!(
            "the kernel crate is pinned to the nightly built from {PINNED_NIGHTLY_COMMIT} \
             (rustc 1.97.0-nightly, 2026-05-19), and this machine's nightly is {}: install that \
             one as `nightly`, or move the pin (ebpf/rust-toolchain.toml and \
             PINNED_NIGHTLY_COMMIT in xtask/src/setup.rs) and rebuild bpf-linker",
            if nightly.is_empty() {
                "missing"
            } else {
                &nightly
            }
        );
    }
    let sysroot = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("the nightly's sysroot")?;
    eprintln!("setup: linking the nightly as {name} (the kernel crate's pinned toolchain)");
    run(rustup().args(["toolchain", "link", &name, sysroot.trim()]))?;
    Ok(name)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker must link against the same LLVM major as the nightly's rustc. No system LLVM
/// of that version exists here, but the nightly ships its own libLLVM: build against that.
fn bpf_linker(toolchain: &str) -> anyhow::Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(cargo_home().join("bin/bpf-linker"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    let vv = output(rustup().args(["run", toolchain, "rustc", "-vV"]))
        .context("rustc -vV of the nightly")?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("the nightly's rustc -vV names no LLVM version")?
        .to_owned();
    let sysroot = output(rustup().args(["run", toolchain, "rustc", "--print", "sysroot"]))
        .context("the nightly's sysroot")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&lib_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    // Lasts beyond target/: the installed binary loads libLLVM from here at run time.
    let prefix = cargo_home().join("sluice-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let file_name = lib.file_name().context("library name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)"
    );
    let mut cmd = Command::new("cargo");
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]);
    run(&mut cmd)?;
    if !Command::new(cargo_home().join("bin/bpf-linker"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!("bpf-linker was built but does not run");
    }
    Ok(())
}

/// What the image needs besides the build: the static target and musl's C compiler (the TLS
/// library's C and assembly are built for it), umoci and skopeo to make it, crun and curl
/// for the test that runs it.
pub fn image_tools() -> anyhow::Result<()> {
    let targets = output(rustup().args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|t| t.trim() == crate::image::TARGET) {
        eprintln!("setup: adding the {} target", crate::image::TARGET);
        run(rustup().args(["target", "add", crate::image::TARGET]))?;
    }
    let missing = packages_of_missing(&[
        ("x86_64-linux-musl-gcc", "musl-tools"),
        ("umoci", "umoci"),
        ("skopeo", "skopeo"),
        ("crun", "crun"),
        ("curl", "curl"),
    ]);
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// The Debian packages of the commands, of `(command, package)`, that are not on PATH.
fn packages_of_missing(tools: &[(&str, &'static str)]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = tools
        .iter()
        .filter(|(bin, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    packages
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("setup: installing {} (Debian)", packages.join(", "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The Kubernetes manifest validator (PyPI), in a virtualenv of its own that outlives
/// target/; returns its path. The manifest tests find it through SLUICE_KUBERNETES_VALIDATE.
pub fn kubernetes_validate() -> anyhow::Result<PathBuf> {
    const VERSION: &str = "1.37.0";
    let venv = cargo_home().join("sluice-kubernetes-validate");
    let bin = venv.join("bin/kubernetes-validate");
    let works = output(Command::new(&bin).arg("--version")).is_some_and(|v| v.trim() == VERSION);
    if !works {
        eprintln!(
            "setup: installing kubernetes-validate {VERSION} (PyPI) into {}",
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("kubernetes-validate=={VERSION}"),
        ]))?;
    }
    Ok(bin)
}

/// bpffs at /sys/fs/bpf (the agent mounts it too; tests and bpftool want it first).
fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Debian tools the kernel tests use as independent witnesses: bpftool (maps, attachments),
/// Prometheus with promtool (scrapes and PromQL), BIND with nsupdate (the DNS server the
/// discovery tests change records on), and the drain tests' clients: urllib3's pool (which
/// checks a pooled connection before reusing it) and wrk (which does not), with iproute2
/// for their network namespaces; etcd for the cluster tests, and protoc with its well-known
/// types to build the etcd client. Nothing is started here.
fn debian_tools() -> anyhow::Result<()> {
    let mut missing = packages_of_missing(&[
        ("bpftool", "bpftool"),
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        ("named", "bind9"),
        ("nsupdate", "bind9-dnsutils"),
        ("wrk", "wrk"),
        ("ip", "iproute2"),
        // Cluster mode: etcd for its tests, and protoc for the etcd client's build.
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("protoc", "protobuf-compiler"),
    ]);
    // The drain tests' pooled client: urllib3 for Debian's own interpreter.
    let urllib3 = Command::new("/usr/bin/python3")
        .args(["-c", "import urllib3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !urllib3 {
        missing.push("python3-urllib3");
    }
    // protoc's own well-known types (descriptor.proto), which the etcd client's protos import.
    if !Path::new("/usr/include/google/protobuf/descriptor.proto").exists() {
        missing.push("libprotobuf-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    // Debian starts a package's service on install (named on port 53, Prometheus on 9090)
    // where an init system runs; the tests start their own, so none is started here.
    let _no_services = NoServiceStarts::hold()?;
    apt_install(&missing)
}

/// A policy-rc.d that refuses every service start (exit 101, Debian's "action forbidden"),
/// for the time of an install; it is removed after only if it was made here.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn hold() -> anyhow::Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            &path,
            "#!/bin/sh\n# written by cargo xtask for one install\nexit 101\n",
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
