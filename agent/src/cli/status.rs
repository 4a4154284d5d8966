use std::{path::Path, process::ExitCode};

use super::{Output, exit, fail};
use crate::{
    api::{self, Request, Response},
    view::{RolloutStatus, ServiceStatus, Unit},
};

pub fn status(socket: &Path, only: Option<&str>, output: Output) -> ExitCode {
    let response = match api::call(socket, &Request::Status) {
        Ok(r) => r,
        Err(e) => return fail(exit::UNAVAILABLE, &e),
    };
    let Response::Status {
        version,
        cgroup,
        pin_dir,
        config,
        mut services,
        cluster,
    } = response
    else {
        eprintln!("sluice: unexpected response {response:?}");
        return ExitCode::from(exit::SOFTWARE);
    };
    if let Some(name) = only {
        services.retain(|s| s.name == name);
        if services.is_empty() {
            eprintln!("sluice: no service named {name:?}");
            return ExitCode::from(exit::USAGE);
        }
    }
    match output {
        Output::Json => {
            let mut doc = serde_json::json!({
                "version": version, "cgroup": cgroup, "pin_dir": pin_dir,
                "config": config, "services": services,
            });
            if let Some(c) = &cluster {
                doc["cluster"] = serde_json::json!(c);
            }
            println!("{doc:#}");
        }
        Output::Table => {
            println!("sluice {version}  cgroup {cgroup}  pins {pin_dir}  config {config}");
            if let Some(c) = &cluster {
                println!("{}", cluster_line(c));
            }
            println!();
            print!("{}", table(&services));
            let names = names_table(&services);
            if !names.is_empty() {
                println!();
                print!("{names}");
            }
            if only.is_some()
                && let Some(r) = services.first().and_then(|s| s.rollout.as_deref())
            {
                println!();
                print!("{}", rollout_details(r));
            }
            if only.is_some()
                && let Some(n) = services.first().and_then(|s| s.cluster_nodes.as_ref())
            {
                println!();
                print!("{}", nodes_table(n));
            }
        }
    }
    ExitCode::SUCCESS
}

fn cluster_line(c: &api::ClusterStatus) -> String {
    let session = if c.connected {
        "connected to etcd".to_owned()
    } else {
        "DISCONNECTED from etcd: keeping the last shares (only guards lower them)".to_owned()
    };
    let leader = match (&c.leader, c.leads) {
        (_, true) => "this node leads".to_owned(),
        (Some(l), false) => format!("leader {l}"),
        (None, false) => "no leader known".to_owned(),
    };
    format!("cluster: node {}  {session}  {leader}", c.node)
}

/// Every node's callers' counts for one service.
fn nodes_table(n: &crate::view::ClusterNodes) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(e) = &n.error {
        let _ = writeln!(out, "per node: not available ({e})");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>10} {:>12} {:>10}",
        "NODE", "STABLE", "ERRORS", "CANARY", "ERRORS"
    );
    for row in &n.nodes {
        let _ = writeln!(
            out,
            "{:<24} {:>12} {:>10} {:>12} {:>10}",
            row.node, row.stable_samples, row.stable_errors, row.canary_samples, row.canary_errors
        );
    }
    out
}

