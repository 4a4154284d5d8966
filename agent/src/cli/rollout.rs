//! `sluice promote|abort|pause|resume SERVICE`: operator control of a rollout.

use std::{path::Path, process::ExitCode};

use super::not_ok;
use crate::api::{self, Request, Response, RolloutAction};

pub fn control(socket: &Path, service: &str, action: RolloutAction) -> ExitCode {
    let request = Request::Rollout {
        service: service.to_owned(),
        action,
    };
    match api::call(socket, &request) {
        Ok(Response::Rollout { service, status }) => {
            println!(
                "{service}: {} at step {} of {}, canary share {}%: {}",
                status.phase.name(),
                status.step,
                status.steps_percent.len(),
                status.weight_percent,
                status.reason
            );
            ExitCode::SUCCESS
        }
        other => not_ok(other),
    }
}
