use std::{path::Path, process::ExitCode};

use super::{exit, fail};
use crate::{
    api::{self, ClientError, Request, Response},
    dataplane::detach_pins,
};

pub fn detach(pin_path: &Path, state_path: &Path, socket: &Path) -> ExitCode {
    if crate::sys::effective_uid() != 0 {
        eprintln!("sluice: detach needs root");
        return ExitCode::from(exit::NOPERM);
    }
    match api::call(socket, &Request::Detach) {
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
    match std::fs::remove_file(state_path) {
        Ok(()) => println!("removed {}", state_path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("sluice: cannot remove {}: {e}", state_path.display()),
    }
    match detach_pins(pin_path) {
        Ok(removed) if removed.is_empty() => {
            println!("nothing pinned under {}", pin_path.display());
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for p in &removed {
                println!("removed {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::SOFTWARE, &e),
    }
}
