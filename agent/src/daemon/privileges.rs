//! The capabilities `sluice run` needs, checked before anything else, so that a missing one
//! is named with what needs it instead of surfacing as an EPERM from deep inside the loader.
//! CAP_SYS_RESOURCE is not among them: on 5.11+ kernels BPF memory is charged to the memory
//! cgroup, and no memlock limit is raised.

/// (capability number, name, what needs it).
const NEEDED: [(u32, &str, &str); 3] = [
    (39, "CAP_BPF", "creating the maps and loading the programs"),
    (
        12,
        "CAP_NET_ADMIN",
        "loading and attaching the cgroup programs (connect, getpeername, cgroup_skb)",
    ),
    (
        38,
        "CAP_PERFMON",
        "the programs' reads of kernel memory and the tracing programs (tp_btf)",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("sluice run needs {0}")]
    Missing(String),
    #[error("reading this process's capabilities")]
    Read(#[source] std::io::Error),
}

/// Fails naming every needed capability the process lacks, and what each is for.
pub fn check() -> Result<(), PrivilegeError> {
    let effective = crate::sys::effective_capabilities().map_err(PrivilegeError::Read)?;
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(bit, _, _)| effective & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing(missing.join(", ")))
    }
}

/// `CAP_SYS_ADMIN`: not needed to run, only for the drainer to enter network namespaces
/// other than the agent's own (`setns`).
const CAP_SYS_ADMIN: u32 = 21;

/// Says, once at start, when connections in other network namespaces cannot be drained.
pub fn warn_without_setns() {
    let effective = crate::sys::effective_capabilities().unwrap_or(0);
    if effective & (1 << CAP_SYS_ADMIN) == 0 {
        tracing::warn!(
            "without CAP_SYS_ADMIN the agent cannot enter other network namespaces: a rollback drains canary connections only in its own (sluice_drain_unreachable_namespaces counts the others)"
        );
    }
}
