//! Removing sluice's pins: only from bpffs, and only a tree shaped as sluice makes it
//! (`<pin_path>/v<ABI>/{maps,links}/…`). Anything else is refused before a thing is removed.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error(
        "{0} is not on a bpf filesystem, so nothing in it is a sluice pin; nothing was removed"
    )]
    NotBpffs(PathBuf),
    #[error("{path} is not laid out as sluice pins are ({why}); nothing was removed")]
    Foreign { path: PathBuf, why: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes every pin under `pin_root` (all ABI versions): links first, so steering stops,
/// then maps. Returns the paths removed. Checks first that `pin_root` is a directory on
/// bpffs holding only sluice's layout; otherwise removes nothing.
pub fn detach_pins(pin_root: &Path) -> Result<Vec<PathBuf>, DetachError> {
    let read = |path: &Path| {
        let path = path.to_owned();
        move |source| DetachError::Read { path, source }
    };
    let meta = match fs::symlink_metadata(pin_root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(read(pin_root)(source)),
    };
    let foreign = |path: &Path, why: &str| DetachError::Foreign {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    if !meta.is_dir() {
        return Err(foreign(pin_root, "not a directory"));
    }
    if !sys::is_bpffs(pin_root).map_err(read(pin_root))? {
        return Err(DetachError::NotBpffs(pin_root.to_owned()));
    }
    let abis = layout(pin_root).map_err(|(path, why)| foreign(&path, &why))?;
    let mut removed = Vec::new();
    for abi in abis {
        for sub in ["links", "maps"] {
            let dir = abi.join(sub);
            if dir.exists() {
                removed.extend(remove_tree(&dir));
            }
        }
        if fs::remove_dir(&abi).is_ok() {
            removed.push(abi);
        }
    }
    fs::remove_dir(pin_root).map_err(read(pin_root))?;
    removed.push(pin_root.to_owned());
    Ok(removed)
}

/// The ABI directories under `pin_root`, if every entry is one (`v<N>`) and each holds only
/// `maps` and `links` directories; else the offending path and why.
fn layout(pin_root: &Path) -> Result<Vec<PathBuf>, (PathBuf, String)> {
    let entries = |dir: &Path| -> Result<Vec<(PathBuf, fs::FileType)>, (PathBuf, String)> {
        fs::read_dir(dir)
            .map_err(|e| (dir.to_owned(), e.to_string()))?
            .map(|e| {
                let e = e.map_err(|e| (dir.to_owned(), e.to_string()))?;
                let kind = e.file_type().map_err(|err| (e.path(), err.to_string()))?;
                Ok((e.path(), kind))
            })
            .collect()
    };
    let mut abis = Vec::new();
    for (abi, kind) in entries(pin_root)? {
        let name = abi.file_name().map(|n| n.to_string_lossy().into_owned());
        let is_abi = name
            .as_deref()
            .and_then(|n| n.strip_prefix('v'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !kind.is_dir() || !is_abi {
            return Err((abi, "sluice keeps only v<ABI> directories here".into()));
        }
        for (sub, kind) in entries(&abi)? {
            let known = sub.file_name().is_some_and(|n| n == "maps" || n == "links");
            if !kind.is_dir() || !known {
                return Err((sub, "sluice keeps only maps/ and links/ here".into()));
            }
        }
        abis.push(abi);
    }
    Ok(abis)
}

/// Removes files and then directories below and including `dir`, returning what went.
pub(super) fn remove_tree(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            removed.extend(remove_tree(&p));
        } else if fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    if fs::remove_dir(dir).is_ok() {
        removed.push(dir.to_owned());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_off_bpffs_is_never_removed() {
        let dir = std::env::temp_dir().join(format!("sluice-detach-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pin = dir.join("v5/maps/SLUICE_SERVICES");
        std::fs::create_dir_all(pin.parent().expect("parent")).expect("mkdir");
        std::fs::write(&pin, "not a pin").expect("write");
        assert!(matches!(detach_pins(&dir), Err(DetachError::NotBpffs(_))));
        assert!(pin.exists());
        // Nothing there: nothing to do.
        assert!(detach_pins(&dir.join("absent")).expect("absent").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
