//! `rollout.waves`: a rollout's steps in waves of nodes, e.g. one zone's callers first, then
//! every node's. Nodes outside the current step's wave hold the canary at 0 %.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Most waves a rollout may have.
const MAX_WAVES: usize = 16;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWave {
    /// `all`, or labels a node must all carry (`cluster.labels`).
    pub nodes: RawNodes,
    pub steps: Vec<f64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawNodes {
    All(String),
    Labels(BTreeMap<String, String>),
}

/// Which nodes' callers a step's share goes to.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Nodes {
    #[default]
    All,
    /// Nodes carrying every one of these labels.
    Labels(BTreeMap<String, String>),
}

impl Nodes {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Nodes::All => true,
            Nodes::Labels(want) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }
}

impl std::fmt::Display for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Nodes::All => f.write_str("all nodes"),
            Nodes::Labels(l) => {
                let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "nodes {}", parts.join(","))
            }
        }
    }
}

/// The waves' steps one after the other, with each step's nodes. Within a wave the steps
/// increase; the next wave may start lower, since it starts on more callers.
pub fn waves(
    key: &str,
    raw: &[RawWave],
    max_steps: usize,
    to_ppm: impl Fn(Vec<(String, f64)>) -> Result<Vec<u32>, ConfigError>,
) -> Result<(Vec<u32>, Vec<Nodes>), ConfigError> {
    if raw.is_empty() || raw.len() > MAX_WAVES {
        return Err(ConfigError::invalid(
            key,
            format!("{} waves: give 1 to {MAX_WAVES}", raw.len()),
        ));
    }
    let mut steps = Vec::new();
    let mut nodes = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let wkey = format!("{key}[{i}]");
        let selector = match &w.nodes {
            RawNodes::All(s) if s == "all" => Nodes::All,
            RawNodes::All(s) => {
                return Err(ConfigError::invalid(
                    format!("{wkey}.nodes"),
                    format!("{s:?}: expected \"all\" or a map of node labels"),
                ));
            }
            RawNodes::Labels(l) => {
                if l.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{wkey}.nodes"),
                        "an empty selector: write `all` for every node",
                    ));
                }
                for (k, v) in l {
                    super::cluster::label(&format!("{wkey}.nodes.{k}"), k, v)?;
                }
                Nodes::Labels(l.clone())
            }
        };
        if w.steps.is_empty() {
            return Err(ConfigError::invalid(
                format!("{wkey}.steps"),
                "a wave needs at least one step",
            ));
        }
        let ppm = to_ppm(
            w.steps
                .iter()
                .enumerate()
                .map(|(j, p)| (format!("{wkey}.steps[{j}]"), *p))
                .collect(),
        )?;
        nodes.extend(std::iter::repeat_n(selector, ppm.len()));
        steps.extend(ppm);
    }
    if steps.len() > max_steps {
        return Err(ConfigError::invalid(
            key,
            format!("{} steps in all, at most {max_steps}", steps.len()),
        ));
    }
    Ok((steps, nodes))
}

#[cfg(test)]
mod tests {
    use crate::config::{Nodes, parse_str};

    const CLUSTER: &str = "cluster: {endpoints: [\"http://127.0.0.1:2379\"]}\n";

    fn service(rollout: &str) -> String {
        format!(
            "services:\n  - name: web\n    virtual_addresses: [\"10.96.0.10:80\"]\n    \
             stable: [{{address: 10.0.1.1:8080}}]\n    canary: [{{address: 10.0.1.2:8080}}]\n    \
             rollout:\n      {rollout}\n"
        )
    }

    #[test]
    fn waves_flatten_with_each_steps_nodes() {
        let text = format!(
            "{CLUSTER}{}",
            service("waves: [{nodes: {zone: a}, steps: [5, 25]}, {nodes: all, steps: [10, 50]}]")
        );
        let c = parse_str(&text).expect("valid");
        let r = c.services[0].rollout.as_ref().expect("rollout");
        assert_eq!(r.steps_ppm, vec![50_000, 250_000, 100_000, 500_000]);
        let zone_a = Nodes::Labels([("zone".to_owned(), "a".to_owned())].into());
        assert_eq!(
            r.step_nodes,
            vec![zone_a.clone(), zone_a, Nodes::All, Nodes::All]
        );
    }

    #[test]
    fn bad_waves_are_refused_naming_the_key() {
        for (rollout, with_cluster, key) in [
            (
                "waves: [{nodes: {zone: a}, steps: [5]}]",
                false,
                "rollout.waves",
            ),
            ("waves: []", true, "rollout.waves"),
            ("waves: [{nodes: some, steps: [5]}]", true, "waves[0].nodes"),
            ("waves: [{nodes: {}, steps: [5]}]", true, "waves[0].nodes"),
            ("waves: [{nodes: all, steps: []}]", true, "waves[0].steps"),
            (
                "waves: [{nodes: all, steps: [5, 5]}]",
                true,
                "waves[0].steps[1]",
            ),
            (
                "{steps: [5], waves: [{nodes: all, steps: [5]}]}",
                true,
                "rollout.waves",
            ),
        ] {
            let rollout = rollout
                .trim_start_matches('{')
                .trim_end_matches('}')
                .replace(", waves", "\n      waves");
            let head = if with_cluster { CLUSTER } else { "" };
            let e = parse_str(&format!("{head}{}", service(&rollout))).expect_err(&rollout);
            assert!(e.to_string().contains(key), "{rollout}: {e}");
        }
    }
}
