//! `drain:` and `max_connection_age` of a service, and `network_namespaces`.

use std::{path::PathBuf, time::Duration};

use super::{ConfigError, duration, raw::RawDrain};

/// Default time a busy canary connection is given to finish after a rollback.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Shortest `max_connection_age`: below it a pool would spend its time reconnecting.
pub const MIN_CONNECTION_AGE: Duration = Duration::from_secs(1);
/// Where `ip netns` and the container runtimes pin network namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
/// At most this many `network_namespaces` directories.
const MAX_NETNS_DIRS: usize = 16;

/// What happens to a service's open canary connections when the canary's share is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    /// End them (default): idle ones at once, busy ones when their response is in (`l7:
    /// http1`) or at the grace.
    pub on_rollback: bool,
    pub grace: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            on_rollback: true,
            grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

pub fn drain(key: &str, raw: Option<RawDrain>) -> Result<DrainConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let grace = match raw.grace {
        Some(g) => duration(&format!("{key}.grace"), &g)?,
        None => DEFAULT_DRAIN_GRACE,
    };
    Ok(DrainConfig {
        on_rollback: raw.on_rollback.unwrap_or(true),
        grace,
    })
}

pub fn max_connection_age(key: &str, raw: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = raw else {
        return Ok(None);
    };
    let age = duration(key, text)?;
    if age < MIN_CONNECTION_AGE {
        return Err(ConfigError::invalid(
            key,
            format!("{text:?} is below 1s: pools would spend their time reconnecting"),
        ));
    }
    Ok(Some(age))
}

pub fn network_namespaces(raw: Option<Vec<String>>) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(dirs) = raw else {
        return Ok(vec![PathBuf::from(DEFAULT_NETNS_DIR)]);
    };
    if dirs.len() > MAX_NETNS_DIRS {
        return Err(ConfigError::invalid(
            "network_namespaces",
            format!("{} directories, at most {MAX_NETNS_DIRS}", dirs.len()),
        ));
    }
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let p = PathBuf::from(d);
            if p.is_absolute() && !d.contains('\0') {
                Ok(p)
            } else {
                Err(ConfigError::invalid(
                    format!("network_namespaces[{i}]"),
                    format!("{d:?} is not an absolute path"),
                ))
            }
        })
        .collect()
}
