#![no_std]
//! Library target so the agent can name this crate as a build dependency (rebuild tracking);
//! the programs are the `sluice` binary target, built by the agent's build.rs.
