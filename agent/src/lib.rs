//! sluice's node agent: validates a configuration, loads and attaches the kernel programs,
//! writes the steering maps, and serves the control API.
#![deny(unsafe_code)]

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod desired;
pub mod discovery;
pub mod drain;
pub mod limits;
pub mod metrics;
pub mod rollout;
#[expect(
    unsafe_code,
    reason = "raw system calls: bpf, mount, capabilities, clocks"
)]
pub mod sys;
pub mod view;

/// An error with its causes, `a: b: c`, for one-line logs and CLI messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
