//! Noticing a new configuration file. A file replaced whole (a rename, a ConfigMap's symlink
//! swap) is complete by construction and is read at once. A file changed in place may be
//! half written: its content must stay the same for [`SETTLE`] before it is read.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use crate::config::{MAX_CONFIG_BYTES, read_regular_file};

/// How long a file changed in place must stay unchanged before it is taken.
pub const SETTLE: Duration = Duration::from_secs(3);

/// What the file is now: which file (device, inode) and what it holds (or why it cannot be
/// read, which is a content like any other: it changes when the file does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    file: Option<(u64, u64)>,
    content: Result<Vec<u8>, String>,
}

impl Seen {
    /// The file as it is now; `None` when the process itself is short of resources (out of
    /// descriptors or memory), which says nothing about the file.
    pub fn read(path: &Path) -> Option<Self> {
        let file = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let content = match read_regular_file(path, MAX_CONFIG_BYTES) {
            Ok(bytes) => Ok(bytes),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
                ) =>
            {
                return None;
            }
            Err(e) => Err(e.to_string()),
        };
        Some(Self { file, content })
    }
}

/// The last version taken, and one changing in place that has not settled yet.
pub struct Watch {
    taken: Seen,
    changing: Option<(Seen, Instant)>,
}

impl Watch {
    pub fn new(path: &Path) -> Self {
        Self {
            taken: Seen::read(path).unwrap_or(Seen {
                file: None,
                content: Err(String::new()),
            }),
            changing: None,
        }
    }

    /// Takes the file as it is now, whatever it looks like (SIGHUP).
    pub fn take(&mut self, path: &Path) {
        if let Some(now) = Seen::read(path) {
            self.taken = now;
        }
        self.changing = None;
    }

    /// Whether the file should be read again now (`None`: it could not be looked at).
    pub fn poll(&mut self, now: Option<Seen>, at: Instant) -> bool {
        let Some(now) = now else {
            return false;
        };
        if now == self.taken {
            self.changing = None;
            return false;
        }
        let replaced = now.file != self.taken.file;
        let settled = self
            .changing
            .as_ref()
            .is_some_and(|(seen, since)| *seen == now && at.duration_since(*since) >= SETTLE);
        if replaced || settled {
            self.taken = now;
            self.changing = None;
            return true;
        }
        if self.changing.as_ref().is_none_or(|(seen, _)| *seen != now) {
            tracing::debug!(
                "the configuration file is changing in place; waiting for it to settle"
            );
            self.changing = Some((now, at));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(file: u64, content: &str) -> Seen {
        Seen {
            file: Some((1, file)),
            content: Ok(content.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_replaced_file_is_taken_at_once_and_one_written_in_place_once_it_settles() {
        let t0 = Instant::now();
        let mut w = Watch {
            taken: seen(1, "a"),
            changing: None,
        };
        assert!(!w.poll(Some(seen(1, "a")), t0));
        // Replaced (another inode): at once.
        assert!(w.poll(Some(seen(2, "b")), t0));
        // Written in place: half, then whole, each only once it has stood still for SETTLE.
        let s = Duration::from_secs(1);
        assert!(!w.poll(Some(seen(2, "b, c")), t0 + s));
        assert!(!w.poll(Some(seen(2, "b, c")), t0 + 3 * s));
        assert!(
            !w.poll(Some(seen(2, "b, c, d")), t0 + 4 * s),
            "changed again: the wait restarts"
        );
        assert!(!w.poll(Some(seen(2, "b, c, d")), t0 + 6 * s));
        assert!(w.poll(Some(seen(2, "b, c, d")), t0 + 7 * s));
        assert!(!w.poll(Some(seen(2, "b, c, d")), t0 + 8 * s), "taken once");
    }
}
