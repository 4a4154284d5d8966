//! What `sluice check` (and the daemon, at start and on reload) warns of in a valid
//! configuration: settings that work, but not as they read.

use crate::config::Config;

/// A configuration key, and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

/// Below this many samples a p99 is a version's slowest sample.
const P99_SAMPLES: u64 = 100;

/// Every warning of a configuration, in the order of its services.
pub fn warnings(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    for (i, service) in config.services.iter().enumerate() {
        let Some(r) = &service.rollout else { continue };
        let c = &r.checks;
        // The comparisons judge with confidence, so few samples leave them inconclusive;
        // the canary-alone p99 limits take the p99 as it is.
        let limits: Vec<&str> = [
            c.max_p99_ttfb.map(|_| "max_p99_ttfb"),
            c.max_p99_connect.map(|_| "max_p99_connect"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !limits.is_empty() && r.min_samples < P99_SAMPLES {
            out.push(Warning {
                key: format!("services[{i}].rollout.min_samples"),
                message: format!(
                    "{} ({}): with fewer than {P99_SAMPLES} samples a p99 is the slowest one, \
                     so one slow request decides {}; {P99_SAMPLES} or more lets it be judged",
                    r.min_samples,
                    service.name,
                    limits.join(" and ")
                ),
            });
        }
    }
    out
}

/// Logs every warning of a configuration the daemon is about to run.
pub fn log_warnings(config: &Config) {
    for w in warnings(config) {
        tracing::warn!(key = %w.key, "configuration: {}", w.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_min_samples_that_makes_the_p99_the_slowest_request_is_warned_of_by_key() {
        let yaml = |min: u64| {
            format!(
                "services:\n  - name: web\n    virtual_addresses: [\"10.0.0.1:80\"]\n    \
                 l7: http1\n    stable: [{{address: \"127.0.0.1:1\"}}]\n    \
                 canary: [{{address: \"127.0.0.1:2\"}}]\n    rollout:\n      steps: [10]\n      \
                 min_samples: {min}\n      checks: {{max_error_increase_percent: 2, \
                 max_p99_ttfb: 50ms}}\n"
            )
        };
        let config = crate::config::parse_str(&yaml(20)).expect("valid");
        let w = warnings(&config);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "services[0].rollout.min_samples");
        assert!(w[0].message.contains("max_p99_ttfb"), "{}", w[0].message);
        let config = crate::config::parse_str(&yaml(100)).expect("valid");
        assert_eq!(warnings(&config), Vec::new());
    }
}
