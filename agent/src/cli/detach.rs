use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::{exit, fail};
use crate::{
    api::{self, ClientError, Request, Response},
    dataplane::detach_pins,
    rollout::state_file_is_ours,
};

/// Which agent to detach: its pins, its state file, its control socket.
pub struct Target {
    pub pin_path: PathBuf,
    pub state_path: PathBuf,
    pub socket: PathBuf,
}

impl Target {
    /// The paths of the agent a configuration file describes.
    pub fn from_config(path: &Path) -> Result<Self, crate::config::ConfigError> {
        let c = crate::config::parse(path)?;
        Ok(Self {
            pin_path: c.pin_path,
            state_path: c.state_path,
            socket: c.api_socket,
        })
    }
}

pub fn detach(target: &Target) -> ExitCode {
    if crate::sys::effective_uid() != 0 {
        eprintln!("sluice: detach needs root");
        return ExitCode::from(exit::NOPERM);
    }
    let request = Request::Detach {
        pin_path: target.pin_path.clone(),
    };
    match api::call(&target.socket, &request) {
        Ok(Response::Detached { removed }) => {
            println!("daemon detached: {removed} pins removed; the daemon has exited");
            return ExitCode::SUCCESS;
        }
        Ok(Response::Error { message }) => {
            eprintln!("sluice: the daemon could not detach: {message}");
            return ExitCode::from(exit::SOFTWARE);
        }
        Ok(other) => {
            eprintln!("sluice: unexpected response {other:?}");
            return ExitCode::from(exit::SOFTWARE);
        }
        // No daemon: remove the pins ourselves.
        Err(ClientError::Connect { .. }) => {}
        Err(e) => return fail(exit::UNAVAILABLE, &e),
    }
    let removed = match detach_pins(&target.pin_path) {
        Ok(removed) => removed,
        Err(e) => return fail(exit::SOFTWARE, &e),
    };
    if removed.is_empty() {
        println!("nothing pinned under {}", target.pin_path.display());
    }
    for p in &removed {
        println!("removed {}", p.display());
    }
    // The rollout state describes the steering just removed, if it is sluice's at all.
    match state_file_is_ours(&target.state_path) {
        Ok(true) => match std::fs::remove_file(&target.state_path) {
            Ok(()) => println!("removed {}", target.state_path.display()),
            Err(e) => {
                eprintln!("sluice: cannot remove {}: {e}", target.state_path.display());
                return ExitCode::from(exit::SOFTWARE);
            }
        },
        Ok(false) => {}
        Err(why) => {
            eprintln!("sluice: {} left alone: {why}", target.state_path.display());
        }
    }
    ExitCode::SUCCESS
}
