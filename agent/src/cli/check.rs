use std::{path::Path, process::ExitCode};

use super::{exit, fail};

/// Validates a configuration file; with `on_this_node`, also binds its cgroups to this node.
pub fn check(path: &Path, on_this_node: bool) -> ExitCode {
    let config = match crate::config::parse(path) {
        Ok(c) => c,
        Err(e) => return fail(exit::USAGE, &e),
    };
    // Valid, but not as it reads: said, not refused.
    for w in crate::rollout::warnings(&config) {
        eprintln!("sluice: warning: {}: {}", w.key, w.message);
    }
    if !on_this_node {
        let cgroup = config.cgroup.as_ref().map_or_else(
            || "the cgroup2 root".to_owned(),
            |p| p.display().to_string(),
        );
        println!(
            "{}: valid, {} service(s), attaching at {cgroup} (cgroups not checked on this node: \
             --on-this-node does)",
            path.display(),
            config.services.len(),
        );
        return ExitCode::SUCCESS;
    }
    match crate::config::bind(&config) {
        Ok(node) => {
            println!(
                "{}: valid on this node, {} service(s), attaching at {}",
                path.display(),
                config.services.len(),
                node.cgroup.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::USAGE, &e),
    }
}
