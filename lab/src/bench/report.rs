//! The results as Markdown: the goals first (met or missed, with the figure), then every
//! table, each figure beside its ratio to the direct path of the same run.

use std::fmt::Write as _;

use serde_json::Value;

use super::{paths::ALL, runs::paired_ratio};

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .filter(|x| x.is_finite())
        .map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn n(v: &Value) -> String {
    v.as_u64().map_or("–".into(), |x| x.to_string())
}

fn rate(r: &Value, way: &str) -> f64 {
    r[way]["median"]["per_second"].as_f64().unwrap_or(f64::NAN)
}

fn hook(r: &Value, rounds: &str, way: &str, prog: &str) -> f64 {
    r["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["rounds"] == rounds && h["way"] == way && h["program"] == prog)
        .find_map(|h| h["ns_per_call"].as_f64())
        .unwrap_or(f64::NAN)
}

/// `0`, or the total with its kinds: `3 (read 1, timeout 2)`.
fn errors(m: &Value) -> String {
    let kinds: Vec<String> = m["error_kinds"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if kinds.is_empty() {
        n(&m["errors"])
    } else {
        format!("{} ({})", n(&m["errors"]), kinds.join(", "))
    }
}

/// The service counts a scale table was measured at, smallest first.
fn service_counts(scale: &Value) -> Vec<String> {
    let mut keys: Vec<String> = scale
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort_by_key(|k| k.parse::<u32>().unwrap_or(0));
    keys
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// A table of per-way results: rate, ratio, latency, errors and the TCP counters.
fn ways_table(out: &mut String, r: &Value, unit: &str) {
    let _ = writeln!(
        out,
        "| path | {unit} (median) | ratio to direct | p50 µs | p99 µs | errors | SYN retransmits | PAWS drops |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for w in ALL {
        let x = &r[w.key()];
        if x.is_null() {
            continue;
        }
        let m = &x["median"];
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            w.label(),
            f(&m["per_second"], 0),
            f(&x["ratio_to_direct"], 3),
            f(&m["p50_us"], 1),
            f(&m["p99_us"], 1),
            errors(m),
            n(&m["syn_retransmits"]),
            n(&m["paws_drops"]),
        );
    }
}

pub fn markdown(r: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# sluice benchmark report\n");
    if r["quick"] == true {
        let _ = writeln!(
            o,
            "**Smoke run (`--quick`): tiny rounds that only prove the bench works. Its numbers mean nothing.**\n"
        );
    }
    if let Some(e) = r["error"].as_str() {
        let _ = writeln!(
            o,
            "**The run stopped early: {e}. What it measured before is below.**\n"
        );
    }
    let m = &r["machine"];
    let _ = writeln!(
        o,
        "Machine: {} × {} ({}); {}. Run time {:.0} s.\n",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        r["seconds"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(o, "Versions:");
    if let Some(v) = r["versions"].as_object() {
        for (k, v) in v {
            let _ = writeln!(o, "- {k}: `{}`", v.as_str().unwrap_or(""));
        }
    }
    let _ = writeln!(
        o,
        "\nHow: everything runs in a network namespace the bench creates (`sluice-bench`, its own \
         loopback). Clients run on CPU 0; nginx and the greeting backends on CPU 1; haproxy and \
         Envoy may use both. Rounds alternate between the paths; each rate is the median of \
         the rounds ({} of connections, {} of HTTP, one at each fixed rate), and each ratio \
         the median of the rounds' own ratios, as paths measured seconds apart share the \
         machine's other load. Connection rounds use `sluice-probe` (connect, read a greeting, \
         `getpeername`, close with a reset, so no TIME_WAIT), one at a time (a latency: the client \
         waits on the server's CPU) and from four threads (a capacity: the client's CPU is busy, \
         so a path's CPU work shows in full); fixed rates and the split use four. \
         TCP timestamps run without per-address random offsets in the namespace: with them, a \
         DNAT path's SYN could land on a server TIME_WAIT left by another path with a larger \
         timestamp, be dropped by PAWS, and stall a second. Throughput rounds run with \
         kernel.bpf_stats_enabled off: with it on, every program run also reads the clock \
         twice, which costs most where packets meet most hooks. Kernel time per call comes \
         from rounds of its own with it on (one connection round and one of each HTTP kind \
         per path). The hooks' floor is connect4 on UDP sockets, which it leaves at its \
         first check. HTTP rounds use wrk against nginx \
         (`return 200`). Every round's command, and the configuration each server, proxy, rule \
         set and agent ran with, are in report.json (`setup`). The steered and proxied paths split \
         90/10 between two ports of the same server. iptables and nftables load conntrack into \
         the namespace, so every path pays it, as on a kube-proxy node; its TIME_WAIT timeout is \
         5 s there, so that connection-per-request rounds do not fill its table.\n",
        n(&r["rounds"]["connections"]),
        n(&r["rounds"]["http"]),
    );

    // Goals.
    let c = &r["connections"]["closed_loop"];
    let cp = &r["connections"]["closed_loop_parallel"];
    let steer_ratio = c["sluice_steering"]["ratio_to_direct"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let steer_ratio_parallel = cp["sluice_steering"]["ratio_to_direct"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let floor = hook(r, "floor", "sluice_steering", "sluice_connect4");
    let connect4 = hook(r, "connections", "sluice_steering", "sluice_connect4");
    let early = hook(r, "untagged", "sluice_steering", "sluice_connect4");
    // Every program that ran in the untagged rounds, in either agent: the worst one counts.
    let (untagged_max, untagged_worst) = r["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["rounds"] == "untagged" && h["calls"].as_u64().unwrap_or(0) > 0)
        .filter_map(|h| {
            Some((
                h["ns_per_call"].as_f64()?,
                format!("{} ({})", h["program"].as_str()?, h["way"].as_str()?),
            ))
        })
        .fold((f64::NAN, String::new()), |acc, x| {
            if acc.0.is_nan() || x.0 > acc.0 {
                x
            } else {
                acc
            }
        });
    let scale_keys = service_counts(&r["scale"]);
    let scale_first = scale_keys.first().cloned().unwrap_or_default();
    let scale_last = scale_keys.last().cloned().unwrap_or_default();
    // Ratios between two paths are medians of their per-round ratios (runs::paired_ratio).
    let vs = |t: &Value, a: &str, b: &str| paired_ratio(&t[a], &t[b]);
    let vs_ipt = |k: &str| vs(&r["scale"][k], "sluice_steering", "iptables");
    let sp = &r["scale_parallel"];
    let vs_ipt_parallel = |k: &str| vs(&sp[k], "sluice_steering", "iptables");
    let direct_vs_ipt = |k: &str| vs(&r["scale"][k], "direct", "iptables");
    let ka = &r["http"]["keep_alive"];
    let cl = &r["http"]["connection_per_request"];
    let p99 = |t: &Value, w: &str| t[w]["median"]["p99_us"].as_f64().unwrap_or(f64::NAN);
    let z = r["split"]["sluice"]["z"].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(o, "## Goals\n");
    let _ = writeln!(o, "| goal | measured | |\n|---|---|---|");
    let _ = writeln!(
        o,
        "| steering adds at most 3 % to a connection (steered / direct ≥ 0.97) | {steer_ratio:.3} one at a time, {steer_ratio_parallel:.3} four at a time | {} |",
        verdict(steer_ratio >= 0.97 && steer_ratio_parallel >= 0.97)
    );
    let _ = writeln!(
        o,
        "| steering hook under 250 ns a call (connect4, steering) | {connect4:.0} ns (floor {floor:.0} ns) | {} |",
        verdict(connect4 < 250.0)
    );
    let _ = writeln!(
        o,
        "| every hook under 150 ns a call on sockets it does not own | worst {untagged_max:.0} ns, {untagged_worst}; connect4 early exit {early:.0} ns (floor {floor:.0} ns) | {} |",
        verdict(untagged_max < 150.0)
    );
    let _ = writeln!(
        o,
        "| at least iptables' connection rate with {scale_first} service(s) | {:.2}× one at a time, {:.2}× four at a time | {} |",
        vs_ipt(&scale_first),
        vs_ipt_parallel(&scale_first),
        verdict(vs_ipt(&scale_first) >= 1.0 && vs_ipt_parallel(&scale_first) >= 1.0)
    );
    let _ = writeln!(
        o,
        "| at least 5× iptables' rate with {scale_last} services, judged at capacity (four at a time) | {:.2}× four at a time; {:.2}× one at a time, where direct itself is {:.2}× | {} |",
        vs_ipt_parallel(&scale_last),
        vs_ipt(&scale_last),
        direct_vs_ipt(&scale_last),
        verdict(vs_ipt_parallel(&scale_last) >= 5.0)
    );
    for (proxy, key) in [("haproxy", "haproxy"), ("Envoy", "envoy")] {
        let x = vs(ka, "sluice_signals", key);
        let lower = p99(ka, "sluice_signals") < p99(ka, key);
        let _ = writeln!(
            o,
            "| ≥ 1.8× {proxy}'s keep-alive requests/s, lower p99 | {x:.2}×, p99 {:.0} vs {:.0} µs | {} |",
            p99(ka, "sluice_signals"),
            p99(ka, key),
            verdict(x >= 1.8 && lower)
        );
    }
    for (label, t) in [("keep-alive", ka), ("connection per request", cl)] {
        let x = vs(t, "sluice_signals", "sluice_steering");
        let _ = writeln!(
            o,
            "| signals cost under 5 % of requests/s against steering alone ({label}) | {:.1} % | {} |",
            100.0 * (1.0 - x),
            verdict(x >= 0.95)
        );
    }
    for (label, t) in [("keep-alive", ka), ("connection per request", cl)] {
        let x = t["sluice_signals"]["ratio_to_direct"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            o,
            "| every hook together (steering + signals) under 5 % of direct's requests/s ({label}; golden-signals issue) | {:.1} % | {} |",
            100.0 * (1.0 - x),
            verdict(x >= 0.95)
        );
    }
    let _ = writeln!(
        o,
        "| split within 3 standard deviations (sluice, 5 %) | z = {z:.2} | {} |",
        verdict(z.abs() <= 3.0)
    );

    let _ = writeln!(
        o,
        "\n## New connections per second, closed loop, one at a time\n"
    );
    ways_table(&mut o, c, "connections/s");
    let _ = writeln!(
        o,
        "\n## New connections per second, closed loop, four at a time\n"
    );
    ways_table(&mut o, cp, "connections/s");
    if let Some(rates) = r["connections"]["fixed_rate"].as_object() {
        for (rate, t) in rates {
            let _ = writeln!(o, "\n## New connections at a fixed {rate} a second\n");
            ways_table(&mut o, t, "connections/s achieved");
        }
    }
    for (title, t) in [("keep-alive", ka), ("one connection per request", cl)] {
        let _ = writeln!(o, "\n## HTTP requests per second, {title} (wrk -t1 -c8)\n");
        ways_table(&mut o, t, "requests/s");
    }

    for (how, scale) in [("one at a time", &r["scale"]), ("four at a time", sp)] {
        let _ = writeln!(
            o,
            "\n## Scale: N services, connections per second to the last one, {how}\n"
        );
        let _ = writeln!(
            o,
            "| services | direct | sluice | iptables | sluice / iptables | sluice / direct | iptables / direct |\n|---|---|---|---|---|---|---|"
        );
        for k in &service_counts(scale) {
            let t = &scale[k];
            let _ = writeln!(
                o,
                "| {k} | {:.0} | {:.0} | {:.0} | {:.2} | {:.3} | {:.3} |",
                rate(t, "direct"),
                rate(t, "sluice_steering"),
                rate(t, "iptables"),
                vs(t, "sluice_steering", "iptables"),
                vs(t, "sluice_steering", "direct"),
                vs(t, "iptables", "direct")
            );
        }
    }

    let _ = writeln!(o, "\n## Split accuracy at 5 %\n");
    let _ = writeln!(
        o,
        "| path | connections | canary | observed share | z |\n|---|---|---|---|---|"
    );
    for k in ["sluice", "iptables", "haproxy"] {
        let s = &r["split"][k];
        let _ = writeln!(
            o,
            "| {k} | {} | {} | {} % | {} |",
            n(&s["connections"]),
            n(&s["canary"]),
            f(&(s["share"].as_f64().map(|x| x * 100.0).into()), 3),
            f(&s["z"], 2)
        );
    }

    let _ = writeln!(o, "\n## The agent\n");
    let a = &r["agent"];
    for (k, label) in [("steering", "steering agent"), ("signals", "signals agent")] {
        let u = &a["idle"][k];
        let _ = writeln!(
            o,
            "- {label}, idle: {} % of a core, RSS {} KiB",
            f(&u["cpu_percent_of_a_core"], 2),
            n(&u["rss_kib"])
        );
    }
    for kind in ["keep_alive", "connection_per_request"] {
        let loads: Vec<String> = a["under_load"][kind]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| {
                format!(
                    "{} % / {} KiB",
                    f(&u["cpu_percent_of_a_core"], 2),
                    n(&u["rss_kib"])
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "- signals agent while its HTTP {kind} rounds ran (CPU / RSS per round): {}",
            loads.join(", ")
        );
    }
    let s = &a["scrape"];
    let _ = writeln!(
        o,
        "- `/metrics` with {} services: {} ms median, {} ms max, {} bytes; the agent idles at {} % of a core, RSS {} KiB",
        s["services"],
        f(&s["time"]["median_ms"], 1),
        f(&s["time"]["max_ms"], 1),
        n(&s["time"]["bytes"]),
        f(&s["idle"]["cpu_percent_of_a_core"], 2),
        n(&s["idle"]["rss_kib"])
    );
    let flips: Vec<String> = r["weight_change"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| format!("{} ms", f(&w["ms_from_command"], 1)))
        .collect();
    let _ = writeln!(
        o,
        "- from running `sluice weight` to the first connection that follows the new share: {} (the command itself: {})",
        flips.join(", "),
        r["weight_change"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| format!("{} ms", f(&w["command_ms"], 1)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    discovery(&mut o, &r["discovery"]);

    let _ = writeln!(
        o,
        "\n## Kernel time per call of each hook (kernel.bpf_stats_enabled)\n"
    );
    let _ = writeln!(
        o,
        "| rounds | path | program | ns per call | calls |\n|---|---|---|---|---|"
    );
    for h in r["hooks"].as_array().into_iter().flatten() {
        if h["calls"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            h["rounds"].as_str().unwrap_or(""),
            h["way"].as_str().unwrap_or(""),
            h["program"].as_str().unwrap_or(""),
            f(&h["ns_per_call"], 0),
            n(&h["calls"])
        );
    }
    o
}

/// Two agents side by side: N services with literal backends, and N whose every set is a
/// DNS name.
pub fn discovery(o: &mut String, d: &Value) {
    if d.is_null() {
        return;
    }
    let use_of = |name: &str, key: &str| d[name]["usage"][key].clone();
    let _ = writeln!(
        o,
        "\n## Discovery: {} services by name against {} by address\n\n\
         Two steering-only agents over the same {} s: one with every stable and canary set a DNS \
         name ({} names, 2 addresses each, TTL {} s, BIND on loopback), one with the same \
         addresses written in.\n",
        n(&d["services"]),
        n(&d["services"]),
        n(&d["seconds"]),
        n(&d["names"]),
        n(&d["ttl_seconds"])
    );
    let _ = writeln!(
        o,
        "| agent | CPU, % of a core | RSS, KiB | start to answering, s |\n|---|---|---|---|"
    );
    for name in ["literal", "named"] {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} |",
            f(&use_of(name, "cpu_percent_of_a_core"), 2),
            n(&use_of(name, "rss_kib")),
            f(&d[name]["start_seconds"], 2)
        );
    }
    let _ = writeln!(
        o,
        "\nNamed against literal: CPU ×{} (+{} % of a core), RSS ×{} (+{} KiB), for {} \
         lookups a second.",
        f(&d["cpu_ratio"], 2),
        f(&d["cpu_percent_added"], 2),
        f(&d["rss_ratio"], 3),
        f(&d["rss_kib_added"], 0),
        f(&d["lookups_per_second"], 0)
    );
}
