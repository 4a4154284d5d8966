//! One measurement each: a connection round with the probe, an HTTP round with wrk, a split
//! count, the time a share change takes, an agent's CPU and memory. Every round is bounded
//! in count and time.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::paths::in_cgroup;

/// TCP counters that explain a slow connection path on loopback: SYNs retransmitted, and
/// segments dropped by PAWS (a SYN landing on a TIME_WAIT socket of the same 4-tuple).
pub fn tcp_counters() -> anyhow::Result<(u64, u64)> {
    let out = Command::new("nstat")
        .args(["--json", "-asz"])
        .output()
        .context("nstat")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("nstat json")?;
    let k = &v["kernel"];
    let n = |name: &str| k[name].as_u64().unwrap_or(0);
    Ok((
        n("TcpExtTCPSynRetrans"),
        n("TcpExtPAWSActive") + n("TcpExtPAWSEstab") + n("TcpExtPAWSTimewait"),
    ))
}

/// `count` connections (connect, read the greeting, getpeername, reset) from `cgroup`, in a
/// closed loop or paced at `rate` a second, by `parallel` client threads that each connect
/// one at a time.
pub fn connections(
    probe: &Path,
    cgroup: &Path,
    target: &str,
    count: u64,
    rate: Option<f64>,
    parallel: u32,
) -> anyhow::Result<Value> {
    let (syn0, paws0) = tcp_counters()?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(probe)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--connect", target, "--count", &count.to_string()])
        .args(["--parallel", &parallel.to_string()]);
    if let Some(r) = rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().context("the probe")?;
    if !out.status.success() {
        bail!("probe: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (syn1, paws1) = tcp_counters()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("probe output")?;
    let ok: u64 = v["replies"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let seconds = v["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "per_second": ok as f64 / seconds,
        "ok": ok,
        "requests": count,
        "errors": count - ok,
        "error_kinds": v["errors"],
        "replies": v["replies"],
        "p50_us": v["p50_ns"].as_f64().unwrap_or(0.0) / 1e3,
        "p99_us": v["p99_ns"].as_f64().unwrap_or(0.0) / 1e3,
        "syn_retransmits": syn1 - syn0,
        "paws_drops": paws1 - paws0,
        "command": command,
    }))
}

/// wrk from `cgroup` (CPU 0) against `target`: requests/s, p50 and p99, errors.
pub fn wrk(
    cgroup: &Path,
    target: &str,
    seconds: u32,
    connections: u32,
    close: bool,
) -> anyhow::Result<Value> {
    let (syn0, paws0) = tcp_counters()?;
    let header = if close { "-H 'Connection: close' " } else { "" };
    let command = format!(
        "wrk -t1 -c{connections} -d{seconds}s --timeout 2s --latency {header}http://{target}/"
    );
    let out = in_cgroup(cgroup, &command).output().context("wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (syn1, paws1) = tcp_counters()?;
    let rate: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let latency = |pct: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(pct))
            .map(|v| parse_wrk_duration(v.trim()))
            .unwrap_or(f64::NAN)
    };
    let requests: u64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?;
    let error_kinds = wrk_errors(&text);
    Ok(json!({
        "per_second": rate,
        "p50_us": latency("50%"),
        "p99_us": latency("99%"),
        "requests": requests,
        "errors": error_kinds.values().sum::<u64>(),
        "error_kinds": error_kinds,
        "syn_retransmits": syn1 - syn0,
        "paws_drops": paws1 - paws0,
        "command": command,
    }))
}

/// wrk's error lines, by kind: `Socket errors: connect 0, read 1, write 0, timeout 0` and
/// `Non-2xx or 3xx responses: 5`. Only the kinds that occurred.
fn wrk_errors(text: &str) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                if let Some((kind, n)) = part.trim().split_once(' ')
                    && let Ok(n) = n.trim().parse::<u64>()
                    && n > 0
                {
                    kinds.insert(kind.to_owned(), n);
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:")
            && let Ok(n) = n.trim().parse::<u64>()
        {
            kinds.insert("non_2xx_3xx".to_owned(), n);
        }
    }
    kinds
}

/// `12.34us`, `1.20ms`, `2.00s` -> microseconds.
fn parse_wrk_duration(v: &str) -> f64 {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => f64::NAN,
    }
}

