//! The helpers sluice's orchestration shares: running commands and cargo in the workspace.
//! A library so that the lab (bench and demo) uses the same ones; it depends on nothing that
//! needs the kernel toolchain, since xtask builds before anything is installed.

pub mod util;
