use std::{path::Path, process::ExitCode};

use super::{exit, fail, not_ok};
use crate::api::{self, Request, Response};

pub fn weight(socket: &Path, service: &str, percent: f64) -> ExitCode {
    if let Err(e) = crate::config::percent_to_ppm_checked(percent) {
        return fail(exit::USAGE, &e);
    }
    let request = Request::SetWeight {
        service: service.to_owned(),
        percent,
    };
    match api::call(socket, &request) {
        Ok(Response::Weight {
            service,
            previous_percent,
            percent,
        }) => {
            println!("{service}: canary share {previous_percent}% -> {percent}%");
            ExitCode::SUCCESS
        }
        other => not_ok(other),
    }
}
