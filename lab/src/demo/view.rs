//! One line per second of what the rollout is doing, and each new decision with its
//! evidence, from `sluice status demo --output json`.

use serde_json::Value;

const BAR: usize = 30;

/// `[#########.....................]` for the canary's share of new connections.
fn bar(percent: f64) -> String {
    let filled = ((percent / 100.0) * BAR as f64)
        .round()
        .clamp(0.0, BAR as f64) as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("    -".into(), |x| format!("{:>5.2}%", 100.0 * x))
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or("     -".into(), |s| format!("{:>6.1}ms", s * 1000.0))
}

/// The live line: phase, step, weight, and per version rate, error rate and p99.
pub fn line(elapsed_s: u64, r: &Value) -> String {
    let steps = r["steps_percent"].as_array().map_or(0, Vec::len);
    let weight = r["weight_percent"].as_f64().unwrap_or(0.0);
    let live = |i: usize, name: &str| {
        let v = &r["live"][i];
        format!(
            "{name} {:>5.0}/s err {} p99 {}",
            v["rate"].as_f64().unwrap_or(0.0),
            pct(&v["error_rate"]),
            ms(&v["p99_seconds"])
        )
    };
    format!(
        "{elapsed_s:>4}s  {:<12} step {}/{steps}  canary {weight:>5.1}% {}  {}  |  {}",
        r["phase"].as_str().unwrap_or("?"),
        r["step"],
        bar(weight),
        live(0, "stable"),
        live(1, "canary"),
    )
}

/// A decision and the checks behind it.
pub fn decision(d: &Value) -> String {
    let mut out = format!(
        "  >> {} -> {} (step {}, canary {}%): {}",
        d["action"].as_str().unwrap_or("?"),
        d["phase"].as_str().unwrap_or("?"),
        d["step"],
        d["weight_percent"],
        d["reason"].as_str().unwrap_or("")
    );
    for c in d["checks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n       {:<20} {:<12} {}",
            c["check"].as_str().unwrap_or("?"),
            c["verdict"].as_str().unwrap_or("?"),
            c["detail"].as_str().unwrap_or("")
        ));
    }
    out
}
