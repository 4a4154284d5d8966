use std::path::{Path, PathBuf};

/// A cgroup v2 directory made for one test, removed on drop (after its processes exited).
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// A new cgroup directly under the cgroup2 mount, named for a test.
    pub fn new(tag: &str) -> Self {
        Self::named(&format!("sluice-test-{tag}"))
    }

    /// A new cgroup directly under the cgroup2 mount, named `name`.
    pub fn named(name: &str) -> Self {
        let root = sluice::cgroup::cgroup2_mount().expect("cgroup2 mount");
        Self::at(root.join(name))
    }

    /// A child of this cgroup.
    pub fn child(&self, name: &str) -> Self {
        Self::at(self.path.join(name))
    }

    /// A handle on a cgroup another handle owns (for a second thread); forget it rather than
    /// drop it, or it removes the directory.
    pub fn at_existing(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    fn at(path: PathBuf) -> Self {
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> u64 {
        sluice::cgroup::cgroup_id(&self.path).expect("cgroup id")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes leave a cgroup when they exit; give a just-reaped probe a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}