/// `count` UDP sockets connected to `target` from `cgroup`: no packet is sent, and sluice's
/// connect hook leaves at its first check (the protocol). Its run time per call is then the
/// floor: what the kernel's accounting and the program's entry cost on this machine.
pub fn udp_connects(probe: &Path, cgroup: &Path, target: &str, count: u64) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(probe)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--connect", target, "--udp-connects", &count.to_string()])
        .output()
        .context("the probe")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("probe output")?;
    if !out.status.success() || v["errors"].as_u64() != Some(0) {
        bail!(
            "UDP connects: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The canary's observed share of `count` connections, and its z-score against `expected`.
pub fn split(
    probe: &Path,
    cgroup: &Path,
    target: &str,
    count: u64,
    expected: f64,
) -> anyhow::Result<Value> {
    let r = connections(probe, cgroup, target, count, None, super::PARALLEL)?;
    let canary = r["replies"]["canary"].as_u64().unwrap_or(0);
    let n = r["ok"].as_u64().unwrap_or(0);
    let share = canary as f64 / n as f64;
    let z = (canary as f64 - n as f64 * expected) / (n as f64 * expected * (1.0 - expected)).sqrt();
    Ok(json!({ "connections": n, "canary": canary, "share": share, "z": z, "errors": r["errors"] }))
}

/// Time from running `sluice weight` to the first new connection that goes where the new
/// share sends it. `until` is the backend that answers once the change is in force.
pub fn weight_latency(
    sluice: &Path,
    socket: &str,
    probe: &Path,
    cgroup: &Path,
    target: &str,
    percent: &str,
    until: &str,
) -> anyhow::Result<Value> {
    let waiter = Command::new("taskset")
        .args(["-c", "0"])
        .arg(probe)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--connect", target, "--until", until, "--seconds", "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("the probe")?;
    // Let it connect a few hundred times first: none of those may reach `until`.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = std::time::SystemTime::now();
    let cli = Instant::now();
    let status = Command::new(sluice)
        .args(["weight", "flip", percent, "--socket", socket])
        .stdout(std::process::Stdio::null())
        .status()?;
    let cli_ms = cli.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("sluice weight flip {percent} failed");
    }
    let out = waiter.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("probe output")?;
    let at = v["at_unix_ns"]
        .as_u64()
        .context("the share change never reached a connection")?;
    let t0_ns = t0.duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    Ok(json!({
        "ms_from_command": (at as f64 - t0_ns as f64) / 1e6,
        "command_ms": cli_ms,
        "connections_before": v["tries"].as_u64().unwrap_or(1) - 1,
    }))
}

/// (resident memory in KiB, CPU seconds used so far) of a process.
pub fn process_usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the state field.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((rss, (ticks(11) + ticks(12)) as f64 / hz))
}

/// A process's CPU use (share of one core) and memory over `f`.
pub fn usage_during<T>(
    pid: u32,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Value)> {
    let (_, cpu0) = process_usage(pid)?;
    let t = Instant::now();
    let r = f()?;
    let secs = t.elapsed().as_secs_f64();
    let (rss, cpu1) = process_usage(pid)?;
    Ok((
        r,
        json!({ "cpu_percent_of_a_core": 100.0 * (cpu1 - cpu0) / secs, "rss_kib": rss, "seconds": secs }),
    ))
}

/// Times GETs of `/metrics`: median milliseconds and the size.
pub fn scrape_time(addr: std::net::SocketAddr, times: usize) -> anyhow::Result<Value> {
    use std::io::{Read as _, Write as _};
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..times {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = body.len();
    }
    ms.sort_by(f64::total_cmp);
    Ok(json!({ "median_ms": ms[ms.len() / 2], "max_ms": ms[ms.len() - 1], "bytes": bytes }))
}

pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median over rounds of `a`'s rate divided by `b`'s in the same round. Rounds alternate
/// between the paths, so a round's paths ran seconds apart: a burst of the machine's other
/// load moves both, and their ratio keeps what the median of each alone would lose.
pub fn paired_ratio(a: &Value, b: &Value) -> f64 {
    let rates = |x: &Value| -> Vec<f64> {
        x["rounds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["per_second"].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let (ra, rb) = (rates(a), rates(b));
    if ra.is_empty() || ra.len() != rb.len() {
        return f64::NAN;
    }
    median(&ra.iter().zip(&rb).map(|(x, y)| x / y).collect::<Vec<_>>())
}

/// Medians of a list of round results, field by field.
pub fn summarise(rounds: &[Value]) -> Value {
    let mut out = BTreeMap::new();
    for field in ["per_second", "p50_us", "p99_us"] {
        let v: Vec<f64> = rounds.iter().filter_map(|r| r[field].as_f64()).collect();
        out.insert(field, json!(median(&v)));
    }
    for field in ["requests", "errors", "syn_retransmits", "paws_drops"] {
        let total: u64 = rounds.iter().filter_map(|r| r[field].as_u64()).sum();
        out.insert(field, json!(total));
    }
    // Errors by kind over all rounds: which kind tells a proxy's timeout from a refusal.
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for r in rounds {
        for (k, n) in r["error_kinds"].as_object().into_iter().flatten() {
            *kinds.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    out.insert("error_kinds", json!(kinds));
    json!({ "median": out, "rounds": rounds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_errors_are_counted_by_kind() {
        let text = "  61234 requests in 5.00s, 9.1MB read\n  \
                    Socket errors: connect 0, read 1, write 0, timeout 2\n  \
                    Non-2xx or 3xx responses: 5\nRequests/sec:  12246.80\n";
        let kinds = wrk_errors(text);
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [
                ("non_2xx_3xx".to_owned(), 5),
                ("read".to_owned(), 1),
                ("timeout".to_owned(), 2)
            ]
        );
        assert!(wrk_errors("  100 requests in 1.00s, 1MB read\n").is_empty());
    }
}
