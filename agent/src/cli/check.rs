use std::{path::Path, process::ExitCode};

use super::{exit, fail};

pub fn check(path: &Path) -> ExitCode {
    match crate::config::parse(path) {
        Ok(c) => {
            println!(
                "{}: valid, {} service(s), attaching at {}",
                path.display(),
                c.services.len(),
                c.cgroup.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(exit::USAGE, &e),
    }
}
