//! The rollout controller: per service, walk the canary share up step by step while the
//! evidence holds, take it back the moment it doesn't, and explain every decision.
//!
//! The daemon calls [`Controller::tick`] every [`TICK`] with fresh kernel counters. Each
//! tick runs the guard; each `interval` also runs an analysis of canary against stable over
//! the same window. The controller decides and records; what it decided reaches the kernel
//! as [`crate::desired::RolloutShares`] through the desired state, and the daemon persists
//! its state.
//!
//! - [`controller`]: across services (reconcile with the configuration, commands, shares);
//! - [`machine`]: one service's state machine; [`log`]: its decision log; [`fail_fast`]:
//!   its sequential test between analyses;
//! - [`analysis`], [`evidence`], [`stats`], [`guard`]: the checks and the numbers behind them;
//! - [`state`]: what is persisted; [`status`]: what `sluice status` shows;
//! - [`advice`]: what a valid configuration is warned of;
//! - [`clock`]: the injected clock.

mod advice;
mod analysis;
pub mod clock;
mod controller;
mod evidence;
mod fail_fast;
mod guard;
mod log;
mod machine;
mod sequential;
mod state;
mod stats;
mod status;

use std::time::Duration;

pub use advice::{Warning, log_warnings, warnings};
pub use clock::{Clock, Moment, SystemClock, unix_ms};
pub use controller::{CommandError, Controller};
pub use evidence::Counts;
pub use state::{RolloutState, StateError, save as save_states, state_file_is_ours};

/// How often guards run (and counters are read for them).
pub const TICK: Duration = Duration::from_millis(250);

/// Both versions' cumulative counters at one moment (stable, canary).
type Reading = [Vec<u64>; 2];

/// What the daemon must do after a tick or a command.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Services whose steering changed, with the share each must have now: the desired state
    /// must be applied again.
    pub weights: Vec<(String, u32)>,
    /// The state changed: persist it.
    pub changed: bool,
}

impl Outcome {
    fn steering(service: &str, ppm: u32) -> Self {
        Self {
            weights: vec![(service.to_owned(), ppm)],
            changed: true,
        }
    }

    fn persist() -> Self {
        Self {
            weights: Vec::new(),
            changed: true,
        }
    }

    fn steer(&mut self, service: &str, ppm: u32) {
        self.weights.push((service.to_owned(), ppm));
        self.changed = true;
    }
}

#[cfg(test)]
mod tests;
