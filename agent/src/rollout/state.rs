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
/// The format written. Format 1 differs only in calling `step_index` `step`: it is read as
/// well, and written back as format 2.
const FORMAT_VERSION: u32 = 2;
const FORMATS_READ: [u32; 2] = [1, 2];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The stable and canary backend sets this rollout is about.
    pub fingerprint: String,
    pub phase: Phase,
    pub reason: String,
    /// Index into the steps, 0-based (`step_index`: the status and the decisions count
    /// steps from 1 under the name `step`). Format 1 called it `step`.
    #[serde(rename = "step_index", alias = "step")]
    pub step: usize,
    pub weight_ppm: u32,
    /// Failed analyses over the rollout's life.
    pub failed_checks: u32,
    /// Failed analyses since the last one that passed.
    #[serde(default)]
    pub failed_in_a_row: u32,
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

/// Largest state file read: 20 decisions of 16 384 rollouts fit well under this.
const MAX_STATE_BYTES: u64 = 64 << 20;

/// Reads the state file (a regular file of bounded size); a missing one is an empty state.
pub fn load(path: &Path) -> Result<StateFile, StateError> {
    let text = match crate::config::read_regular_file(path, MAX_STATE_BYTES) {
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
    if !FORMATS_READ.contains(&file.format) {
        return Err(StateError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "format {} (this agent reads formats {FORMATS_READ:?})",
                file.format
            ),
        });
    }
    Ok(file)
}

/// Whether `path` holds a sluice rollout state (so `sluice detach` may remove it): `Ok(false)`
/// when there is no file, `Err` saying why when there is one that is not ours.
pub fn state_file_is_ours(path: &Path) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.to_string()),
        Ok(m) if !m.is_file() => return Err("not a regular file".into()),
        Ok(_) => {}
    }
    load(path).map(|_| true).map_err(|e| crate::error_chain(&e))
}

/// Writes the state file atomically: a crash leaves the old file or the new one. The
/// temporary is a new file of a name nobody else uses (created exclusively, so a planted
/// file or symlink is never followed), in the same directory, and is removed if any step
/// fails.
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
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    let (tmp, mut f) = temporary_beside(path).map_err(err)?;
    let written = f
        .write_all(&text)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new, exclusively created file beside `path`: `.NAME.PID.N.tmp`.
fn temporary_beside(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let dir = path.parent().unwrap_or(Path::new("/"));
    loop {
        let tmp = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            // Someone made that name (a planted file, a symlink): take the next one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn a_planted_temporary_is_never_followed_and_nothing_is_left_behind() {
        let dir = scratch("planted");
        let victim = dir.join("victim");
        std::fs::write(&victim, "do not touch").expect("victim");
        let path = dir.join("rollouts.json");
        // Symlinks at the old fixed temporary name and at the first names this process
        // would pick.
        let mut planted = vec![dir.join("rollouts.json.tmp")];
        planted.extend(
            (0..4).map(|n| dir.join(format!(".rollouts.json.{}.{n}.tmp", std::process::id()))),
        );
        for p in &planted {
            std::os::unix::fs::symlink(&victim, p).expect("symlink");
        }
        save(&path, &BTreeMap::new()).expect("save");
        save(&path, &BTreeMap::new()).expect("save again");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "do not touch"
        );
        assert!(load(&path).expect("load").rollouts.is_empty());
        let mut expected: Vec<PathBuf> = planted.clone();
        expected.extend([victim.clone(), path.clone()]);
        expected.sort();
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        found.sort();
        assert_eq!(
            found, expected,
            "the temporaries are gone, the planted links stay"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_sluice_state_file_is_ours() {
        let dir = scratch("ours");
        let state = dir.join("rollouts.json");
        assert_eq!(state_file_is_ours(&state), Ok(false));
        save(&state, &BTreeMap::new()).expect("save");
        assert_eq!(state_file_is_ours(&state), Ok(true));
        let other = dir.join("notes.txt");
        std::fs::write(&other, "an operator's file").expect("write");
        assert!(state_file_is_ours(&other).is_err());
        assert!(state_file_is_ours(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_format_1_file_is_read_and_written_back_as_format_2() {
        let dir = scratch("format1");
        let path = dir.join("rollouts.json");
        let v1 = r#"{"format": 1, "rollouts": {"web": {
            "fingerprint": "f", "phase": "Progressing", "reason": "step 2",
            "step": 1, "weight_ppm": 250000, "failed_checks": 0,
            "started_unix_ms": 1, "step_started_unix_ms": 2,
            "decisions": [], "decision_counts": {}}}}"#;
        std::fs::write(&path, v1).expect("write");
        let file = load(&path).expect("format 1 loads");
        assert_eq!(file.rollouts["web"].step, 1, "format 1's step is the index");
        save(&path, &file.rollouts).expect("save");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(written["format"], 2);
        assert_eq!(written["rollouts"]["web"]["step_index"], 1);
        assert!(written["rollouts"]["web"].get("step").is_none());
        assert_eq!(load(&path).expect("reload").rollouts, file.rollouts);
        std::fs::write(&path, v1.replace("\"format\": 1", "\"format\": 3")).expect("write");
        let e = load(&path).expect_err("format 3 is refused");
        assert!(e.to_string().contains("not readable"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
