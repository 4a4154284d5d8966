//! `cargo xtask test`: lint, build the agent, and run every test in one go, ending with one
//! summary line over all test binaries (`tests: N passed, N failed, N skipped`).

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{Context as _, bail};

use crate::util::{cargo, cargo_in_ebpf, is_root, run, workspace_root};

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    skipped: u64,
}

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !is_root() {
        if ci {
            bail!("CI=true but not root: the kernel tests must run in CI, not skip");
        }
        eprintln!("test: not root: the kernel tests will report themselves SKIPPED");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"])).context("cargo fmt --check")?;
    // Every host crate, the lab included (it is not a default member).
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "sluice-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("cargo clippy")?;
    // The kernel crate, for its own target with its own (pinned) toolchain.
    run(cargo_in_ebpf().args([
        "clippy",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
    .context("cargo clippy of the kernel crate (ebpf/)")?;
    run(cargo().args(["build", "--package", "sluice"]))?;
    let bin = workspace_root().join("target/debug/sluice");
    let validator = crate::setup::kubernetes_validate()?;
    // The image, built twice: the tests read the first (target/image), and the second must
    // have the same digest. Root only: umoci unpacks and packs root-owned files.
    let reproducible = if is_root() {
        crate::setup::image_tools()?;
        let first = crate::image::build(&workspace_root().join("target/image"))?;
        let again = crate::image::build(&workspace_root().join("target/image-again"))?;
        let _ = std::fs::remove_dir_all(&again.dir);
        println!(
            "image: {} ({:.1} MB); built again: {}",
            first.digest,
            first.bytes as f64 / 1e6,
            again.digest
        );
        Some(first.digest == again.digest)
    } else {
        None
    };
    // One test thread: the kernel tests measure splits and count connections; running them
    // side by side only adds noise on two cores.
    let mut child = cargo()
        .args(["test", "--no-fail-fast"])
        .args(extra)
        .args(["--", "--test-threads=1"])
        .env("SLUICE_BIN", &bin)
        .env("SLUICE_KUBERNETES_VALIDATE", &validator)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cargo test")?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let out = forward(child.stdout.take().context("stdout")?, tally.clone(), false);
    let err = forward(child.stderr.take().context("stderr")?, tally.clone(), true);
    let status = child.wait()?;
    let _ = out.join();
    let _ = err.join();
    // The bench's smoke run, so `cargo xtask bench` cannot rot: one more test. Only for a
    // whole run (a filter in `extra` asks for particular tests).
    if extra.is_empty() {
        let mut t = tally
            .lock()
            .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
        match reproducible {
            Some(true) => {
                println!("image_reproducible (the same digest twice): ok");
                t.passed += 1;
            }
            Some(false) => {
                println!("image_reproducible (the same digest twice): FAILED");
                t.failed += 1;
            }
            None => {
                println!("SKIPPED image_reproducible: needs root (run `cargo xtask test` as root)");
                t.skipped += 1;
                t.passed += 1;
            }
        }
        if !is_root() {
            println!("SKIPPED bench_quick: needs root (run `cargo xtask test` as root)");
            t.skipped += 1;
            t.passed += 1;
        } else {
            let ok = crate::lab("bench", &["--quick".to_owned()]).is_ok();
            println!(
                "bench_quick (cargo xtask bench --quick): {}",
                if ok { "ok" } else { "FAILED" }
            );
            if ok {
                t.passed += 1;
            } else {
                t.failed += 1;
            }
        }
    }
    let t = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        t.passed - t.skipped.min(t.passed),
        t.failed,
        t.skipped
    );
    if !status.success() || t.failed > 0 {
        bail!("tests failed");
    }
    if ci && t.skipped > 0 {
        bail!("{} tests skipped under CI=true", t.skipped);
    }
    Ok(())
}

/// Copies a stream through to ours, tallying `test result:` and `SKIPPED` lines.
fn forward(
    stream: impl std::io::Read + Send + 'static,
    tally: Arc<Mutex<Tally>>,
    to_stderr: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            let Ok(mut t) = tally.lock() else { return };
            if line.starts_with("SKIPPED ") {
                t.skipped += 1;
            } else if let Some(rest) = line.strip_prefix("test result: ") {
                t.passed += count(rest, " passed");
                t.failed += count(rest, " failed");
            }
        }
    })
}

/// The number before `label` in "ok. 7 passed; 0 failed; ...".
fn count(line: &str, label: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