fn table(services: &[ServiceStatus]) -> String {
    let mut rows = vec![
        [
            "SERVICE",
            "ADDRESSES",
            "MODE",
            "CANARY%",
            "CONFIG%",
            "STABLE",
            "CANARY",
            "->STABLE",
            "->CANARY",
            "MEASURED%",
            "FALLBACKS",
            "ROLLOUT",
        ]
        .map(String::from),
    ];
    for s in services {
        let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
        rows.push([
            s.name.clone(),
            s.virtual_addresses.join(","),
            if s.segmented {
                format!("{}+segment", s.selection)
            } else {
                s.selection.clone()
            },
            format!("{}", s.canary_percent),
            format!("{}", s.config_canary_percent),
            s.stable.join(","),
            if s.canary.is_empty() {
                "-".into()
            } else {
                s.canary.join(",")
            },
            c("steered_stable").to_string(),
            c("steered_canary").to_string(),
            s.measured_canary_percent
                .map_or("-".into(), |p| format!("{p:.2}")),
            (c("canary_empty_fallback")
                + c("no_backend")
                + c("slot_missing")
                + c("family_mismatch"))
            .to_string(),
            s.rollout.as_ref().map_or("-".into(), |r| {
                format!("{} {}/{}", r.phase.name(), r.step, r.steps_percent.len())
            }),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// One line per name a service gives: what it steers to, and how its lookups go.
fn names_table(services: &[ServiceStatus]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in services {
        for n in &s.names {
            let age = |t: Option<f64>| t.map_or("never".into(), |t| format!("{t:.0}s ago"));
            let state = match n.result.as_str() {
                "ok" => format!("ok, resolved {}", age(n.last_good_seconds_ago)),
                "pending" => "not looked up yet".into(),
                failed if n.addresses.is_empty() => {
                    format!(
                        "{failed} ({} in a row), never resolved",
                        n.failures_in_a_row
                    )
                }
                failed => format!(
                    "{failed} ({} in a row): steering on the last good set, resolved {}",
                    n.failures_in_a_row,
                    age(n.last_good_seconds_ago)
                ),
            };
            let _ = writeln!(
                out,
                "{} {} dns:{}:{} -> [{}]  {state}",
                s.name,
                n.role,
                n.name,
                n.port,
                n.addresses.join(","),
            );
        }
    }
    out
}

fn rollout_details(r: &RolloutStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let steps: Vec<String> = r.steps_percent.iter().map(|p| format!("{p}%")).collect();
    let in_all = match r.max_failed_analyses {
        Some(max) => format!("{}/{max}", r.failed_checks),
        None => r.failed_checks.to_string(),
    };
    let _ = writeln!(
        out,
        "rollout: {}  step {} of {} [{}]  canary share {}%  failed analyses {}/{} in a row, \
         {in_all} in all  promotion {}",
        r.phase.name(),
        r.step,
        r.steps_percent.len(),
        steps.join(" "),
        r.weight_percent,
        r.failed_in_a_row,
        r.failure_threshold,
        r.promotion,
    );
    let _ = writeln!(out, "  {}", r.reason);
    if let Some([s, c]) = r.window_samples {
        let _ = writeln!(
            out,
            "  analysis window: stable {s}, canary {c} samples (needs {} each, every {}s)",
            r.min_samples, r.interval_seconds
        );
    }
    if let Some(live) = &r.live {
        for (name, v) in ["stable", "canary"].iter().zip(live.iter()) {
            let _ = writeln!(
                out,
                "  {name:<6}  {:>8.1}/s  errors {:>7}  p50 {}  p99 {}",
                v.rate,
                v.error_rate
                    .map_or("-".into(), |e| format!("{:.2}%", 100.0 * e)),
                v.p50_seconds.map_or("-".into(), fmt_seconds),
                v.p99_seconds.map_or("-".into(), fmt_seconds),
            );
        }
    }
    if !r.last_checks.is_empty() {
        let _ = writeln!(out, "  last analysis:");
        for c in &r.last_checks {
            let _ = writeln!(
                out,
                "    {:<20} {:<12} value {}  threshold {}  samples stable {} canary {}  ({})",
                c.check.name(),
                c.verdict.name(),
                c.value.map_or("-".into(), |v| c.unit.format(v)),
                c.unit.format(c.threshold),
                c.samples[0],
                c.samples[1],
                c.detail
            );
        }
    }
    let _ = writeln!(
        out,
        "  decisions (oldest first; time since the rollout began):"
    );
    for d in &r.decisions {
        let since = d.at_unix_ms.saturating_sub(r.started_unix_ms) as f64 / 1000.0;
        // A run of waits is one entry, shown with how many it stands for (the last one's
        // time and reason).
        let action = match d.repeats {
            0 => d.action.name().to_owned(),
            n => format!("{} x{}", d.action.name(), n + 1),
        };
        let _ = writeln!(
            out,
            "    +{since:>7.1}s  {:<14} -> {:<11} step {} at {}%: {}",
            action,
            d.phase.name(),
            d.step,
            d.weight_percent,
            d.reason
        );
    }
    out
}

fn fmt_seconds(s: f64) -> String {
    Unit::Seconds.format(s)
}
