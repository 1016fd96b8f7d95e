//! Directory snapshots without copying the parent every step: a step's root, once it is
//! exactly its parent plus the step's layer, is kept as `flat/<chain-id hex>` and the next step
//! on that chain takes it (one rename) instead of copying the layers again. Only a few are
//! kept; any is just a cache, rebuilt from the layer directories when missing.

use std::fs;
use std::path::{Path, PathBuf};

use super::ChainId;

/// How many kept roots stay; the least recently kept go first.
const KEEP: usize = 3;

fn dir(root: &Path) -> PathBuf {
    root.join("flat")
}

fn path(root: &Path, chain: &ChainId) -> PathBuf {
    dir(root).join(chain.0.hex())
}

/// Moves the kept root of `chain` to `dest` (which must not exist); false when there is none
/// (or another step took it first, or it was written in an earlier boot).
pub fn take(root: &Path, chain: &ChainId, dest: &Path, scratch: &Path) -> bool {
    this_boots(root, scratch) && fs::rename(path(root, chain), dest).is_ok()
}

/// Keeps `rootfs` as the root of `chain` (dropping it if one is kept already), then trims.
pub fn keep(root: &Path, chain: &ChainId, rootfs: &Path, scratch: &Path) {
    let dest = path(root, chain);
    let kept = this_boots(root, scratch)
        && fs::create_dir_all(dir(root)).is_ok()
        && fs::rename(rootfs, &dest).is_ok();
    if !kept {
        let _ = fs::remove_dir_all(rootfs);
        return;
    }
    trim(root, &dest, scratch);
}

/// Forgets the kept root of `chain` (its snapshot is being removed).
pub fn forget(root: &Path, chain: &ChainId, scratch: &Path) {
    discard(&path(root, chain), scratch);
}

/// Whether `flat/` may be used: its files are never synced, so what an earlier boot left
/// (maybe cut short by a crash) is dropped whole, as unsynced snapshots are. Records this
/// boot as the one `flat/` belongs to.
fn this_boots(root: &Path, scratch: &Path) -> bool {
    let Some(boot) = super::boot_id() else {
        return true;
    };
    let marker = root.join("flat.boot");
    match fs::read_to_string(&marker) {
        Ok(written) if written == boot => true,
        _ => {
            discard(&dir(root), scratch);
            fs::write(&marker, &boot).is_ok()
        }
    }
}

/// Moves `p` out of sight in one rename (to `scratch`, a path that must not exist), then
/// deletes it.
fn discard(p: &Path, scratch: &Path) {
    if fs::rename(p, scratch).is_ok() {
        let _ = fs::remove_dir_all(scratch);
    }
}

/// Drops the least recently kept roots beyond [`KEEP`], never `just_kept`. A rename moves a
/// directory's ctime, not its mtime, so ctime says when a root was kept.
fn trim(root: &Path, just_kept: &Path, scratch: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = fs::read_dir(dir(root)) else {
        return;
    };
    let mut kept: Vec<((i64, i64), PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(((m.ctime(), m.ctime_nsec()), e.path()))
        })
        .filter(|(_, p)| p != just_kept)
        .collect();
    if kept.len() < KEEP {
        return;
    }
    kept.sort();
    let excess = kept.len() + 1 - KEEP;
    for (i, (_, p)) in kept[..excess].iter().enumerate() {
        // A scratch path of its own: one that could not be removed must not block the next.
        discard(p, &scratch.with_extension(i.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    fn chain(n: u8) -> ChainId {
        ChainId(Digest::of(&[n]))
    }

    fn root_dir(tmp: &Path, name: &str) -> PathBuf {
        let p = tmp.join(name);
        fs::create_dir_all(p.join("etc")).unwrap();
        p
    }

    #[test]
    fn the_root_just_kept_stays_and_the_oldest_go() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snapshots");
        fs::create_dir(&root).unwrap();
        for n in 0..5 {
            keep(
                &root,
                &chain(n),
                &root_dir(tmp.path(), "r"),
                &tmp.path().join("s"),
            );
        }
        let mut left: Vec<String> = fs::read_dir(dir(&root))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = (2..5).map(|n| chain(n).0.hex().to_string()).collect();
        want.sort();
        assert_eq!(left, want, "the last three kept stay");
        assert!(
            !tmp.path().join("r").exists(),
            "kept roots were moved, not copied"
        );
    }

    #[test]
    fn roots_an_earlier_boot_kept_are_not_taken() {
        if crate::snapshot::boot_id().is_none() {
            panic!("no /proc/sys/kernel/random/boot_id: cannot check boot-bound caches");
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snapshots");
        fs::create_dir(&root).unwrap();
        keep(
            &root,
            &chain(1),
            &root_dir(tmp.path(), "r"),
            &tmp.path().join("s"),
        );
        fs::write(root.join("flat.boot"), "another boot").unwrap();
        let dest = tmp.path().join("taken");
        assert!(!take(&root, &chain(1), &dest, &tmp.path().join("s2")));
        assert!(!dest.exists() && !path(&root, &chain(1)).exists());
        // This boot's own are taken.
        keep(
            &root,
            &chain(2),
            &root_dir(tmp.path(), "r"),
            &tmp.path().join("s3"),
        );
        assert!(take(&root, &chain(2), &dest, &tmp.path().join("s4")));
        assert!(dest.join("etc").is_dir());
    }
}
