//! The controller's state, as it is persisted: per service, which canary set is being rolled
//! out, where it stands, and the recent decisions with their evidence. Written atomically
//! (temporary file, fsync, rename) on every change, so a restarted agent resumes at the same
//! step with the same weight and never re-runs a finished rollout.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::view::{Action, Decision, Phase};

/// Decisions kept per rollout (the log and `/metrics` have them all).
pub const DECISIONS_KEPT: usize = 20;
const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The stable and canary backend sets this rollout is about.
    pub fingerprint: String,
    pub phase: Phase,
    pub reason: String,
    /// Index into the steps.
    pub step: usize,
    pub weight_ppm: u32,
    pub failed_checks: u32,
    pub started_unix_ms: u64,
    /// When the current step (or its current wait) began: the deadline counts from here.
    pub step_started_unix_ms: u64,
    pub decisions: VecDeque<Decision>,
    /// Decisions by action, over the rollout's life.
    pub decision_counts: BTreeMap<Action, u64>,
    /// Paused after the last step, waiting for `sluice promote`.
    #[serde(default)]
    pub at_gate: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFile {
    pub format: u32,
    pub rollouts: BTreeMap<String, RolloutState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the rollout state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the rollout state {path} is not readable ({reason}); move it away to start every \
         rollout afresh"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the rollout state {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the state file; a missing one is an empty state.
pub fn load(path: &Path) -> Result<StateFile, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let file: StateFile = serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if file.format != FORMAT_VERSION {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            reason: format!("format {} (this agent reads {FORMAT_VERSION})", file.format),
        });
    }
    Ok(file)
}

/// Writes the state file atomically: a crash leaves the old file or the new one.
pub fn save(path: &Path, rollouts: &BTreeMap<String, RolloutState>) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let file = StateFile {
        format: FORMAT_VERSION,
        rollouts: rollouts.clone(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| err(std::io::Error::other(e)))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&text).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
