use std::{io::IsTerminal as _, path::Path, process::ExitCode};

use tracing_subscriber::EnvFilter;

use super::{LogFormat, exit, fail};
use crate::daemon::{self, DaemonError};

pub fn run(path: &Path, format: LogFormat) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal; log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // Validate everything, and bind it to this node, before anything else happens.
    let (config, node) = match crate::config::parse(path).and_then(|c| {
        let node = crate::config::bind(&c)?;
        Ok((c, node))
    }) {
        Ok(bound) => bound,
        Err(e) => return fail(exit::USAGE, &e),
    };
    crate::rollout::log_warnings(&config);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(exit::SOFTWARE, &e),
    };
    match runtime.block_on(daemon::run(path.to_owned(), config, node)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (DaemonError::NotRoot | DaemonError::Privileges(_))) => fail(exit::NOPERM, &e),
        Err(e @ DaemonError::Config(_)) => fail(exit::USAGE, &e),
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "sluice failed");
            ExitCode::from(exit::SOFTWARE)
        }
    }
}
