//! `sluice status --output json` held to its documented schema (docs/status.schema.json):
//! every status a test reads is checked, so a field the schema does not describe, or one
//! that breaks it, fails the test that saw it.

use std::sync::OnceLock;

const SCHEMA: &str = include_str!("../../docs/status.schema.json");

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
        jsonschema::draft202012::new(&schema).expect("schema compiles")
    })
}

/// Every way `status` breaks the schema, empty when it holds.
pub fn status_errors(status: &serde_json::Value) -> Vec<String> {
    validator()
        .iter_errors(status)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Panics, naming each violation, unless `status` holds to the schema.
pub fn assert_status_schema(status: &serde_json::Value) {
    let errors = status_errors(status);
    assert!(
        errors.is_empty(),
        "sluice status --output json breaks docs/status.schema.json:\n{}\n{status:#}",
        errors.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rollout() -> serde_json::Value {
        json!({
            "phase": "Waiting", "reason": "r", "step": 1, "steps_percent": [5.0, 50.0],
            "weight_percent": 5.0, "weight_ppm": 50000, "failed_checks": 0,
            "failed_in_a_row": 0, "failure_threshold": 2, "interval_seconds": 15.0,
            "min_samples": 100, "promotion": "auto", "started_unix_ms": 1,
            "window_samples": [3, 1],
            "live": [
                {"rate": 1.0, "error_rate": 0.0, "p50_seconds": 0.001, "p99_seconds": 0.002},
                {"rate": 0.0, "error_rate": null, "p50_seconds": null, "p99_seconds": null}
            ],
            "last_checks": [{"check": "p99_ratio", "verdict": "inconclusive", "value": null,
                "threshold": 2.0, "unit": "factor", "samples": [3, 1], "detail": "d"}],
            "decisions": [{"at_unix_ms": 1, "action": "wait", "phase": "Waiting", "step": 1,
                "weight_percent": 5.0, "reason": "r", "checks": [], "repeats": 4}],
            "decision_counts": {"start": 1, "wait": 5}
        })
    }

    fn status(rollout: serde_json::Value) -> serde_json::Value {
        json!({
            "version": "0.1.0", "cgroup": "/c", "pin_dir": "/p", "config": "/f",
            "services": [{
                "name": "web", "id": 0, "virtual_addresses": ["10.0.0.1:80"],
                "selection": "random", "canary_percent": 5.0, "config_canary_percent": 0.0,
                "generation": 3, "stable": ["127.0.0.1:1"], "canary": [], "segmented": false,
                "counters": {"steered_stable": 3}, "measured_canary_percent": null,
                "rollout": rollout,
                "names": [{"role": "stable", "name": "web.svc", "port": 80, "addresses": [],
                    "result": "pending", "failures_in_a_row": 0, "last_good_seconds_ago": null,
                    "next_lookup_seconds": 1.5, "lookups": {}}]
            }]
        })
    }

    #[test]
    fn the_schema_takes_a_status_and_refuses_what_breaks_it() {
        assert_eq!(status_errors(&status(rollout())), Vec::<String>::new());
        let broken = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut r = rollout();
            f(&mut r);
            status_errors(&status(r))
        };
        assert!(!broken(&|r| r["weight_ppm"] = json!(2_000_000)).is_empty());
        assert!(!broken(&|r| r["step"] = json!(-1)).is_empty());
        assert!(!broken(&|r| r["phase"] = json!("Done")).is_empty());
        assert!(!broken(&|r| r["decision_counts"]["waited"] = json!(1)).is_empty());
        assert!(!broken(&|r| r["undocumented"] = json!(1)).is_empty());
        assert!(!broken(&|r| r["live"][0]["error_rate"] = json!(2.0)).is_empty());
        let _ = broken(&|r| {
            r.as_object_mut().expect("object").remove("weight_ppm");
        })
        .first()
        .expect("a missing field is refused");
    }
}
